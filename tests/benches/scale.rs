//! `cargo xtask bench`, control plane at scale: one lab `broker run` filled by bulk import
//! to each size of `$SCALE_SIZES` (default 10000,100000,1000000) in turn, and at each:
//! single API creations per second, GET latency, a page of the list, `/metrics`, idle
//! CPU, SIGHUP with nothing changed, a hitless restart (SIGTERM, start, API ready), a cold
//! start (data plane detached first), and memory per tunnel (process, store, maps).
//!
//! Tunnels are v6udpv4 (endpoints 198.18.0.0/15 × 8 ports) and one in a hundred AYIYA,
//! which the liveness watcher watches. The maps are sized for the largest size from the
//! start, so every size runs against the same maps. Bounded: at most a few million
//! requests, each size's steps a few seconds. The section goes to `$BENCH_APPEND`.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use broker_tests::lab::{Lab, API_PORT, LAB_TOKEN, POP_NATIVE_V6, POP_V4};

const IMPORT_BATCH: usize = 5000;

fn main() {
    broker_tests::require_root();
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SCALE_SIZES: numbers"))
        .collect();
    let largest = *sizes.iter().max().expect("a size");
    // Room for the single creations of every size, nothing more: the map memory shown is
    // what a PoP of that size would configure.
    let max_tunnels = (largest + 20_000).div_ceil(1024) * 1024;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sc{}", std::process::id() % 10000);
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("lab");
    lab.wait_limit = Duration::from_secs(600);
    let config = config(&lab, &prefix, max_tunnels);
    lab.start_broker(&prefix, &config).expect("broker");

    let mut rows = Vec::new();
    let mut have = 0usize;
    let mut next = 0u32;
    for &n in &sizes {
        let t = Instant::now();
        let before = have;
        while have < n {
            let k = IMPORT_BATCH.min(n - have);
            let items: Vec<String> = (0..k).map(|_| item(&mut next)).collect();
            let body = format!("[{}]", items.join(","));
            let (status, text) = http(&lab, "POST", "/api/v1/tunnels/import", Some(&body));
            assert_eq!(status, 200, "import: {text}");
            assert!(
                !text.contains("\"error\""),
                "import refused some: {text:.400}"
            );
            have += k;
        }
        let import_rate = (have - before) as f64 / t.elapsed().as_secs_f64();
        eprintln!("{n}: imported at {import_rate:.0}/s");
        let r = measure(&mut lab, n, &mut next, &prefix, import_rate);
        have += r.created;
        eprintln!("{n}: {r:?}");
        rows.push(r);
    }
    drop(lab);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Control plane at scale\n\n`cargo xtask bench` (tests/benches/scale.rs; `SCALE_SIZES` to choose the sizes), {}, release build. One lab PoP filled by `POST /api/v1/tunnels/import` (v6udpv4, one in a hundred AYIYA, watched by the liveness watcher), maps sized for {max_tunnels} tunnels throughout (endpoint maps: v6udpv4 as many, AYIYA {}, proto-41 and v4v6 1024: `dataplane.max_endpoints`), routes in the kernel. Each row is measured at that many tunnels.\n",
        date(),
        ayiya_endpoints(max_tunnels)
    );
    let _ = writeln!(s, "| tunnels | import /s | API creations /s | GET p50 / p99 ms | list page (1000) ms | `/metrics` ms | idle CPU % | SIGHUP, nothing changed, s | hitless restart (SIGTERM) to API ready, s (load+adopt / store / maps / routes, ms) | the same after SIGKILL, s | cold start to API ready, s (same parts) | RSS MB | store MB | maps MB |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} ({}) | {:.2} | {:.2} ({}) | {:.0} | {:.0} | {:.0} |",
            r.tunnels,
            r.import_rate,
            r.create_rate,
            r.get_p50_ms,
            r.get_p99_ms,
            r.list_ms,
            r.metrics_ms,
            r.idle_cpu,
            r.sighup_s,
            r.restart_s,
            join(&r.restart_parts),
            r.killed_s,
            r.cold_s,
            join(&r.cold_parts),
            r.rss_mb,
            r.store_mb,
            r.maps_mb
        );
    }
    if let Some(last) = rows.last() {
        let per = |mb: f64| mb * 1e6 / last.tunnels as f64;
        let _ = writeln!(
            s,
            "\nPer tunnel at {}: process {:.0} B, store {:.0} B, maps {:.0} B (the maps are sized for {max_tunnels}, so per tunnel they shrink as the PoP fills).",
            last.tunnels,
            per(last.rss_mb),
            per(last.store_mb),
            per(last.maps_mb)
        );
    }
    print!("{s}");
    broker_tests::append_report(&s);
}

