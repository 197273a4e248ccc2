//! `cargo xtask bench`: what the data plane costs, measured, never asserted.
//!
//! 1. ns per packet of decap and encap through `BPF_PROG_TEST_RUN`, next to the no-op
//!    `xdp_pass` timed the same way, with 1, 10k and 1M tunnels in the maps. Every run has
//!    `repeat: 1` (the programs rewrite the frame, so a repeated run would see its own
//!    output) and picks a random installed tunnel, so large tables are not all in cache.
//! 2. Packets per second forwarded through veths by the decap path, next to a no-op
//!    `XDP_REDIRECT` over the same veths, in the same run, driven by a live-frames
//!    generator (`bench_gen`).
//!
//! Results go to `$BENCH_OUT` (docs/BENCHMARKS.md through xtask) and stdout.
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::{Duration, Instant},
};

use broker_common::consts::{program_names, GEN_FRAME_LEN};
use broker_tests::netns::{self, NetNs};
use broker_userspace::{
    config::AttachMode,
    dataplane::{self, aux::Aux, Dataplane},
    model::{Kind, State, TunnelSpec},
};
use support::*;

/// Test runs per measurement point and path.
const SAMPLES: usize = 20_000;
/// Frames the generator sends per forwarding run.
const GEN_FRAMES: u32 = 2_000_000;
/// Forwarding runs per program (alternating), the median is reported.
const GEN_ROUNDS: usize = 5;

fn main() {
    broker_tests::require_root();
    let max: u32 = std::env::var("BENCH_MAX_TUNNELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let scales: Vec<u32> = [1, 10_000, max].into_iter().filter(|n| *n <= max).collect();

    let per_packet = std::thread::spawn(move || per_packet(&scales))
        .join()
        .expect("per-packet benchmark");
    let forwarding = forwarding();
    let report = report(&per_packet, &forwarding);
    println!("{report}");
    if let Some(path) = std::env::var_os("BENCH_OUT") {
        std::fs::write(&path, &report).expect("writing the report");
        eprintln!("wrote {}", path.to_string_lossy());
    }
}

/// Tunnel `k` (1-based) of the benchmark. A million distinct IPv4 endpoints do not fit the
/// documentation ranges; these come from 240.0.0.0/4 (reserved, never routed), and they
/// exist only as map contents: test runs transmit nothing.
fn bench_spec(k: u32) -> TunnelSpec {
    TunnelSpec {
        id: k,
        kind: Kind::Proto41,
        state: State::Up,
        remote_v4: bench_v4(k),
        link_prefix: format!("2001:db8:{:x}:{:x}::/64", k >> 16, k & 0xffff)
            .parse()
            .unwrap(),
        routed_prefixes: vec![],
        mtu: 1480,
    }
}

fn bench_v4(k: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xf000_0000 | k)
}

fn bench_client6(k: u32) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        (k >> 16) as u16,
        (k & 0xffff) as u16,
        0,
        0,
        0,
        2,
    )
}

struct Point {
    tunnels: u32,
    noop_ns: f64,
    decap_ns: f64,
    encap_ns: f64,
}

/// A small xorshift, so the tunnel sequence is the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}

fn per_packet(scales: &[u32]) -> Vec<Point> {
    let max = *scales.iter().max().unwrap();
    let mut fx = Fixture::network(max.next_power_of_two(), (max * 2).next_power_of_two());
    let aux = Aux::load().expect("loading the helper programs");
    let mut installed = 0;
    let mut points = Vec::new();
    for &n in scales {
        let t = Instant::now();
        while installed < n {
            installed += 1;
            fx.dp.upsert(&bench_spec(installed), POP_V4).unwrap();
        }
        eprintln!("{n} tunnels installed ({:.1} s)", t.elapsed().as_secs_f64());
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut noop, mut decap, mut encap) = (0u128, 0u128, 0u128);
        for i in 0..SAMPLES {
            let k = 1 + rng.below(n);
            let d = from_client(
                bench_v4(k),
                &udp6(bench_client6(k), INET_HOST, 64, &[0; 32]),
            );
            let e = from_internet(&udp6(INET_HOST, bench_client6(k), 64, &[0; 32]));
            // Interleaved, so drift on a shared machine hits all three alike.
            let r = fx.dp.test_run(&d, fx.eth4, 1).unwrap();
            assert_eq!(r.action, XDP_REDIRECT, "decap of tunnel {k} at sample {i}");
            decap += r.duration.as_nanos();
            let r = fx.dp.test_run(&e, fx.eth6, 1).unwrap();
            assert_eq!(r.action, XDP_REDIRECT, "encap into tunnel {k}");
            encap += r.duration.as_nanos();
            noop += aux.test_run_pass(&d, 1).unwrap().duration.as_nanos();
        }
        let mean = |x: u128| x as f64 / SAMPLES as f64;
        let p = Point {
            tunnels: n,
            noop_ns: mean(noop),
            decap_ns: mean(decap),
            encap_ns: mean(encap),
        };
        eprintln!(
            "{n} tunnels: noop {:.1} ns, decap {:.1} ns, encap {:.1} ns",
            p.noop_ns, p.decap_ns, p.encap_ns
        );
        points.push(p);
    }
    points
}

