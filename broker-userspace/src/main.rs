//! The `broker` command line. Each subcommand is a thin call into the library.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Context;
use broker_userspace::{
    client::proto41,
    config::{AttachMode, Config},
    daemon,
    dataplane::{self, aux::Aux, Dataplane, PinnedCounters},
    report::Report,
};
use clap::{Parser, Subcommand, ValueEnum};
use ipnet::Ipv6Net;

#[derive(Parser)]
#[command(
    name = "broker",
    version,
    about = "IPv6 tunnel broker with an XDP data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the PoP: load and attach the data plane, serve the configured tunnels.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Counters of a running instance, read from its pinned maps.
    Stats {
        #[arg(long, default_value = "pop1")]
        instance: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Low-level data plane operations.
    Dataplane {
        #[command(subcommand)]
        command: DataplaneCommand,
    },
    /// Run the client side of a tunnel on this host.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file without touching the kernel.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DataplaneCommand {
    /// Load the XDP program and attach it to one interface with empty maps, print the
    /// program id and the maps, and keep it attached until Ctrl-C.
    Load {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = Mode::Driver)]
        mode: Mode,
        /// Pins go to /sys/fs/bpf/broker/<instance>/.
        #[arg(long, default_value = "adhoc")]
        instance: String,
    },
    /// Keep an XDP_PASS program on interfaces until SIGINT/SIGTERM. A veth only receives
    /// frames its peer sends with XDP_TX when it has an XDP program itself, so lab peers of
    /// the PoP run this (real NICs do not need it).
    Pass {
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// A proto-41 (6in4) tunnel endpoint in user space: a TUN device and a raw socket.
    Proto41 {
        /// The PoP's IPv4 address.
        #[arg(long)]
        server: Ipv4Addr,
        /// This host's IPv4 address (the tunnel's client endpoint).
        #[arg(long)]
        local: Ipv4Addr,
        /// The client's tunnel address with the link prefix length, e.g.
        /// 2001:db8:10:1::2/64.
        #[arg(long)]
        address: Ipv6Net,
        /// TUN device name.
        #[arg(long, default_value = "brk6in4")]
        name: String,
        #[arg(long, default_value_t = 1480)]
        mtu: u16,
        /// Further prefixes to route into the tunnel (repeatable).
        #[arg(long = "route")]
        routes: Vec<Ipv6Net>,
        /// Do not route ::/0 into the tunnel.
        #[arg(long)]
        no_default_route: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Driver,
    Skb,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok (instance {}, {} interfaces, {} tunnels)",
                    file.display(),
                    c.instance,
                    c.interfaces.len(),
                    c.tunnels.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                std::process::exit(1);
            }
        },
        Command::Run { config } => runtime()?.block_on(daemon::run(config)),
        Command::Stats { instance, json } => {
            let pinned = PinnedCounters::open(&instance)
                .with_context(|| format!("is instance {instance} running?"))?;
            let report = Report::new(&pinned.global()?, &pinned.tunnels()?);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Dataplane {
            command:
                DataplaneCommand::Load {
                    iface,
                    mode,
                    instance,
                },
        } => runtime()?.block_on(load_only(iface, mode, instance)),
        Command::Dataplane {
            command: DataplaneCommand::Pass { ifaces },
        } => runtime()?.block_on(pass_only(ifaces)),
        Command::Client {
            command:
                ClientCommand::Proto41 {
                    server,
                    local,
                    address,
                    name,
                    mtu,
                    routes,
                    no_default_route,
                },
        } => runtime()?.block_on(proto41::run(proto41::Options {
            server,
            local,
            address,
            name,
            mtu,
            default_route: !no_default_route,
            routes,
        })),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn load_only(iface: String, mode: Mode, instance: String) -> anyhow::Result<()> {
    let mut dp = Dataplane::load(&dataplane::Options {
        pin: true,
        ..dataplane::Options::new(&instance)
    })?;
    let mode = match mode {
        Mode::Driver => AttachMode::Driver,
        Mode::Skb => AttachMode::Skb,
    };
    dp.attach(&iface, mode)?;
    println!("program id: {}", dp.program_id()?);
    println!("attached to: {iface} ({mode:?} mode)");
    println!("maps:");
    for (name, pin) in dp.map_names() {
        match pin {
            Some(p) => println!("  {name:<14} pinned at {}", p.display()),
            None => println!("  {name}"),
        }
    }
    println!("Ctrl-C or SIGTERM detaches and unpins.");
    wait_for_stop().await
}

async fn pass_only(ifaces: Vec<String>) -> anyhow::Result<()> {
    let mut aux = Aux::load()?;
    for iface in &ifaces {
        let _link = aux.attach_by_name(broker_common::consts::program_names::PASS, iface)?;
    }
    tracing::info!(?ifaces, "xdp_pass attached");
    wait_for_stop().await
}

async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
