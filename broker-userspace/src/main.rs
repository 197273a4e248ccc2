//! The `broker` command line. Each subcommand is a thin call into the library.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::Context;
use broker_userspace::{
    api::tunnels::TunnelOut,
    cli::{self, ApiClient},
    client::{self, proto41},
    clientconf,
    config::{AttachMode, Config},
    daemon,
    dataplane::{self, aux::Aux, Dataplane, PinnedCounters},
    report::Report,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::Ipv6Net;
use serde_json::{json, Value};

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
    /// Run the PoP: take over or load the data plane, reconcile it with the store, serve
    /// the API. Stopping leaves the data plane forwarding.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Tunnels, through the HTTP API.
    Tunnel {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// The PoPs sharing the store, through the HTTP API.
    Pop {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: PopCommand,
    },
    /// Users, through the HTTP API (administrator).
    User {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Counters of a running data plane, read from its pinned maps.
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

/// Where the API is and who is asking.
#[derive(Args)]
struct ApiArgs {
    /// Base URL of `broker run`'s API.
    #[arg(
        long,
        env = "BROKER_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api: String,
    /// The administrator's bearer token (`api.admin_token`).
    #[arg(long, env = "BROKER_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A user name, with --password, instead of the token.
    #[arg(long, env = "BROKER_USER", global = true)]
    user: Option<String>,
    #[arg(long, env = "BROKER_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// PEM certificate(s) to trust for an https:// API with a private certificate.
    #[arg(long, env = "BROKER_CA", global = true)]
    ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        let user = self
            .user
            .as_deref()
            .map(|u| (u, self.password.as_deref().unwrap_or("")));
        Ok(ApiClient::new(
            &self.api,
            self.token.as_deref(),
            user,
            self.ca.as_deref(),
        )?)
    }
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Create a tunnel; prefixes are allocated from the pools unless named.
    Add {
        /// The client's endpoint: IPv4 (proto41), IPv4:port (v6udpv4) or IPv6 (v4v6);
        /// none for ayiya and heartbeat, which learn it from the client.
        #[arg(long)]
        remote: Option<cli::Remote>,
        /// proto41 (default), v6udpv4, v4v6, ayiya or heartbeat.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Owner (administrator only; a user creates for themselves).
        #[arg(long)]
        owner: Option<String>,
        /// Allocate a routed prefix of this length.
        #[arg(long)]
        routed_length: Option<u8>,
        #[arg(long)]
        mtu: Option<u16>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// A specific link /64 from the link pools.
        #[arg(long)]
        link_prefix: Option<Ipv6Net>,
        /// A specific routed prefix from the routed pools.
        #[arg(long)]
        routed_prefix: Option<Ipv6Net>,
        /// The PoP to create it on (default: the least loaded healthy one).
        #[arg(long)]
        pop: Option<String>,
    },
    /// Create many tunnels from a file: a JSON array of what `tunnel add` takes as API
    /// fields (`remote_ipv4`, `kind`, `owner`, ...); sent in requests of 5000.
    Import {
        /// The file, or `-` for standard input.
        file: PathBuf,
    },
    /// List tunnels, every page of them (or `--limit` at most), filtered.
    List {
        #[arg(long)]
        pop: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// The client's address.
        #[arg(long)]
        endpoint: Option<String>,
        /// Tunnels whose link or routed prefix overlaps this prefix or address.
        #[arg(long)]
        prefix: Option<String>,
        /// Show at most this many (one page).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one tunnel with its counters, or the commands for its client.
    Show {
        id: u32,
        #[arg(long, value_enum)]
        client_config: Option<clientconf::System>,
    },
    /// Change a tunnel's endpoint, state or MTU, or move it to another PoP.
    Set {
        id: u32,
        /// New endpoint: IPv4, IPv4:port or IPv6, as the tunnel's kind has.
        #[arg(long)]
        remote: Option<cli::Remote>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long)]
        mtu: Option<u16>,
        /// Move it to this PoP (new prefixes from that PoP's pools).
        #[arg(long)]
        pop: Option<String>,
    },
    /// Delete a tunnel; its prefixes go into quarantine.
    Del { id: u32 },
    /// A new update key for /nic/update, shown this once (only its hash is kept).
    UpdateKey { id: u32 },
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Proto41,
    V6udpv4,
    V4v6,
    Ayiya,
    Heartbeat,
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Up,
    Down,
    Disabled,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Up => "up",
            StateArg::Down => "down",
            StateArg::Disabled => "disabled",
        }
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints the password (generated unless given).
    Add {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    List,
    /// Delete a user without tunnels.
    Del {
        name: String,
    },
}

#[derive(Subcommand)]
enum PopCommand {
    /// Every PoP: addresses, health, and (administrator) version, data plane, tunnels.
    List,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file without touching the kernel.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DataplaneCommand {
    /// Load the XDP program with empty maps, attach it to one interface (not pinned), print
    /// the program id and the maps, and detach on Ctrl-C/SIGTERM.
    Load {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = Mode::Driver)]
        mode: Mode,
    },
    /// Detach a running data plane from every interface and remove its pins.
    Detach {
        #[arg(long)]
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
    /// A TSP client (RFC 5572, as gogoc): negotiates its tunnel with the broker (UDP,
    /// then TCP), runs it on a TUN device, keeps it alive and negotiates again when it dies.
    Tsp {
        /// The broker: host, host:port or [IPv6]:port (default port 3653). DIGEST-MD5
        /// names it in its digest-uri as given here.
        #[arg(long)]
        server: String,
        /// Authenticate as this user (without one: anonymous).
        #[arg(long, requires = "password")]
        user: Option<String>,
        /// The user's password (or BROKER_TSP_PASSWORD).
        #[arg(long, env = "BROKER_TSP_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// Tunnel type: v6anyv4 lets the broker pick v6udpv4 behind a NAT, else v6v4.
        #[arg(long = "type", value_enum, default_value_t = TspType::V6anyv4)]
        tunnel_type: TspType,
        /// host: an address; router: also a routed prefix.
        #[arg(long, value_enum, default_value_t = TspMode::Host)]
        mode: TspMode,
        /// Length of the routed prefix asked for in router mode.
        #[arg(long, default_value_t = 48)]
        prefix_length: u8,
        #[arg(long, value_enum, default_value_t = client::tsp::TransportChoice::Auto)]
        transport: client::tsp::TransportChoice,
        /// TUN device name.
        #[arg(long, default_value = "tsp0")]
        name: String,
        /// Send keepalives at least this often (seconds), even if the broker offers less.
        #[arg(long)]
        keepalive: Option<u32>,
        /// Do not route the default route (::/0, or 0.0.0.0/0 for v4v6) into the tunnel.
        #[arg(long)]
        no_default_route: bool,
    },
    /// A SixXS `ayiya` client (as AICCU): fetches its tunnel over TIC, then runs it as
    /// signed IPv6 in UDP on a TUN device, through any NAT.
    Ayiya {
        #[command(flatten)]
        login: TicLogin,
        /// The PoP's AYIYA port.
        #[arg(long, default_value_t = broker_common::consts::AYIYA_PORT)]
        ayiya_port: u16,
        /// TUN device name.
        #[arg(long, default_value = "sixxs")]
        name: String,
        /// Do not route ::/0 into the tunnel.
        #[arg(long)]
        no_default_route: bool,
    },
    /// A SixXS heartbeat client (as aiccu): fetches the tunnel over TIC, runs it as
    /// proto-41 on a TUN device and beats to the PoP every Heartbeat_Interval.
    Heartbeat {
        #[command(flatten)]
        login: TicLogin,
        /// This host's IPv4 address (the tunnel's client endpoint).
        #[arg(long)]
        local: Ipv4Addr,
        /// The PoP's heartbeat port.
        #[arg(long, default_value_t = 3740)]
        heartbeat_port: u16,
        /// TUN device name.
        #[arg(long, default_value = "sixxs")]
        name: String,
        /// Further prefixes to route into the tunnel (repeatable).
        #[arg(long = "route")]
        routes: Vec<Ipv6Net>,
        /// Do not route ::/0 into the tunnel.
        #[arg(long)]
        no_default_route: bool,
    },
}

/// Where and as whom aiccu-style clients fetch their tunnel.
#[derive(Args)]
struct TicLogin {
    /// The TIC server: host or host:port (default port 3874).
    #[arg(long)]
    server: String,
    /// The account's user name.
    #[arg(long)]
    username: String,
    /// The account's password (or BROKER_TIC_PASSWORD).
    #[arg(long, env = "BROKER_TIC_PASSWORD", hide_env_values = true)]
    password: String,
    /// The tunnel id (T123 or 123); default: the first the account lists.
    #[arg(long)]
    tunnel: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TspType {
    V6anyv4,
    V6v4,
    V6udpv4,
    V4v6,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TspMode {
    Host,
    Router,
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
    match Cli::parse().command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Run { config } => runtime()?.block_on(daemon::run(config)),
        Command::Tunnel { api, command } => tunnel(&api, command),
        Command::User { api, command } => user(&api, command),
        Command::Pop {
            api,
            command: PopCommand::List,
        } => {
            let pops: Vec<broker_userspace::api::pops::PopOut> =
                api.client()?.call("GET", "/api/v1/pops", None)?;
            show(api.json, &pops, |ps| cli::pops_table(ps))
        }
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
        Command::Dataplane { command } => match command {
            DataplaneCommand::Load { iface, mode } => runtime()?.block_on(load_only(iface, mode)),
            DataplaneCommand::Detach { instance } => {
                let removed = dataplane::detach_instance(&instance)?;
                if removed.is_empty() {
                    println!("nothing pinned for instance {instance}");
                }
                for r in removed {
                    println!("removed {r}");
                }
                Ok(())
            }
            DataplaneCommand::Pass { ifaces } => runtime()?.block_on(pass_only(ifaces)),
        },
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
        Command::Client {
            command:
                ClientCommand::Tsp {
                    server,
                    user,
                    password,
                    tunnel_type,
                    mode,
                    prefix_length,
                    transport,
                    name,
                    keepalive,
                    no_default_route,
                },
        } => {
            use broker_userspace::tsp::xml::RequestedType;
            runtime()?.block_on(client::tsp::run(client::tsp::Options {
                server,
                user,
                password,
                tunnel_type: match tunnel_type {
                    TspType::V6anyv4 => RequestedType::V6AnyV4,
                    TspType::V6v4 => RequestedType::V6V4,
                    TspType::V6udpv4 => RequestedType::V6UdpV4,
                    TspType::V4v6 => RequestedType::V4V6,
                },
                router: (mode == TspMode::Router).then_some(prefix_length),
                transport,
                name,
                keepalive,
                default_route: !no_default_route,
            }))
        }
        Command::Client {
            command:
                ClientCommand::Ayiya {
                    login,
                    ayiya_port,
                    name,
                    no_default_route,
                },
        } => runtime()?.block_on(client::ayiya::run_from_tic(client::ayiya::TicOptions {
            server: tic_server(&login.server)?,
            tunnel: login.tunnel.as_deref().map(tunnel_id).transpose()?,
            username: login.username,
            password: login.password,
            port: ayiya_port,
            tun_name: name,
            default_route: !no_default_route,
        })),
        Command::Client {
            command:
                ClientCommand::Heartbeat {
                    login,
                    local,
                    heartbeat_port,
                    name,
                    routes,
                    no_default_route,
                },
        } => runtime()?.block_on(client::heartbeat::run(client::heartbeat::Options {
            server: tic_server(&login.server)?,
            tunnel: login.tunnel.as_deref().map(tunnel_id).transpose()?,
            username: login.username,
            password: login.password,
            local,
            heartbeat_port,
            name,
            default_route: !no_default_route,
            routes,
        })),
    }
}

/// `host[:port]` of a TIC server, resolved to an IPv4 socket address (the TIC server
/// listens on the PoP's IPv4).
fn tic_server(server: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let with_port = if server.parse::<std::net::SocketAddr>().is_ok() || server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:3874")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {with_port}"))?
        .find(std::net::SocketAddr::is_ipv4)
        .with_context(|| format!("{with_port} has no IPv4 address"))
}

