//! The store's two engines side by side (issue 13, docs/MULTI-POP.md): the same lab PoP on
//! SQLite and on PostgreSQL (a throwaway cluster on a Unix socket, as in the tests), in
//! alternating rounds. Each round starts a new broker on an empty store and measures:
//! - `STORES_TUNNELS` (default 2000) single API creations, one request each;
//! - 300 GETs of one tunnel;
//! - a listing page of 1000;
//! - a restart (SIGTERM, then ready again).
//!
//! Bounded: a few thousand requests a round, `STORES_ROUNDS` (default 3) rounds per
//! engine. The section goes to `$BENCH_APPEND`.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use broker_tests::{
    lab::Lab,
    postgres::{conninfo_of, Cluster},
};

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "SQLite",
            Engine::Postgres => "PostgreSQL",
        }
    }
}

struct Round {
    engine: Engine,
    create_rate: f64,
    get_p50_ms: f64,
    get_p99_ms: f64,
    list_ms: f64,
    restart_s: f64,
}

fn main() {
    broker_tests::require_root();
    let n: usize = env("STORES_TUNNELS", 2000);
    let rounds: usize = env("STORES_ROUNDS", 3);
    let mut results = Vec::new();
    for round in 0..rounds {
        for engine in [Engine::Sqlite, Engine::Postgres] {
            let r = measure(engine, n, round);
            println!(
                "{} round {round}: {:.0} creations/s, GET p50 {:.2} p99 {:.2} ms, list {:.1} ms, restart {:.2} s",
                engine.name(),
                r.create_rate,
                r.get_p50_ms,
                r.get_p99_ms,
                r.list_ms,
                r.restart_s
            );
            results.push(r);
        }
    }
    broker_tests::append_report(&report(&results, n));
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

fn measure(engine: Engine, n: usize, round: usize) -> Round {
    let dir = tempfile::tempdir().unwrap();
    // Declared before the lab, so stopped after the broker.
    let pg = (engine == Engine::Postgres).then(|| {
        let c = Cluster::start().expect("a PostgreSQL cluster");
        c.create_database("broker").unwrap();
        c
    });
    let prefix = format!("bs{}{round}{}", std::process::id(), engine.name().len());
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    let mut config = lab.config_yaml(&prefix);
    if let Some(c) = &pg {
        config = lab
            .on_postgres(&config, &conninfo_of(&[c], "broker"), c.password())
            .unwrap();
    }
    lab.start_broker(&prefix, &config).expect("broker run");

    let t = Instant::now();
    for k in 0..n {
        // Proto-41 endpoints from 198.18.0.0/15, one per tunnel.
        let a = std::net::Ipv4Addr::from(0xc612_0100u32 + k as u32);
        let body = format!(r#"{{"kind":"proto41","remote_ipv4":"{a}"}}"#);
        let (status, text) = http(&lab, "POST", "/api/v1/tunnels", Some(&body));
        assert_eq!(status, 201, "create: {text}");
    }
    let create_rate = n as f64 / t.elapsed().as_secs_f64();
    let mut gets: Vec<f64> = (0..300u64)
        .map(|i| {
            // Id 1 is the lab's static tunnel; the created ones follow.
            let id = 2 + (i * 7919) % n as u64;
            let t = Instant::now();
            let (status, _) = http(&lab, "GET", &format!("/api/v1/tunnels/{id}"), None);
            assert_eq!(status, 200, "GET tunnel {id}");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    gets.sort_by(f64::total_cmp);
    let t = Instant::now();
    let (status, _) = http(&lab, "GET", "/api/v1/tunnels?limit=1000", None);
    assert_eq!(status, 200);
    let list_ms = t.elapsed().as_secs_f64() * 1e3;

    assert!(lab.broker().stop(Duration::from_secs(60)), "clean stop");
    let t = Instant::now();
    lab.spawn_broker_unwaited(&[]).expect("restart");
    let (_, restart_s) = lab.ready_after(t);
    Round {
        engine,
        create_rate,
        get_p50_ms: gets[gets.len() / 2],
        get_p99_ms: gets[gets.len() * 99 / 100],
        list_ms,
        restart_s,
    }
}

fn http(lab: &Lab, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    lab.admin_request(method, path, body)
        .unwrap_or_else(|| panic!("{method} {path}: no answer"))
}

fn report(results: &[Round], n: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## The store's engines side by side\n\n`cargo xtask bench` (tests/benches/stores.rs; `STORES_TUNNELS`, `STORES_ROUNDS`), release build. The lab's PoP on SQLite (its file) and on PostgreSQL (a throwaway cluster of Debian's package on a Unix socket, `fsync=off` as in the tests), in alternating rounds, each a new broker on an empty store: {n} single creations through the API (proto-41, one request each), 300 GETs of one tunnel, a listing page of 1000, a restart (SIGTERM, then `/readyz`). Compare within the run.\n"
    );
    let _ = writeln!(
        s,
        "| engine | round | creations /s | GET p50 / p99 ms | list page ms | restart to ready s |\n|---|---:|---:|---:|---:|---:|"
    );
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} / {:.2} | {:.1} | {:.2} |",
            r.engine.name(),
            i / 2 + 1,
            r.create_rate,
            r.get_p50_ms,
            r.get_p99_ms,
            r.list_ms,
            r.restart_s
        );
    }
    let median = |e: Engine| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|r| r.engine == e)
            .map(|r| r.create_rate)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (sq, pg) = (median(Engine::Sqlite), median(Engine::Postgres));
    let _ = writeln!(
        s,
        "\nCreations through the API, medians: SQLite {sq:.0}/s, PostgreSQL {pg:.0}/s ({:.2}x SQLite's).",
        pg / sq
    );
    s
}
