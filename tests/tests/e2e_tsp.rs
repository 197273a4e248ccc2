//! TSP in the lab with the real binaries: `broker client tsp` negotiates with `broker run`
//! and the kernel's ping goes through the tunnel it gets. Behind a NAT it gets v6udpv4 and
//! follows a new NAT mapping; without one, v6v4; IPv6-only, v4v6; in router mode, a routed
//! prefix the internet reaches, the same one again after a reconnect; a wrong password
//! gets 300 and nothing.
use std::time::{Duration, Instant};

use broker_tests::{
    lab::{
        Lab, INET6_HOST, ISP_LAN_V4, NAT_PUBLIC, NAT_PUBLIC_2, POP_NATIVE_V6, POP_V4, TSP_DIRECT,
        TSP_DIRECT_2, TSP_TUN, V6_ONLY,
    },
    netns::NetNs,
};
use serde_json::Value;

fn lab(tag: &str, dir: &tempfile::TempDir) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bt{}{tag}", std::process::id());
    // One static client keeps the lab's own proto-41 tunnel next to the TSP ones.
    let mut lab = Lab::start(&prefix, 1, dir.path(), "").expect("starting the lab");
    lab.add_tsp_hosts().expect("adding the TSP hosts");
    lab
}

fn user(lab: &Lab, name: &str, password: &str) {
    lab.cli(&["user", "add", name, "--password", password])
        .expect("creating the user");
}

/// The tunnels the broker has, as JSON.
fn tunnels(lab: &Lab) -> Vec<Value> {
    let out = lab.cli(&["tunnel", "list", "--json"]).expect("tunnel list");
    serde_json::from_str(&out).expect("JSON")
}

fn tunnel_of<'a>(ts: &'a [Value], owner: &str) -> Option<&'a Value> {
    ts.iter().find(|t| t["owner"] == owner)
}

/// Pings `dst` from `ns` until a reply comes, for at most `limit`.
fn wait_ping(ns: &NetNs, dst: &str, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let family = if dst.contains(':') { "-6" } else { "-4" };
    let mut last = String::new();
    while start.elapsed() < limit {
        match ns.exec("ping", &[family, "-n", "-c", "1", "-W", "1", dst]) {
            Ok(_) => return Ok(start.elapsed()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "{dst} unreachable from {} for {limit:?}: {last}",
        ns.name()
    ))
}

fn server() -> String {
    POP_V4.to_string()
}

#[test]
fn natted_client_gets_v6udpv4_and_follows_a_new_nat_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("nat", &dir);
    user(&lab, "alice", "alice-password");
    let c = lab
        .start_tsp_client(
            "t1",
            &server(),
            &["--user", "alice", "--password", "alice-password"],
        )
        .unwrap();
    lab.wait_tsp_up("t1", c, "-6").unwrap();
    wait_ping(
        lab.host("t1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(10),
    )
    .unwrap();

    let ts = tunnels(&lab);
    let t = tunnel_of(&ts, "alice").expect("alice's tunnel");
    assert_eq!(t["kind"], "v6udpv4", "{t}");
    assert_eq!(t["origin"], "tsp");
    assert_eq!(
        t["remote_ipv4"],
        NAT_PUBLIC.to_string(),
        "the NAT's address, not the client's"
    );
    let link = t["link_prefix"].clone();
    let port = t["remote_port"].clone();
    assert!(port.as_u64().is_some());

    // A new mapping: the client's packets now come from another address, which the data
    // plane does not know. Its keepalives go unanswered, it negotiates again, and the
    // broker moves alice's tunnel to where she is now.
    lab.renat(NAT_PUBLIC_2).unwrap();
    let took = wait_ping(
        lab.host("t1"),
        &INET6_HOST.to_string(),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(c)));
    let ts = tunnels(&lab);
    let t = tunnel_of(&ts, "alice").unwrap();
    assert_eq!(t["remote_ipv4"], NAT_PUBLIC_2.to_string(), "{t}");
    assert_eq!(t["link_prefix"], link, "same addresses after the move");
    assert_eq!(ts.iter().filter(|t| t["owner"] == "alice").count(), 1);
    eprintln!("traffic resumed {took:?} after the NAT mapping changed");
    lab.stop_proc(c);
}