/// `T123` or `123`.
fn tunnel_id(s: &str) -> anyhow::Result<u32> {
    s.strip_prefix(['T', 't'])
        .unwrap_or(s)
        .parse()
        .with_context(|| format!("{s:?} is not a tunnel id (T123 or 123)"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    match Config::load(file) {
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
    }
}

/// Prints `v` as JSON, or `table(v)`.
fn show<T: serde::Serialize>(
    json: bool,
    v: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", table(v));
    }
    Ok(())
}

fn tunnel(api: &ApiArgs, command: TunnelCommand) -> anyhow::Result<()> {
    let c = api.client()?;
    match command {
        TunnelCommand::Add {
            remote,
            kind,
            owner,
            routed_length,
            mtu,
            state,
            link_prefix,
            routed_prefix,
            pop,
        } => {
            let mut body = remote.map_or_else(|| serde_json::json!({}), |r| r.json());
            if let Some(k) = kind {
                body["kind"] = match k {
                    KindArg::Proto41 => "proto41",
                    KindArg::V6udpv4 => "v6udpv4",
                    KindArg::V4v6 => "v4v6",
                    KindArg::Ayiya => "ayiya",
                    KindArg::Heartbeat => "heartbeat",
                }
                .into();
            }
            let fields: [(&str, Option<Value>); 7] = [
                ("pop", pop.map(Value::from)),
                ("owner", owner.map(Value::from)),
                ("routed_prefix_length", routed_length.map(Value::from)),
                ("mtu", mtu.map(Value::from)),
                ("state", state.map(|s| Value::from(s.as_str()))),
                (
                    "link_prefix",
                    link_prefix.map(|p| Value::from(p.to_string())),
                ),
                (
                    "routed_prefix",
                    routed_prefix.map(|p| Value::from(p.to_string())),
                ),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            let t: TunnelOut = c.call("POST", "/api/v1/tunnels", Some(&body))?;
            show(api.json, &t, cli::tunnel_detail)
        }
        TunnelCommand::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let items: Vec<Value> = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a JSON array", file.display()))?;
            let (mut created, mut refused) = (0usize, 0usize);
            for (n, chunk) in items
                .chunks(broker_userspace::api::import::MAX_ITEMS)
                .enumerate()
            {
                let answers: Vec<Value> =
                    c.call("POST", "/api/v1/tunnels/import", Some(&Value::from(chunk)))?;
                for (i, a) in answers.iter().enumerate() {
                    if a.get("error").is_some() {
                        refused += 1;
                        eprintln!(
                            "item {}: {}",
                            n * broker_userspace::api::import::MAX_ITEMS + i,
                            a["error"]
                        );
                    } else {
                        created += 1;
                    }
                }
            }
            println!("created {created}, refused {refused}");
            Ok(())
        }
        TunnelCommand::List {
            pop,
            owner,
            kind,
            state,
            endpoint,
            prefix,
            limit,
        } => {
            let query: Vec<(&str, String)> = [
                ("pop", pop),
                ("owner", owner),
                ("kind", kind),
                ("state", state),
                ("endpoint", endpoint),
                ("prefix", prefix),
                ("limit", limit.map(|n| n.to_string())),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            let mut path = format!(
                "/api/v1/tunnels?{}",
                serde_urlencoded::to_string(&query).unwrap_or_default()
            );
            // Page by page, printed as they come: a million tunnels never sit in memory.
            let mut first = true;
            loop {
                let (ts, next): (Vec<TunnelOut>, _) = c.call_paged("GET", &path, None)?;
                cli::print_page(api.json, &ts, first, next.is_none() || limit.is_some());
                first = false;
                match next {
                    Some(n) if limit.is_none() => path = n,
                    _ => return Ok(()),
                }
            }
        }
        TunnelCommand::Show { id, client_config } => {
            let t: TunnelOut = c.call("GET", &format!("/api/v1/tunnels/{id}"), None)?;
            match client_config {
                Some(system) => {
                    print!("{}", clientconf::render(&t, system));
                    Ok(())
                }
                None => show(api.json, &t, cli::tunnel_detail),
            }
        }
        TunnelCommand::Set {
            id,
            remote,
            state,
            mtu,
            pop,
        } => {
            let mut body = remote.map_or_else(|| json!({}), |r| r.json());
            if let Some(p) = pop {
                body["pop"] = p.into();
            }
            if let Some(s) = state {
                body["state"] = s.as_str().into();
            }
            if let Some(m) = mtu {
                body["mtu"] = m.into();
            }
            let t: TunnelOut = c.call("PATCH", &format!("/api/v1/tunnels/{id}"), Some(&body))?;
            show(api.json, &t, cli::tunnel_detail)
        }
        TunnelCommand::Del { id } => {
            c.call::<Value>("DELETE", &format!("/api/v1/tunnels/{id}"), None)?;
            if !api.json {
                println!("tunnel {id} deleted");
            }
            Ok(())
        }
        TunnelCommand::UpdateKey { id } => {
            let v: Value = c.call("POST", &format!("/api/v1/tunnels/{id}/update-key"), None)?;
            if api.json {
                println!("{v}");
            } else {
                println!(
                    "update key of tunnel {id}: {} (shown once)",
                    v["update_key"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

fn user(api: &ApiArgs, command: UserCommand) -> anyhow::Result<()> {
    let c = api.client()?;
    match command {
        UserCommand::Add { name, password } => {
            let mut body = json!({ "name": name });
            if let Some(p) = password {
                body["password"] = p.into();
            }
            let u: Value = c.call("POST", "/api/v1/users", Some(&body))?;
            show(api.json, &u, |u| {
                format!(
                    "user {} created, password {}\n",
                    u["name"].as_str().unwrap_or(""),
                    u["password"].as_str().unwrap_or("")
                )
            })
        }
        UserCommand::List => {
            let us: Vec<Value> = c.call("GET", "/api/v1/users", None)?;
            show(api.json, &us, |us| {
                let mut s = format!("{:<20} {:<12} tunnels\n", "name", "created");
                for u in us {
                    s.push_str(&format!(
                        "{:<20} {:<12} {}\n",
                        u["name"].as_str().unwrap_or(""),
                        u["created_at"],
                        u["tunnels"]
                    ));
                }
                s
            })
        }
        UserCommand::Del { name } => {
            c.call::<Value>("DELETE", &format!("/api/v1/users/{name}"), None)?;
            if !api.json {
                println!("user {name} deleted");
            }
            Ok(())
        }
    }
}

async fn load_only(iface: String, mode: Mode) -> anyhow::Result<()> {
    let mut dp = Dataplane::load(&dataplane::Options::new("adhoc"))?;
    let mode = match mode {
        Mode::Driver => AttachMode::Driver,
        Mode::Skb => AttachMode::Skb,
    };
    dp.attach(&iface, mode)?;
    println!("program id: {}", dp.program_id()?);
    println!("attached to: {iface} ({mode:?} mode)");
    println!("maps:");
    for (name, _) in dp.map_names() {
        println!("  {name}");
    }
    println!("Ctrl-C or SIGTERM detaches.");
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
