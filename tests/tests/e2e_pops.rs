//! Two PoPs over one PostgreSQL store (docs/MULTI-POP.md), each a lab of its own
//! (namespaces, the real `broker run`), both on a throwaway cluster started by the test.
//! - A tunnel created through PoP a's API for PoP b forwards at b, and is in b's maps
//!   only; moved to a, it forwards at a and leaves b's maps and routes.
//! - `broker pop list` shows both PoPs healthy, with their tunnels.
//! - a's controller killed: both PoPs keep forwarding, b keeps serving the API; a
//!   tunnel made for a meanwhile forwards once a's controller is back.
use std::{net::Ipv6Addr, path::Path};

use broker_tests::{
    lab::{Lab, INET6_HOST, LINK_POOL, ROUTED_POOL, V4V6_POOL},
    postgres::{conninfo_of, Cluster},
    require_root,
};
use serde_json::Value;

/// PoP b's pools: beside a's (the lab's), never overlapping them.
const B_LINK_POOL: &str = "2001:db8:21::/48";
const B_ROUTED_POOL: &str = "2001:db8:4000::/36";
const B_V4V6_POOL: &str = "198.18.1.0/24";

/// The lab's config for PoP `name`, keeping the static tunnels of the first `statics`
/// clients only (ids are the store's, shared by every PoP), on PostgreSQL.
fn pop_config(lab: &Lab, instance: &str, name: &str, statics: usize, pg: &Cluster) -> String {
    let mut config = lab.config_yaml(instance);
    let cut = config.find("tunnels:\n").expect("tunnels last") + "tunnels:\n".len();
    let entries: Vec<&str> = config[cut..].split("  - id: ").skip(1).collect();
    let kept: String = entries
        .iter()
        .take(statics)
        .map(|e| format!("  - id: {e}"))
        .collect();
    config.truncate(cut);
    config.push_str(&kept);
    if statics == 0 {
        config = config.replace("tunnels:\n", "tunnels: []\n");
    }
    config = config.replace("pop:\n", &format!("pop:\n  name: {name}\n"));
    if name == "b" {
        config = config
            .replace(LINK_POOL, B_LINK_POOL)
            .replace(ROUTED_POOL, B_ROUTED_POOL)
            .replace(V4V6_POOL, B_V4V6_POOL);
    }
    lab.on_postgres(&config, &conninfo_of(&[pg], "broker"), pg.password())
        .unwrap()
}

/// A PoP's lab with two clients, on the store in `pg`.
fn pop_lab(name: &str, dir: &Path, statics: usize, pg: &Cluster) -> Lab {
    require_root();
    let prefix = format!("bp{}{name}", std::process::id());
    let mut lab = Lab::create(&prefix, 2, dir).expect("the lab");
    let config = pop_config(&lab, &prefix, name, statics, pg);
    lab.start_broker(&prefix, &config).expect("broker run");
    lab
}

/// The client's address in a tunnel: `::2` of its link /64.
fn client_address(t: &Value) -> Ipv6Addr {
    let link = t["link_prefix"].as_str().unwrap();
    let network: Ipv6Addr = link.split('/').next().unwrap().parse().unwrap();
    let mut octets = network.octets();
    octets[15] = 2;
    octets.into()
}

