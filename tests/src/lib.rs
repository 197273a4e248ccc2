//! The lab: network namespaces joined by veths, with the real `broker` binary running in
//! them. Shared by the integration tests, `cargo xtask lab|run` and the benchmark.
//!
//! Everything created here is removed when its guard drops (also on panic); processes are
//! ended by PID. Addresses come from the documentation ranges and never leave the
//! namespaces this code creates.

pub mod browser;
pub mod cpu;
pub mod io;
pub mod lab;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod relay;

use std::path::PathBuf;

/// The `broker` binary under test: `$BROKER_BIN`, else `target/<profile>/broker` of this
/// workspace (debug first). Fails with a message saying how to build it.
pub fn broker_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BROKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("broker");
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "no broker binary: run `cargo build -p broker-userspace` (or `cargo xtask test`), or set BROKER_BIN"
    )
}

/// The debug data plane object (`cargo xtask build-ebpf --log`): `$BROKER_EBPF_LOG_OBJECT`,
/// else `target/ebpf-log/broker` of this workspace. Fails with a message saying how to
/// build it.
pub fn ebpf_log_object() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BROKER_EBPF_LOG_OBJECT") {
        return Ok(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf-log/broker");
    if p.exists() {
        return Ok(p);
    }
    anyhow::bail!(
        "no debug object at {}: run `cargo xtask build-ebpf --log` (or `cargo xtask test`), or set BROKER_EBPF_LOG_OBJECT",
        p.display()
    )
}

/// Fails unless running as root: namespaces, veths and BPF need it. Tests call this
/// first so that an unprivileged run fails saying why instead of somewhere deep.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, veth, BPF); run it through `cargo xtask test`, which runs as root in CI"
    );
}

/// Adds a benchmark's section to the report at `$BENCH_APPEND` (docs/BENCHMARKS.md through
/// `cargo xtask bench`), before its closing "Reproduce" section if it has one; without the
/// variable, writes nothing.
pub fn append_report(section: &str) {
    let Some(path) = std::env::var_os("BENCH_APPEND") else {
        return;
    };
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    match text.find("\n## Reproduce") {
        Some(i) => text.insert_str(i, section),
        None => text.push_str(section),
    }
    std::fs::write(&path, text).expect("writing the report");
    eprintln!("appended to {}", path.to_string_lossy());
}

/// Polls `cond` every 100 ms for up to `secs` seconds; fails saying `what` did not happen.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..secs * 10 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("not within {secs} s: {what}");
}
