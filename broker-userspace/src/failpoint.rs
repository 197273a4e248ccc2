//! Named points where a test makes the controller die as if killed with SIGKILL, to prove
//! that a crash between two steps of a change loses nothing:
//! `BROKER_FAILPOINT=create:after_maps broker run ...`. Unset, a failpoint is one
//! comparison on the control path.
use std::sync::OnceLock;

/// Dies here when `BROKER_FAILPOINT` names this point.
pub fn failpoint(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("BROKER_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        tracing::warn!(failpoint = name, "failpoint reached: killing this process");
        // SAFETY: signalling ourselves; SIGKILL cannot be caught, as in a real crash.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
