//! `AYIYA_BENCH=flood`: what a flood of forged AYIYA packets from a client's own address
//! and port costs good traffic (issue 11): that client's own (tunnel 8) and another
//! client's (tunnel 9), whose packets share the AF_XDP worker's receive queue.
//!
//! The fixture's data plane on its veths, two AYIYA tunnels. A sender writes signed
//! packets of both tunnels into the ISP side (AF_PACKET, `GOOD_PPS` each, a sequence
//! number and the send time in each); a receiver on the internet side takes what comes
//! out and measures delivery and latency (one clock, one host). Meanwhile a live-frames
//! generator floods forged packets of tunnel 8 (right identity, epoch, address and port;
//! another key) as fast as it can, or at `AYIYA_FLOOD_PPS`. Phases, each
//! `PHASE` long, in rounds that alternate them:
//!
//! - `quiet`: no flood, the worker as configured by default;
//! - `before`: flood, the worker never marks a tunnel suspect (suspect period 0): every
//!   forged packet goes to the worker, as before this defence;
//! - `after`: flood, the default (XDP verifies tunnel 8 itself for a second after the
//!   worker found a forged packet, again and again while the flood lasts);
//! - `xdp`: flood, no worker (`ayiya.engine: xdp`), for reference.
//!
//! Never asserted: printed, and appended with the rest of the section.
use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use broker_common::{consts::program_names, stats::DropReason};
use broker_userspace::{
    config,
    dataplane::{aux::Aux, WorkerOptions},
    model::State,
};

use crate::{support::*, CLIENT};

const PASSWORD_B: &str = "benchmark-other";
const CLIENT_B: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::new(198, 51, 100, 90), 40090);
const FORGER: [u8; 20] = [9; 20];
/// Good packets per second and tunnel.
const GOOD_PPS: u32 = 500;
const PHASE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;
/// Frames per generator call, unpaced: a call sets up its page pool first, which costs
/// as much as a few thousand frames.
const CHUNK: u32 = 65_536;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Quiet,
    Before,
    After,
    Xdp,
}

impl Phase {
    const ALL: [Self; 4] = [Self::Quiet, Self::Before, Self::After, Self::Xdp];

    fn name(self) -> &'static str {
        match self {
            Self::Quiet => "quiet",
            Self::Before => "before",
            Self::After => "after",
            Self::Xdp => "xdp",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Quiet => "no flood, AF_XDP worker",
            Self::Before => "flood, AF_XDP worker, no suspect tunnels (as before)",
            Self::After => "flood, AF_XDP worker, suspect tunnels verified in XDP (now)",
            Self::Xdp => "flood, no worker (`engine: xdp`)",
        }
    }
}

/// One tunnel's good traffic in one phase.
#[derive(Default, Clone)]
struct Good {
    sent: u64,
    /// One-way latency of each packet that came out, µs.
    latencies: Vec<f64>,
}

/// One phase of one round.
#[derive(Default, Clone)]
struct Measured {
    good: [Good; 2],
    /// Forged frames the generator sent, and the PoP rejected (worker, XDP), per second.
    offered: f64,
    by_worker: f64,
    by_xdp: f64,
    /// Frames the worker's ring could not take, per second.
    ring_dropped: f64,
    /// Times the worker marked tunnel 8 suspect.
    suspected: u64,
}

