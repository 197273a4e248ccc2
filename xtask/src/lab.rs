//! `cargo xtask lab up|down`: the lab of network namespaces, left running in the
//! background with the broker, one proto-41 client per client namespace, two TSP clients
//! (one behind a NAT: v6udpv4, one IPv6-only: v4v6) and two SixXS clients that fetch their
//! tunnels over TIC (one behind the NAT: AYIYA, one with heartbeats: proto-41).
use std::path::PathBuf;

use anyhow::Result;
use broker_tests::{
    lab::{pops, Lab, HEARTBEAT_HOST, INET6_HOST, LAB_OPERATOR, POP_NATIVE_V6, POP_V4},
    postgres::Cluster,
};
use clap::Subcommand;

use crate::util::build_broker;

/// Prefix of the lab's namespace names.
pub const PREFIX: &str = "brk-lab";
/// Broker instance of the lab (the same name as its namespaces' prefix).
pub const INSTANCE: &str = PREFIX;

/// Where the lab keeps its config, logs and the PIDs it started.
pub fn state_dir() -> PathBuf {
    PathBuf::from("/run/broker-lab")
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Create the namespaces, start `broker run` in the PoP and the tunnel clients.
    Up {
        /// Number of client namespaces, each with a proto-41 tunnel.
        #[arg(long, default_value_t = 2)]
        clients: u32,
        /// PoPs (2-9: several PoPs on PostgreSQL, announced by BGP to an upstream
        /// router; docs/MULTI-POP.md).
        #[arg(long, default_value_t = 1)]
        pops: u8,
    },
    /// Stop the lab's processes (by PID) and delete its namespaces.
    Down,
}

pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up { clients, pops } if pops > 1 => {
            let pg = Cluster::start_detached()?;
            let lab = up_pops(clients, pops, &pg)?;
            print_pops_summary(&lab, pops)?;
            lab.keep()?;
            // Left running with the lab; `lab down` stops it.
            std::fs::write(
                state_dir().join("postgres"),
                pg.leave_running().display().to_string(),
            )?;
            println!("lab is up; `cargo xtask lab down` removes it");
            Ok(())
        }
        LabCommand::Up { clients, .. } => {
            let lab = up(clients)?;
            print_summary(&lab);
            lab.keep()?;
            println!("lab is up; `cargo xtask lab down` removes it");
            Ok(())
        }
        LabCommand::Down => {
            for what in Lab::destroy(PREFIX, INSTANCE, &state_dir())? {
                println!("removed {what}");
            }
            Ok(())
        }
    }
}

/// The TSP user of the lab's NATed client.
pub const TSP_USER: (&str, &str) = ("demo", "demo-password");
/// The SixXS users (TIC logins) of the AYIYA and the heartbeat client, each with one
/// tunnel of that kind.
pub const AYIYA_USER: (&str, &str) = ("ayiya-demo", "ayiya-password");
pub const HEARTBEAT_USER: (&str, &str) = ("hb-demo", "hb-password");
/// The password of the lab's portal operator ([`broker_tests::lab::LAB_OPERATOR`]).
pub const OPERATOR_PASSWORD: &str = "operator-password";

/// Builds the broker, replaces any previous lab, and starts a new one.
pub fn up(clients: u32) -> Result<Lab> {
    build_broker()?;
    Lab::destroy(PREFIX, INSTANCE, &state_dir())?;
    let mut lab = Lab::start(PREFIX, clients, &state_dir(), "")?;
    lab.add_tsp_hosts()?;
    lab.cli(&["user", "add", TSP_USER.0, "--password", TSP_USER.1])?;
    lab.cli(&["user", "add", LAB_OPERATOR, "--password", OPERATOR_PASSWORD])?;
    let natted = lab.start_tsp_client(
        "t1",
        &POP_V4.to_string(),
        &["--user", TSP_USER.0, "--password", TSP_USER.1],
    )?;
    let v6_only = lab.start_tsp_client("t6", &POP_NATIVE_V6.to_string(), &["--type", "v4v6"])?;
    lab.wait_tsp_up("t1", natted, "-6")?;
    lab.wait_tsp_up("t6", v6_only, "-4")?;
    lab.add_sixxs_hosts()?;
    for ((user, password), kind) in [(AYIYA_USER, "ayiya"), (HEARTBEAT_USER, "heartbeat")] {
        lab.cli(&["user", "add", user, "--password", password])?;
        lab.cli(&["tunnel", "add", "--kind", kind, "--owner", user])?;
    }
    let ayiya = lab.start_ayiya_client("a1", AYIYA_USER.0, AYIYA_USER.1, None)?;
    let heartbeat = lab.start_heartbeat_client(
        "h1",
        HEARTBEAT_USER.0,
        HEARTBEAT_USER.1,
        None,
        HEARTBEAT_HOST,
    )?;
    lab.wait_sixxs_up("a1", ayiya)?;
    lab.wait_sixxs_up("h1", heartbeat)?;
    lab.record_pids()?;
    Ok(lab)
}

