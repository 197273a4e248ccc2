//! Reading the maps a chunk per system call (`BPF_MAP_LOOKUP_BATCH`) at 100,000 tunnels:
//! every batch read equals aya's one-lookup-per-entry read, and a hitless restart (drop
//! the controller's data plane, load it again from the pins, reconcile) finds the same
//! slots and changes nothing. Timings are printed, never asserted.
//!
//! `benches/batch.rs` measures the restart and the counter reads at a size of one's
//! choosing: `BATCH_TUNNELS=1000000 cargo bench -p broker-tests --bench batch`.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv6Addr, SocketAddrV4},
    time::Instant,
};

use broker_common::{
    consts::map_names,
    maps::{Settings, Tunnel, TunnelStats},
};
use broker_userspace::{
    broker::Projection,
    dataplane::{self, Dataplane, LookupEntry, MapReads, PinnedCounters, Reconciled},
    model::{Kind, State, TunnelSpec},
};
use support::{batch::*, *};

fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What the test's traffic should have left in the counters.
#[derive(Default)]
struct Sent {
    /// Spoofed proto-41 packets per tunnel (each a counted drop of the tunnel).
    drops: BTreeMap<u32, u64>,
    /// AYIYA beats per tunnel (each a packet from the client, 0 bytes), from `moved(k)`.
    beats: BTreeMap<u32, u64>,
}

/// Counted traffic on a spread of tunnels, from every online CPU in turn: spoofed
/// proto-41 packets (dropped against their tunnel) and AYIYA beats from a new address
/// (counted from the client, and the tunnel roams there).
fn traffic(dp: &Dataplane, n: u32) -> Sent {
    let mut sent = Sent::default();
    let cpus = online_cpus();
    let mut runs: Vec<(usize, u32, Vec<u8>, bool)> = Vec::new();
    for k in 1..=n {
        let s = spec_of(k);
        if s.state != State::Up {
            continue;
        }
        if s.kind == Kind::Proto41 && k.is_multiple_of(13) {
            let inner = udp6(
                Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 1),
                INET_HOST,
                64,
                &vec![0u8; (k % 200) as usize],
            );
            let frame = from_client(client(k), &inner);
            for j in 0..1 + (k / 13) % 3 {
                runs.push((j as usize, k, frame.clone(), false));
            }
        }
        if s.kind == Kind::Ayiya && k.is_multiple_of(7) && !s.endpoint.is_unspecified() {
            let beat = ayiya_payload(
                s.client_v6().unwrap(),
                unix_now(),
                0,
                59,
                &[],
                &ayiya_key(PASSWORD),
            );
            runs.push((k as usize, k, from_ayiya_client(moved(k), &beat), true));
        }
    }
    for cpu in 0..cpus {
        // Test runs count on the CPU they run on.
        broker_tests::cpu::pin_this_thread(cpu).unwrap();
        for (_, k, frame, beat) in runs.iter().filter(|r| r.0 % cpus == cpu) {
            let out = dp.test_run(frame, 0, 1).expect("test run");
            assert_eq!(out.action, XDP_DROP, "tunnel {k}");
            let count = if *beat {
                &mut sent.beats
            } else {
                &mut sent.drops
            };
            *count.entry(*k).or_default() += 1;
        }
    }
    sent
}

/// Every installed tunnel's counters, one aya lookup each (what the controller did
/// before batch reads).
fn per_element_counters(dp: &Dataplane) -> Vec<(u32, TunnelStats)> {
    dp.tunnel_ids()
        .into_iter()
        .map(|id| (id, dp.tunnel_counters(id).unwrap().unwrap()))
        .collect()
}

/// Lookup entries by map.
fn count_by_map(entries: &[LookupEntry]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for e in entries {
        *m.entry(e.map).or_default() += 1;
    }
    m
}

/// Deletes one lookup entry behind the data plane's back, through its pinned map.
fn forget(dp: &Dataplane, entry: &LookupEntry) {
    fn remove<const N: usize>(map: aya::maps::Map, key: &[u8]) {
        let mut map: aya::maps::HashMap<_, [u8; N], u32> = map.try_into().unwrap();
        map.remove(&key.try_into().unwrap()).unwrap();
    }
    let (_, pin) = dp
        .map_names()
        .into_iter()
        .find(|(name, _)| name == entry.map)
        .unwrap();
    let data = aya::maps::MapData::from_pin(pin.expect("pinned")).unwrap();
    let map = aya::maps::Map::from_map_data(data).unwrap();
    match entry.key.len() {
        4 => remove::<4>(map, &entry.key),
        8 => remove::<8>(map, &entry.key),
        12 => remove::<12>(map, &entry.key),
        16 => remove::<16>(map, &entry.key),
        32 => remove::<32>(map, &entry.key),
        n => panic!("no lookup key has {n} bytes"),
    }
}

