//! When each heartbeat tunnel last beat, and which have stopped. Pure bookkeeping with the
//! clock passed in; the server turns its answers into `set_asleep` calls.
//!
//! A tunnel not heard since this process started counts from when it was first seen in
//! a sweep: sleeping is not durable, so after a restart every tunnel starts awake and
//! gets a full timeout to beat.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy)]
struct Entry {
    last: Instant,
    asleep: bool,
}

#[derive(Debug)]
pub struct Tracker {
    timeout: Duration,
    tunnels: HashMap<u32, Entry>,
    /// The newest epoch accepted per tunnel: an older or equal one is a beat seen before
    /// (replayed by whoever saw it) and may not move the tunnel.
    epochs: HashMap<u32, u64>,
}

impl Tracker {
    /// `timeout`: silence after which a tunnel is put to sleep (sixxsd: 120 s).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            tunnels: HashMap::new(),
            epochs: HashMap::new(),
        }
    }

    /// Whether `epoch` is newer than every beat accepted for the tunnel (since this
    /// process started).
    pub fn is_new(&self, id: u32, epoch: u64) -> bool {
        self.epochs.get(&id).is_none_or(|last| epoch > *last)
    }

    /// Notes an accepted beat's epoch.
    pub fn accepted(&mut self, id: u32, epoch: u64) {
        let e = self.epochs.entry(id).or_insert(epoch);
        *e = (*e).max(epoch);
    }

    /// A valid beat. Returns whether the tunnel had been put to sleep (so it needs waking).
    pub fn beat(&mut self, id: u32, now: Instant) -> bool {
        let e = self.tunnels.entry(id).or_insert(Entry {
            last: now,
            asleep: false,
        });
        e.last = now;
        std::mem::replace(&mut e.asleep, false)
    }

    /// Brings the set of watched tunnels to `live` (the heartbeat tunnels that are up):
    /// new ones start their timer now, others are forgotten. Returns the tunnels whose
    /// silence just passed the timeout, each once until it beats again.
    pub fn sweep(&mut self, live: &[u32], now: Instant) -> Vec<u32> {
        self.tunnels.retain(|id, _| live.contains(id));
        self.epochs.retain(|id, _| live.contains(id));
        let mut stopped = Vec::new();
        for id in live {
            let e = self.tunnels.entry(*id).or_insert(Entry {
                last: now,
                asleep: false,
            });
            if !e.asleep && now.saturating_duration_since(e.last) > self.timeout {
                e.asleep = true;
                stopped.push(*id);
            }
        }
        stopped.sort_unstable();
        stopped
    }

    pub fn is_asleep(&self, id: u32) -> bool {
        self.tunnels.get(&id).is_some_and(|e| e.asleep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn silence_past_the_timeout_puts_to_sleep_once() {
        let t0 = Instant::now();
        let mut t = Tracker::new(S(120));
        // First seen: the timer starts now, nothing stops yet.
        assert!(t.sweep(&[1, 2], t0).is_empty());
        assert!(!t.beat(1, t0 + S(60)));
        // At exactly the timeout it is still awake; one second later 2 stops, 1 not.
        assert!(t.sweep(&[1, 2], t0 + S(120)).is_empty());
        assert_eq!(t.sweep(&[1, 2], t0 + S(121)), vec![2]);
        assert!(t.is_asleep(2) && !t.is_asleep(1));
        // Reported once only.
        assert!(t.sweep(&[1, 2], t0 + S(150)).is_empty());
        assert_eq!(t.sweep(&[1, 2], t0 + S(181)), vec![1]);
    }

    #[test]
    fn a_beat_wakes_and_restarts_the_timer() {
        let t0 = Instant::now();
        let mut t = Tracker::new(S(120));
        t.sweep(&[7], t0);
        assert_eq!(t.sweep(&[7], t0 + S(200)), vec![7]);
        assert!(t.beat(7, t0 + S(210)), "was asleep: needs waking");
        assert!(!t.beat(7, t0 + S(220)), "already awake");
        assert!(t.sweep(&[7], t0 + S(330)).is_empty());
        assert_eq!(t.sweep(&[7], t0 + S(341)), vec![7]);
    }

    #[test]
    fn tunnels_that_go_are_forgotten_and_start_over() {
        let t0 = Instant::now();
        let mut t = Tracker::new(S(120));
        t.sweep(&[1], t0);
        // Deleted (or down): no longer watched.
        assert!(t.sweep(&[], t0 + S(100)).is_empty());
        // Back: a fresh timer, not the old one.
        assert!(t.sweep(&[1], t0 + S(200)).is_empty());
        assert!(t.sweep(&[1], t0 + S(300)).is_empty());
        assert_eq!(t.sweep(&[1], t0 + S(321)), vec![1]);
    }

    #[test]
    fn only_newer_epochs_are_new() {
        let mut t = Tracker::new(S(120));
        assert!(t.is_new(1, 1000));
        t.accepted(1, 1000);
        assert!(!t.is_new(1, 1000) && !t.is_new(1, 999));
        assert!(t.is_new(1, 1001) && t.is_new(2, 5));
        // A late, older one never moves the mark back.
        t.accepted(1, 990);
        assert!(!t.is_new(1, 995));
    }

    #[test]
    fn a_beat_before_any_sweep_counts() {
        let t0 = Instant::now();
        let mut t = Tracker::new(S(10));
        assert!(!t.beat(3, t0));
        assert_eq!(t.sweep(&[3], t0 + S(11)), vec![3]);
    }
}
