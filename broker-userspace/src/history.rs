//! A bounded traffic history per tunnel, for the portal's graphs, and when each client
//! was last heard: sampled from the data plane's counters every [`SAMPLE_SECS`], kept in
//! memory in steps of [`STEP_SECS`] for `portal.history_hours` (docs/PORTAL.md says what
//! it costs). A restart starts it afresh; the counters themselves survive in the maps.
//!
//! Pure: [`History::sample`] takes the counters and the time; [`run`] is the loop.
use std::{collections::VecDeque, sync::Arc};

use broker_common::maps::TunnelStats;
use rustc_hash::FxHashMap;

/// One bar of a graph: five minutes.
pub const STEP_SECS: u64 = 300;
/// How often the counters are read (and so the resolution of "last heard").
pub const SAMPLE_SECS: u64 = 60;

/// What was last read of one tunnel.
#[derive(Debug, Clone, Copy)]
struct Seen {
    from_packets: u64,
    from_bytes: u64,
    to_bytes: u64,
    /// Unix seconds of the sample at which packets from the client had last grown.
    heard: Option<u64>,
}

/// Steps with traffic, oldest first: (step number, KiB from the client, KiB to it).
type Steps = VecDeque<(u32, u32, u32)>;

#[derive(Debug)]
pub struct History {
    steps: usize,
    seen: FxHashMap<u32, Seen>,
    /// Only tunnels with traffic within the window have one.
    traffic: FxHashMap<u32, Steps>,
}

/// Bytes from and to the client in one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bar {
    pub from_client: u64,
    pub to_client: u64,
}

impl History {
    /// Keeps `hours` of steps (0: only "last heard").
    pub fn new(hours: u32) -> Self {
        Self {
            steps: (hours as u64 * 3600 / STEP_SECS) as usize,
            seen: FxHashMap::default(),
            traffic: FxHashMap::default(),
        }
    }

    /// Takes in the counters of every tunnel at `now` (Unix seconds). Tunnels not among
    /// them are forgotten; counters that went back (a tunnel's slot reused) count afresh.
    pub fn sample(&mut self, now: u64, counters: &[(u32, TunnelStats)]) {
        for (id, c) in counters {
            self.take(*id, now, c, true);
        }
        let present: rustc_hash::FxHashSet<u32> = counters.iter().map(|(id, _)| *id).collect();
        self.seen.retain(|id, _| present.contains(id));
        let oldest = self.oldest(now);
        self.traffic.retain(|id, steps| {
            while steps.front().is_some_and(|s| s.0 < oldest) {
                steps.pop_front();
            }
            !steps.is_empty() && present.contains(id)
        });
    }

    /// Takes in one tunnel's counters as read at `now` between samples (a tunnel's page
    /// shows its traffic up to the moment). A reading behind what was taken in already
    /// (read before a sample that got in first) is stale, and ignored.
    pub fn observe(&mut self, id: u32, now: u64, c: &TunnelStats) {
        self.take(id, now, c, false);
    }