fn join(parts: &[u64; 4]) -> String {
    parts.map(|p| p.to_string()).join(" / ")
}

fn config(lab: &Lab, instance: &str, max_tunnels: usize) -> String {
    let store = lab.dir.join("broker.db");
    format!(
        "instance: {instance}\ninterfaces:\n  - {{ name: eth4, mode: driver }}\n  - {{ name: eth6, mode: driver }}\npop:\n  ipv4: {POP_V4}\n  ipv6: {POP_NATIVE_V6}\nstore:\n  path: {}\napi:\n  listen: 0.0.0.0:{API_PORT}\n  admin_token: {LAB_TOKEN}\npools:\n  link: [2001:db8:4000::/36]\n  routed: [2001:db8:3000::/36]\n  routed_lengths: [56]\n  quarantine_secs: 60\ndataplane:\n  max_tunnels: {max_tunnels}\n  max_prefixes: {}\n  max_endpoints: {{ proto41: 1024, v4v6: 1024, ayiya: {} }}\ntsp: {{}}\nayiya:\n  port: 5072\ntunnels: []\n",
        store.display(),
        max_tunnels * 2,
        ayiya_endpoints(max_tunnels)
    )
}

/// Room in `AYIYA_IDS` for the one in a hundred tunnels that are AYIYA, twice over; the
/// other kinds the benchmark never creates get the smallest maps.
fn ayiya_endpoints(max_tunnels: usize) -> usize {
    (max_tunnels / 50).div_ceil(1024) * 1024
}

/// The `k`th tunnel to import: v6udpv4 at 198.18.0.0/15 × ports 4000-4007, or AYIYA.
fn item(k: &mut u32) -> String {
    *k += 1;
    if k.is_multiple_of(100) {
        return r#"{"kind":"ayiya"}"#.into();
    }
    let host = *k / 8;
    let a = std::net::Ipv4Addr::from(0xc612_0000u32 + (host % 131_072));
    format!(
        r#"{{"kind":"v6udpv4","remote_ipv4":"{a}","remote_port":{}}}"#,
        4000 + (*k % 8)
    )
}

#[derive(Debug)]
struct Row {
    tunnels: usize,
    created: usize,
    import_rate: f64,
    create_rate: f64,
    get_p50_ms: f64,
    get_p99_ms: f64,
    list_ms: f64,
    metrics_ms: f64,
    idle_cpu: f64,
    sighup_s: f64,
    restart_s: f64,
    /// Load and adoption, store, maps, routes (ms), from the broker's log.
    restart_parts: [u64; 4],
    /// The same after SIGKILL (an idle broker: the last liveness tick stamped the maps).
    killed_s: f64,
    cold_s: f64,
    cold_parts: [u64; 4],
    rss_mb: f64,
    store_mb: f64,
    maps_mb: f64,
}

