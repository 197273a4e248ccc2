//! Two PoPs over one PostgreSQL store in one lab (docs/MULTI-POP.md): the real `broker
//! run` in each PoP's namespace, a throwaway PostgreSQL cluster, BIRD in each PoP and on
//! the upstream router (the internet host).
//! - Each PoP announces its own pools by BGP; the upstream learns both, and a PoP whose
//!   data plane is detached is withdrawn, and announced again once attached.
//! - A tunnel created through PoP 1's API for PoP 2 forwards at PoP 2 and is in PoP 2's
//!   maps only; moved to PoP 1, it forwards there and leaves PoP 2's maps and routes.
//! - A TSP user whose tunnel lives on PoP 2 reaching PoP 1 is redirected (status 1200)
//!   and `broker client tsp` follows to PoP 2.
//! - PoP 2's controller killed: both PoPs forward, PoP 1 serves the API, and a tunnel
//!   made for PoP 2 meanwhile is projected once its controller is back.
use std::net::Ipv6Addr;

use broker_tests::{
    eventually,
    lab::{
        pops::{self, addresses},
        Lab, INET6_HOST, LINK_POOL, POP_V4, ROUTED_POOL,
    },
    postgres::Cluster,
    require_root,
};
use serde_json::Value;

/// The client's address in a tunnel: `::2` of its link /64.
fn client_address(t: &Value) -> Ipv6Addr {
    pops::client_address(t).unwrap()
}

