//! Many PoPs on one PostgreSQL store (issue 13, docs/MULTI-POP.md):
//! - **Propagation.** Two PoPs (the multi-PoP lab, BIRD included). Through PoP 1's API,
//!   `POPS_CHANGES` (default 1000) tunnels are created for PoP 2 at 100 a second; PoP 2's
//!   kernel routes are watched (`ip -6 monitor route`, which PoP 2 writes right after its
//!   maps) and each tunnel's delay is taken from the API's answer (the commit is before
//!   it) to its route at PoP 2. p50, p99 and the largest.
//! - **A PoP's start among a million tunnels.** One PostgreSQL store holding
//!   `POPS_TOTAL` (default 1,000,000) tunnels over 10 PoPs, `POPS_MINE` (default 100,000)
//!   of them the measured PoP's; seeded in SQL, not through the API. The PoP starts cold
//!   (its data plane detached: empty maps) and warm (maps pinned), `POPS_ROUNDS` (default
//!   2) times each; from its start until the API is ready, which is after every tunnel is
//!   in the maps.
//!
//! The section goes to `$BENCH_APPEND`.
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use broker_tests::{
    lab::{pops, Lab, API_PORT, LAB_TOKEN, POP_NATIVE_V6, POP_V4},
    postgres::{conninfo_of, Cluster},
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

fn main() {
    broker_tests::require_root();
    let changes = env("POPS_CHANGES", 1000);
    let total = env("POPS_TOTAL", 1_000_000);
    let mine = env("POPS_MINE", 100_000);
    let rounds = env("POPS_ROUNDS", 2);
    let propagation = propagation(changes);
    let starts = starts(total, mine, rounds);
    broker_tests::append_report(&report(changes, &propagation, total, mine, &starts));
}

struct Propagation {
    /// Milliseconds from each API answer to the route at PoP 2, sorted.
    after_answer: Vec<f64>,
    /// The same from each request's sending.
    after_request: Vec<f64>,
    missing: usize,
    rate: f64,
}

fn percentile(v: &[f64], p: usize) -> f64 {
    v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

fn propagation(n: usize) -> Propagation {
    let dir = tempfile::tempdir().unwrap();
    let pg = Cluster::start().expect("a PostgreSQL cluster");
    let prefix = format!("bpp{}", std::process::id() % 10000);
    let lab = pops::start(&prefix, 1, 0, dir.path(), 2, &pg).expect("a lab of two PoPs");
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut monitor = lab
        .pop_ns(2)
        .unwrap()
        .cmd("ip")
        .args(["-6", "monitor", "route"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ip monitor");
    let out = monitor.stdout.take().unwrap();
    let seen_w = seen.clone();
    let watcher = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let now = Instant::now();
            if line.starts_with("Deleted") {
                continue;
            }
            // `blackhole 2001:db8:21::/64 proto 200 …`: the route's prefix is the first word
            // with a length.
            if let Some(p) = line.split_whitespace().find(|w| w.contains('/')) {
                seen_w.lock().unwrap().entry(p.to_string()).or_insert(now);
            }
        }
    });
    // Let the monitor start before the first change.
    std::thread::sleep(Duration::from_millis(500));
    let every = Duration::from_millis(10);
    let start = Instant::now();
    let mut made = Vec::with_capacity(n);
    for k in 0..n {
        let due = start + every * k as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let a = std::net::Ipv4Addr::from(0xc612_1000u32 + k as u32);
        let body = format!(r#"{{"kind":"proto41","remote_ipv4":"{a}","pop":"pop2"}}"#);
        let sent = Instant::now();
        let (status, text) = lab
            .admin_request("POST", "/api/v1/tunnels", Some(&body))
            .expect("an answer");
        let answered = Instant::now();
        assert_eq!(status, 201, "{text}");
        let t: serde_json::Value = serde_json::from_str(&text).unwrap();
        // As `ip monitor` prints it too (RFC 5952 text).
        let link = t["link_prefix"].as_str().unwrap().to_string();
        made.push((link, sent, answered));
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let _ = monitor.kill();
    let _ = monitor.wait();
    let _ = watcher.join();
    let seen = seen.lock().unwrap();
    let (mut after_answer, mut after_request, mut missing) = (Vec::new(), Vec::new(), 0);
    for (link, sent, answered) in &made {
        match seen.get(link) {
            Some(at) => {
                after_answer.push(at.saturating_duration_since(*answered).as_secs_f64() * 1e3);
                after_request.push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3);
            }
            None => missing += 1,
        }
    }
    after_answer.sort_by(f64::total_cmp);
    after_request.sort_by(f64::total_cmp);
    let p = Propagation {
        after_answer,
        after_request,
        missing,
        rate,
    };
    println!(
        "propagation: {n} changes at {:.0}/s; after the answer p50 {:.1} p99 {:.1} max {:.1} ms; after the request p50 {:.1} p99 {:.1} ms; missing {}",
        p.rate,
        percentile(&p.after_answer, 50),
        percentile(&p.after_answer, 99),
        p.after_answer.last().copied().unwrap_or(f64::NAN),
        percentile(&p.after_request, 50),
        percentile(&p.after_request, 99),
        p.missing
    );
    drop(lab);
    p
}

struct Start {
    cold: bool,
    answered_s: f64,
    ready_s: f64,
    /// `store_ms maps_ms routes_ms` of the start's reconcile, or the ms of reading the
    /// watched tunnels when the maps carried the stamp.
    parts: String,
}

/// The PoP of the start benchmark: the lab's proto-41 side, maps for `mine` v6udpv4
/// tunnels, on PostgreSQL.
fn start_config(lab: &Lab, instance: &str, mine: usize, url: &str, password: &str) -> String {
    let max = (mine + 2048).div_ceil(1024) * 1024;
    let config = format!(
        "instance: {instance}\ninterfaces:\n  - {{ name: eth4, mode: driver }}\n  - {{ name: eth6, mode: driver }}\npop:\n  name: pop1\n  ipv4: {POP_V4}\n  ipv6: {POP_NATIVE_V6}\nstore:\n  path: {}\napi:\n  listen: 0.0.0.0:{API_PORT}\n  admin_token: {LAB_TOKEN}\npools:\n  link: [2001:db8:20::/48]\n  routed: [2001:db8:3000::/36]\n  routed_lengths: [56]\ndataplane:\n  max_tunnels: {max}\n  max_prefixes: {}\n  max_endpoints: {{ proto41: 1024, v4v6: 1024, ayiya: 1024 }}\ntsp: {{}}\ntunnels: []\n",
        lab.dir.join("broker.db").display(),
        max * 2
    );
    lab.on_postgres(&config, url, password).unwrap()
}

/// `total` tunnels over PoPs `pop1`..`pop10`, `mine` of them `pop1`'s: v6udpv4, each
/// with a /64 of its own; in one transaction, the per-row triggers off and their sums
/// written once (census, generations).
fn seed(pg: &Cluster, total: usize, mine: usize) {
    let sql = format!(
        "BEGIN;
        ALTER TABLE tunnels DISABLE TRIGGER USER;
        INSERT INTO pops (name, link_pools, routed_pools, routed_lengths, quarantine_secs)
            SELECT 'pop' || n, '2001:db8:' || to_hex(256 + n) || '::/48', '', '56', 0
            FROM generate_series(2, 10) AS n ON CONFLICT DO NOTHING;
        INSERT INTO tunnels (id, owner, origin, kind, state, remote_v4, remote_port, link_prefix,
                             mtu, password, update_key, update_key_hash, created_at, updated_at, pop)
            SELECT 1000 + k, NULL, 'api', 'v6udpv4', 'up',
                   '198.18.' || ((k / 250) % 256) || '.' || (k % 250 + 1),
                   1024 + k / 64000,
                   '2001:db8:' || to_hex(20480 + k / 65536) || ':' || to_hex(k % 65536) || '::/64',
                   1280, 'pw' || k, '', 'x', 1, 1,
                   CASE WHEN k < {mine} THEN 'pop1' ELSE 'pop' || (2 + k % 9) END
            FROM generate_series(0, {total} - 1) AS k;
        DELETE FROM census;
        INSERT INTO census (pop, kind, state, n)
            SELECT COALESCE(pop, ''), kind, state, COUNT(*) FROM tunnels GROUP BY 1, 2, 3;
        UPDATE pops SET generation = generation + 1;
        INSERT INTO counters (name, value) VALUES ('next_tunnel_id', 1000 + {total})
            ON CONFLICT (name) DO UPDATE SET value = excluded.value;
        ALTER TABLE tunnels ENABLE TRIGGER USER;
        COMMIT;
        ANALYZE;"
    );
    let t = Instant::now();
    pg.psql("broker", &sql).expect("seeding");
    println!(
        "seeded {total} tunnels in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn starts(total: usize, mine: usize, rounds: usize) -> Vec<Start> {
    let dir = tempfile::tempdir().unwrap();
    let pg = Cluster::start().expect("a PostgreSQL cluster");
    pg.create_database("broker").unwrap();
    let prefix = format!("bps{}", std::process::id() % 10000);
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    lab.wait_limit = Duration::from_secs(600);
    let config = start_config(
        &lab,
        &prefix,
        mine,
        &conninfo_of(&[&pg], "broker"),
        pg.password(),
    );
    // A first start makes the schema and registers the PoP; the tunnels come after.
    lab.start_broker(&prefix, &config).expect("broker run");
    assert!(lab.broker().stop(Duration::from_secs(60)), "clean stop");
    seed(&pg, total, mine);
    let mut out = Vec::new();
    for _ in 0..rounds {
        for cold in [true, false] {
            out.push(start(&mut lab, &prefix, cold));
        }
    }
    let t = Instant::now();
    let clean = lab.broker().stop(Duration::from_secs(120));
    println!("final stop clean={clean} after {:?}", t.elapsed());
    println!(
        "{}",
        lab.broker_log()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    out
}

/// Starts the PoP (after detaching its data plane when `cold`) and times it to `/readyz`.
fn start(lab: &mut Lab, instance: &str, cold: bool) -> Start {
    if lab.broker().running() {
        assert!(lab.broker().stop(Duration::from_secs(120)), "clean stop");
    }
    if cold {
        broker_tests::lab::detach(instance).expect("detach");
    }
    let t = Instant::now();
    lab.spawn_broker_unwaited(&[]).expect("start");
    let (answered_s, ready_s) = lab.ready_after(t);
    let log = lab.broker_log();
    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("-")
            .to_string()
    };
    let last = |what: &str| log.lines().rev().find(|l| l.contains(what)).unwrap_or("");
    let reconciled = last("reconciled tunnels=");
    let tunnels = field(reconciled, "tunnels");
    let parts = if cold {
        format!(
            "tunnels {tunnels}: store {} ms, maps {} ms, routes {} ms",
            field(reconciled, "store_ms"),
            field(reconciled, "maps_ms"),
            field(reconciled, "routes_ms")
        )
    } else {
        let skipped = last("not reconciled");
        if skipped.is_empty() {
            format!("reconciled (tunnels {tunnels})")
        } else {
            format!("stamped: watched read in {} ms", field(skipped, "ms"))
        }
    };
    let s = Start {
        cold,
        answered_s,
        ready_s,
        parts,
    };
    println!(
        "{} start: ready after {:.2} s ({})",
        if cold { "cold" } else { "warm" },
        s.ready_s,
        s.parts
    );
    s
}

fn report(changes: usize, p: &Propagation, total: usize, mine: usize, starts: &[Start]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Many PoPs on one PostgreSQL store (`tests/benches/pops.rs`)\n"
    );
    let _ = writeln!(
        s,
        "Change propagation: {changes} tunnels created through PoP 1's API for PoP 2 at {:.0} a second; the delay from each API answer (the commit is before it) to the tunnel's route at PoP 2, which PoP 2 writes right after its maps.\n",
        p.rate
    );
    let _ = writeln!(s, "| from | p50 ms | p99 ms | largest ms | not seen |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (what, v) in [
        ("the API's answer", &p.after_answer),
        ("the request", &p.after_request),
    ] {
        let _ = writeln!(
            s,
            "| {what} | {:.1} | {:.1} | {:.1} | {} |",
            percentile(v, 50),
            percentile(v, 99),
            v.last().copied().unwrap_or(f64::NAN),
            p.missing
        );
    }
    let _ = writeln!(
        s,
        "\nA PoP's start among {total} tunnels over 10 PoPs, {mine} of them its own; from its start until the API is ready (every tunnel in the maps):\n"
    );
    let _ = writeln!(s, "| start | API answers, s | ready, s | parts |");
    let _ = writeln!(s, "|---|---|---|---|");
    for st in starts {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {:.2} | {} |",
            if st.cold {
                "cold (maps empty)"
            } else {
                "warm (maps pinned)"
            },
            st.answered_s,
            st.ready_s,
            st.parts
        );
    }
    s
}