/// Asserts that `dp`'s batch reads equal its one-by-one reads, and returns the lookup
/// entries.
fn assert_reads_agree(dp: &mut Dataplane, instance: &str) -> Vec<LookupEntry> {
    dp.set_map_reads(MapReads::Batch);
    let counters = dp.all_tunnel_counters().unwrap();
    let reader = dp.stats_reader();
    let lookups = dp.lookup_entries().unwrap();
    let learnt = dp.learnt_endpoints().unwrap();
    let global = dp.global_counters().unwrap();
    let pinned = PinnedCounters::open(instance).unwrap();
    let pinned_tunnels = pinned.tunnels().unwrap();

    assert_eq!(
        counters,
        per_element_counters(dp),
        "all_tunnel_counters against tunnel_counters"
    );
    let projection = Projection::all_counters(&*dp).unwrap();
    assert_eq!(counters, projection, "against Projection::all_counters");

    dp.set_map_reads(MapReads::PerElement);
    assert_eq!(counters, dp.all_tunnel_counters().unwrap());
    assert_eq!(lookups, dp.lookup_entries().unwrap(), "lookup maps");
    assert_eq!(learnt, dp.learnt_endpoints().unwrap(), "learnt endpoints");
    assert_eq!(global, dp.global_counters().unwrap(), "global counters");
    let per_element = dp.stats_reader();
    dp.set_map_reads(MapReads::Batch);
    let pinned_one_by_one = PinnedCounters::open(instance)
        .unwrap()
        .with_map_reads(MapReads::PerElement);
    assert_eq!(
        pinned_tunnels,
        pinned_one_by_one.tunnels().unwrap(),
        "PinnedCounters::tunnels"
    );
    assert_eq!(global, pinned.global().unwrap(), "PinnedCounters::global");
    // The pinned view (TUNNELS read for id, kind and state) agrees with the slot table.
    assert_eq!(
        pinned_tunnels
            .iter()
            .map(|t| (t.id, t.stats))
            .collect::<Vec<_>>(),
        counters
    );
    for t in &pinned_tunnels {
        let s = spec_of(t.id);
        assert_eq!(t.kind.map(|k| k as u8), Some(s.kind.dataplane() as u8));
    }

    // The reader: all slots, a few, a shuffled sample with repeats; batch or one by one.
    let all: Vec<u32> = slots(dp).into_iter().map(|(_, s)| s).collect();
    let want: Vec<TunnelStats> = counters.iter().map(|(_, s)| *s).collect();
    assert_eq!(reader.read(&all).unwrap(), want, "reader, every slot");
    assert_eq!(
        per_element.read(&all).unwrap(),
        want,
        "one by one, every slot"
    );
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for n in [1, 5, 17, 100, 5_000] {
        let pick: Vec<usize> = (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % all.len() as u64) as usize
            })
            .chain([0, 0])
            .collect();
        let slots: Vec<u32> = pick.iter().map(|&i| all[i]).collect();
        let want: Vec<TunnelStats> = pick.iter().map(|&i| want[i]).collect();
        assert_eq!(reader.read(&slots).unwrap(), want, "reader, {n} slots");
        assert_eq!(per_element.read(&slots).unwrap(), want, "one by one");
    }
    // A dense run of slots: read in one batch pass.
    let dense: Vec<u32> = all
        .iter()
        .copied()
        .filter(|s| (1000..3000).contains(s))
        .collect();
    let want_dense: Vec<TunnelStats> = all
        .iter()
        .zip(&want)
        .filter(|(s, _)| (1000..3000).contains(*s))
        .map(|(_, w)| *w)
        .collect();
    assert_eq!(reader.read(&dense).unwrap(), want_dense);
    assert!(reader.read(&[]).unwrap().is_empty());
    let beyond = reader.read(&[0, 10_000_000]).unwrap_err();
    assert!(
        format!("{beyond:?}").contains("OutOfBounds"),
        "a slot beyond the map is an error: {beyond:?}"
    );
    // From another thread, while this one holds the data plane.
    let r = reader.clone();
    let from_thread = std::thread::spawn(move || r.read(&all).unwrap())
        .join()
        .unwrap();
    assert_eq!(
        from_thread,
        counters.iter().map(|(_, s)| *s).collect::<Vec<_>>()
    );
    lookups
}

