//! `cargo xtask bench`, AYIYA: what the per-packet SHA-1 costs, measured, never asserted.
//!
//! In the kernel-program fixture (one data plane, an AYIYA tunnel and a proto-41 one), for
//! inner IPv6 packets of 64, 576 and 1280 bytes: ns per packet through
//! `BPF_PROG_TEST_RUN` (`repeat: 1`, as the programs rewrite the frame) of AYIYA
//! verify-and-decap and encap-and-sign, of proto-41 decap and encap of the same packets,
//! and of the no-op `xdp_pass`, interleaved in blocks; medians of the block means.
//!
//! The other place AYIYA could run is a userspace worker fed by AF_XDP. Its crypto is the
//! `sha1` crate, which uses the CPU's SHA extensions here: signing and verifying the same
//! packets in userspace is timed too, as the lower bound of that design (the AF_XDP
//! rings, copies and wake-ups come on top and are not built).
//!
//! The section is appended to `$BENCH_APPEND` (docs/BENCHMARKS.md through xtask).
#[path = "../tests/support/mod.rs"]
mod support;

use std::{fmt::Write as _, time::Instant};

use broker_userspace::{ayiya, dataplane::aux::Aux, model::State};
use support::*;

const PASSWORD: &str = "benchmark";
const CLIENT: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::new(198, 51, 100, 80), 40080);
/// Inner IPv6 packet sizes, as the issue names them.
const SIZES: [usize; 3] = [64, 576, 1280];
/// Blocks of each program per size; runs per block.
const BLOCKS: u32 = 40;
const BLOCK: u32 = 250;
/// Userspace sign/verify iterations per size.
const USER_ITERS: u32 = 200_000;

struct Row {
    size: usize,
    noop: f64,
    ayiya_decap: f64,
    ayiya_encap: f64,
    p41_decap: f64,
    p41_encap: f64,
    user_sign: f64,
    user_verify: f64,
}

fn main() {
    broker_tests::require_root();
    // The fixture moves this thread into a namespace of its own, which goes with it.
    let mut fx = Fixture::new();
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT), PASSWORD))
        .unwrap();
    let aux = Aux::load().expect("loading the helper programs");
    let key = ayiya_key(PASSWORD);
    let mut rows = Vec::new();
    for size in SIZES {
        let pad = size - 48;
        let payload = vec![0x5a; pad];
        // Built per size: the epoch must stay within 120 s of the PoP's clock.
        let ayiya_decap = from_ayiya_client(
            CLIENT,
            &ayiya_payload(
                link_addr(8, 2),
                unix_now(),
                1,
                41,
                &udp6(link_addr(8, 2), INET_HOST, 64, &payload),
                &key,
            ),
        );
        let ayiya_encap = from_internet(&udp6(INET_HOST, link_addr(8, 2), 64, &payload));
        let p41_decap = from_client(
            client_v4(1),
            &udp6(link_addr(1, 2), INET_HOST, 64, &payload),
        );
        let p41_encap = from_internet(&udp6(INET_HOST, link_addr(1, 2), 64, &payload));
        let runs: [(&[u8], u32, u32); 4] = [
            (&ayiya_decap, fx.eth4, XDP_REDIRECT),
            (&ayiya_encap, fx.eth6, XDP_REDIRECT),
            (&p41_decap, fx.eth4, XDP_REDIRECT),
            (&p41_encap, fx.eth6, XDP_REDIRECT),
        ];
        let mut means: [Vec<f64>; 5] = Default::default();
        for _ in 0..BLOCKS {
            let mut total = 0u128;
            for _ in 0..BLOCK {
                total += aux
                    .test_run_pass(&ayiya_decap, 1)
                    .unwrap()
                    .duration
                    .as_nanos();
            }
            means[0].push(total as f64 / f64::from(BLOCK));
            for (i, (frame, ingress, action)) in runs.iter().enumerate() {
                let mut total = 0u128;
                for _ in 0..BLOCK {
                    let r = fx.dp.test_run(frame, *ingress, 1).unwrap();
                    assert_eq!(r.action, *action, "run {i} of the {size}-byte set");
                    total += r.duration.as_nanos();
                }
                means[i + 1].push(total as f64 / f64::from(BLOCK));
            }
        }
        let (user_sign, user_verify) = userspace(size, &key);
        let row = Row {
            size,
            noop: median(&means[0]),
            ayiya_decap: median(&means[1]),
            ayiya_encap: median(&means[2]),
            p41_decap: median(&means[3]),
            p41_encap: median(&means[4]),
            user_sign,
            user_verify,
        };
        eprintln!(
            "AYIYA {size} B: no-op {:.0}, AYIYA decap {:.0} encap {:.0}, proto-41 decap {:.0} encap {:.0}, userspace sign {:.0} verify {:.0} (ns)",
            row.noop, row.ayiya_decap, row.ayiya_encap, row.p41_decap, row.p41_encap, row.user_sign, row.user_verify
        );
        rows.push(row);
    }
    // Nothing else is using the fixture's maps: let the data plane go before reporting.
    fx.dp.detach_all();
    let report = report(&rows);
    println!("{report}");
    if let Some(path) = std::env::var_os("BENCH_APPEND") {
        let mut old = std::fs::read_to_string(&path).unwrap_or_default();
        old.push_str(&report);
        std::fs::write(&path, old).expect("appending the report");
        eprintln!("appended to {}", path.to_string_lossy());
    }
}

