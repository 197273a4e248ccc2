//! `cargo xtask bench`, second part: TSP sessions per second one core of the broker
//! completes. The lab's `broker run` (its runtime is single-threaded) serves sessions a
//! client in namespace `t3` opens one after the other over UDP, each from a new socket as
//! gogoc does: version, authentication (anonymous, or DIGEST-MD5 with a user), tunnel
//! request, offer, accept. Anonymous sessions from one address replace each other's
//! tunnel (delete and create: store, maps, routes); a user's update the user's tunnel.
//!
//! The section is appended to `$BENCH_APPEND` (docs/BENCHMARKS.md through xtask).
use std::{fmt::Write as _, time::Instant};

use broker_tests::lab::{Lab, POP_V4};
use broker_userspace::{
    client::tsp::{negotiate, Options, TransportChoice, UdpExchange},
    tsp::xml::RequestedType,
};

/// Sessions per mechanism (bounded: a load test stays small).
const SESSIONS: u32 = 300;

fn main() {
    broker_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab::start(&format!("bs{}", std::process::id()), 1, dir.path(), "")
        .expect("starting the lab");
    lab.add_tsp_hosts().expect("adding the TSP hosts");
    lab.cli(&["user", "add", "bench", "--password", "bench-password"])
        .expect("creating the user");

    let mut rows = Vec::new();
    for (name, user) in [
        ("anonymous", None),
        ("DIGEST-MD5", Some(("bench", "bench-password"))),
    ] {
        let (took, failed) = lab.host("t3").within(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let o = Options {
                    server: POP_V4.to_string(),
                    user: user.map(|(u, _)| u.to_string()),
                    password: user.map(|(_, p)| p.to_string()),
                    tunnel_type: RequestedType::V6AnyV4,
                    router: None,
                    transport: TransportChoice::Udp,
                    name: "unused".into(),
                    keepalive: None,
                    default_route: false,
                };
                let server = std::net::SocketAddr::new(POP_V4.into(), 3653);
                let mut failed = 0;
                let t = Instant::now();
                for i in 0..SESSIONS {
                    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
                    socket.connect(server).await.unwrap();
                    let local = socket.local_addr().unwrap().ip();
                    let r =
                        negotiate(&mut UdpExchange::new(&socket), &o, local, &i.to_string()).await;
                    if let Err(e) = r {
                        eprintln!("session {i}: {e}");
                        failed += 1;
                    }
                }
                (t.elapsed(), failed)
            })
        });
        let rate = f64::from(SESSIONS) / took.as_secs_f64();
        eprintln!("TSP {name}: {SESSIONS} sessions in {took:?}, {rate:.0}/s, {failed} failed");
        rows.push((name, took, rate, failed));
    }

    let mut s = String::new();
    let _ = writeln!(s, "\n## TSP sessions per second\n");
    let _ = writeln!(
        s,
        "tests/benches/tsp.rs: {SESSIONS} sessions per mechanism, one after the other, over UDP, each \
from a new socket (as gogoc opens one per attempt), by a client in the lab's `t3` namespace \
against the lab's `broker run`, whose runtime is single-threaded: one core. A session is version, \
authentication, tunnel request, offer and accept; anonymous sessions from one address replace \
each other's tunnel (delete and create: store, maps and routes), a user's update the user's \
tunnel. Wall time includes the client's own work and the veths in between.\n"
    );
    let _ = writeln!(
        s,
        "| mechanism | sessions | failed | seconds | sessions/s | ms/session |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, took, rate, failed) in &rows {
        let _ = writeln!(
            s,
            "| {name} | {SESSIONS} | {failed} | {:.2} | {rate:.0} | {:.2} |",
            took.as_secs_f64(),
            1000.0 * took.as_secs_f64() / f64::from(SESSIONS)
        );
    }
    println!("{s}");
    broker_tests::append_report(&s);
}