/// Asserts what the traffic left: exact per-tunnel counts summed over the CPUs it ran
/// on, and the roamed endpoints.
fn assert_traffic_counted(dp: &Dataplane, sent: &Sent) {
    let counters: BTreeMap<u32, TunnelStats> =
        dp.all_tunnel_counters().unwrap().into_iter().collect();
    let mut touched = 0;
    for (id, c) in &counters {
        let drops = sent.drops.get(id).copied().unwrap_or(0);
        let beats = sent.beats.get(id).copied().unwrap_or(0);
        assert_eq!(c.drop_packets, drops, "tunnel {id}: drops");
        assert_eq!(c.from_client_packets, beats, "tunnel {id}: beats");
        assert_eq!(c.from_client_bytes, 0, "tunnel {id}: beats carry no bytes");
        assert_eq!(c.to_client_packets, 0, "tunnel {id}");
        touched += usize::from(drops + beats > 0);
        if drops > 0 {
            // Each the same frame: the bytes are a multiple of the count.
            assert_eq!(c.drop_bytes % drops, 0, "tunnel {id}");
            assert!(c.drop_bytes > 0);
        }
    }
    assert!(touched > 1000, "traffic on {touched} tunnels only");
    let learnt: BTreeSet<(u32, SocketAddrV4)> =
        dp.learnt_endpoints().unwrap().into_iter().collect();
    for id in sent.beats.keys() {
        let (a, p) = moved(*id);
        assert!(
            learnt.contains(&(*id, SocketAddrV4::new(a, p))),
            "tunnel {id} roamed"
        );
    }
}

/// Lookup entries the specs imply, by map.
fn expected_lookups(specs: &[TunnelSpec]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    let mut add = |map: &'static str, n: u64| *m.entry(map).or_default() += n;
    for s in specs {
        match s.kind {
            Kind::Proto41 | Kind::Heartbeat if !s.endpoint.is_unspecified() => {
                add("P41_ENDPOINTS", 1)
            }
            Kind::V6Udp4 => add("UDP_ENDPOINTS", 1),
            Kind::Ayiya => add("AYIYA_IDS", 1),
            Kind::V4In6 => {
                add("V6_ENDPOINTS", 1);
                add("V4_ROUTES", 1);
            }
            _ => {}
        }
        add("PREFIXES", s.prefixes().count() as u64);
    }
    m
}