/// The tunnel ids in a PoP's data plane (its pinned maps).
fn in_maps(lab: &Lab) -> Vec<u64> {
    let stats: Value = serde_json::from_str(&lab.stats(true).unwrap()).unwrap();
    stats["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect()
}

/// The PoP's kernel routes for `prefix`.
fn routed_at(lab: &Lab, prefix: &str) -> bool {
    lab.pop
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

#[test]
fn tunnels_live_on_their_own_pop_and_move_between_pops() {
    let dir = tempfile::tempdir().unwrap();
    // Declared before the labs, so dropped after them: the brokers stop first.
    let pg = Cluster::start().expect("a PostgreSQL cluster (cargo xtask setup installs it)");
    pg.create_database("broker").unwrap();
    let mut a = pop_lab("a", &dir.path().join("a"), 1, &pg);
    let mut b = pop_lab("b", &dir.path().join("b"), 0, &pg);
    let v4 = a.clients[0].v4;
    a.start_client(1, v4).unwrap();
    a.wait_reachable(1, INET6_HOST).expect("a's static tunnel");

    // Both PoPs report themselves; the CLI of either lists both.
    broker_tests::eventually(20, "both PoPs healthy", || {
        b.cli(&["pop", "list", "--json"]).is_ok_and(|out| {
            let pops = json(&out);
            pops.as_array().is_some_and(|ps| {
                ps.len() == 2 && ps.iter().all(|p| p["healthy"] == Value::Bool(true))
            })
        })
    });
    let table = a.cli(&["pop", "list"]).unwrap();
    assert!(table.contains("a*") && table.contains("b "), "{table}");

    // Through a's API, for b: b's pools, b's maps and routes, forwarding at b.
    let remote = b.clients[1].v4.to_string();
    let t = json(
        &a.cli(&[
            "tunnel",
            "add",
            "--remote",
            &remote,
            "--pop",
            "b",
            "--routed-length",
            "56",
            "--json",
        ])
        .unwrap(),
    );
    let id = t["id"].as_u64().unwrap();
    assert_eq!(t["pop"], "b");
    let link = t["link_prefix"].as_str().unwrap().to_string();
    assert!(link.starts_with("2001:db8:21:"), "{t}");
    b.start_client_at(2, b.clients[1].v4, client_address(&t))
        .unwrap();
    b.wait_reachable(2, INET6_HOST)
        .expect("the tunnel made at a for b forwards at b");
    assert!(in_maps(&b).contains(&id));
    assert!(!in_maps(&a).contains(&id), "a holds nothing of b's tunnel");
    assert!(routed_at(&b, &link) && !routed_at(&a, &link));

    // Moved to a (through b's API): renumbered from a's pools, forwarding at a, gone
    // from b's maps and routes.
    let moved = json(
        &b.cli(&["tunnel", "set", &id.to_string(), "--pop", "a", "--json"])
            .unwrap(),
    );
    assert_eq!(moved["pop"], "a");
    let new_link = moved["link_prefix"].as_str().unwrap().to_string();
    assert!(new_link.starts_with("2001:db8:20:"), "{moved}");
    a.start_client_at(2, a.clients[1].v4, client_address(&moved))
        .unwrap();
    a.wait_reachable(2, INET6_HOST)
        .expect("the moved tunnel forwards at a");
    broker_tests::eventually(10, "b lets the moved tunnel go", || {
        !in_maps(&b).contains(&id) && !routed_at(&b, &link)
    });
    assert!(in_maps(&a).contains(&id) && routed_at(&a, &new_link));
    let routed = moved["routed_prefixes"][0].as_str().unwrap();
    assert!(routed.starts_with("2001:db8:3"), "{moved}");

    // a's controller killed: both PoPs forward, b serves the API, and a tunnel made for a
    // meanwhile is a's once its controller is back.
    a.kill_broker();
    let made = std::thread::scope(|s| {
        let pinging = s.spawn(|| no_loss(&a, 1, 10) && no_loss(&a, 2, 5));
        let made = json(
            &b.cli(&[
                "tunnel",
                "add",
                "--remote",
                "198.51.100.99",
                "--pop",
                "a",
                "--json",
            ])
            .unwrap(),
        );
        assert!(pinging.join().unwrap(), "a forwards without its controller");
        made
    });
    assert_eq!(made["pop"], "a");
    a.spawn_broker(&[]).expect("a's controller again");
    let made_id = made["id"].as_u64().unwrap();
    broker_tests::eventually(10, "a projects the tunnel made while it was away", || {
        in_maps(&a).contains(&made_id)
    });
    assert!(no_loss(&a, 2, 5), "the moved tunnel after a's restart");
    assert!(!in_maps(&b).contains(&id));
}
