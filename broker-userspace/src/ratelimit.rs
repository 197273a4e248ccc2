//! Token buckets, alone and per key (source address), for the defences against a hostile
//! internet: answers to unproven UDP sources, failed logins, log lines. Pure: time is
//! passed in.
use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// `rate` tokens a second up to `burst`; a full bucket at first.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The shape of a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Self { per_sec, burst }
    }
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Full again by `now`: nothing to remember.
    fn idle(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// One bucket per key, at most `max_keys` of them: when full, keys whose bucket has
/// refilled are forgotten, and if none has, the new key is refused (a flood of sources
/// cannot grow the table or take others' tokens).
#[derive(Debug)]
pub struct Keyed<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token from `key`'s bucket.
    pub fn take(&mut self, key: &K, now: Instant) -> bool {
        if let Some(b) = self.buckets.get_mut(key) {
            return b.take(self.rate, now);
        }
        if self.buckets.len() >= self.max_keys {
            self.tidy(now);
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let mut b = Bucket::full(self.rate, now);
        let ok = b.take(self.rate, now);
        self.buckets.insert(key.clone(), b);
        ok
    }

    /// Forgets keys whose buckets are full again.
    pub fn tidy(&mut self, now: Instant) {
        let rate = self.rate;
        self.buckets.retain(|_, b| !b.idle(rate, now));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Failed logins per source address: from the `free`+1st failure on, each answer waits,
/// one second doubling to 30 s; a quiet minute forgets the source, a success too. The
/// server sleeps before answering (not holding up anyone else), so guessing from one
/// address runs at a few tries a minute.
#[derive(Debug)]
pub struct Failures<K> {
    free: u32,
    by_source: HashMap<K, (u32, Instant)>,
}

const MAX_DELAY: Duration = Duration::from_secs(30);
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl<K: Hash + Eq> Failures<K> {
    pub fn new(free: u32) -> Self {
        Self {
            free,
            by_source: HashMap::new(),
        }
    }

    /// Records a failure; returns how long to wait before answering it.
    pub fn failed(&mut self, key: K, now: Instant) -> Duration {
        let e = self.by_source.entry(key).or_insert((0, now));
        if now.saturating_duration_since(e.1) > FORGET_AFTER {
            e.0 = 0;
        }
        e.0 += 1;
        e.1 = now;
        let over = e.0.saturating_sub(self.free);
        if over == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1u64 << (over - 1).min(5)).min(MAX_DELAY)
        }
    }

    /// A success clears the source's record.
    pub fn succeeded(&mut self, key: &K) {
        self.by_source.remove(key);
    }

    /// Drops records older than a quiet minute.
    pub fn tidy(&mut self, now: Instant) {
        self.by_source
            .retain(|_, (_, last)| now.saturating_duration_since(*last) <= FORGET_AFTER);
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_slowed_down_then_forgotten() {
        let mut l = Failures::new(3);
        let a = "198.51.100.1";
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..10)
            .map(|i| l.failed(a, t0 + Duration::from_secs(i)).as_secs())
            .collect();
        assert_eq!(delays, vec![0, 0, 0, 1, 2, 4, 8, 16, 30, 30]);
        // A quiet minute later it starts over.
        assert_eq!(l.failed(a, t0 + Duration::from_secs(100)).as_secs(), 0);
        l.succeeded(&a);
        assert_eq!(l.failed(a, t0 + Duration::from_secs(101)).as_secs(), 0);
        l.tidy(t0 + Duration::from_secs(1000));
        assert!(l.is_empty());
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let r = Rate::new(2.0, 3.0);
        let mut b = Bucket::full(r, t0);
        assert!((0..3).all(|_| b.take(r, t0)));
        assert!(!b.take(r, t0));
        assert!(b.take(r, t0 + Duration::from_millis(500)));
        assert!(!b.take(r, t0 + Duration::from_millis(500)));
        // Never more than the burst, however long it rested.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(r, later)).count(), 3);
    }

    #[test]
    fn keys_are_apart_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut k: Keyed<u32> = Keyed::new(Rate::new(1.0, 2.0), 3);
        assert!(k.take(&1, t0) && k.take(&1, t0));
        assert!(!k.take(&1, t0), "key 1 spent");
        assert!(k.take(&2, t0), "key 2 has its own");
        assert!(k.take(&3, t0));
        // Full of busy keys: a fourth is refused, not let in at the others' cost.
        assert!(!k.take(&4, t0));
        assert_eq!(k.len(), 3);
        // Once the others have refilled they are forgotten and there is room.
        let later = t0 + Duration::from_secs(5);
        assert!(k.take(&4, later));
        assert_eq!(k.len(), 1);
    }
}
