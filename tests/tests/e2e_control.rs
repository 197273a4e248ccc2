//! The durable control plane in the lab: restarts and crashes of the controller never stop
//! forwarding, a crash at any step of a change leaves store, maps and routes agreeing,
//! `/nic/update` moves a tunnel, metrics pass promtool and count what was sent, the CLI
//! drives the API.
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use base64::Engine as _;

use broker_tests::{
    lab::{Lab, API_PORT, INET6_HOST, LAB_TOKEN, POP_V4},
    netns::NetNs,
};
use serde_json::{json, Value};

fn lab(tag: &str, clients: u32, dir: &tempfile::TempDir) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bc{}{tag}", std::process::id());
    Lab::start(&prefix, clients, dir.path(), "").expect("starting the lab")
}

/// An HTTP request from inside namespace `ns` (`base` like `http://127.0.0.1:8080`);
/// returns the status and the body.
fn http(
    ns: &NetNs,
    method: &str,
    url: String,
    auth: Option<String>,
    body: Option<Value>,
) -> (u16, String) {
    let method = method.to_string();
    ns.within(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        let mut req = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let res = match body {
            Some(b) => agent.run(
                req.header("Content-Type", "application/json")
                    .body(b.to_string())
                    .unwrap(),
            ),
            None => agent.run(req.body(()).unwrap()),
        };
        match res {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        }
    })
}

fn admin() -> Option<String> {
    Some(format!("Bearer {LAB_TOKEN}"))
}