/// Builds the broker, replaces any previous lab, and starts one of `pops` PoPs on the
/// PostgreSQL cluster `pg`: `clients` clients with static tunnels at PoP 1, and one client
/// per further PoP with a tunnel there.
pub fn up_pops(clients: u32, pops: u8, pg: &Cluster) -> Result<Lab> {
    build_broker()?;
    Lab::destroy(PREFIX, INSTANCE, &state_dir())?;
    let lab = pops::start(PREFIX, clients, 0, &state_dir(), pops, pg)?;
    lab.record_pids()?;
    Ok(lab)
}

/// What a lab of several PoPs holds, and the PoPs and BGP routes as they are now.
pub fn print_pops_summary(lab: &Lab, n: u8) -> Result<()> {
    println!("namespaces:");
    for p in 1..=n {
        println!(
            "  {:<16} PoP pop{p}: broker run (instance {}), BIRD, XDP on eth4 ({}) and eth6; pools {}",
            lab.pop_ns(p)?.name(),
            pops::instance_of(INSTANCE, p),
            lab.pop_v4(p)?,
            {
                let (link, routed, _) = pops::pools(p);
                format!("{link}, {routed}")
            }
        );
    }
    println!(
        "  {:<16} IPv4 router between clients and PoPs",
        lab.isp.name()
    );
    println!(
        "  {:<16} IPv6 internet host {INET6_HOST} and upstream router (BIRD, BGP with every PoP)",
        lab.inet6.name()
    );
    for c in &lab.clients {
        println!("  {:<16} client {} at {}", c.ns.name(), c.index, c.v4);
    }
    println!("\n== broker pop list (through the API of pop1) ==");
    print!("{}", lab.cli(&["pop", "list"])?);
    println!("\n== broker tunnel list ==");
    print!("{}", lab.cli(&["tunnel", "list"])?);
    println!("\n== routes the upstream learnt by BGP ==");
    print!("{}", lab.upstream_routes()?);
    println!("logs: {}", lab.dir.display());
    Ok(())
}

pub fn print_summary(lab: &Lab) {
    println!("namespaces:");
    println!(
        "  {:<16} PoP: broker run, XDP on eth4 (192.0.2.1) and eth6 (2001:db8:ffff::1)",
        lab.pop.name()
    );
    println!(
        "  {:<16} IPv4 router between clients and PoP",
        lab.isp.name()
    );
    println!(
        "  {:<16} IPv6 internet host 2001:db8:ffff::2",
        lab.inet6.name()
    );
    for c in &lab.clients {
        println!(
            "  {:<16} client {} at {}: tunnel {} {} -> {}",
            c.ns.name(),
            c.index,
            c.v4,
            c.tunnel_id(),
            c.address(),
            c.routed_prefix()
        );
    }
    println!(
        "  {:<16} NAT (198.51.100.200) in front of t1",
        lab.host("nat").name()
    );
    println!(
        "  {:<16} TSP client 203.0.113.10 behind the NAT, user {}: v6udpv4",
        lab.host("t1").name(),
        TSP_USER.0
    );
    println!(
        "  {:<16} IPv6-only TSP client 2001:db8:fffe::6, anonymous: v4v6",
        lab.host("t6").name()
    );
    println!(
        "  {:<16} SixXS client 203.0.113.70 behind the NAT, user {}: TIC, then AYIYA",
        lab.host("a1").name(),
        AYIYA_USER.0
    );
    println!(
        "  {:<16} SixXS client {HEARTBEAT_HOST}, user {}: TIC, then proto-41 with heartbeats",
        lab.host("h1").name(),
        HEARTBEAT_USER.0
    );
    println!(
        "portal: http://{POP_V4}:8080/ from the lab's clients; operator {LAB_OPERATOR} / {OPERATOR_PASSWORD}, sign-up open"
    );
    println!("config: {}", lab.config_path().display());
    println!("logs:   {}", lab.dir.display());
}

/// Removes the lab's state directory once its guards have cleaned up.
pub fn cleanup_state() -> Result<()> {
    let dir = state_dir();
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}