    /// `sample`: counters behind the last reading went back (a slot reused); otherwise
    /// such a reading is stale.
    fn take(&mut self, id: u32, now: u64, c: &TunnelStats, sample: bool) {
        let before = self.seen.get(&id).copied();
        if let Some(b) = before {
            let behind = c.from_client_packets < b.from_packets
                || c.from_client_bytes < b.from_bytes
                || c.to_client_bytes < b.to_bytes;
            if behind && !sample {
                return;
            }
        }
        // Whole KiB are counted; the rest waits for the next reading (`Seen` holds what
        // was counted), so that frequent readings do not round traffic up.
        let account = |now: u64, then: Option<u64>| match then {
            None => (0, now),
            Some(t) if now >= t => {
                let k = (now - t) / 1024;
                (k, t + k * 1024)
            }
            Some(_) => (now / 1024, now / 1024 * 1024),
        };
        let (from, from_seen) = account(c.from_client_bytes, before.map(|b| b.from_bytes));
        let (to, to_seen) = account(c.to_client_bytes, before.map(|b| b.to_bytes));
        let heard = match before {
            Some(b) if c.from_client_packets != b.from_packets => Some(now),
            Some(b) => b.heard,
            None => None,
        };
        self.seen.insert(
            id,
            Seen {
                from_packets: c.from_client_packets,
                from_bytes: from_seen,
                to_bytes: to_seen,
                heard,
            },
        );
        if self.steps > 0 && (from > 0 || to > 0) {
            let step = (now / STEP_SECS) as u32;
            let kib = |k: u64| u32::try_from(k).unwrap_or(u32::MAX);
            // The whole window at once: a deque grown by doubling would hold up to twice
            // the steps it needs.
            let window = self.steps;
            let oldest = self.oldest(now);
            let steps = self
                .traffic
                .entry(id)
                .or_insert_with(|| VecDeque::with_capacity(window));
            // Room first: never more than the window, so the deque never grows.
            while steps.front().is_some_and(|s| s.0 < oldest) {
                steps.pop_front();
            }
            match steps.back_mut() {
                Some(last) if last.0 == step => {
                    last.1 = last.1.saturating_add(kib(from));
                    last.2 = last.2.saturating_add(kib(to));
                }
                _ => steps.push_back((step, kib(from), kib(to))),
            }
        }
    }

    /// The first step still in the window at `now`.
    fn oldest(&self, now: u64) -> u32 {
        ((now / STEP_SECS) as u32).saturating_sub(self.steps.saturating_sub(1) as u32)
    }

    /// When packets from the tunnel's client were last counted (Unix seconds), if since
    /// the history began.
    pub fn heard(&self, id: u32) -> Option<u64> {
        self.seen.get(&id).and_then(|s| s.heard)
    }

    /// The tunnel's bars at `now`, oldest first, one per step of the window.
    pub fn bars(&self, id: u32, now: u64) -> Vec<Bar> {
        let step = (now / STEP_SECS) as u32;
        let mut bars = vec![Bar::default(); self.steps];
        let Some(steps) = self.traffic.get(&id) else {
            return bars;
        };
        for &(s, from, to) in steps {
            let age = step.saturating_sub(s) as usize;
            if s <= step && age < self.steps {
                bars[self.steps - 1 - age] = Bar {
                    from_client: from as u64 * 1024,
                    to_client: to as u64 * 1024,
                };
            }
        }
        bars
    }

    /// Tunnels with traffic in the window, and all the steps they hold.
    pub fn footprint(&self) -> (usize, usize) {
        (
            self.traffic.len(),
            self.traffic.values().map(VecDeque::len).sum(),
        )
    }
}

