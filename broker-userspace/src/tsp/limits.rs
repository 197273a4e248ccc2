//! Limits against abuse, per source address: concurrent sessions, and answers to failed
//! authentications delayed more with every failure (doubling from one second, at most 30 s,
//! forgotten after a quiet minute). Pure bookkeeping; the server applies it.
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

const MAX_DELAY: Duration = Duration::from_secs(30);
const FORGET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Limits {
    sessions_per_source: usize,
    failures_before_delay: u32,
    sessions: HashMap<IpAddr, usize>,
    failures: HashMap<IpAddr, (u32, Instant)>,
}

impl Limits {
    pub fn new(sessions_per_source: usize, failures_before_delay: u32) -> Self {
        Self {
            sessions_per_source,
            failures_before_delay,
            sessions: HashMap::new(),
            failures: HashMap::new(),
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
        let e = self.failures.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(e.1) > FORGET_AFTER {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = now;
        let over = e.0.saturating_sub(self.failures_before_delay);
        if over == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1u64 << (over - 1).min(5)).min(MAX_DELAY)
        }
    }

    /// A successful login clears the source's record.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }

    /// Drops failure records older than a quiet minute.
    pub fn tidy(&mut self, now: Instant) {
        self.failures
            .retain(|_, (_, last)| now.saturating_duration_since(*last) <= FORGET_AFTER);
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
    fn failures_are_slowed_down_then_forgotten() {
        let mut l = Limits::new(8, 3);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..10)
            .map(|i| l.failed(a, t0 + Duration::from_secs(i)).as_secs())
            .collect();
        assert_eq!(delays, vec![0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        // A quiet minute later it starts over.
        assert_eq!(l.failed(a, t0 + Duration::from_secs(100)).as_secs(), 0);
        l.succeeded(a);
        assert_eq!(l.failed(a, t0 + Duration::from_secs(101)).as_secs(), 0);
        l.tidy(t0 + Duration::from_secs(1000));
        assert!(l.failures.is_empty());
    }
}
