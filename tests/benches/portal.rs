//! The portal (docs/PORTAL.md):
//! - **What the traffic history costs.** `History` with `PORTAL_TUNNELS` (default 100,000)
//!   tunnels, every one with traffic in every minute for 6 hours (its window): resident
//!   memory before and after, and the time of one sample of all of them. Then the same
//!   tunnels idle (only what was last read is kept).
//! - **Pages.** The lab's broker (debug or release, `BROKER_BIN`) with `PORTAL_PAGE_TUNNELS`
//!   (default 10,000) tunnels imported through the API, one of them a user's: the user's
//!   tunnel list, the tunnel's page, and the operator's list of 100 filtered by kind, each
//!   requested `PORTAL_REQUESTS` (default 200) times one after the other with a session,
//!   from a client namespace. p50 and p99.
//!
//! The section goes to `$BENCH_APPEND`.
use std::{fmt::Write as _, time::Instant};

use broker_common::maps::TunnelStats;
use broker_tests::lab::{Lab, LAB_OPERATOR, POP_V4};
use broker_userspace::history::{History, SAMPLE_SECS};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

struct HistoryCost {
    tunnels: usize,
    busy_bytes: u64,
    idle_bytes: u64,
    sample_ms: f64,
}

fn history(tunnels: usize) -> HistoryCost {
    let t0 = 1_800_000_000u64;
    let mut counters: Vec<(u32, TunnelStats)> = (1..=tunnels as u32)
        .map(|id| (id, TunnelStats::default()))
        .collect();
    // Idle first, on a fresh heap (memory freed later would be reused unseen).
    let before_idle = resident();
    let mut idle = History::new(6);
    idle.sample(t0, &counters);
    idle.sample(t0 + SAMPLE_SECS, &counters);
    let idle_bytes = resident().saturating_sub(before_idle);
    let before = resident();
    let mut h = History::new(6);
    let samples = 6 * 3600 / SAMPLE_SECS;
    let mut took = Vec::new();
    for i in 0..=samples {
        for (_, c) in counters.iter_mut() {
            c.from_client_packets += 10;
            c.from_client_bytes += 10_000;
            c.to_client_bytes += 20_000;
        }
        let start = Instant::now();
        h.sample(t0 + i * SAMPLE_SECS, &counters);
        took.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let sample_ms = percentile(&mut took, 50);
    let (with_traffic, steps) = h.footprint();
    assert_eq!(with_traffic, tunnels);
    assert!(steps >= tunnels * 72, "a full window: {steps}");
    let busy_bytes = resident().saturating_sub(before);
    // Six more hours without traffic: the steps age out, what was last read stays.
    for i in 1..=samples {
        h.sample(t0 + (samples + i) * SAMPLE_SECS, &counters);
    }
    assert_eq!(h.footprint().0, 0);
    drop((h, idle));
    HistoryCost {
        tunnels,
        busy_bytes,
        idle_bytes,
        sample_ms,
    }
}

struct Pages {
    tunnels: usize,
    rows: Vec<(&'static str, f64, f64)>,
}

fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn pages(tunnels: usize, requests: usize) -> Pages {
    broker_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("bb{}", std::process::id());
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    let config = lab.config_yaml(&prefix);
    let config = format!(
        "{}tunnels: []\n",
        config.split("tunnels:\n").next().unwrap()
    );
    let config = config.replace(
        "quarantine_secs: 60\n",
        "quarantine_secs: 60\ndataplane:\n  max_tunnels: 65536\n",
    );
    lab.start_broker(&prefix, &config).expect("broker run");
    for user in ["ann", LAB_OPERATOR] {
        let body = format!(r#"{{"name":"{user}","password":"password-of-{user}"}}"#);
        let (s, _) = lab
            .admin_request("POST", "/api/v1/users", Some(&body))
            .unwrap();
        assert_eq!(s, 201);
    }
    // One of ann's, the rest nobody's, from 198.18.0.0/15 (many endpoints).
    for chunk in (0..tunnels).collect::<Vec<_>>().chunks(5000) {
        let items: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let a = std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)) + i as u32,
                );
                let owner = if i == 0 { r#","owner":"ann""# } else { "" };
                format!(r#"{{"remote_ipv4":"{a}"{owner}}}"#)
            })
            .collect();
        let (s, _) = lab
            .admin_request(
                "POST",
                "/api/v1/tunnels/import",
                Some(&format!("[{}]", items.join(","))),
            )
            .unwrap();
        assert_eq!(s, 200);
    }
    let ns = &lab.clients[0].ns;
    let base = format!("http://{POP_V4}:{}", broker_tests::lab::API_PORT);
    let rows = ns.within(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent();
        let login = |user: &str| -> String {
            let page = agent.get(format!("{base}/login")).call().unwrap();
            let csrf_cookie = page
                .headers()
                .get_all("set-cookie")
                .iter()
                .find_map(|v| v.to_str().ok()?.split(';').next().map(String::from))
                .unwrap();
            let csrf = csrf_cookie.split_once('=').unwrap().1.to_string();
            let res = agent
                .post(format!("{base}/login"))
                .header("Cookie", &csrf_cookie)
                .send_form([
                    ("csrf", csrf.as_str()),
                    ("name", user),
                    ("password", &format!("password-of-{user}")),
                ])
                .unwrap();
            assert_eq!(res.status(), 303, "login of {user}");
            res.headers()
                .get_all("set-cookie")
                .iter()
                .find_map(|v| {
                    let kv = v.to_str().ok()?.split(';').next()?;
                    kv.starts_with("broker_session=").then(|| kv.to_string())
                })
                .unwrap()
        };
        let ann = login("ann");
        let operator = login(LAB_OPERATOR);
        let mut rows = Vec::new();
        for (what, path, cookie) in [
            ("a user's tunnel list", "/tunnels".to_string(), &ann),
            ("a tunnel's page", "/tunnels/1".to_string(), &ann),
            (
                "the operator's list (100 of kind proto41)",
                "/operator/tunnels?kind=proto41".to_string(),
                &operator,
            ),
        ] {
            let mut ms = Vec::with_capacity(requests);
            for _ in 0..requests {
                let start = Instant::now();
                let mut res = agent
                    .get(format!("{base}{path}"))
                    .header("Cookie", cookie)
                    .call()
                    .unwrap();
                let body = res.body_mut().read_to_string().unwrap();
                ms.push(start.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(res.status(), 200, "{path}: {body}");
            }
            rows.push((what, percentile(&mut ms, 50), percentile(&mut ms, 99)));
        }
        rows
    });
    Pages { tunnels, rows }
}