#[test]
fn xdp_batch_reads_and_a_hitless_restart_at_100k_tunnels() {
    std::thread::spawn(|| {
        broker_tests::require_root();
        const N: u32 = 100_000;
        const MAX: u32 = 131_072;
        let instance = format!("test-batch-{}", std::process::id());
        let _pins = Pins(instance.clone());
        let pop = big_pop();
        let specs = specs(N);

        let mut dp = Dataplane::load(&options(&instance, MAX, MapReads::Batch)).unwrap();
        let t = Instant::now();
        let r = dp.reconcile(&specs, &pop).unwrap();
        println!("{N} tunnels installed (reconcile) in {}", secs(t.elapsed()));
        assert_eq!(
            r,
            Reconciled {
                installed: N as usize,
                ..Reconciled::default()
            }
        );
        let sent = traffic(&dp, N);
        assert_traffic_counted(&dp, &sent);
        let lookups = assert_reads_agree(&mut dp, &instance);
        assert_eq!(count_by_map(&lookups), expected_lookups(&specs));
        assert!(
            !dataplane::batch_reads_refused(),
            "this kernel has batch lookups: the batch path must have been the one tested"
        );

        let before_slots = slots(&dp);
        let before_usage = dp.map_usage();
        let before_space = dp.tunnel_space();
        let before_counters = dp.all_tunnel_counters().unwrap();
        let before_learnt = dp.learnt_endpoints().unwrap();
        drop(dp);

        // The hitless restart, reading batches and one by one.
        for reads in [MapReads::Batch, MapReads::PerElement] {
            let t = Instant::now();
            let mut dp = Dataplane::load(&options(&instance, MAX, reads)).unwrap();
            let adopt = t.elapsed();
            assert!(dp.adopted());
            assert_eq!(
                slots(&dp),
                before_slots,
                "{reads:?}: the same slot for every id"
            );
            assert_eq!(dp.map_usage(), before_usage, "{reads:?}");
            assert_eq!(dp.tunnel_space(), before_space, "{reads:?}");
            let t = Instant::now();
            let r = dp.reconcile(&specs, &pop).unwrap();
            let reconcile = t.elapsed();
            println!(
                "restart at {N} tunnels, {reads:?}: load and adopt {}, reconcile {}",
                secs(adopt),
                secs(reconcile)
            );
            assert_eq!(
                r,
                Reconciled {
                    unchanged: N as usize,
                    ..Reconciled::default()
                },
                "{reads:?}: nothing to change"
            );
            dp.set_map_reads(MapReads::PerElement);
            assert_eq!(dp.lookup_entries().unwrap(), lookups, "{reads:?}");
            dp.set_map_reads(MapReads::Batch);
            assert_eq!(
                dp.all_tunnel_counters().unwrap(),
                before_counters,
                "{reads:?}"
            );
            assert_eq!(
                dp.learnt_endpoints().unwrap(),
                before_learnt,
                "{reads:?}: roamed"
            );
        }

        // Changes: a tenth removed, some updated, some new; then nothing to do.
        let mut dp = Dataplane::load(&options(&instance, MAX, MapReads::Batch)).unwrap();
        let mut changed: Vec<TunnelSpec> =
            specs.iter().filter(|s| s.id % 10 != 3).cloned().collect();
        let mut updated = 0;
        for s in changed.iter_mut().filter(|s| s.id % 17 == 0) {
            s.mtu -= 8;
            updated += 1;
        }
        // An AYIYA tunnel that roamed, with a new MTU: updated, and still where it roamed.
        let roamed = *sent.beats.keys().next().unwrap();
        if let Some(s) = changed
            .iter_mut()
            .find(|s| s.id == roamed && s.id % 17 != 0)
        {
            s.mtu = 1400;
            updated += 1;
        }
        changed.extend((N + 1..=N + 100).map(spec_of));
        let removed = specs.len() - specs.iter().filter(|s| s.id % 10 != 3).count();
        let r = dp.reconcile(&changed, &pop).unwrap();
        assert_eq!(
            r,
            Reconciled {
                installed: updated + 100,
                removed,
                unchanged: changed.len() - updated - 100,
                ..Reconciled::default()
            }
        );
        let (a, p) = moved(roamed);
        assert!(dp
            .learnt_endpoints()
            .unwrap()
            .contains(&(roamed, SocketAddrV4::new(a, p))));
        let lookups = assert_reads_agree(&mut dp, &instance);
        assert_eq!(count_by_map(&lookups), expected_lookups(&changed));
        let owned: BTreeSet<u32> = slots(&dp).into_iter().map(|(_, s)| s).collect();
        assert!(lookups.iter().all(|e| owned.contains(&e.slot)));

        // Orphans: another controller adds tunnels the store never hears of (as one killed
        // between the maps and the store would leave), and dies.
        {
            let mut other = Dataplane::load(&options(&instance, MAX, MapReads::Batch)).unwrap();
            for k in [N + 1000, N + 1001] {
                other.upsert(&spec_of(k)).unwrap();
            }
        }
        let r = dp.reconcile(&changed, &pop).unwrap();
        assert_eq!(
            r,
            Reconciled {
                unchanged: changed.len(),
                // Two endpoints, two link /64s and one routed /56.
                orphans: 5,
                ..Reconciled::default()
            }
        );
        assert_eq!(
            count_by_map(&dp.lookup_entries().unwrap()),
            expected_lookups(&changed)
        );

        // Entries missing: a controller killed inside an install (after the tunnel's entry,
        // before its lookups) leaves a tunnel the maps call unchanged. Every entry of a
        // proto-41 tunnel with a routed /56, the v4v6 route of another, the AYIYA id of a
        // third.
        let whole = dp.lookup_entries().unwrap();
        let slot = |id: u32| dp.slot_of(id).unwrap();
        let (p41, v4v6, ayiya) = (slot(20), slot(29), slot(18));
        let lost: Vec<&LookupEntry> = whole
            .iter()
            .filter(|e| {
                e.slot == p41
                    || (e.slot == v4v6 && e.map == map_names::V4_ROUTES)
                    || (e.slot == ayiya && e.map == map_names::AYIYA_IDS)
            })
            .collect();
        assert_eq!(lost.len(), 5, "{lost:?}");
        for e in &lost {
            forget(&dp, e);
        }
        assert_eq!(dp.lookup_entries().unwrap().len(), whole.len() - 5);
        {
            let mut restarted = Dataplane::load(&options(&instance, MAX, MapReads::Batch)).unwrap();
            let r = restarted.reconcile(&changed, &pop).unwrap();
            assert_eq!(
                r,
                Reconciled {
                    unchanged: changed.len(),
                    repaired: 3,
                    // The other controller's two tunnels, whose lookups the sweep above
                    // removed: what a controller killed halfway through a removal leaves.
                    removed: 2,
                    ..Reconciled::default()
                }
            );
            assert_eq!(restarted.lookup_entries().unwrap(), whole);
        }
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// Every slot of a pinned array of `V`, as bytes (`TUNNELS`, `SETTINGS`).
fn pinned_values<V: aya::Pod>(instance: &str, map: &str) -> Vec<Vec<u8>> {
    let data = aya::maps::MapData::from_pin(dataplane::maps_dir(instance).join(map)).unwrap();
    let array: aya::maps::Array<_, V> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    (0..array.len())
        .map(|i| {
            let v = array.get(&i, 0).unwrap();
            // SAFETY: Pod values are plain bytes without padding.
            unsafe { std::slice::from_raw_parts((&v as *const V).cast::<u8>(), size_of::<V>()) }
                .to_vec()
        })
        .collect()
}

#[test]
fn a_bulk_install_writes_what_one_upsert_per_tunnel_writes() {
    std::thread::spawn(|| {
        broker_tests::require_root();
        const N: u32 = 3000;
        let pop = big_pop();
        let specs = specs(N);
        let one = format!("test-bulk1-{}", std::process::id());
        let bulk = format!("test-bulk2-{}", std::process::id());
        let (_p1, _p2) = (Pins(one.clone()), Pins(bulk.clone()));

        let mut a = Dataplane::load(&options(&one, 4096, MapReads::Batch)).unwrap();
        a.set_pop(&pop).unwrap();
        for s in &specs {
            a.upsert(s).unwrap();
        }
        let mut b = Dataplane::load(&options(&bulk, 4096, MapReads::Batch)).unwrap();
        let r = b.reconcile(&specs, &pop).unwrap();
        assert_eq!(r.installed, N as usize);
        assert_eq!(slots(&a), slots(&b), "the same slot for every id");
        assert_eq!(a.lookup_entries().unwrap(), b.lookup_entries().unwrap());
        assert_eq!(a.map_usage(), b.map_usage());
        assert_eq!(a.tunnel_space(), b.tunnel_space());
        assert!(
            pinned_values::<Tunnel>(&one, map_names::TUNNELS)
                == pinned_values::<Tunnel>(&bulk, map_names::TUNNELS),
            "TUNNELS byte for byte"
        );
        // The settings, field by field (their padding is not written), but for the
        // next-hop generation (a reconcile bumps it).
        let settings = |instance: &str| {
            let bytes = pinned_values::<Settings>(instance, map_names::SETTINGS).remove(0);
            // SAFETY: the bytes of a Settings, as the kernel holds them.
            let mut s: Settings = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            s.nexthop_gen = 0;
            s
        };
        assert_eq!(
            settings(&one),
            settings(&bulk),
            "SETTINGS: prefix lengths and space"
        );
        assert_eq!(
            a.all_tunnel_counters().unwrap(),
            b.all_tunnel_counters().unwrap()
        );

        // One that does not fit: those before it are installed whole, its error named.
        let full = format!("test-bulk3-{}", std::process::id());
        let _p3 = Pins(full.clone());
        let mut c = Dataplane::load(&dataplane::Options {
            max_endpoints: broker_userspace::config::MaxEndpoints {
                proto41: Some(2),
                ..Default::default()
            },
            ..options(&full, 64, MapReads::Batch)
        })
        .unwrap();
        let p41: Vec<TunnelSpec> = [1, 2, 3, 4].map(spec_of).to_vec();
        assert!(p41.iter().all(|s| s.kind == Kind::Proto41));
        let e = format!("{:#}", c.reconcile(&p41, &pop).unwrap_err());
        assert!(e.contains("dataplane.max_endpoints.proto41"), "{e}");
        assert_eq!(c.tunnel_ids(), vec![1, 2]);
        assert_eq!(
            count_by_map(&c.lookup_entries().unwrap()),
            expected_lookups(&p41[..2])
        );
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}
