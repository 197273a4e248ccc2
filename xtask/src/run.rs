//! `cargo xtask run`: the main job. Without a config it brings up the lab, shows a ping
//! through each tunnel and the counters, and forwards until Ctrl-C; with `--config FILE` it
//! runs `broker run` on the host's real interfaces.
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Result;
use broker_tests::lab::{INET6_HOST, ISP_LAN_V4, SIXXS_TUN, TSP_TUN};
use clap::Args;

use crate::{
    lab,
    util::{build_broker, exec},
};

#[derive(Args)]
pub struct Options {
    /// Run on real interfaces with this config instead of the lab.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Clients (and tunnels) in the lab.
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// PoPs (2-9: several PoPs on PostgreSQL, announced by BGP; docs/MULTI-POP.md).
    #[arg(long, default_value_t = 1)]
    pops: u8,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(o: Options) -> Result<()> {
    if let Some(config) = o.config {
        let broker = build_broker()?;
        return exec(Command::new(broker).arg("run").arg("--config").arg(config));
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if o.pops > 1 {
        return run_pops(o.clients, o.pops);
    }
    let lab = lab::up(o.clients)?;
    lab::print_summary(&lab);
    for c in &lab.clients {
        println!(
            "\n== client {} pings {} through tunnel {} ==",
            c.index,
            INET6_HOST,
            c.tunnel_id()
        );
        lab.wait_reachable(c.index, INET6_HOST)?;
        print!("{}", lab.ping(c.index, INET6_HOST, 3, "0.2")?);
    }
    for (role, what, dst, family, tun) in [
        (
            "t1",
            "TSP client behind the NAT, over v6udpv4",
            INET6_HOST.to_string(),
            "-6",
            TSP_TUN,
        ),
        (
            "t6",
            "TSP client, IPv6-only, IPv4 over v4v6",
            ISP_LAN_V4.to_string(),
            "-4",
            TSP_TUN,
        ),
        (
            "a1",
            "SixXS client behind the NAT, tunnel from TIC, over AYIYA",
            INET6_HOST.to_string(),
            "-6",
            SIXXS_TUN,
        ),
        (
            "h1",
            "SixXS client, tunnel from TIC, proto-41 with heartbeats",
            INET6_HOST.to_string(),
            "-6",
            SIXXS_TUN,
        ),
    ] {
        let ns = lab.host(role);
        println!("\n== {what}: {} pings {dst} ==", ns.name());
        print!("{}", ns.ip(&[family, "-br", "addr", "show", "dev", tun])?);
        // The first packets may resolve neighbours (or, for AYIYA, tell the PoP where the
        // client is): wait for one answer, then show three.
        let once = [family, "-n", "-c", "1", "-W", "1", dst.as_str()];
        if !(0..10).any(|_| ns.exec("ping", &once).is_ok()) {
            anyhow::bail!("{dst} unreachable from {}", ns.name());
        }
        print!(
            "{}",
            ns.exec(
                "ping",
                &[family, "-n", "-c", "3", "-i", "0.2", "-W", "2", &dst]
            )?
        );
    }
    // The broker stores where AYIYA clients were heard every 10 s: wait for it, so that the
    // list below shows the NAT's mapping rather than an endpoint still unknown.
    for _ in 0..60 {
        let list = lab.cli(&["tunnel", "list"])?;
        if !list.contains("0.0.0.0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\n== broker stats --instance {} ==", lab::INSTANCE);
    print!("{}", lab.stats(false)?);
    println!(
        "\n== broker tunnel list (through the API in {}) ==",
        lab.pop.name()
    );
    print!("{}", lab.cli(&["tunnel", "list"])?);
    println!("\nForwarding. Try:");
    println!(
        "  ip netns exec {} ping -6 {INET6_HOST}",
        lab.clients[0].ns.name()
    );
    println!(
        "  ip netns exec {} ping -6 {INET6_HOST}     # through the NAT, v6udpv4",
        lab.host("t1").name()
    );
    println!(
        "  ip netns exec {} ping -6 {INET6_HOST}     # through the NAT, AYIYA",
        lab.host("a1").name()
    );
    println!(
        "  ip netns exec {} env BROKER_TOKEN={} target/debug/broker tunnel add --remote 198.51.100.99 --routed-length 56",
        lab.pop.name(),
        broker_tests::lab::LAB_TOKEN
    );
    println!("  target/debug/broker stats --instance {}", lab::INSTANCE);
    // The portal, for a browser on this machine: relayed from the loopback into the PoP
    // (no route into the lab is added).
    let relay = portal_relay(&lab);
    match &relay {
        Ok(r) => println!(
            "Portal: http://{}/ (operator {} / {}; sign-up is open)",
            r.at,
            broker_tests::lab::LAB_OPERATOR,
            lab::OPERATOR_PASSWORD
        ),
        Err(e) => println!(
            "Portal: not relayed to this machine ({e:#}); inside the lab at http://192.0.2.1:8080/"
        ),
    }
    println!("Ctrl-C stops the lab.");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping the lab");
    drop(lab);
    lab::cleanup_state()
}

/// A relay from 127.0.0.1:8080 (or any free port) to the lab's portal.
fn portal_relay(lab: &broker_tests::lab::Lab) -> Result<broker_tests::relay::Relay> {
    let target = (std::net::Ipv4Addr::LOCALHOST, broker_tests::lab::API_PORT).into();
    broker_tests::relay::Relay::start(
        (std::net::Ipv4Addr::LOCALHOST, broker_tests::lab::API_PORT).into(),
        &lab.pop,
        target,
    )
    .or_else(|_| {
        broker_tests::relay::Relay::start(
            (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            &lab.pop,
            target,
        )
    })
}

/// `cargo xtask run --pops N`: PostgreSQL, N PoPs with BIRD and an upstream router,
/// clients on every PoP; shows each tunnel forwarding, then forwards until Ctrl-C.
fn run_pops(clients: u32, pops: u8) -> Result<()> {
    // Declared before the lab, so dropped after it: the brokers stop first.
    let pg = broker_tests::postgres::Cluster::start()?;
    let lab = lab::up_pops(clients, pops, &pg)?;
    lab::print_pops_summary(&lab, pops)?;
    for c in &lab.clients {
        println!(
            "\n== client {} pings {INET6_HOST} through its tunnel ==",
            c.index
        );
        print!("{}", lab.ping(c.index, INET6_HOST, 3, "0.2")?);
    }
    println!("\nForwarding. Try:");
    println!(
        "  ip netns exec {} env BROKER_TOKEN={} target/debug/broker tunnel add --remote 198.51.100.99 --pop pop2",
        lab.pop.name(),
        broker_tests::lab::LAB_TOKEN
    );
    println!(
        "  ip netns exec {} ip -6 route show proto bird",
        lab.inet6.name()
    );
    println!("Ctrl-C stops the lab.");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping the lab");
    drop(lab);
    drop(pg);
    lab::cleanup_state()
}