fn main() {
    let h = history(env("PORTAL_TUNNELS", 100_000));
    let p = pages(
        env("PORTAL_PAGE_TUNNELS", 10_000),
        env("PORTAL_REQUESTS", 200),
    );
    let mut s = String::new();
    let _ = writeln!(s, "\n## The portal (`tests/benches/portal.rs`)\n");
    let _ = writeln!(
        s,
        "`cargo xtask bench` (`PORTAL_TUNNELS`, `PORTAL_PAGE_TUNNELS`, `PORTAL_REQUESTS`), run on {} (`BROKER_BIN=target/release/broker BENCH_APPEND=<file> cargo bench --locked -p broker-tests --bench portal`, as root).\n",
        String::from_utf8_lossy(
            &std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%d at %H:%M UTC"])
                .output()
                .expect("date")
                .stdout
        )
        .trim()
    );
    let mb = |b: u64| b as f64 / 1e6;
    let _ = writeln!(
        s,
        "Traffic history (`history.rs`), {} tunnels, each with traffic in every minute of the 6-hour window: {:.1} MB resident ({:.0} bytes a tunnel); all idle, only what was last read: {:.1} MB ({:.0} bytes a tunnel). One sample of all of them (the median of the run's 361): {:.1} ms (the controller takes one a minute, under the history's lock, not the broker's).\n",
        h.tunnels,
        mb(h.busy_bytes),
        h.busy_bytes as f64 / h.tunnels as f64,
        mb(h.idle_bytes),
        h.idle_bytes as f64 / h.tunnels as f64,
        h.sample_ms
    );
    let _ = writeln!(
        s,
        "Pages, the lab's PoP with {} tunnels, one request at a time from a client namespace with a session:\n\n| page | p50 | p99 |\n|---|---|---|",
        p.tunnels
    );
    for (what, p50, p99) in &p.rows {
        let _ = writeln!(s, "| {what} | {p50:.1} ms | {p99:.1} ms |");
    }
    print!("{s}");
    broker_tests::append_report(&s);
}