/// Runs the phases; the report section.
/// The data plane is attached to eth4 and eth6 already.
pub fn run(fx: &mut Fixture, key: &[u8; 20], size: usize) -> String {
    fx.dp
        .upsert(&ayiya_spec(9, State::Up, Some(CLIENT_B), PASSWORD_B))
        .unwrap();
    let key_b = ayiya_key(PASSWORD_B);
    let mut aux = Aux::load().expect("loading the helper programs");
    let (peer4, peer6) = (ifindex("peer4"), ifindex("peer6"));
    aux.attach(program_names::PASS, peer4).unwrap();
    aux.attach(program_names::PASS, peer6).unwrap();
    // What comes out of eth6 ends at peer6: the receiver's AF_PACKET socket sees it before
    // the ingress hook drops it. Otherwise the fixture's namespace (forwarding on) routes
    // it back out of eth6, to peer6 again, until its hop limit runs out: 63 copies.
    broker_tests::netns::run(std::process::Command::new("nft").args([
        "add table netdev flood_sink ; \
         add chain netdev flood_sink in { type filter hook ingress device peer6 priority 0 ; } ; \
         add rule netdev flood_sink in drop",
    ]))
    .expect("nft: a drop at peer6's ingress");
    let rate: u64 = std::env::var("AYIYA_FLOOD_PPS")
        .ok()
        .map(|v| v.parse().expect("AYIYA_FLOOD_PPS: packets per second"))
        .unwrap_or(0);
    let mut all: Vec<Vec<Measured>> = vec![Vec::new(); Phase::ALL.len()];
    for round in 0..ROUNDS {
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            let m = phase_run(fx, phase, key, &key_b, size, rate, (peer4, peer6));
            eprintln!(
                "flood round {round} {}: offered {:.0}/s, rejected by the worker {:.0}/s, by XDP {:.0}/s, ring dropped {:.0}/s; tunnel 8 {}/{} p50 {:.0} µs p99 {:.0} µs; tunnel 9 {}/{} p50 {:.0} µs p99 {:.0} µs",
                phase.name(),
                m.offered,
                m.by_worker,
                m.by_xdp,
                m.ring_dropped,
                m.good[0].latencies.len(),
                m.good[0].sent,
                pct(&m.good[0].latencies, 50.0),
                pct(&m.good[0].latencies, 99.0),
                m.good[1].latencies.len(),
                m.good[1].sent,
                pct(&m.good[1].latencies, 50.0),
                pct(&m.good[1].latencies, 99.0),
            );
            all[i].push(m);
            // Queues drain, a suspect mark ends, before the next phase.
            std::thread::sleep(Duration::from_millis(1200));
        }
    }
    report(&all, size, rate)
}

#[allow(clippy::too_many_arguments)]
fn phase_run(
    fx: &mut Fixture,
    phase: Phase,
    key: &[u8; 20],
    key_b: &[u8; 20],
    size: usize,
    rate: u64,
    (peer4, peer6): (u32, u32),
) -> Measured {
    let ifaces = ["eth4".to_string(), "eth6".to_string()];
    let worker = match phase {
        Phase::Xdp => None,
        Phase::Before => Some(WorkerOptions {
            suspect: Duration::ZERO,
            ..WorkerOptions::new(config::DEFAULT_AF_XDP_MIN_BYTES)
        }),
        Phase::Quiet | Phase::After => Some(WorkerOptions::new(config::DEFAULT_AF_XDP_MIN_BYTES)),
    }
    .map(|o| fx.dp.start_ayiya_worker_with(&ifaces, o).unwrap());
    let stats = worker.as_ref().map(|w| w.stats());
    let worker_count = |f: fn(&broker_userspace::dataplane::WorkerStats) -> &AtomicU64| {
        stats.as_ref().map_or(0, |s| f(s).load(Ordering::Relaxed))
    };
    let before = fx.snapshot();
    let (w_bad0, w_ring0, w_sus0) = (
        worker_count(|s| &s.bad_signature),
        worker_count(|s| &s.ring_dropped),
        worker_count(|s| &s.suspected),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();
    let received: Arc<Mutex<[Vec<f64>; 2]>> = Arc::default();
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || receive(peer6, base, &stop, &received))
    };
    let flooder = (phase != Phase::Quiet).then(|| {
        let stop = stop.clone();
        // Built now: the epoch must be within 120 s of the PoP's clock.
        let forged = good_or_forged(CLIENT, 8, size, 0, 0, &FORGER);
        std::thread::spawn(move || flood(&forged, peer4, rate, &stop))
    });
    let sent = send(peer4, base, size, key, key_b);
    stop.store(true, Ordering::Relaxed);
    let (offered, flood_secs) = flooder.map_or((0, 1.0), |f| f.join().unwrap());
    // What is still in flight comes out within the receiver's last 100 ms wait.
    std::thread::sleep(Duration::from_millis(200));
    receiver.join().unwrap();
    let secs = PHASE.as_secs_f64();
    let after = fx.snapshot();
    let rejected = after
        .global
        .since(&before.global)
        .dropped(DropReason::BadSignature)
        .packets;
    let by_worker = worker_count(|s| &s.bad_signature).saturating_sub(w_bad0);
    let m = Measured {
        good: {
            let r = received.lock().unwrap();
            [
                Good {
                    sent: sent[0],
                    latencies: r[0].clone(),
                },
                Good {
                    sent: sent[1],
                    latencies: r[1].clone(),
                },
            ]
        },
        offered: offered as f64 / flood_secs,
        by_worker: by_worker as f64 / secs,
        // The worker counts its outcome before its verdicts reach the map: never below 0.
        by_xdp: rejected.saturating_sub(by_worker) as f64 / secs,
        ring_dropped: (worker_count(|s| &s.ring_dropped) - w_ring0) as f64 / secs,
        suspected: worker_count(|s| &s.suspected) - w_sus0,
    };
    if let Some(w) = worker {
        fx.dp.stop_ayiya_worker(w).unwrap();
    }
    m
}

