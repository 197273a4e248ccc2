//! Limits against abuse, per source address: concurrent sessions, and answers to failed
//! authentications delayed more with every failure (doubling from one second, at most 30 s,
//! forgotten after a quiet minute). Pure bookkeeping; the server applies it.
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::ratelimit::Failures;

#[derive(Debug)]
pub struct Limits {
    sessions_per_source: usize,
    sessions: HashMap<IpAddr, usize>,
    failures: Failures<IpAddr>,
}

impl Limits {
    pub fn new(sessions_per_source: usize, failures_before_delay: u32) -> Self {
        Self {
            sessions_per_source,
            sessions: HashMap::new(),
            failures: Failures::new(failures_before_delay),
        }
    }

    /// Counts a new session from `ip`, or refuses it when the source has its maximum.
    pub fn open(&mut self, ip: IpAddr) -> bool {
        let n = self.sessions.entry(ip).or_default();
        if *n >= self.sessions_per_source {
            return false;
        }
        *n += 1;
        true
    }

    pub fn close(&mut self, ip: IpAddr) {
        if let Some(n) = self.sessions.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sessions.remove(&ip);
            }
        }
    }

    /// Records a failed authentication; returns how long to wait before answering it.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Duration {
        self.failures.failed(ip, now)
    }

    /// A successful login clears the source's record.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.succeeded(&ip);
    }

    /// Drops failure records older than a quiet minute.
    pub fn tidy(&mut self, now: Instant) {
        self.failures.tidy(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_per_source_are_capped() {
        let mut l = Limits::new(2, 3);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(l.open(a) && l.open(a));
        assert!(!l.open(a));
        assert!(l.open(b));
        l.close(a);
        assert!(l.open(a));
    }

    #[test]
    fn failures_are_delayed_as_the_shared_rule_says() {
        let mut l = Limits::new(8, 1);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(l.failed(a, t0), Duration::ZERO);
        assert_eq!(l.failed(a, t0), Duration::from_secs(1));
        l.succeeded(a);
        assert_eq!(l.failed(a, t0), Duration::ZERO);
    }
}