fn api(lab: &Lab, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (s, text) = http(
        &lab.pop,
        method,
        format!("http://127.0.0.1:{API_PORT}{path}"),
        admin(),
        body,
    );
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The XDP program id on a PoP interface.
fn xdp_prog(lab: &Lab, iface: &str) -> String {
    let out = lab.pop.ip(&["link", "show", iface]).unwrap();
    out.split("prog/xdp id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

/// `count` pings from the first client to the internet host, 20 a second.
fn pings(lab: &Lab, count: u32) -> std::process::Child {
    lab.clients[0]
        .ns
        .cmd("ping")
        .args([
            "-6",
            "-n",
            "-i",
            "0.05",
            "-W",
            "1",
            "-c",
            &count.to_string(),
        ])
        .arg(INET6_HOST.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for [`pings`] and asserts none was lost during `what`.
fn assert_all_answered(ping: std::process::Child, count: u32, what: &str) {
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{count} packets transmitted, {count} received")),
        "pings were lost across {what}:\n{text}"
    );
}

#[test]
fn pings_continue_while_the_controller_is_killed_and_restarted_three_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("kill", 1, &dir);
    // 20 pings a second for as long as the restarts take.
    let count = 200;
    let ping = pings(&lab, count);
    let instance = lab.instance.clone().expect("started");
    let mut programs = vec![xdp_prog(&lab, "eth4")];
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        lab.kill_broker();
        if round == 1 {
            // As if another build started: no program of its own pinned, so it verifies
            // one and swaps it onto the pinned link under the pings.
            std::fs::remove_dir_all(
                broker_userspace::dataplane::pin_dir(&instance).join("program"),
            )
            .expect("the pinned program");
        }
        std::thread::sleep(Duration::from_millis(500));
        lab.spawn_broker(&[]).expect("restarting broker run");
        programs.push(xdp_prog(&lab, "eth4"));
    }
    assert_all_answered(ping, count, "the restarts");
    // A restart of the same build keeps the program it verified; one without it swaps
    // a new one in.
    assert!(
        programs[0] == programs[1] && programs[1] != programs[2] && programs[2] == programs[3],
        "program ids on eth4, start by start: {programs:?}"
    );
    let (_, metrics) = http(
        &lab.pop,
        "GET",
        format!("http://127.0.0.1:{API_PORT}/metrics"),
        None,
        None,
    );
    assert!(
        metrics.contains("broker_restarts_adopted_total 3"),
        "{metrics}"
    );
}

#[test]
fn an_upgrade_that_changes_the_map_layout_fills_new_maps_and_swaps_under_pings() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("layout", 1, &dir);
    let count = 100;
    let ping = pings(&lab, count);
    let instance = lab.instance.clone().expect("started");
    let pins = broker_userspace::dataplane::pin_dir(&instance);
    let layout = broker_common::consts::MAP_LAYOUT_VERSION;
    let (current, older) = (
        pins.join(format!("maps-v{layout}")),
        pins.join(format!("maps-v{}", layout - 1)),
    );
    let before = xdp_prog(&lab, "eth4");
    std::thread::sleep(Duration::from_millis(700));
    lab.kill_broker();
    // As if the running data plane were an older build's: its maps pinned under the
    // layout before this one, no program of this build pinned. It keeps forwarding.
    std::fs::rename(&current, &older).expect("renaming the map pins");
    std::fs::remove_dir_all(pins.join("program")).expect("the pinned program");
    std::thread::sleep(Duration::from_millis(500));
    lab.spawn_broker(&[]).expect("starting the new build");
    let after = xdp_prog(&lab, "eth4");
    assert_all_answered(ping, count, "the upgrade");
    assert_ne!(before, after, "a new program on the pinned link");
    assert!(current.join("TUNNELS").exists(), "new maps pinned");
    assert!(!older.exists(), "the older layout's maps pruned");
    let log = lab.broker_log();
    assert!(
        log.contains("tunnels read ahead what=All"),
        "the new maps were filled as by a cold start:\n{log}"
    );
}

#[test]
fn nic_update_moves_the_tunnel_to_the_new_address_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("nic", 1, &dir);
    // Only the key's hash is kept: the operator makes one and hands it to the client.
    let (s, t) = api(&lab, "GET", "/api/v1/tunnels/1", None);
    assert_eq!(s, 200, "{t}");
    assert!(t.get("update_key").is_none(), "not shown again: {t}");
    let (s, t) = api(&lab, "POST", "/api/v1/tunnels/1/update-key", None);
    assert_eq!(s, 200, "{t}");
    let key = t["update_key"].as_str().unwrap().to_string();
    let new = lab.clients[0].v4_extra;
    // The client moves to its second address (as after a new DHCP lease).
    lab.start_client(1, new).expect("client on the new address");
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("1:{key}"))
    );
    // The router calls the update URL over IPv4, as it would on the internet.
    let url = format!("http://{POP_V4}:{API_PORT}/nic/update?hostname=1&myip={new}");
    let (s, body) = http(
        &lab.clients[0].ns,
        "GET",
        url.clone(),
        Some(auth.clone()),
        None,
    );
    let answered = Instant::now();
    assert_eq!((s, body.trim()), (200, format!("good {new}").as_str()));
    // Within a second: one echo, answered within what is left of it.
    let out = lab.clients[0]
        .ns
        .cmd("ping")
        .args(["-6", "-n", "-c", "1", "-W", "1"])
        .arg(INET6_HOST.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no reply through the moved tunnel: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(answered.elapsed() < Duration::from_secs(2));
    let (s, body) = http(&lab.clients[0].ns, "GET", url, Some(auth), None);
    assert_eq!((s, body.trim()), (200, format!("nochg {new}").as_str()));
    let (_, t) = api(&lab, "GET", "/api/v1/tunnels/1", None);
    assert_eq!(t["remote_ipv4"], new.to_string());
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

#[test]
fn metrics_pass_promtool_and_count_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("metrics", 1, &dir);
    let scrape = || {
        http(
            &lab.pop,
            "GET",
            format!("http://127.0.0.1:{API_PORT}/metrics"),
            None,
            None,
        )
        .1
    };
    let from = "broker_traffic_packets_total{direction=\"from_client\",kind=\"proto41\"}";
    let to = "broker_traffic_packets_total{direction=\"to_client\",kind=\"proto41\"}";
    let before = scrape();
    let out = lab.ping(1, INET6_HOST, 25, "0.05").unwrap();
    assert!(out.contains("25 received"), "{out}");
    let after = scrape();
    assert_eq!(metric(&after, from) - metric(&before, from), 25);
    assert_eq!(metric(&after, to) - metric(&before, to), 25);
    assert_eq!(
        metric(&after, "broker_tunnels{kind=\"proto41\",state=\"up\"}"),
        1
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(after.as_bytes())
        .unwrap();
    let res = promtool.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
}

/// What the three projections hold: (store ids, data plane ids, routed prefixes).
fn state(lab: &Lab) -> (BTreeSet<u64>, BTreeSet<u64>, BTreeSet<String>) {
    let (s, v) = api(lab, "GET", "/api/v1/tunnels", None);
    assert_eq!(s, 200, "{v}");
    let store: BTreeSet<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let stats: Value = serde_json::from_str(&lab.stats(true).unwrap()).unwrap();
    let maps: BTreeSet<u64> = stats["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let routes: BTreeSet<String> = lab
        .pop
        .ip(&["-6", "route", "show", "proto", "200"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .collect();
    (store, maps, routes)
}

/// The prefixes the store says exist, as `ip route` prints them.
fn store_prefixes(lab: &Lab) -> BTreeSet<String> {
    let (_, v) = api(lab, "GET", "/api/v1/tunnels", None);
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            let mut p = vec![t["link_prefix"].as_str().unwrap().to_string()];
            p.extend(
                t["routed_prefixes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string()),
            );
            p
        })
        .collect()
}

#[test]
fn a_crash_at_any_step_of_a_change_leaves_store_maps_and_routes_agreeing() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("crash", 1, &dir);
    let mut remote = 100u8;
    for point in [
        "create:after_store",
        "create:after_maps",
        "create:after_routes",
    ] {
        lab.kill_broker();
        lab.spawn_broker(&[("BROKER_FAILPOINT", point)]).unwrap();
        remote += 1;
        let body =
            json!({"remote_ipv4": format!("198.51.100.{remote}"), "routed_prefix_length": 48});
        let (s, _) = api(&lab, "POST", "/api/v1/tunnels", Some(body));
        assert_eq!(s, 0, "{point}: the broker should have died mid-request");
        lab.spawn_broker(&[]).unwrap();
        assert_reconciled(&lab, point);
        let (store, maps, routes) = state(&lab);
        assert_eq!(store, maps, "{point}: store and maps differ");
        assert_eq!(
            routes,
            store_prefixes(&lab),
            "{point}: routes differ from the store"
        );
        assert_eq!(
            store.len(),
            1 + (remote - 100) as usize,
            "{point}: the store commits before the first step"
        );
    }
    let ids: Vec<u64> = state(&lab).0.into_iter().filter(|id| *id != 1).collect();
    for (point, id) in [
        "delete:after_store",
        "delete:after_maps",
        "delete:after_routes",
    ]
    .iter()
    .zip(ids)
    {
        lab.kill_broker();
        lab.spawn_broker(&[("BROKER_FAILPOINT", point)]).unwrap();
        let (s, _) = api(&lab, "DELETE", &format!("/api/v1/tunnels/{id}"), None);
        assert_eq!(s, 0, "{point}: the broker should have died mid-request");
        lab.spawn_broker(&[]).unwrap();
        assert_reconciled(&lab, point);
        let (store, maps, routes) = state(&lab);
        assert!(!store.contains(&id), "{point}: deleted in the store");
        assert_eq!(store, maps, "{point}: store and maps differ");
        assert_eq!(
            routes,
            store_prefixes(&lab),
            "{point}: routes differ from the store"
        );
    }
    // A route someone else's hand left with the broker's protocol goes at the next start.
    add_stray_route(&lab);
    lab.kill_broker();
    lab.spawn_broker(&[]).unwrap();
    // A start that skipped reconciling checks the routes just after.
    broker_tests::eventually(10, "the stray route removed", || {
        state(&lab).2 == store_prefixes(&lab)
    });
    lab.ping(1, INET6_HOST, 3, "0.1")
        .expect("tunnel 1 forwarded throughout");
}

/// A route in the broker's table (its protocol) that no tunnel has, as another hand
/// would leave it.
fn add_stray_route(lab: &Lab) {
    lab.pop
        .ip(&[
            "-6",
            "route",
            "add",
            "blackhole",
            "2001:db8:dead:beef::/64",
            "proto",
            "200",
        ])
        .unwrap();
}

/// A controller killed in the middle of a change leaves maps without the stamp (or a
/// store of another generation): the next start reconciles in full.
fn assert_reconciled(lab: &Lab, point: &str) {
    let log = lab.broker_log();
    assert!(
        log.contains(" reconciled") && !log.contains("not reconciled"),
        "{point}: a full reconcile expected:\n{log}"
    );
}

#[test]
fn a_restart_with_nothing_changed_skips_the_reconcile_and_checks_the_routes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("stamp", 1, &dir);
    let body = json!({"remote_ipv4": "198.51.100.77", "routed_prefix_length": 48});
    let (s, v) = api(&lab, "POST", "/api/v1/tunnels", Some(body));
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_u64().unwrap() as u32;
    let before = state(&lab);
    // A clean stop stamps the maps.
    lab.broker().signal(libc::SIGTERM);
    broker_tests::eventually(10, "broker run stopped", || !lab.broker().running());
    // While no controller runs: a route in the broker's table that no tunnel has, and
    // one of a tunnel's removed.
    add_stray_route(&lab);
    let lost = before
        .2
        .iter()
        .find(|p| p.ends_with("/48"))
        .unwrap()
        .clone();
    lab.pop
        .ip(&["-6", "route", "del", &lost, "proto", "200"])
        .unwrap();
    lab.spawn_broker(&[]).unwrap();
    let log = lab.broker_log();
    assert!(log.contains("not reconciled"), "{log}");
    broker_tests::eventually(10, "the routes checked", || {
        lab.broker_log()
            .contains("routes checked against the store")
    });
    let log = lab.broker_log();
    assert!(log.contains("added=1 removed=1"), "{log}");
    assert_eq!(
        state(&lab),
        before,
        "store, maps and routes as before the stop"
    );
    lab.ping(1, INET6_HOST, 3, "0.1").expect("forwarding");

    // A change while no controller runs (the store written by another process): the
    // stamp no longer matches, and the start reconciles.
    lab.broker().signal(libc::SIGTERM);
    broker_tests::eventually(10, "broker run stopped", || !lab.broker().running());
    {
        use broker_userspace::store::{PoolSet, SqliteStore, Store, TunnelChange};
        let mut store = SqliteStore::open(&lab.dir.join("broker.db"), PoolSet::default()).unwrap();
        let change = TunnelChange {
            mtu: Some(1400),
            ..TunnelChange::default()
        };
        store
            .update_tunnel(id, &change, broker_userspace::store::now())
            .unwrap();
    }
    lab.spawn_broker(&[]).unwrap();
    assert_reconciled(&lab, "the store changed by another process");
    let (_, t) = api(&lab, "GET", &format!("/api/v1/tunnels/{id}"), None);
    assert_eq!(t["mtu"], 1400, "{t}");
}

#[test]
fn the_cli_drives_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("cli", 1, &dir);
    let out = lab
        .cli(&["user", "add", "alice", "--password", "alice-password"])
        .unwrap();
    assert!(
        out.contains("user alice created, password alice-password"),
        "{out}"
    );
    let out = lab
        .cli(&[
            "tunnel",
            "add",
            "--remote",
            "198.51.100.99",
            "--owner",
            "alice",
            "--routed-length",
            "56",
            "--json",
        ])
        .unwrap();
    let t: Value = serde_json::from_str(&out).unwrap();
    let id = t["id"].as_u64().unwrap();
    assert!(
        t["link_prefix"]
            .as_str()
            .unwrap()
            .starts_with("2001:db8:20:"),
        "{t}"
    );
    let table = lab.cli(&["tunnel", "list"]).unwrap();
    assert!(
        table.contains("198.51.100.99") && table.contains("alice"),
        "{table}"
    );
    let conf = lab
        .cli(&[
            "tunnel",
            "show",
            &id.to_string(),
            "--client-config",
            "linux",
        ])
        .unwrap();
    assert!(
        conf.contains(&format!(
            "ip tunnel add broker{id} mode sit remote {POP_V4} local 198.51.100.99"
        )),
        "{conf}"
    );
    let out = lab
        .cli(&[
            "tunnel",
            "set",
            &id.to_string(),
            "--state",
            "disabled",
            "--json",
        ])
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "disabled"
    );
    // The user sees the tunnel with their own password.
    let mut cmd = lab
        .pop
        .cmd(broker_tests::broker_bin().unwrap().to_str().unwrap());
    cmd.args(["tunnel", "list", "--json"])
        .env("BROKER_API", format!("http://127.0.0.1:{API_PORT}"))
        .env("BROKER_USER", "alice")
        .env("BROKER_PASSWORD", "alice-password");
    let mine: Value = serde_json::from_str(&broker_tests::netns::run(&mut cmd).unwrap()).unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1);
    // Errors come back with their message.
    let e = lab
        .cli(&["tunnel", "add", "--remote", "198.51.100.99"])
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("198.51.100.99 is already the endpoint of tunnel"),
        "{e:#}"
    );
    lab.cli(&["tunnel", "del", &id.to_string()]).unwrap();
    lab.cli(&["user", "del", "alice"]).unwrap();
    let users: Value =
        serde_json::from_str(&lab.cli(&["user", "list", "--json"]).unwrap()).unwrap();
    assert_eq!(users, json!([]));
}

