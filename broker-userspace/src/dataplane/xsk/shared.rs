//! The maps the AYIYA worker writes without a system call, mapped into this process: BPF
//! arrays created `BPF_F_MMAPABLE` whose values are `u64` words, read and written as
//! `AtomicU64`s (several worker threads add to one tunnel's counts; XDP reads a deadline
//! while the worker writes it).
//!
//! - [`Verdicts`] (`XSK_VERDICTS`): what the worker decided about the packets XDP handed
//!   it to verify, per tunnel slot, and the totals after the last slot. XDP no longer
//!   counts those packets as the client's (a forged one from the client's own address and
//!   port would count, and keep the tunnel awake); the controller adds these when it reads
//!   the counters (`broker_common::maps::XskVerdicts`). Pinned with the counters: exact
//!   across restarts of the controller, which the worker's memory would not be.
//! - [`Suspects`] (`XSK_SUSPECT`): until when XDP verifies a tunnel's packets itself,
//!   because the worker found forged ones among them (`broker-ebpf/src/xsk.rs`, `suspect`).
//!
//! The worker writes both once per batch and tunnel ([`Tally`]), never per packet.
use std::{sync::atomic::Ordering, time::Duration};

use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use broker_common::{consts::map_names as names, maps::XskVerdicts};

use super::WorkerStats;
use crate::dataplane::{mapped::MappedArray, DataplaneError};

/// `XSK_VERDICTS`: the worker's verdicts per tunnel slot and in total.
pub struct Verdicts(MappedArray);

impl Verdicts {
    /// Maps an `XSK_VERDICTS` map (the loaded program's, or a pinned one).
    pub(in crate::dataplane) fn open(
        data: &MapData,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        MappedArray::open(data, names::XSK_VERDICTS, XskVerdicts::WORDS, writable).map(Self)
    }

    /// The entry after the last slot.
    fn totals_entry(&self) -> u32 {
        self.0.entries().saturating_sub(1)
    }

    fn read(&self, entry: u32) -> XskVerdicts {
        let w = |i| {
            self.0
                .word(entry, i)
                .map_or(0, |w| w.load(Ordering::Relaxed))
        };
        XskVerdicts::from_words(std::array::from_fn(w))
    }

    /// Tunnel `slot`'s.
    pub fn get(&self, slot: u32) -> XskVerdicts {
        if slot >= self.totals_entry() {
            return XskVerdicts::default();
        }
        self.read(slot)
    }

    /// Every tunnel's since the map was made (a slot's entry starts again with its tunnel).
    pub fn totals(&self) -> XskVerdicts {
        self.read(self.totals_entry())
    }

