//! Which tunnels' clients have fallen silent, from their packet counters: pure
//! bookkeeping, fed by the daemon's periodic counter reads.
//!
//! A tunnel with a keepalive interval (TSP) whose client sent nothing, keepalives
//! included, for five intervals goes to sleep (down in the data plane); the first packet
//! counted after that wakes it. Both are decided here, applied by the broker core.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Intervals of silence after which a tunnel sleeps (tsps and RFC 5572 practice).
pub const SILENT_INTERVALS: u32 = 5;

/// One tunnel as observed: its id, packets received from its client so far (summed over
/// CPUs), its keepalive interval, and whether it sleeps now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub id: u32,
    pub from_client_packets: u64,
    pub keepalive_secs: u32,
    pub asleep: bool,
}

/// What to change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub sleep: Vec<u32>,
    pub wake: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct Liveness {
    /// Last packet count seen, when it last moved (or the tunnel was woken), and
    /// whether the tunnel slept then.
    seen: HashMap<u32, (u64, Instant, bool)>,
}

impl Liveness {
    /// Takes one observation of every tunnel with a keepalive at `now`.
    pub fn observe(&mut self, now: Instant, tunnels: &[Observed]) -> Changes {
        let mut changes = Changes::default();
        let mut seen = HashMap::with_capacity(tunnels.len());
        for t in tunnels {
            let (packets, since) = match self.seen.get(&t.id) {
                // A counter that moved, or went back (a slot reused): heard now.
                Some((p, ..)) if *p != t.from_client_packets => (t.from_client_packets, now),
                // Woken by other than its packets (its client negotiated again): a full
                // grace period, or it would be put back to sleep before its first packet.
                Some((p, _, true)) if !t.asleep => (*p, now),
                Some((p, since, _)) => (*p, *since),
                // New to us (or we restarted): give it a full grace period.
                None => (t.from_client_packets, now),
            };
            let heard_now = since == now && self.seen.contains_key(&t.id);
            let silent_for = now.saturating_duration_since(since);
            let limit =
                Duration::from_secs(u64::from(t.keepalive_secs) * u64::from(SILENT_INTERVALS));
            if t.asleep && heard_now {
                changes.wake.push(t.id);
            } else if !t.asleep && silent_for >= limit {
                changes.sleep.push(t.id);
            }
            seen.insert(t.id, (packets, since, t.asleep));
        }
        // Tunnels gone (deleted, or no longer watched) are forgotten.
        self.seen = seen;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: u32, packets: u64, asleep: bool) -> Observed {
        Observed {
            id,
            from_client_packets: packets,
            keepalive_secs: 10,
            asleep,
        }
    }

    #[test]
    fn silence_for_five_intervals_sleeps_and_a_packet_wakes() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.observe(at(0), &[t(1, 5, false)]), Changes::default());
        assert_eq!(l.observe(at(20), &[t(1, 5, false)]), Changes::default());
        // Traffic resets the clock.
        assert_eq!(l.observe(at(30), &[t(1, 6, false)]), Changes::default());
        assert_eq!(l.observe(at(79), &[t(1, 6, false)]), Changes::default());
        assert_eq!(
            l.observe(at(80), &[t(1, 6, false)]),
            Changes {
                sleep: vec![1],
                wake: vec![]
            }
        );
        // Asleep and still silent: nothing to do.
        assert_eq!(l.observe(at(90), &[t(1, 6, true)]), Changes::default());
        // A packet from the client (the data plane lets it through while asleep).
        assert_eq!(
            l.observe(at(91), &[t(1, 7, true)]),
            Changes {
                sleep: vec![],
                wake: vec![1]
            }
        );
        assert_eq!(l.observe(at(92), &[t(1, 7, false)]), Changes::default());
    }

    #[test]
    fn a_tunnel_woken_by_a_new_session_gets_a_grace_period() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        l.observe(at(0), &[t(1, 5, false)]);
        assert_eq!(l.observe(at(50), &[t(1, 5, false)]).sleep, vec![1]);
        assert_eq!(l.observe(at(300), &[t(1, 5, true)]), Changes::default());
        // A new TSP session woke it (no packet yet): not put back to sleep at once...
        assert_eq!(l.observe(at(301), &[t(1, 5, false)]), Changes::default());
        assert_eq!(l.observe(at(350), &[t(1, 5, false)]), Changes::default());
        // ...but after five silent intervals from the wake-up.
        assert_eq!(l.observe(at(351), &[t(1, 5, false)]).sleep, vec![1]);
    }

    #[test]
    fn a_restarted_controller_gives_every_tunnel_a_grace_period() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        // First sight of an asleep tunnel: not woken without a packet.
        assert_eq!(
            l.observe(t0, &[t(1, 100, true), t(2, 0, false)]),
            Changes::default()
        );
        assert_eq!(
            l.observe(
                t0 + Duration::from_secs(49),
                &[t(1, 100, true), t(2, 0, false)]
            ),
            Changes::default()
        );
        // Forgotten when no longer observed; back with a new grace period.
        l.observe(t0 + Duration::from_secs(60), &[]);
        assert_eq!(
            l.observe(t0 + Duration::from_secs(61), &[t(2, 0, false)]),
            Changes::default()
        );
    }
}
