//! Blocking socket calls that survive being interrupted.
//!
//! On a socket with a timeout (`SO_RCVTIMEO`), Linux fails `recv`, `read` and `accept` with
//! `EINTR` when the process is stopped and resumed (a frozen cgroup, a paused VM), even with
//! no signal handler installed; `std` retries that only inside `read_exact`, `write_all` and
//! the like. A test must not fail because the machine paused, so its single reads go through
//! [`uninterrupted`].

use std::io;

/// Calls `f` until it returns something other than `ErrorKind::Interrupted`.
pub fn uninterrupted<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_interrupted() {
        let mut calls = 0;
        let r: io::Result<()> = uninterrupted(|| {
            calls += 1;
            if calls < 3 {
                Err(io::Error::from(io::ErrorKind::Interrupted))
            } else {
                Err(io::Error::from(io::ErrorKind::TimedOut))
            }
        });
        assert_eq!(calls, 3);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
