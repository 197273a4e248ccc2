//! Log lines an attacker can cause, at the rate of a human reader: each kind of line
//! (`key`) is written at most [`RATE`] (a burst, then one every ten seconds), and the
//! next one written says how many were left out. The counters of `/metrics` have every
//! event; the log only has to say that it happens.
use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::Instant,
};

use crate::ratelimit::{Bucket, Rate};

pub const RATE: Rate = Rate::new(0.1, 5.0);

#[derive(Debug)]
struct Kind {
    bucket: Bucket,
    suppressed: u64,
}

fn kinds() -> &'static Mutex<HashMap<&'static str, Kind>> {
    static KINDS: OnceLock<Mutex<HashMap<&'static str, Kind>>> = OnceLock::new();
    KINDS.get_or_init(Mutex::default)
}

/// Whether a line of kind `key` may be written now; if so, how many were left out since
/// the last one.
pub fn admit(key: &'static str, now: Instant) -> Option<u64> {
    let mut k = kinds().lock().unwrap_or_else(|p| p.into_inner());
    let e = k.entry(key).or_insert_with(|| Kind {
        bucket: Bucket::full(RATE, now),
        suppressed: 0,
    });
    if e.bucket.take(RATE, now) {
        Some(std::mem::take(&mut e.suppressed))
    } else {
        e.suppressed += 1;
        None
    }
}

/// `tracing::warn!` of `message`, rate-limited per `key`.
pub fn warn_limited(key: &'static str, message: &str) {
    if let Some(left_out) = admit(key, Instant::now()) {
        if left_out > 0 {
            tracing::warn!(left_out, "{message}");
        } else {
            tracing::warn!("{message}");
        }
    }
}

/// `tracing::info!`, rate-limited per `key`.
pub fn info_limited(key: &'static str, message: &str) {
    if let Some(left_out) = admit(key, Instant::now()) {
        if left_out > 0 {
            tracing::info!(left_out, "{message}");
        } else {
            tracing::info!("{message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_a_few_lines_that_count_the_rest() {
        let t0 = Instant::now();
        let key = "logs-test-flood";
        let written: Vec<u64> = (0..1000).filter_map(|_| admit(key, t0)).collect();
        assert_eq!(written, vec![0; 5], "the burst, then nothing");
        // Ten seconds later one more line, which says how many were left out.
        assert_eq!(admit(key, t0 + Duration::from_secs(10)), Some(995));
        assert_eq!(admit(key, t0 + Duration::from_secs(10)), None);
        // Other kinds of line are not held back.
        assert_eq!(admit("logs-test-other", t0), Some(0));
    }
}