/// ns per packet to sign (header and key in place, hash, signature written) and to verify
/// an AYIYA packet carrying a `size`-byte inner packet, with the `sha1` crate.
fn userspace(size: usize, key: &[u8; 20]) -> (f64, f64) {
    let mut pkt = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &vec![0x5a; size], key);
    let t = Instant::now();
    for i in 0..USER_ITERS {
        pkt[4] = i as u8; // a different packet each time, as the epoch would make it
        ayiya::sign(&mut pkt, key);
    }
    let sign = t.elapsed().as_nanos() as f64 / f64::from(USER_ITERS);
    let t = Instant::now();
    let mut ok = 0u32;
    for _ in 0..USER_ITERS {
        ok += u32::from(ayiya::verify(std::hint::black_box(&pkt), key));
    }
    let verify = t.elapsed().as_nanos() as f64 / f64::from(USER_ITERS);
    assert_eq!(ok, USER_ITERS, "the signed packet verifies");
    (sign, verify)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[s.len() / 2]
}

fn report(rows: &[Row]) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## AYIYA: SHA-1 per packet (tests/benches/ayiya.rs, {date})\n\n\
`BPF_PROG_TEST_RUN` of the data plane, `repeat: 1`, {BLOCKS} interleaved blocks of {BLOCK} runs \
per program and size, median of the block means, one core. \"Size\" is the inner IPv6 packet; \
the SHA-1 covers it and the 44-byte AYIYA header. The whole path is timed: parse, lookup, \
epoch, SHA-1 (a `bpf_loop` over 64-byte blocks), decapsulation or encapsulation, FIB lookup \
and redirect. proto-41 of the same packets, and the no-op program, ran in the same blocks.\n"
    );
    let _ = writeln!(
        s,
        "| size | no-op | AYIYA verify+decap | AYIYA encap+sign | proto-41 decap | proto-41 encap | AYIYA / proto-41 (decap, encap) | target | userspace sign | userspace verify |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let target = if r.size <= 64 { 500.0 } else { 2000.0 };
        let target_txt = match r.size {
            64 => format!(
                "≤ 500 ns: {}",
                verdict(r.ayiya_decap.max(r.ayiya_encap) <= target)
            ),
            1280 => format!(
                "≤ 2000 ns: {}",
                verdict(r.ayiya_decap.max(r.ayiya_encap) <= target)
            ),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} B | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.1}x, {:.1}x | {} | {:.0} ns | {:.0} ns |",
            r.size,
            r.noop,
            r.ayiya_decap,
            r.ayiya_encap,
            r.p41_decap,
            r.p41_encap,
            r.ayiya_decap / r.p41_decap,
            r.ayiya_encap / r.p41_encap,
            target_txt,
            r.user_sign,
            r.user_verify,
        );
    }
    let _ = writeln!(
        s,
        "\nUserspace sign and verify are the `sha1` crate (SHA extensions) alone: an AF_XDP \
worker would add its ring handling, a copy or two and wake-ups, and hand the packet back to \
XDP or the stack. Command: `sudo -E cargo xtask bench`."
    );
    s
}