#[test]
fn the_cli_imports_a_file_and_lists_every_page() {
    const N: u32 = 2500;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab("imp", 1, &dir);
    let endpoint = |k: u32| std::net::Ipv4Addr::from(0xc612_0001 + k).to_string();
    let mut items: Vec<Value> = (0..N)
        .map(|k| json!({ "remote_ipv4": endpoint(k) }))
        .collect();
    // The same endpoint twice: the second is refused, the rest created.
    items.push(json!({ "remote_ipv4": endpoint(7) }));
    let file = dir.path().join("tunnels.json");
    std::fs::write(&file, serde_json::to_string(&items).unwrap()).unwrap();
    let out = lab
        .cli(&["tunnel", "import", file.to_str().unwrap()])
        .unwrap();
    assert!(out.contains(&format!("created {N}, refused 1")), "{out}");
    // More than two pages of 1000, followed to the end, one JSON array.
    let all: Value =
        serde_json::from_str(&lab.cli(&["tunnel", "list", "--json"]).unwrap()).unwrap();
    let ids: Vec<u64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len() as u32, N + 1, "the imported and the lab's own");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, once each"
    );
    let table = lab.cli(&["tunnel", "list"]).unwrap();
    assert_eq!(
        table.lines().count() as u32,
        N + 2,
        "one header, a row each"
    );
    let at: Value = serde_json::from_str(
        &lab.cli(&["tunnel", "list", "--json", "--endpoint", &endpoint(42)])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(at.as_array().unwrap().len(), 1, "{at}");
    let page: Value = serde_json::from_str(
        &lab.cli(&["tunnel", "list", "--json", "--limit", "10"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(page.as_array().unwrap().len(), 10);
}