    /// Zeroes `slot`'s entry, for a new tunnel there.
    pub(in crate::dataplane) fn reset(&self, slot: u32) {
        if slot >= self.totals_entry() {
            return;
        }
        for i in 0..XskVerdicts::WORDS {
            if let Some(w) = self.0.word(slot, i) {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Adds `v` to `slot`'s entry and to the totals.
    fn add(&self, slot: u32, v: &XskVerdicts) {
        if slot >= self.totals_entry() {
            return;
        }
        for entry in [slot, self.totals_entry()] {
            for (i, n) in v.to_words().into_iter().enumerate() {
                if let (Some(w), true) = (self.0.word(entry, i), n > 0) {
                    w.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }
}

/// `XSK_SUSPECT`: per tunnel slot, the coarse monotonic time (ns) until which XDP verifies
/// the tunnel's packets itself.
pub struct Suspects(MappedArray);

impl Suspects {
    fn open(data: &MapData) -> Result<Self, DataplaneError> {
        MappedArray::open(data, names::XSK_SUSPECT, 1, true).map(Self)
    }

    /// How long XDP still verifies tunnel `slot`'s packets itself, at `now` (ns,
    /// [`coarse_now_ns`]); `None` when it hands them to the worker.
    pub fn left(&self, slot: u32, now: u64) -> Option<Duration> {
        let until = self.0.word(slot, 0)?.load(Ordering::Relaxed);
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Forgets tunnel `slot`'s mark, for a new tunnel there.
    pub(in crate::dataplane) fn clear(&self, slot: u32) {
        if let Some(w) = self.0.word(slot, 0) {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Makes XDP verify tunnel `slot`'s packets itself until `now + period`. Written only
    /// when less than half the period is left: XDP reads the entry for every packet of the
    /// tunnel it might hand over, and packets the worker takes off its ring after the mark
    /// (queued before it) would rewrite it a batch at a time. True when a period begins
    /// (the tunnel was not suspect).
    fn mark(&self, slot: u32, now: u64, period: Duration) -> bool {
        let Some(w) = self.0.word(slot, 0) else {
            return false;
        };
        let period = period.as_nanos() as u64;
        if period == 0 {
            return false;
        }
        let until = w.load(Ordering::Relaxed);
        if until >= now + period / 2 {
            return false;
        }
        w.store(now + period, Ordering::Relaxed);
        until <= now
    }
}

/// Both maps, shared by the data plane (which reads them and resets a slot for a new
/// tunnel) and the worker's threads (which write them).
pub struct WorkerMaps {
    pub verdicts: Verdicts,
    pub suspects: Suspects,
}

impl WorkerMaps {
    /// Maps the loaded program's two maps.
    pub(in crate::dataplane) fn open(ebpf: &Ebpf) -> Result<Self, DataplaneError> {
        let array = |name: &'static str| match ebpf.map(name) {
            Some(Map::Array(data)) => Ok(data),
            _ => Err(DataplaneError::MissingMap { name }),
        };
        Ok(Self {
            verdicts: Verdicts::open(array(names::XSK_VERDICTS)?, true)?,
            suspects: Suspects::open(array(names::XSK_SUSPECT)?)?,
        })
    }
}

/// The monotonic clock XDP reads with `bpf_ktime_get_coarse_ns`, in ns.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to fill (vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One batch's verdicts, by tunnel, written to the maps at the end of the batch.
#[derive(Default)]
pub(super) struct Tally {
    slots: Vec<(u32, XskVerdicts)>,
}

impl Tally {
    /// A batch has at most 32 frames, of few tunnels: a linear search.
    fn entry(&mut self, slot: u32) -> &mut XskVerdicts {
        let i = match self.slots.iter().position(|(s, _)| *s == slot) {
            Some(i) => i,
            None => {
                self.slots.push((slot, XskVerdicts::default()));
                self.slots.len() - 1
            }
        };
        &mut self.slots[i].1
    }

    pub fn verified(&mut self, slot: u32, inner_len: usize) {
        let e = self.entry(slot);
        e.verified_packets += 1;
        e.verified_bytes += inner_len as u64;
    }

    pub fn forged(&mut self, slot: u32, inner_len: usize) {
        let e = self.entry(slot);
        e.forged_packets += 1;
        e.forged_bytes += inner_len as u64;
    }

    /// Marks the tunnels with forged packets suspect for `suspect` (counted in
    /// `stats.suspected` when a period begins), then adds the counts: whoever sees a
    /// forged packet counted also sees its tunnel marked. Empties the tally.
    pub fn flush(&mut self, maps: &WorkerMaps, suspect: Duration, stats: &WorkerStats) {
        if self.slots.iter().any(|(_, v)| v.forged_packets > 0) {
            let now = coarse_now_ns();
            for (slot, _) in self.slots.iter().filter(|(_, v)| v.forged_packets > 0) {
                if maps.suspects.mark(*slot, now, suspect) {
                    stats.suspected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (slot, v) in self.slots.drain(..) {
            maps.verdicts.add(slot, &v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(entries: u32, words: usize) -> MappedArray {
        MappedArray::anonymous(entries, words)
    }

    fn maps(slots: u32) -> WorkerMaps {
        WorkerMaps {
            verdicts: Verdicts(array(slots + 1, XskVerdicts::WORDS)),
            suspects: Suspects(array(slots, 1)),
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_batch_is_counted_per_tunnel_and_in_total() {
        let m = maps(4);
        let stats = WorkerStats::default();
        let mut t = Tally::default();
        t.verified(1, 100);
        t.verified(1, 50);
        t.forged(2, 70);
        t.verified(3, 10);
        t.flush(&m, Duration::ZERO, &stats);
        assert_eq!(
            m.verdicts.get(1),
            XskVerdicts {
                verified_packets: 2,
                verified_bytes: 150,
                ..Default::default()
            }
        );
        assert_eq!(
            m.verdicts.get(2),
            XskVerdicts {
                forged_packets: 1,
                forged_bytes: 70,
                ..Default::default()
            }
        );
        assert_eq!(m.verdicts.totals().to_words(), [3, 160, 1, 70]);
        // Outside the slots, nothing is counted (and the totals entry is not a slot).
        t.verified(4, 1);
        t.flush(&m, Duration::ZERO, &stats);
        assert_eq!(m.verdicts.get(4), XskVerdicts::default());
        assert_eq!(m.verdicts.totals().to_words(), [3, 160, 1, 70]);
        m.verdicts.reset(1);
        assert_eq!(m.verdicts.get(1), XskVerdicts::default());
        assert_eq!(m.verdicts.totals().to_words(), [3, 160, 1, 70]);
        // With a suspect period of zero, nothing is marked.
        assert_eq!(m.suspects.left(2, coarse_now_ns()), None);
        assert_eq!(stats.suspected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_forged_packet_makes_its_tunnel_suspect_for_the_period() {
        let m = maps(4);
        let t0 = 1_000 * SECOND.as_nanos() as u64;
        assert!(m.suspects.mark(2, t0, SECOND), "a period begins");
        assert_eq!(m.suspects.left(2, t0), Some(SECOND));
        assert_eq!(m.suspects.left(1, t0), None, "other tunnels are not");
        // Within the first half of the period the entry is left alone.
        let half = SECOND.as_nanos() as u64 / 2;
        assert!(!m.suspects.mark(2, t0 + half, SECOND));
        assert_eq!(m.suspects.left(2, t0 + half), Some(SECOND / 2));
        // After it, the period is extended, without beginning a new one.
        assert!(!m.suspects.mark(2, t0 + half + 1, SECOND));
        assert_eq!(m.suspects.left(2, t0 + half + 1), Some(SECOND));
        // Once over, the tunnel goes back to the worker; a new forged packet begins
        // another period.
        let over = t0 + half + 1 + SECOND.as_nanos() as u64;
        assert_eq!(m.suspects.left(2, over), None);
        assert!(m.suspects.mark(2, over, SECOND));
        m.suspects.clear(2);
        assert_eq!(m.suspects.left(2, over), None);
        assert!(!m.suspects.mark(9, t0, SECOND), "outside the map");
    }

    #[test]
    fn a_flush_marks_only_tunnels_with_forged_packets() {
        let m = maps(4);
        let stats = WorkerStats::default();
        let mut t = Tally::default();
        t.verified(1, 100);
        t.forged(2, 100);
        t.forged(2, 100);
        t.flush(&m, SECOND, &stats);
        let now = coarse_now_ns();
        assert_eq!(m.suspects.left(1, now), None);
        assert!(m.suspects.left(2, now).is_some());
        assert_eq!(stats.suspected.load(Ordering::Relaxed), 1);
        t.forged(2, 100);
        t.flush(&m, SECOND, &stats);
        assert_eq!(
            stats.suspected.load(Ordering::Relaxed),
            1,
            "still the same period"
        );
        assert_eq!(m.verdicts.get(2).forged_packets, 3);
    }
}