fn measure(lab: &mut Lab, n: usize, next: &mut u32, instance: &str, import_rate: f64) -> Row {
    // Single creations, one request each, as a portal or script makes them.
    const SINGLE: usize = 500;
    let t = Instant::now();
    for _ in 0..SINGLE {
        let (status, text) = http(lab, "POST", "/api/v1/tunnels", Some(&item(next)));
        assert_eq!(status, 201, "create: {text}");
    }
    let create_rate = SINGLE as f64 / t.elapsed().as_secs_f64();
    let mut gets: Vec<f64> = (0..300u64)
        .map(|i| {
            let id = 2 + (i * 7919) % n as u64;
            let t = Instant::now();
            let (status, _) = http(lab, "GET", &format!("/api/v1/tunnels/{id}"), None);
            assert_eq!(status, 200, "GET tunnel {id}");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    gets.sort_by(f64::total_cmp);
    let timed = |lab: &Lab, path: &str| {
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let (status, _) = http(lab, "GET", path, None);
                assert_eq!(status, 200, "{path}");
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[2]
    };
    let list_ms = timed(lab, &format!("/api/v1/tunnels?limit=1000&after={}", n / 2));
    let metrics_ms = timed(lab, "/metrics");
    let pid = lab.broker().pid().expect("running");
    let idle_cpu = cpu_percent(pid, Duration::from_secs(5));
    let (rss_mb, maps_mb) = memory(pid);
    let store_mb = ["broker.db", "broker.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(lab.dir.join(f)).map_or(0, |m| m.len()))
        .sum::<u64>() as f64
        / 1e6;

    // SIGHUP with the same file: until the reload is logged.
    let seen = lab.broker_log().matches("config reloaded").count();
    let t = Instant::now();
    lab.broker().signal(libc::SIGHUP);
    while lab.broker_log().matches("config reloaded").count() == seen {
        assert!(t.elapsed() < Duration::from_secs(600), "no reload");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sighup_s = t.elapsed().as_secs_f64();

    let restart_s = restart(lab, Stop::Term);
    let restart_parts = parts(&lab.broker_log());
    std::thread::sleep(Duration::from_secs(2));
    let killed_s = restart(lab, Stop::Kill);
    let cold_s = restart(lab, Stop::Detach(instance));
    let cold_parts = parts(&lab.broker_log());
    Row {
        tunnels: n + SINGLE,
        created: SINGLE,
        import_rate,
        create_rate,
        get_p50_ms: gets[gets.len() / 2],
        get_p99_ms: gets[gets.len() * 99 / 100],
        list_ms,
        metrics_ms,
        idle_cpu,
        sighup_s,
        restart_s,
        restart_parts,
        killed_s,
        cold_s,
        cold_parts,
        rss_mb,
        store_mb,
        maps_mb,
    }
}

/// The last start's parts, from the broker's log: `load_ms` of "data plane loaded", and
/// `store_ms`, `maps_ms`, `routes_ms` of "reconciled"; for a start that skipped the
/// reconcile (the maps carried the store's stamp), the `ms` of that line as its store part
/// (the watched tunnels read) and nothing for maps and routes.
fn parts(log: &str) -> [u64; 4] {
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let last = |what: &str| log.lines().rev().find(|l| l.contains(what)).unwrap_or("");
    let (loaded, reconciled) = (last("data plane loaded"), last("reconciled tunnels="));
    let skipped = last("not reconciled");
    if !skipped.is_empty() {
        return [field(loaded, "load_ms"), field(skipped, "ms"), 0, 0];
    }
    [
        field(loaded, "load_ms"),
        field(reconciled, "store_ms"),
        field(reconciled, "maps_ms"),
        field(reconciled, "routes_ms"),
    ]
}

enum Stop<'a> {
    Term,
    Kill,
    /// SIGTERM, then the data plane of this instance detached: a cold start.
    Detach(&'a str),
}

impl Stop<'_> {
    fn name(&self) -> &'static str {
        match self {
            Stop::Term => "SIGTERM",
            Stop::Kill => "SIGKILL",
            Stop::Detach(_) => "detach (cold)",
        }
    }
}

/// Stops `broker run` as `how` says, starts it again and returns the seconds from its
/// start until the API answers `/readyz`.
fn restart(lab: &mut Lab, how: Stop) -> f64 {
    if matches!(how, Stop::Kill) {
        lab.kill_broker();
    } else {
        assert!(lab.broker().stop(Duration::from_secs(120)), "clean stop");
    }
    if let Stop::Detach(instance) = how {
        let out = lab
            .pop
            .cmd(broker_tests::broker_bin().unwrap().to_str().unwrap())
            .args(["dataplane", "detach", "--instance", instance])
            .output()
            .expect("detach");
        assert!(out.status.success(), "detach: {out:?}");
    }
    let t = Instant::now();
    lab.spawn_broker_unwaited(&[]).expect("restart");
    let (answered, took) = lab.ready_after(t);
    println!(
        "start after {}: the API answered after {answered:.3} s, ready after {took:.3} s",
        how.name()
    );
    // The start's own log, with its timestamps: where its time went.
    println!("start after {}:", how.name());
    for line in lab.broker_log().lines() {
        println!("    {line}");
    }
    took
}

/// CPU time of `pid` over `span`, in percent of one core.
fn cpu_percent(pid: u32, span: Duration) -> f64 {
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let a = ticks();
    std::thread::sleep(span);
    (ticks() - a) as f64 / hz / span.as_secs_f64() * 100.0
}

/// The process's resident memory, and the memory of the BPF maps it holds (their
/// `memlock` in fdinfo), in MB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let mut maps = 0u64;
    let mut seen = std::collections::HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if let (Some(id), Some(m)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                maps += m.parse::<u64>().unwrap_or(0);
            }
        }
    }
    (rss_kb / 1e3, maps as f64 / 1e6)
}

fn http(lab: &Lab, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    lab.admin_request(method, path, body)
        .unwrap_or_else(|| panic!("{method} {path}: no answer"))
}

fn date() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("run on {out}")
}