/// An AYIYA frame from `client` through tunnel `id` with an inner UDP packet of `size`
/// bytes whose payload starts with `seq` and `sent_ns`, signed with `key`.
fn good_or_forged(
    client: (std::net::Ipv4Addr, u16),
    id: u32,
    size: usize,
    seq: u64,
    sent_ns: u64,
    key: &[u8; 20],
) -> Vec<u8> {
    let mut payload = vec![0x5a; size - 48];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    let inner = udp6(link_addr(id, 2), INET_HOST, 64, &payload);
    from_ayiya_client(
        client,
        &ayiya_payload(link_addr(id, 2), unix_now(), 1, 41, &inner, key),
    )
}

/// Signed packets of tunnels 8 and 9 in turn, `GOOD_PPS` each, for `PHASE`; how many of
/// each.
fn send(peer4: u32, base: Instant, size: usize, key: &[u8; 20], key_b: &[u8; 20]) -> [u64; 2] {
    let wire = Wire::open(peer4);
    let gap = Duration::from_secs(1) / (2 * GOOD_PPS);
    let mut sent = [0u64; 2];
    let start = Instant::now();
    let mut next = start;
    let mut seq = 0u64;
    while start.elapsed() < PHASE {
        let which = (seq % 2) as usize;
        let (client, id, k) = if which == 0 {
            (CLIENT, 8, key)
        } else {
            (CLIENT_B, 9, key_b)
        };
        let frame = good_or_forged(client, id, size, seq, base.elapsed().as_nanos() as u64, k);
        // A full transmit queue (the flood fills the veth): lost on the way in, like a
        // packet the NIC had no room for.
        if let Err(e) = wire.try_send(&frame) {
            refused(e);
        }
        sent[which] += 1;
        seq += 1;
        next += gap;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

/// Takes what comes out of the internet side until `stop` (and 100 ms more): the one-way
/// latency of each good packet, by tunnel.
fn receive(peer6: u32, base: Instant, stop: &AtomicBool, out: &Mutex<[Vec<f64>; 2]>) {
    let wire = Wire::open(peer6);
    let mut buf = vec![0u8; 2048];
    let (src8, src9) = (link_addr(8, 2).octets(), link_addr(9, 2).octets());
    loop {
        let Some(n) = wire.recv(&mut buf) else {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            continue;
        };
        let now = base.elapsed().as_nanos() as u64;
        let f = &buf[..n];
        // Ethernet, IPv6, UDP, then the sequence number and the send time.
        if n < 14 + 40 + 8 + 16 || f[12..14] != [0x86, 0xdd] {
            continue;
        }
        let which = match &f[22..38] {
            s if s == src8 => 0,
            s if s == src9 => 1,
            _ => continue,
        };
        let at = 14 + 40 + 8 + 8;
        let sent = u64::from_be_bytes(f[at..at + 8].try_into().unwrap());
        out.lock().unwrap()[which].push(now.saturating_sub(sent) as f64 / 1e3);
    }
}

/// Sends `frame` out of `peer4` with live frames until `stop`, `CHUNK` at a time, or at
/// `rate` per second (0: as fast as it goes) a twentieth of a second at a time; how many,
/// in how many seconds.
fn flood(frame: &[u8], peer4: u32, rate: u64, stop: &AtomicBool) -> (u64, f64) {
    let mut aux = Aux::load().expect("the generator");
    let chunk = if rate == 0 {
        CHUNK
    } else {
        (rate / 20).max(64) as u32
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        aux.generate(frame, peer4, chunk, 64).unwrap();
        sent += u64::from(chunk);
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    (sent, start.elapsed().as_secs_f64())
}

/// Reports the first refused send of a run, once.
fn refused(e: std::io::Error) {
    static SEEN: AtomicBool = AtomicBool::new(false);
    if !SEEN.swap(true, Ordering::Relaxed) {
        eprintln!("a good packet not taken by peer4 ({e}); counted as sent and lost");
    }
}

/// The `p`th percentile of `v` (0 when empty).
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn report(all: &[Vec<Measured>], size: usize, rate: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### A forged flood against the AF_XDP worker (issue 11)\n\n\
The fixture's data plane on its veths, two AYIYA tunnels, one receive queue (one worker \
thread per interface). Good traffic: {GOOD_PPS} signed packets per second through each \
tunnel (AF_PACKET into the ISP side, one-way latency measured where they come out, one \
clock), inner packets of {size} B. The flood: forged packets of tunnel 8 from its client's \
own address and port (identity, epoch, everything right but the key), from a live-frames \
generator, {}. {ROUNDS} rounds of {} s per phase, the phases alternating; latencies are \
pooled over the rounds, delivery is the share of the good packets sent that came out \
(every round listed). \"Rejected\" is the PoP's `bad_signature` count per second, by the \
worker and by XDP. This shared 2-vCPU VM runs the generator, the PoP's XDP (in the \
generator's softirq, so hashing in XDP slows the generator: \"offered\" differs between \
phases, compare what was rejected), the worker and both ends of the good traffic: read \
the comparisons within the run.\n",
        if rate == 0 {
            "as fast as it goes".to_string()
        } else {
            format!("{rate} per second")
        },
        PHASE.as_secs()
    );
    let _ = writeln!(
        s,
        "| phase | forged offered | rejected: worker / XDP | worker ring drops | tunnel 8 delivered | tunnel 8 p50 / p99 / max | tunnel 9 delivered | tunnel 9 p50 / p99 / max |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|---|---|");
    for (phase, rounds) in Phase::ALL.into_iter().zip(all) {
        let mean =
            |f: fn(&Measured) -> f64| rounds.iter().map(f).sum::<f64>() / rounds.len() as f64;
        let tunnel = |t: usize| {
            let sent: u64 = rounds.iter().map(|m| m.good[t].sent).sum();
            let got: usize = rounds.iter().map(|m| m.good[t].latencies.len()).sum();
            let each: Vec<String> = rounds
                .iter()
                .map(|m| {
                    format!(
                        "{:.0}",
                        100.0 * m.good[t].latencies.len() as f64 / m.good[t].sent.max(1) as f64
                    )
                })
                .collect();
            let lat: Vec<f64> = rounds
                .iter()
                .flat_map(|m| m.good[t].latencies.iter().copied())
                .collect();
            (
                format!(
                    "{:.1}% ({})",
                    100.0 * got as f64 / sent.max(1) as f64,
                    each.join(", ")
                ),
                format!(
                    "{} / {} / {}",
                    us(pct(&lat, 50.0)),
                    us(pct(&lat, 99.0)),
                    us(lat.iter().copied().fold(0.0, f64::max))
                ),
            )
        };
        let (d8, l8) = tunnel(0);
        let (d9, l9) = tunnel(1);
        let _ = writeln!(
            s,
            "| {} ({}) | {:.0} k/s | {:.1} / {:.0} k/s | {:.1} k/s | {d8} | {l8} | {d9} | {l9} |",
            phase.name(),
            phase.describe(),
            mean(|m| m.offered) / 1e3,
            mean(|m| m.by_worker) / 1e3,
            mean(|m| m.by_xdp) / 1e3,
            mean(|m| m.ring_dropped) / 1e3,
        );
    }
    let suspected: Vec<String> = all[2].iter().map(|m| m.suspected.to_string()).collect();
    let _ = writeln!(
        s,
        "\nTunnel 8 marked suspect per `after` round: {} (once a second while the flood lasts: \
the forged packets queued before the mark, and those of the first batch after each \
second, reach the worker). Command: `AYIYA_BENCH=flood AYIYA_SIZES={size} cargo bench -p \
broker-tests --bench ayiya` as root{}.",
        suspected.join(", "),
        if rate == 0 {
            String::new()
        } else {
            format!(", `AYIYA_FLOOD_PPS={rate}`")
        }
    );
    s
}

/// A latency in µs, as µs or ms.
fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}