/// The tunnel ids in PoP `n`'s data plane (its pinned maps).
fn in_maps(lab: &Lab, n: u8) -> Vec<u64> {
    let mut cmd = std::process::Command::new(broker_tests::broker_bin().unwrap());
    cmd.args([
        "stats",
        "--json",
        "--instance",
        &lab.pop_instance(n).unwrap(),
    ]);
    let stats: Value = serde_json::from_str(&broker_tests::netns::run(&mut cmd).unwrap()).unwrap();
    stats["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

/// Whether PoP `n`'s kernel has a route for `prefix`.
fn routed_at(lab: &Lab, n: u8, prefix: &str) -> bool {
    lab.pop_ns(n)
        .unwrap()
        .ip(&["-6", "route", "show", prefix])
        .is_ok_and(|s| !s.trim().is_empty())
}

fn no_loss(lab: &Lab, client: u32, count: u32) -> bool {
    lab.ping(client, INET6_HOST, count, "0.2")
        .is_ok_and(|out| out.contains(" 0% packet loss"))
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Whether the upstream router has a BGP route for each of `prefixes`.
fn upstream_has(lab: &Lab, prefixes: &[&str]) -> bool {
    let routes = lab.upstream_routes().unwrap_or_default();
    prefixes.iter().all(|p| routes.contains(p))
}

#[test]
fn tunnels_live_on_their_pop_move_between_pops_and_are_announced_by_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Declared before the lab, so dropped after it: the brokers stop first.
    let pg = Cluster::start().expect("a PostgreSQL cluster (cargo xtask setup installs it)");
    let prefix = format!("bp{}", std::process::id());
    // PoP 1 with client 1's static tunnel, PoP 2 with client 2's tunnel made through
    // PoP 1's API; client 3 for the tunnel made below.
    let mut lab = pops::start(&prefix, 1, 1, dir.path(), 2, &pg).expect("a lab of two PoPs");
    lab.add_tsp_hosts().unwrap();
    let (p2_link, p2_routed, _) = pops::pools(2);
    let (p2_link, p2_routed) = (p2_link.as_str(), p2_routed.as_str());
    let first = json(&lab.cli(&["tunnel", "show", "2", "--json"]).unwrap());
    assert_eq!(first["pop"], "pop2", "{first}");

    // Each PoP announces its pools; the upstream learns both.
    let p1 = [LINK_POOL, ROUTED_POOL];
    let p2 = [p2_link, p2_routed];
    eventually(30, "the upstream learns both PoPs' pools", || {
        upstream_has(&lab, &p1) && upstream_has(&lab, &p2)
    });
    // Both report themselves; either lists both.
    eventually(20, "both PoPs healthy", || {
        lab.cli_at(2, &["pop", "list", "--json"]).is_ok_and(|out| {
            let pops = json(&out);
            pops.as_array().is_some_and(|ps| {
                ps.len() == 2 && ps.iter().all(|p| p["healthy"] == Value::Bool(true))
            })
        })
    });
    let table = lab.cli(&["pop", "list"]).unwrap();
    assert!(
        table.contains("pop1*") && table.contains("pop2 "),
        "{table}"
    );

    // Through PoP 1's API, for PoP 2: PoP 2's pools, maps and routes; forwarding there.
    let remote = lab.clients[2].v4.to_string();
    let t = json(
        &lab.cli(&[
            "tunnel",
            "add",
            "--remote",
            &remote,
            "--pop",
            "pop2",
            "--routed-length",
            "56",
            "--json",
        ])
        .unwrap(),
    );
    let id = t["id"].as_u64().unwrap();
    assert_eq!(t["pop"], "pop2");
    assert_eq!(t["pop_ipv4"], addresses(2).0 .0.to_string(), "{t}");
    let link = t["link_prefix"].as_str().unwrap().to_string();
    assert!(link.starts_with("2001:db8:21:"), "{t}");
    let (c3, pop2_v4) = (lab.clients[2].v4, lab.pop_v4(2).unwrap());
    lab.start_client_to(3, pop2_v4, c3, client_address(&t))
        .unwrap();
    lab.wait_reachable(3, INET6_HOST)
        .expect("the tunnel made at PoP 1 for PoP 2 forwards at PoP 2");
    assert!(in_maps(&lab, 2).contains(&id));
    assert!(!in_maps(&lab, 1).contains(&id), "PoP 1 holds nothing of it");
    assert!(routed_at(&lab, 2, &link) && !routed_at(&lab, 1, &link));

    // Moved to PoP 1 (through PoP 2's API): renumbered from PoP 1's pools, forwarding at
    // PoP 1, gone from PoP 2's maps and routes.
    let moved = json(
        &lab.cli_at(
            2,
            &["tunnel", "set", &id.to_string(), "--pop", "pop1", "--json"],
        )
        .unwrap(),
    );
    assert_eq!(moved["pop"], "pop1");
    let new_link = moved["link_prefix"].as_str().unwrap().to_string();
    assert!(new_link.starts_with("2001:db8:20:"), "{moved}");
    lab.start_client_to(3, POP_V4, c3, client_address(&moved))
        .unwrap();
    lab.wait_reachable(3, INET6_HOST)
        .expect("the moved tunnel forwards at PoP 1");
    eventually(10, "PoP 2 lets the moved tunnel go", || {
        !in_maps(&lab, 2).contains(&id) && !routed_at(&lab, 2, &link)
    });
    assert!(in_maps(&lab, 1).contains(&id) && routed_at(&lab, 1, &new_link));

    // A TSP user whose tunnel lives on PoP 2, reaching PoP 1: redirected, and the client
    // follows to PoP 2.
    lab.cli(&["user", "add", "ann", "--password", "correct horse battery"])
        .unwrap();
    // Her sessions, over TCP, to the PoP at `server`: the tunnel's address they get.
    let ann_at = |lab: &mut Lab, server: String, what: &str| {
        let ann = ["--user", "ann", "--password", "correct horse battery"];
        let tsp = lab
            .start_tsp_client("t2", &server, &[&ann[..], &["--transport", "tcp"]].concat())
            .unwrap();
        let up = lab.wait_tsp_up("t2", tsp, "-6").expect(what);
        assert!(up.contains("2001:db8:21:"), "{what}: {up}");
        tsp
    };
    // Her first session reaches PoP 2: her tunnel lives there.
    let tsp = ann_at(
        &mut lab,
        addresses(2).0 .0.to_string(),
        "ann's TSP tunnel at PoP 2",
    );
    lab.stop_proc(tsp);
    let tsp = ann_at(&mut lab, POP_V4.to_string(), "redirected to PoP 2");
    assert!(
        lab.proc_log(tsp).contains("redirected to the tunnel's PoP"),
        "{}",
        lab.proc_log(tsp)
    );
    assert!(
        lab.broker_log()
            .contains("TSP client redirected to its tunnel's PoP"),
        "{}",
        lab.broker_log()
    );
    lab.stop_proc(tsp);

    // PoP 2's controller killed: both PoPs forward, PoP 1 serves the API, and a tunnel
    // made for PoP 2 meanwhile is its own once its controller is back.
    let t2_id = first["id"].as_u64().unwrap();
    lab.kill_pop(2).unwrap();
    let remote4 = "198.51.100.99";
    let made = std::thread::scope(|s| {
        let pinging = s.spawn(|| no_loss(&lab, 2, 10) && no_loss(&lab, 1, 5));
        let made = json(
            &lab.cli(&[
                "tunnel", "add", "--remote", remote4, "--pop", "pop2", "--json",
            ])
            .unwrap(),
        );
        assert!(
            pinging.join().unwrap(),
            "forwarding without PoP 2's controller"
        );
        made
    });
    assert_eq!(made["pop"], "pop2");
    lab.spawn_pop(2).expect("PoP 2's controller again");
    let made_id = made["id"].as_u64().unwrap();
    eventually(
        10,
        "PoP 2 projects the tunnel made while it was away",
        || in_maps(&lab, 2).contains(&made_id),
    );
    assert!(in_maps(&lab, 2).contains(&t2_id));
    assert!(no_loss(&lab, 2, 5), "PoP 2's tunnel after its restart");

    // PoP 2's data plane detached: its pools are withdrawn; attached again (its
    // controller restarted), announced again.
    broker_tests::lab::detach(&lab.pop_instance(2).unwrap()).unwrap();
    eventually(20, "PoP 2's pools withdrawn", || {
        !upstream_has(&lab, &[p2_link]) && !upstream_has(&lab, &[p2_routed])
    });
    assert!(upstream_has(&lab, &p1), "PoP 1 still announced");
    lab.kill_pop(2).unwrap();
    lab.spawn_pop(2).expect("PoP 2 attached again");
    eventually(30, "PoP 2's pools announced again", || {
        upstream_has(&lab, &p2)
    });
    lab.wait_reachable(2, INET6_HOST)
        .expect("PoP 2 forwards again");
}

/// Pings `dst` from `ns` until one answer comes, for at most `secs` seconds.
fn answers(ns: &broker_tests::netns::NetNs, dst: &str, secs: u64) -> bool {
    (0..secs).any(|_| {
        ns.exec("ping", &["-6", "-n", "-c", "1", "-W", "1", dst])
            .is_ok()
    })
}

#[test]
fn the_pops_serve_their_clients_while_postgresql_is_stopped_and_converge_after() {
    use broker_tests::lab::{HEARTBEAT_HOST, HEARTBEAT_HOST_2};
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Cluster::start().expect("a PostgreSQL cluster (cargo xtask setup installs it)");
    let prefix = format!("bo{}", std::process::id());
    let mut lab = pops::start(&prefix, 1, 0, dir.path(), 2, &pg).expect("a lab of two PoPs");
    lab.add_tsp_hosts().unwrap();
    lab.add_sixxs_hosts().unwrap();
    // A heartbeat client of PoP 1, its tunnel from TIC.
    lab.cli(&["user", "add", "bob", "--password", "bob-password"])
        .unwrap();
    let hb = json(
        &lab.cli(&[
            "tunnel",
            "add",
            "--kind",
            "heartbeat",
            "--owner",
            "bob",
            "--pop",
            "pop1",
            "--json",
        ])
        .unwrap(),
    );
    let hb_id = hb["id"].as_u64().unwrap();
    let c = lab
        .start_heartbeat_client(
            "h1",
            "bob",
            "bob-password",
            Some(hb_id as u32),
            HEARTBEAT_HOST,
        )
        .unwrap();
    lab.wait_sixxs_up("h1", c).unwrap();
    assert!(
        answers(lab.host("h1"), &INET6_HOST.to_string(), 10),
        "the heartbeat tunnel"
    );

    // PostgreSQL stopped for 30 s while clients of both PoPs ping.
    assert!(pg.stop(), "PostgreSQL stopped");
    let stopped = std::time::Instant::now();
    // Handles of their own for the pinging threads: the lab is busy meanwhile.
    let pinger = |i: usize| {
        let ns = broker_tests::netns::NetNs::existing(lab.clients[i].ns.name()).unwrap();
        std::thread::spawn(move || {
            ns.exec(
                "ping",
                &[
                    "-6",
                    "-n",
                    "-c",
                    "140",
                    "-i",
                    "0.2",
                    "-W",
                    "2",
                    &INET6_HOST.to_string(),
                ],
            )
            .is_ok_and(|out| out.contains(" 0% packet loss"))
        })
    };
    let (p1, p2) = (pinger(0), pinger(1));
    // Writes are refused as unavailable (HTTP 503).
    let refused = lab
        .cli(&["tunnel", "add", "--remote", "198.51.100.99"])
        .expect_err("no store to write to");
    assert!(
        format!("{refused:#}").contains("unavailable"),
        "{refused:#}"
    );
    assert!(
        lab.admin_request("POST", "/api/v1/users", Some(r#"{"name":"eve"}"#))
            .is_some_and(|(status, _)| status == 503),
        "a write through the API is 503"
    );
    // The heartbeat client roams: a new TIC login (answered from what the PoP knew),
    // beats from the new address, and the tunnel follows it in the maps.
    lab.stop_proc(c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    lab.move_host("h1", HEARTBEAT_HOST, HEARTBEAT_HOST_2)
        .unwrap();
    let c = lab
        .start_heartbeat_client(
            "h1",
            "bob",
            "bob-password",
            Some(hb_id as u32),
            HEARTBEAT_HOST_2,
        )
        .unwrap();
    lab.wait_sixxs_up("h1", c)
        .expect("TIC answered while the store is away");
    assert!(
        answers(lab.host("h1"), &INET6_HOST.to_string(), 10),
        "the roamed heartbeat tunnel forwards while the store is away"
    );
    assert!(
        lab.broker_log().contains("the new endpoint waits for it"),
        "{}",
        lab.broker_log()
    );
    assert!(p1.join().unwrap(), "PoP 1 forwards without its store");
    assert!(p2.join().unwrap(), "PoP 2 forwards without its store");
    assert!(stopped.elapsed() >= std::time::Duration::from_secs(28));

    // Back: the roamed endpoint is written, and a change made now reaches PoP 2.
    pg.start_again().unwrap();
    eventually(30, "the endpoint learnt meanwhile is stored", || {
        lab.cli(&["tunnel", "show", &hb_id.to_string(), "--json"])
            .is_ok_and(|out| json(&out)["remote_ipv4"] == HEARTBEAT_HOST_2.to_string())
    });
    let mut made = None;
    eventually(30, "PoP 1 writes again", || {
        made = lab
            .cli(&[
                "tunnel",
                "add",
                "--remote",
                "198.51.100.98",
                "--pop",
                "pop2",
                "--json",
            ])
            .ok();
        made.is_some()
    });
    let made_id = json(made.as_deref().unwrap())["id"].as_u64().unwrap();
    eventually(
        10,
        "a change after the store returned reaches PoP 2",
        || in_maps(&lab, 2).contains(&made_id),
    );
}
