//! Times a hitless restart (load and adopt, reconcile) and the counter reads at
//! `BATCH_TUNNELS` tunnels, with batch reads and one lookup per entry, on maps pinned like
//! a running broker's. By hand, as root: `BATCH_TUNNELS=1000000 cargo bench -p broker-tests
//! --bench batch`. Prints; asserts only that each read saw every tunnel.
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use broker_userspace::{
    broker::Projection,
    dataplane::{Dataplane, MapReads, PinnedCounters},
};
use support::batch::*;

/// Times the hitless restart and the counter reads at `BATCH_TUNNELS` tunnels (default
/// 100,000; the maps sized to the next power of two, or `BATCH_MAX_TUNNELS`), in both read
/// modes (`BATCH_MODES=batch` or `per-element`: one), `BATCH_ROUNDS` times each (default
/// 2). With `BATCH_INSTANCE` it uses (and keeps)
/// that instance's pins, installing the tunnels only when they are not there yet: another
/// build (the one before batch reads) can then be timed on the same maps.
fn main() {
    std::thread::spawn(|| {
        broker_tests::require_root();
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        let n = env("BATCH_TUNNELS").unwrap_or(100_000);
        let max = env("BATCH_MAX_TUNNELS").unwrap_or(n.next_power_of_two());
        let rounds = env("BATCH_ROUNDS").unwrap_or(2);
        let kept = std::env::var("BATCH_INSTANCE").ok();
        let instance = kept
            .clone()
            .unwrap_or_else(|| format!("measure-batch-{}", std::process::id()));
        let _pins = kept.is_none().then(|| Pins(instance.clone()));
        let pop = big_pop();
        let specs = specs(n);
        let mut dp = Dataplane::load(&options(&instance, max, MapReads::Batch)).unwrap();
        if dp.tunnel_ids().len() != n as usize {
            let t = Instant::now();
            dp.reconcile(&specs, &pop).unwrap();
            println!(
                "{n} tunnels (max_tunnels {max}) installed in {}",
                secs(t.elapsed())
            );
        }
        drop(dp);
        let modes: &[MapReads] = match std::env::var("BATCH_MODES").as_deref() {
            Ok("batch") => &[MapReads::Batch],
            Ok("per-element") => &[MapReads::PerElement],
            _ => &[MapReads::Batch, MapReads::PerElement],
        };
        for &reads in modes {
            for round in 0..rounds {
                let t = Instant::now();
                let mut dp = Dataplane::load(&options(&instance, max, reads)).unwrap();
                let adopt = t.elapsed();
                let t = Instant::now();
                let r = dp.reconcile(&specs, &pop).unwrap();
                let reconcile = t.elapsed();
                assert_eq!(r.unchanged, n as usize);
                let t = Instant::now();
                let c = dp.all_tunnel_counters().unwrap();
                let counters = t.elapsed();
                assert_eq!(c.len(), n as usize);
                let t = Instant::now();
                let p = Projection::all_counters(&dp).unwrap();
                let projection = t.elapsed();
                assert_eq!(p, c);
                let t = Instant::now();
                let p = PinnedCounters::open(&instance)
                    .unwrap()
                    .with_map_reads(reads)
                    .tunnels()
                    .unwrap();
                let pinned = t.elapsed();
                assert_eq!(p.len(), n as usize);
                // A watcher's read: every slot, then a hundred of them.
                let all: Vec<u32> = slots(&dp).into_iter().map(|(_, s)| s).collect();
                let reader = dp.stats_reader();
                let t = Instant::now();
                reader.read(&all).unwrap();
                let read_all = t.elapsed();
                let some: Vec<u32> = all.iter().step_by(all.len() / 100 + 1).copied().collect();
                let t = Instant::now();
                reader.read(&some).unwrap();
                let read_some = t.elapsed();
                println!(
                    "{n} tunnels, {reads:?}, round {round}: load+adopt {}, reconcile {}, \
                     all_tunnel_counters {}, Projection::all_counters {}, \
                     PinnedCounters::tunnels {}, StatsReader::read all {}, {} slots {}",
                    secs(adopt),
                    secs(reconcile),
                    secs(counters),
                    secs(projection),
                    secs(pinned),
                    secs(read_all),
                    some.len(),
                    secs(read_some)
                );
            }
        }
        // The program's load and verification alone: an empty instance.
        let empty = format!("measure-empty-{}", std::process::id());
        let _empty_pins = Pins(empty.clone());
        let t = Instant::now();
        drop(Dataplane::load(&options(&empty, max, MapReads::Batch)).unwrap());
        println!(
            "loading an empty instance of max_tunnels {max}: {}",
            secs(t.elapsed())
        );
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}
