//! `broker run` on a PostgreSQL store (docs/MULTI-POP.md): a throwaway cluster started by
//! the test, the real binary in the lab. Its static tunnel forwards and is kept in
//! PostgreSQL, users and tunnels made through the CLI land there, and a controller
//! killed and started again finds them there while forwarding never stopped.
use std::os::unix::fs::PermissionsExt;

use broker_tests::{
    lab::{Lab, INET6_HOST},
    postgres::Cluster,
    require_root,
};

#[test]
fn a_pop_runs_on_postgresql_and_comes_back_to_it_after_a_kill() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Declared before the lab, so dropped after it: the broker stops first.
    let pg = Cluster::start().expect("a PostgreSQL cluster (cargo xtask setup installs it)");
    pg.create_database("broker").unwrap();
    let password_file = dir.path().join("db-password");
    std::fs::write(&password_file, format!("{}\n", pg.password())).unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let prefix = format!("bq{}", std::process::id());
    let mut lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    let sqlite = format!(
        "store:\n  path: {}\n",
        dir.path().join("broker.db").display()
    );
    let config = lab.config_yaml(&prefix);
    assert!(config.contains(&sqlite), "{config}");
    let config = config.replace(
        &sqlite,
        &format!(
            "store:\n  url: {}\n  password_file: {}\n",
            pg.conninfo("broker"),
            password_file.display()
        ),
    );
    lab.start_broker(&prefix, &config).expect("broker run");
    assert!(
        lab.broker_log().contains("store=host="),
        "the start names its store:\n{}",
        lab.broker_log()
    );
    assert!(
        !dir.path().join("broker.db").exists(),
        "no SQLite file besides PostgreSQL"
    );
    let v4 = lab.clients[0].v4;
    lab.start_client(1, v4).unwrap();
    lab.wait_reachable(1, INET6_HOST)
        .expect("the static tunnel forwards");

    // The static tunnel, a user and a tunnel made at run time are PostgreSQL's rows.
    let id = lab.clients[0].tunnel_id();
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
    lab.ping(1, INET6_HOST, 3, "0.2")
        .expect("forwarding while no controller runs");
    lab.spawn_broker(&[]).expect("broker run again");
    let users = lab.cli(&["user", "list"]).unwrap();
    assert!(users.contains("ann"), "{users}");
    let tunnels = lab.cli(&["tunnel", "list"]).unwrap();
    assert!(tunnels.contains("heartbeat"), "{tunnels}");
    lab.ping(1, INET6_HOST, 3, "0.2")
        .expect("forwarding after the restart");
}