struct Forwarding {
    noop_pps: Vec<f64>,
    broker_pps: Vec<f64>,
    decapsulated: u64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn sh_in(ns: &NetNs, args: &[&str]) {
    ns.exec(args[0], &args[1..]).expect("bench network command");
}

/// gen ─veth─ pop(eth4 → eth6) ─veth─ sink: proto-41 frames from the generator are
/// decapsulated by the broker program on eth4 and redirected to eth6, where the sink
/// counts them; then the same with `bench_redirect` on eth4.
fn forwarding() -> Forwarding {
    let prefix = format!("bb{}", std::process::id());
    let gen = NetNs::create(&format!("{prefix}-gen")).unwrap();
    let pop = NetNs::create(&format!("{prefix}-pop")).unwrap();
    let sink = NetNs::create(&format!("{prefix}-sink")).unwrap();
    let link = |a: &NetNs, an: &str, b: &NetNs, bn: &str| {
        netns::run(Command::new("ip").args([
            "link",
            "add",
            an,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            bn,
            "netns",
            b.name(),
        ]))
        .unwrap();
    };
    link(&gen, "eth0", &pop, "eth4");
    link(&pop, "eth6", &sink, "eth0");
    for (ns, dev) in [
        (&gen, "eth0"),
        (&pop, "eth4"),
        (&pop, "eth6"),
        (&sink, "eth0"),
    ] {
        sh_in(ns, &["ip", "link", "set", dev, "up"]);
    }
    sh_in(&pop, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    sh_in(&pop, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    sh_in(&pop, &["ip", "addr", "add", "192.0.2.1/24", "dev", "eth4"]);
    sh_in(
        &pop,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:ffff::1/64",
            "dev",
            "eth6",
            "nodad",
        ],
    );
    let sink_mac = mac_of(&sink, "eth0");
    sh_in(
        &pop,
        &[
            "ip",
            "-6",
            "neigh",
            "replace",
            "2001:db8:ffff::2",
            "lladdr",
            &sink_mac,
            "dev",
            "eth6",
            "nud",
            "permanent",
        ],
    );
    let pop4_mac = mac_of(&pop, "eth4");
    let gen_mac = mac_of(&gen, "eth0");

    let mut aux = Aux::load().unwrap();
    let sink_if = netns::in_ns(&sink.path(), || support::ifindex("eth0")).unwrap();
    let gen_if = netns::in_ns(&gen.path(), || support::ifindex("eth0")).unwrap();
    let (eth4, eth6) = netns::in_ns(&pop.path(), || {
        (support::ifindex("eth4"), support::ifindex("eth6"))
    })
    .unwrap();
    // The sink's link must be attached from inside its namespace; so must the others.
    netns::in_ns(&sink.path(), || {
        aux.attach(program_names::BENCH_SINK, sink_if).unwrap()
    })
    .unwrap();
    // The generator's veth needs an XDP program too, for the frames the pop would send back.
    netns::in_ns(&gen.path(), || {
        aux.attach(program_names::PASS, gen_if).unwrap()
    })
    .unwrap();
    aux.set_redirect_target(eth6).unwrap();

    let mut dp = netns::in_ns(&pop.path(), || {
        let mut dp = Dataplane::load(&dataplane::Options {
            max_tunnels: 1024,
            max_prefixes: 1024,
            ..dataplane::Options::new("bench")
        })
        .unwrap();
        dp.set_pop(POP_V4).unwrap();
        dp.upsert(&spec(1), POP_V4).unwrap();
        dp
    })
    .unwrap();

    // 128 bytes: Ethernet, IPv4, IPv6, UDP and 46 bytes of payload.
    let inner = udp6(
        link_addr(1, 2),
        INET_HOST,
        64,
        &[0x5a; GEN_FRAME_LEN - 14 - 20 - 48],
    );
    let mut frame = from_client(client_v4(1), &inner);
    frame[0..6].copy_from_slice(&parse_mac(&pop4_mac));
    frame[6..12].copy_from_slice(&parse_mac(&gen_mac));
    let frame: [u8; GEN_FRAME_LEN] = frame.try_into().expect("128-byte frame");

    let mut run = |aux: &mut Aux| -> f64 {
        let before = aux.sink_count().unwrap().packets;
        let t = Instant::now();
        netns::in_ns(&gen.path(), || {
            aux.generate(&frame, gen_if, GEN_FRAMES, 64).unwrap()
        })
        .unwrap();
        // Let the last batch drain from the veth rings.
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = t.elapsed().as_secs_f64() - 0.05;
        let got = aux.sink_count().unwrap().packets - before;
        got as f64 / elapsed
    };

    let mut f = Forwarding {
        noop_pps: Vec::new(),
        broker_pps: Vec::new(),
        decapsulated: 0,
    };
    let before = dp.global_counters().unwrap();
    for round in 0..GEN_ROUNDS {
        let link = netns::in_ns(&pop.path(), || {
            aux.attach(program_names::BENCH_REDIRECT, eth4).unwrap()
        })
        .unwrap();
        let noop = run(&mut aux);
        aux.detach(program_names::BENCH_REDIRECT, link).unwrap();

        netns::in_ns(&pop.path(), || {
            dp.attach("eth4", AttachMode::Driver).unwrap()
        })
        .unwrap();
        let broker = run(&mut aux);
        dp.detach_all();
        eprintln!(
            "forwarding round {}: no-op redirect {:.2} Mpps, broker decap {:.2} Mpps",
            round + 1,
            noop / 1e6,
            broker / 1e6
        );
        f.noop_pps.push(noop);
        f.broker_pps.push(broker);
    }
    f.decapsulated = dp
        .global_counters()
        .unwrap()
        .since(&before)
        .event(broker_common::stats::Event::Decap)
        .packets;
    drop(dp);
    drop(aux);
    f
}

fn mac_of(ns: &NetNs, dev: &str) -> String {
    let out = ns.ip(&["-br", "link", "show", dev]).unwrap();
    out.split_whitespace()
        .nth(2)
        .expect("MAC in `ip -br link`")
        .to_string()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn report(points: &[Point], f: &Forwarding) -> String {
    let kernel = netns::run(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let date =
        netns::run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Produced by `cargo xtask bench` (tests/benches/dataplane.rs) on {}, kernel {}, {} ({} CPUs). \
The machine is a shared 2-vCPU VM: absolute numbers move between runs, so every comparison \
below is between figures measured in the same run, interleaved.\n",
        date.trim(),
        kernel.trim(),
        cpu,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(s, "## Per packet, BPF_PROG_TEST_RUN\n");
    let _ = writeln!(
        s,
        "Mean kernel-reported time of one run (`repeat: 1`; the programs rewrite the frame) over \
{SAMPLES} runs per path and table size, each run on a randomly chosen installed tunnel. \
The no-op is `xdp_pass` on the same frames. Decap: 114-byte proto-41 frame from the tunnel's \
client, FIB lookup, redirect. Encap: 94-byte IPv6 frame to the tunnel's `::2`, FIB lookup, \
redirect.\n"
    );
    let _ = writeln!(
        s,
        "| tunnels | no-op ns | decap ns | decap above no-op | encap ns | encap above no-op |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|");
    for p in points {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.tunnels,
            p.noop_ns,
            p.decap_ns,
            p.decap_ns - p.noop_ns,
            p.encap_ns,
            p.encap_ns - p.noop_ns
        );
    }
    let first = &points[0];
    let last = &points[points.len() - 1];
    let _ = writeln!(s, "\nTargets (issue 2):\n");
    let worst_decap = points
        .iter()
        .map(|p| p.decap_ns - p.noop_ns)
        .fold(f64::MIN, f64::max);
    let worst_encap = points
        .iter()
        .map(|p| p.encap_ns - p.noop_ns)
        .fold(f64::MIN, f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let _ = writeln!(
        s,
        "- each path at most 60 ns above the no-op: decap at most {worst_decap:.1} ns above, encap at most {worst_encap:.1} ns above ({}).",
        verdict(worst_decap <= 60.0 && worst_encap <= 60.0)
    );
    let rd = last.decap_ns / first.decap_ns;
    let re = last.encap_ns / first.encap_ns;
    let _ = writeln!(
        s,
        "- at {} tunnels at most 1.5x the cost at {}: decap {rd:.2}x, encap {re:.2}x ({}).",
        last.tunnels,
        first.tunnels,
        verdict(rd <= 1.5 && re <= 1.5)
    );
    let noop = median(&f.noop_pps);
    let broker = median(&f.broker_pps);
    let _ = writeln!(s, "\n## Forwarding through veths, live frames\n");
    let _ = writeln!(
        s,
        "`bench_gen` sends {GEN_FRAMES} frames of {GEN_FRAME_LEN} bytes per run (BPF_PROG_TEST_RUN \
with live frames) from a generator namespace into the PoP's `eth4`; the program there sends \
them out of `eth6` to a sink namespace whose XDP program counts and drops them. Rate = frames \
counted at the sink / wall time of the run. {GEN_ROUNDS} rounds, alternating the two programs; \
medians.\n"
    );
    let _ = writeln!(s, "| program on eth4 | median Mpps | all rounds (Mpps) |");
    let _ = writeln!(s, "|---|---:|---|");
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.2}", x / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "| no-op `bench_redirect` | {:.2} | {} |",
        noop / 1e6,
        fmt(&f.noop_pps)
    );
    let _ = writeln!(
        s,
        "| `broker_xdp` (decap, FIB, redirect) | {:.2} | {} |",
        broker / 1e6,
        fmt(&f.broker_pps)
    );
    let _ = writeln!(
        s,
        "\nThe broker forwarded at {:.0}% of the no-op redirect rate (target: at least 60%, {}). \
Its counters recorded {} decapsulations over the broker rounds.",
        100.0 * broker / noop,
        verdict(broker / noop >= 0.6),
        f.decapsulated
    );
    let _ = writeln!(
        s,
        "\n## Reproduce\n\n```\ncargo xtask bench            # as root; about two minutes\n```"
    );
    s
}
