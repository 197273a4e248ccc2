//! `broker run` on a PostgreSQL store (docs/MULTI-POP.md): throwaway clusters started by
//! the test, the real binary in the lab.
//! - Its static tunnel forwards and is kept in PostgreSQL; users and tunnels made through
//!   the CLI land there; a controller killed and started again finds them there while
//!   forwarding never stopped.
//! - With a primary and a streaming standby in its URL (`target_session_attrs=read-write`),
//!   the primary's loss stops changes (HTTP 503) but not forwarding, and once the standby
//!   is promoted the PoP writes to it by itself.
use std::path::Path;

use broker_tests::{
    lab::{Lab, INET6_HOST},
    postgres::{conninfo_of, Cluster},
    require_root,
};

/// A lab whose broker keeps its store in PostgreSQL at `hosts` (a primary first, then its
/// standbys), database `broker`, the password in a file.
fn lab_on(tag: &str, dir: &Path, hosts: &[&Cluster]) -> Lab {
    require_root();
    let prefix = format!("bq{}{tag}", std::process::id());
    let mut lab = Lab::create(&prefix, 1, dir).expect("the lab");
    let config = lab
        .on_postgres(
            &lab.config_yaml(&prefix),
            &conninfo_of(hosts, "broker"),
            hosts[0].password(),
        )
        .unwrap();
    lab.start_broker(&prefix, &config).expect("broker run");
    assert!(
        lab.broker_log().contains("store=host="),
        "the start names its store:\n{}",
        lab.broker_log()
    );
    assert!(
        !dir.join("broker.db").exists(),
        "no SQLite file besides PostgreSQL"
    );
    assert!(
        lab.broker_log().contains("tunnels read ahead"),
        "the start reads its tunnels ahead on a second session:\n{}",
        lab.broker_log()
    );
    let v4 = lab.clients[0].v4;
    lab.start_client(1, v4).unwrap();
    lab.wait_reachable(1, INET6_HOST)
        .expect("the static tunnel forwards");
    lab
}

/// Pings through the tunnel and says whether every echo came back.
fn no_loss(lab: &Lab, count: u32) -> bool {
    lab.ping(1, INET6_HOST, count, "0.2")
        .is_ok_and(|out| out.contains(" 0% packet loss"))
}

#[test]
fn a_pop_runs_on_postgresql_and_comes_back_to_it_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // Declared before the lab, so dropped after it: the broker stops first.
    let pg = Cluster::start().expect("a PostgreSQL cluster (cargo xtask setup installs it)");
    pg.create_database("broker").unwrap();
    let mut lab = lab_on("k", dir.path(), &[&pg]);

    // The static tunnel, a user and a tunnel made at run time are PostgreSQL's rows.
    let (id, v4) = (lab.clients[0].tunnel_id(), lab.clients[0].v4);
    assert_eq!(
        pg.psql(
            "broker",
            &format!("SELECT kind, remote_v4, origin FROM tunnels WHERE id = {id}")
        )
        .unwrap(),
        format!("proto41|{v4}|static")
    );
    lab.cli(&["user", "add", "ann", "--password", "correct horse battery"])
        .unwrap();
    lab.cli(&["tunnel", "add", "--kind", "heartbeat", "--owner", "ann"])
        .unwrap();
    assert_eq!(
        pg.psql(
            "broker",
            "SELECT owner || ' ' || kind FROM tunnels WHERE owner IS NOT NULL"
        )
        .unwrap(),
        "ann heartbeat"
    );

    // Killed: forwarding goes on; started again, the controller reads it all back.
    lab.kill_broker();
    assert!(no_loss(&lab, 5), "forwarding while no controller runs");
    lab.spawn_broker(&[]).expect("broker run again");
    let users = lab.cli(&["user", "list"]).unwrap();
    assert!(users.contains("ann"), "{users}");
    let tunnels = lab.cli(&["tunnel", "list"]).unwrap();
    assert!(tunnels.contains("heartbeat"), "{tunnels}");
    assert!(no_loss(&lab, 5), "forwarding after the restart");
    assert!(
        lab.broker().stop(std::time::Duration::from_secs(30)),
        "SIGTERM ends the controller cleanly:\n{}",
        lab.broker_log()
    );
}

#[test]
fn a_pop_follows_its_store_to_a_promoted_standby() {
    let dir = tempfile::tempdir().unwrap();
    let mut primary = Cluster::start().expect("a PostgreSQL cluster");
    primary.create_database("broker").unwrap();
    let standby = primary.standby().expect("a streaming standby");
    assert!(standby.in_recovery().unwrap());
    let lab = lab_on("f", dir.path(), &[&primary, &standby]);
    lab.cli(&["user", "add", "ann", "--password", "correct horse battery"])
        .unwrap();

    // The primary is lost: changes are refused as unavailable, forwarding goes on.
    assert!(primary.stop(), "the primary shut down");
    let refused = lab
        .cli(&["user", "add", "bob", "--password", "correct horse battery"])
        .expect_err("no primary to write to");
    assert!(
        format!("{refused:#}").contains("unavailable"),
        "{refused:#}"
    );
    assert!(no_loss(&lab, 10), "forwarding while the store is away");

    // The standby is promoted while the client pings: the next change finds it, without
    // a restart, and no echo is lost meanwhile.
    std::thread::scope(|s| {
        let pinging = s.spawn(|| no_loss(&lab, 25));
        standby.promote().expect("promoting the standby");
        assert!(!standby.in_recovery().unwrap());
        broker_tests::eventually(20, "a change reaches the promoted standby", || {
            lab.cli(&["user", "add", "bob", "--password", "correct horse battery"])
                .is_ok()
        });
        assert!(pinging.join().unwrap(), "forwarding through the failover");
    });
    assert_eq!(
        standby
            .psql(
                "broker",
                "SELECT string_agg(name, ' ' ORDER BY name) FROM users"
            )
            .unwrap(),
        "ann bob",
        "what the primary had, and the change made after the failover"
    );
}