/// Samples the data plane's counters every [`SAMPLE_SECS`] into `history`, for ever.
pub async fn run<S, P, R>(
    broker: Arc<tokio::sync::Mutex<crate::broker::Broker<S, P, R>>>,
    history: Arc<std::sync::Mutex<History>>,
) where
    P: crate::broker::Projection,
{
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(SAMPLE_SECS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let counters = broker.lock().await.maps.all_counters();
        match counters {
            Ok(c) => history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(crate::store::now(), &c),
            Err(e) => tracing::warn!(error = %e, "reading the counters for the history failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(from_packets: u64, from: u64, to: u64) -> TunnelStats {
        TunnelStats {
            from_client_packets: from_packets,
            from_client_bytes: from,
            to_client_bytes: to,
            ..Default::default()
        }
    }

    const T0: u64 = 1_800_000_000 / STEP_SECS * STEP_SECS;

    #[test]
    fn bars_are_the_growth_per_step_and_the_window_is_bounded() {
        let mut h = History::new(1); // 12 steps
        h.sample(T0, &[(7, stats(1, 1000, 0))]);
        assert_eq!(
            h.bars(7, T0),
            vec![Bar::default(); 12],
            "the first read is a base"
        );
        h.sample(T0 + 60, &[(7, stats(3, 3048, 10_240))]);
        h.sample(T0 + 120, &[(7, stats(4, 4072, 10_240))]);
        let bars = h.bars(7, T0 + 120);
        assert_eq!(bars.len(), 12);
        assert_eq!(
            bars[11],
            Bar {
                from_client: 3 * 1024,
                to_client: 10 * 1024
            }
        );
        assert_eq!(h.heard(7), Some(T0 + 120));
        // Next step, only traffic to the client: heard stays.
        h.sample(T0 + STEP_SECS, &[(7, stats(4, 4072, 20_480))]);
        let bars = h.bars(7, T0 + STEP_SECS);
        assert_eq!(bars[10].to_client, 10 * 1024);
        assert_eq!(bars[11].to_client, 10 * 1024);
        assert_eq!(h.heard(7), Some(T0 + 120));
        // An hour later the old steps are gone, and with them the tunnel's entry.
        h.sample(T0 + 13 * STEP_SECS, &[(7, stats(4, 4072, 20_480))]);
        assert_eq!(h.footprint(), (0, 0));
        assert_eq!(h.bars(7, T0 + 13 * STEP_SECS), vec![Bar::default(); 12]);
    }

    #[test]
    fn deleted_tunnels_are_forgotten_and_counters_that_went_back_count_afresh() {
        let mut h = History::new(1);
        h.sample(T0, &[(1, stats(1, 100, 0)), (2, stats(1, 100, 0))]);
        h.sample(T0 + 60, &[(1, stats(2, 2148, 0)), (2, stats(2, 2148, 0))]);
        assert_eq!(h.footprint(), (2, 2));
        h.sample(T0 + 120, &[(1, stats(1, 1024, 0))]);
        assert_eq!(h.footprint(), (1, 1));
        assert_eq!(h.heard(2), None);
        // 2048 + 1024 (counted afresh after going back), rounded up to KiB.
        assert_eq!(h.bars(1, T0 + 120)[11].from_client, 3 * 1024);
    }

    #[test]
    fn a_tunnel_observed_between_samples_counts_once() {
        let mut h = History::new(1);
        h.sample(T0, &[(7, stats(1, 1024, 0))]);
        h.observe(7, T0 + 10, &stats(2, 3072, 0));
        assert_eq!(h.heard(7), Some(T0 + 10));
        h.sample(T0 + 60, &[(7, stats(3, 4096, 0))]);
        assert_eq!(h.bars(7, T0 + 60)[11].from_client, 3 * 1024);
    }

    #[test]
    fn a_stale_reading_is_ignored_and_small_traffic_is_not_rounded_up() {
        let mut h = History::new(1);
        h.sample(T0, &[(7, stats(1, 1024, 0))]);
        h.sample(T0 + 60, &[(7, stats(5, 9216, 0))]);
        // A page read 4096 before that sample and records it after: nothing counts twice.
        h.observe(7, T0 + 61, &stats(3, 4096, 0));
        h.sample(T0 + 120, &[(7, stats(5, 9216, 0))]);
        assert_eq!(h.bars(7, T0 + 120)[11].from_client, 8 * 1024);
        assert_eq!(h.heard(7), Some(T0 + 60));
        // 100 bytes a reading: a KiB shows once a KiB has passed, not at every reading.
        let mut h = History::new(1);
        h.sample(T0, &[(1, stats(0, 0, 0))]);
        for i in 1..=20u64 {
            h.observe(1, T0 + i, &stats(i, i * 100, 0));
        }
        assert_eq!(h.bars(1, T0 + 20)[11].from_client, 1024);
    }

    #[test]
    fn without_hours_only_last_heard_is_kept() {
        let mut h = History::new(0);
        h.sample(T0, &[(1, stats(1, 100, 0))]);
        h.sample(T0 + 60, &[(1, stats(5, 1000, 0))]);
        assert!(h.bars(1, T0 + 60).is_empty());
        assert_eq!(h.footprint(), (0, 0));
        assert_eq!(h.heard(1), Some(T0 + 60));
    }
}