#[test]
fn direct_ipv6_only_and_router_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("dir", &dir);
    user(&lab, "bob", "bob-password");
    user(&lab, "carol", "carol-password");

    // Anonymous, no NAT: v6anyv4 becomes v6v4 (proto-41).
    let anon = lab.start_tsp_client("t3", &server(), &[]).unwrap();
    // IPv6-only: v4v6, negotiated over IPv6.
    let v4v6 = lab
        .start_tsp_client(
            "t6",
            &POP_NATIVE_V6.to_string(),
            &[
                "--user",
                "carol",
                "--password",
                "carol-password",
                "--type",
                "v4v6",
            ],
        )
        .unwrap();
    // A router: a routed /56.
    let router_args = [
        "--user",
        "bob",
        "--password",
        "bob-password",
        "--mode",
        "router",
        "--prefix-length",
        "56",
        "--transport",
        "tcp",
    ];
    let router = lab.start_tsp_client("t2", &server(), &router_args).unwrap();

    lab.wait_tsp_up("t3", anon, "-6").unwrap();
    wait_ping(
        lab.host("t3"),
        &INET6_HOST.to_string(),
        Duration::from_secs(10),
    )
    .unwrap();
    lab.wait_tsp_up("t6", v4v6, "-4").unwrap();
    wait_ping(
        lab.host("t6"),
        &ISP_LAN_V4.to_string(),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.proc_log(v4v6)));
    let addrs = lab.wait_tsp_up("t2", router, "-6").unwrap();

    let ts = tunnels(&lab);
    let a = ts
        .iter()
        .find(|t| t["owner"].is_null() && t["origin"] == "tsp")
        .expect("the anonymous tunnel");
    assert_eq!(a["kind"], "proto41", "{a}");
    assert_eq!(a["remote_ipv4"], TSP_DIRECT_2.to_string());
    assert!(
        a["expires_at"].as_u64().is_some(),
        "anonymous tunnels expire"
    );
    let c = tunnel_of(&ts, "carol").expect("carol's tunnel");
    assert_eq!(c["kind"], "v4v6", "{c}");
    assert_eq!(c["remote_ipv6"], V6_ONLY.to_string());
    assert!(c["link_prefix"].is_null());
    let b = tunnel_of(&ts, "bob").expect("bob's tunnel");
    assert_eq!(b["kind"], "proto41");
    assert_eq!(b["remote_ipv4"], TSP_DIRECT.to_string());
    let routed = b["routed_prefixes"][0]
        .as_str()
        .expect("a routed prefix")
        .to_string();
    assert!(routed.ends_with("/56"), "{routed}");
    // The client answers for the prefix's first address; the internet reaches it.
    let first = routed.trim_end_matches("/56").to_string() + "1";
    assert!(addrs.contains(&first), "{first} not on {TSP_TUN}: {addrs}");
    wait_ping(&lab.inet6, &first, Duration::from_secs(10)).unwrap();

    // The anonymous client falls silent (stopped): after five keepalive intervals its
    // tunnel sleeps; its next packet wakes it.
    let anon_id = a["id"].clone();
    let asleep = |lab: &Lab| {
        tunnels(lab)
            .iter()
            .find(|t| t["id"] == anon_id)
            .map(|t| t["asleep"] == true)
    };
    lab.signal_proc(anon, libc::SIGSTOP);
    let start = Instant::now();
    while asleep(&lab) != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "never went to sleep"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let slept_after = start.elapsed();
    lab.signal_proc(anon, libc::SIGCONT);
    wait_ping(
        lab.host("t3"),
        &INET6_HOST.to_string(),
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(asleep(&lab), Some(false), "woken by its traffic");
    eprintln!("silent tunnel asleep after {slept_after:?} (5 x 5 s keepalive)");

    // Bob reconnects (from scratch): the same prefix, the same tunnel.
    lab.stop_proc(router);
    let again = lab.start_tsp_client("t2", &server(), &router_args).unwrap();
    let addrs = lab.wait_tsp_up("t2", again, "-6").unwrap();
    assert!(addrs.contains(&first), "{addrs}");
    let ts = tunnels(&lab);
    let b2 = tunnel_of(&ts, "bob").unwrap();
    assert_eq!(b2["id"], b["id"]);
    assert_eq!(b2["routed_prefixes"], b["routed_prefixes"]);
    wait_ping(&lab.inet6, &first, Duration::from_secs(10)).unwrap();
    for p in [anon, v4v6, again] {
        lab.stop_proc(p);
    }
}

#[test]
fn a_wrong_password_gets_300_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("auth", &dir);
    user(&lab, "dave", "dave-password");
    let before = tunnels(&lab).len();
    for transport in ["udp", "tcp"] {
        let c = lab
            .start_tsp_client(
                "t2",
                &server(),
                &[
                    "--user",
                    "dave",
                    "--password",
                    "guess",
                    "--transport",
                    transport,
                ],
            )
            .unwrap();
        let start = Instant::now();
        while !lab.proc_log(c).contains("authentication failed") {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no authentication failure reported: {}",
                lab.proc_log(c)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.stop_proc(c);
    }
    assert_eq!(tunnels(&lab).len(), before, "nothing created");
    assert!(lab.host("t2").ip(&["link", "show", TSP_TUN]).is_err());
    assert!(
        lab.broker_log().contains("TSP authentication failed"),
        "the broker logs the failure"
    );
    let metrics = lab.metrics().expect("metrics");
    for transport in ["udp", "tcp"] {
        let series = format!(
            "broker_tsp_sessions_total{{transport=\"{transport}\",outcome=\"auth_failed\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
}
