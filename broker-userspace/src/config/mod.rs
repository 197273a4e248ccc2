//! The YAML configuration: typed with serde_yaml, then validated as a whole.
//!
//! Two kinds of error, both naming the key and the line:
//! - shape and value errors (unknown key, wrong type, an IPv6 address where IPv4 belongs,
//!   an MTU out of range) come from deserialisation, which knows where it is;
//! - rules across entries (duplicate ids, overlapping prefixes, duplicate endpoints) are
//!   checked afterwards and located with [`spans::SpanIndex`].
//!
//! The reference for operators is docs/CONFIGURATION.md.

mod spans;
mod types;
mod validate;

use std::{fmt, path::Path};

use serde::Deserialize;

pub use types::{Ipv4Field, Ipv6Field, LinkPrefix, Mtu, Prefix4, Prefix6};

/// Where XDP attaches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mode: AttachMode,
}

/// XDP attach mode: `driver` (native, the fast one) or `skb` (generic, any device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Driver,
    Skb,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pop {
    /// This PoP's name in the store (one word; default: the instance name). PoPs sharing
    /// a PostgreSQL store tell their tunnels apart by it (docs/MULTI-POP.md).
    #[serde(default)]
    pub name: Option<String>,
    /// Local endpoint of proto-41 and v6udpv4 tunnels, and where TSP listens.
    pub ipv4: Ipv4Field,
    /// Local endpoint of v4v6 tunnels (and where TSP listens for IPv6-only clients).
    #[serde(default)]
    pub ipv6: Option<Ipv6Field>,
    /// Whether tunnels may be pointed (through the API, `/nic/update` or this file) at
    /// private addresses (RFC 1918, 6598, link-local, unique-local): a datacenter may
    /// tunnel over private addressing; a public PoP must not send tunnel traffic into its
    /// own networks on a user's say-so.
    #[serde(default)]
    pub private_endpoints: bool,
}

/// What one user may hold, whichever way they ask (API, TSP). The operator is not held
/// to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Tunnels a user may own.
    #[serde(default = "default_tunnels_per_user")]
    pub tunnels_per_user: u32,
    /// Routed prefixes a user's tunnels may carry, together.
    #[serde(default = "default_routed_per_user")]
    pub routed_prefixes_per_user: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            tunnels_per_user: default_tunnels_per_user(),
            routed_prefixes_per_user: default_routed_per_user(),
        }
    }
}

fn default_tunnels_per_user() -> u32 {
    5
}
fn default_routed_per_user() -> u32 {
    5
}

/// Data plane sizing and tuning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneLimits {
    /// Capacity of the tunnel maps (memory is reserved up front for the arrays).
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels: u32,
    /// Capacity of the prefix map (link and routed prefixes of all tunnels).
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: u32,
    /// Capacity of each kind's endpoint map (each defaults to `max_tunnels`): a PoP that
    /// serves only some kinds need not reserve memory for the others.
    #[serde(default)]
    pub max_endpoints: MaxEndpoints,
    /// Cache FIB lookups in XDP; invalidated on route, neighbour and link changes.
    #[serde(default = "default_true")]
    pub nexthop_cache: bool,
    /// A cached next hop is looked up again after this long at the latest.
    #[serde(default = "default_nexthop_max_age_ms")]
    pub nexthop_max_age_ms: u32,
    /// ICMP messages the data plane generates (echo replies, Packet Too Big,
    /// fragmentation needed, Time Exceeded, AYIYA echo responses) per second, PoP-wide;
    /// beyond them the packet that asked is dropped (`icmp_rate_limited`).
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate: u32,
    /// How many may go out at once after a quiet spell; 0 sends none.
    #[serde(default = "default_icmp_burst")]
    pub icmp_burst: u32,
    /// Decapsulated packets handed to the kernel to resolve an unknown neighbour, per
    /// second, PoP-wide; beyond them they are dropped (`neighbour_rate_limited`).
    #[serde(default = "default_neighbour_rate")]
    pub neighbour_rate: u32,
    /// How many at once.
    #[serde(default = "default_neighbour_burst")]
    pub neighbour_burst: u32,
    /// Load the debug object (`cargo xtask build-ebpf --log`) instead of the embedded data
    /// plane, and log what it records of every packet (docs/OPERATIONS.md).
    #[serde(default)]
    pub ebpf_log: Option<EbpfLog>,
}

/// `dataplane.max_endpoints`: how many tunnels of each kind the endpoint maps hold (`None`:
/// `max_tunnels`). `v4v6` also sizes the map of v4v6 clients' inner addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxEndpoints {
    pub proto41: Option<u32>,
    pub v6udpv4: Option<u32>,
    pub v4v6: Option<u32>,
    pub ayiya: Option<u32>,
}

/// `dataplane.ebpf_log`: the debug object and how much it records.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbpfLog {
    /// The object `cargo xtask build-ebpf --log` printed, from this broker's source.
    pub object: std::path::PathBuf,
    /// The most detailed records written: `info` drops, `debug` also passes of tunnel
    /// traffic and forwarded or answered packets, `trace` every packet (nothing is
    /// written at `error` or `warn`).
    #[serde(default = "default_ebpf_log_level")]
    pub level: EbpfLogLevel,
}

/// aya-log's levels, as the data plane writes its records at them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EbpfLogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn default_ebpf_log_level() -> EbpfLogLevel {
    EbpfLogLevel::Info
}

impl Default for DataplaneLimits {
    fn default() -> Self {
        Self {
            max_tunnels: default_max_tunnels(),
            max_prefixes: default_max_prefixes(),
            max_endpoints: MaxEndpoints::default(),
            nexthop_cache: true,
            nexthop_max_age_ms: default_nexthop_max_age_ms(),
            icmp_rate: default_icmp_rate(),
            icmp_burst: default_icmp_burst(),
            neighbour_rate: default_neighbour_rate(),
            neighbour_burst: default_neighbour_burst(),
            ebpf_log: None,
        }
    }
}

impl DataplaneLimits {
    pub fn icmp_limit(&self) -> broker_common::maps::RateLimit {
        broker_common::maps::RateLimit {
            per_s: self.icmp_rate,
            burst: self.icmp_burst,
        }
    }

    pub fn neighbour_limit(&self) -> broker_common::maps::RateLimit {
        broker_common::maps::RateLimit {
            per_s: self.neighbour_rate,
            burst: self.neighbour_burst,
        }
    }
}

fn default_icmp_rate() -> u32 {
    broker_common::consts::DEFAULT_ICMP_RATE
}
fn default_icmp_burst() -> u32 {
    broker_common::consts::DEFAULT_ICMP_BURST
}
fn default_neighbour_rate() -> u32 {
    broker_common::consts::DEFAULT_NEIGHBOUR_RATE
}
fn default_neighbour_burst() -> u32 {
    broker_common::consts::DEFAULT_NEIGHBOUR_BURST
}

fn default_true() -> bool {
    true
}

fn default_nexthop_max_age_ms() -> u32 {
    broker_common::consts::DEFAULT_NEXTHOP_MAX_AGE_MS
}

fn default_max_tunnels() -> u32 {
    broker_common::consts::DEFAULT_MAX_TUNNELS
}

fn default_max_prefixes() -> u32 {
    broker_common::consts::DEFAULT_MAX_PREFIXES
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TunnelKind {
    #[serde(rename = "proto41")]
    Proto41,
    #[serde(rename = "v6udpv4")]
    V6Udp4,
    #[serde(rename = "v4v6")]
    V4In6,
    #[serde(rename = "ayiya")]
    Ayiya,
    #[serde(rename = "heartbeat")]
    Heartbeat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    #[default]
    Up,
    Down,
    Disabled,
}

/// A static tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    pub id: u32,
    pub kind: TunnelKind,
    #[serde(default)]
    pub state: TunnelState,
    pub remote_ipv4: Ipv4Field,
    /// The /64 on the tunnel link: `::1` is the PoP, `::2` the client.
    pub link_prefix: LinkPrefix,
    #[serde(default)]
    pub routed_prefixes: Vec<Prefix6>,
    #[serde(default)]
    pub mtu: Mtu,
}

/// Where the durable state lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file, created on first start. Default: /var/lib/broker/<instance>.db.
    pub path: Option<std::path::PathBuf>,
    /// PostgreSQL instead, shared by several PoPs (docs/MULTI-POP.md): a libpq URL or
    /// connection string, without its password.
    pub url: Option<String>,
    /// The password of `url`'s user, alone in a file; else `$BROKER_STORE_PASSWORD`.
    pub password_file: Option<std::path::PathBuf>,
    /// PostgreSQL over TLS: the CA certificates (PEM) the server's certificate and name
    /// are verified against. Without it, no TLS.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PostgreSQL: how often (seconds) a PoP checks that it missed no notified change,
    /// reconciling in full if it did (docs/MULTI-POP.md). Default 30.
    pub reconcile_interval_secs: Option<u64>,
}

/// Where the store is, as `broker run` opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(std::path::PathBuf),
    Postgres {
        url: String,
        password_file: Option<std::path::PathBuf>,
        tls_ca_file: Option<std::path::PathBuf>,
    },
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
    /// Bearer token of the administrator; without one, only users' own requests, the
    /// endpoint update, metrics and health are served.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// A second listener with only what routers on the internet need (`/nic/update`,
    /// `/health`), so that `listen` (the whole API) can stay on an internal address.
    #[serde(default)]
    pub public_listen: Option<std::net::SocketAddr>,
    /// HTTPS on both listeners: PEM certificate chain and key.
    #[serde(default)]
    pub tls: Option<ApiTls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTls {
    pub certificate: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_token: None,
            public_listen: None,
            tls: None,
        }
    }
}

/// Who may make an account in the portal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signup {
    /// Anyone who reaches the portal.
    Open,
    /// With one of `portal.invite_codes`, each good for one account.
    Invite,
    /// Only the operator makes accounts.
    #[default]
    Closed,
}

/// The web portal for users and operators (docs/PORTAL.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A listener of its own (with `/nic/update` and the health check); without one the
    /// portal is served on `api.listen`, beside the API.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    #[serde(default)]
    pub signup: Signup,
    /// For `signup: invite`: each makes one account.
    #[serde(default)]
    pub invite_codes: Vec<String>,
    /// Users who see the operator's pages (as the administrator's token would).
    #[serde(default)]
    pub operators: Vec<String>,
    /// Marks the session cookie `Secure` without `api.tls` (behind a proxy that ends TLS).
    #[serde(default)]
    pub secure_cookies: bool,
    /// A session ends this many hours after its login (1-720).
    #[serde(default = "default_session_hours")]
    pub session_hours: u32,
    /// Traffic history kept per tunnel for its graph, in hours (0-48, 0 = none).
    #[serde(default = "default_history_hours")]
    pub history_hours: u32,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            signup: Signup::default(),
            invite_codes: Vec::new(),
            operators: Vec::new(),
            secure_cookies: false,
            session_hours: default_session_hours(),
            history_hours: default_history_hours(),
        }
    }
}

fn default_session_hours() -> u32 {
    12
}

fn default_history_hours() -> u32 {
    6
}

fn default_listen() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 8080).into()
}

/// Address pools tunnels created at run time draw from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pools {
    /// Link /64s are carved from these.
    #[serde(default)]
    pub link: Vec<Prefix6>,
    /// Routed prefixes are carved from these.
    #[serde(default)]
    pub routed: Vec<Prefix6>,
    /// Routed prefix lengths a request may ask for.
    #[serde(default = "default_routed_lengths")]
    pub routed_lengths: Vec<u8>,
    /// A freed prefix is not handed out again before this many seconds.
    #[serde(default = "default_quarantine")]
    pub quarantine_secs: u64,
    /// Inner IPv4 addresses of v4v6 clients; the first host is the PoP's own.
    #[serde(default)]
    pub v4v6: Option<Prefix4>,
}

impl Default for Pools {
    fn default() -> Self {
        Self {
            link: Vec::new(),
            routed: Vec::new(),
            routed_lengths: default_routed_lengths(),
            quarantine_secs: default_quarantine(),
            v4v6: None,
        }
    }
}

fn default_routed_lengths() -> Vec<u8> {
    vec![48, 56, 64]
}

fn default_quarantine() -> u64 {
    86_400
}

/// Routes for the tunnel prefixes, so the kernel and a routing daemon see them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Routing table (254 = main).
    #[serde(default = "default_table")]
    pub table: u32,
    /// Route protocol number marking the broker's routes (`ip -6 route show proto N`).
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// Without a device the routes are blackholes: the XDP program forwards tunnel traffic
    /// before the kernel looks, and a routing daemon only needs to see them. With one they
    /// point at it (e.g. a veth whose other end runs the broker, so that traffic the host
    /// itself sends reaches the tunnels).
    #[serde(default)]
    pub device: Option<String>,
    /// A kernel table of its own for the PoP's pools as blackhole aggregates, present only
    /// while its XDP program is attached: what a routing daemon (BIRD) announces, so that
    /// a PoP whose data plane is gone stops attracting traffic (docs/MULTI-POP.md, BGP).
    #[serde(default)]
    pub announce_table: Option<u32>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            table: default_table(),
            protocol: default_protocol(),
            device: None,
            announce_table: None,
        }
    }
}

fn default_table() -> u32 {
    254
}

fn default_protocol() -> u8 {
    crate::routes::DEFAULT_PROTOCOL
}

/// SASL mechanisms the TSP server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum TspAuth {
    #[serde(rename = "anonymous")]
    Anonymous,
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "digest-md5")]
    DigestMd5,
}

/// Tunnel types the TSP server offers (`v6anyv4` requests resolve to one of the first two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum TspTunnelType {
    #[serde(rename = "v6v4")]
    V6V4,
    #[serde(rename = "v6udpv4")]
    V6UdpV4,
    #[serde(rename = "v4v6")]
    V4V6,
}

/// AYIYA (SixXS), verified, decapsulated and signed in the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AyiyaConfig {
    /// UDP port on `pop.ipv4` where AYIYA arrives.
    #[serde(default = "default_ayiya_port")]
    pub port: u16,
    /// Where forward packets are signed and verified.
    #[serde(default)]
    pub engine: AyiyaEngine,
    /// `af_xdp`: packets hashing fewer bytes than this (AYIYA header and inner packet) are
    /// still signed and verified in XDP, which is cheaper for small ones.
    #[serde(default = "default_af_xdp_min_bytes")]
    pub af_xdp_min_bytes: u16,
}

/// `ayiya.af_xdp_min_bytes` by default: where the engines cost about the same, measured
/// under load (docs/CONFIGURATION.md, docs/BENCHMARKS.md).
pub const DEFAULT_AF_XDP_MIN_BYTES: u16 = 256;

fn default_af_xdp_min_bytes() -> u16 {
    DEFAULT_AF_XDP_MIN_BYTES
}

/// Where AYIYA forward packets are signed and verified (docs/BENCHMARKS.md compares them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AyiyaEngine {
    /// In XDP, with the SHA-1 written for BPF.
    #[serde(rename = "xdp")]
    Xdp,
    /// XDP hands them to AF_XDP sockets; a worker thread per socket hashes with the CPU's
    /// SHA extensions. XDP falls back to its own SHA-1 while the worker is not running.
    #[default]
    #[serde(rename = "af_xdp")]
    AfXdp,
}

fn default_ayiya_port() -> u16 {
    broker_common::consts::AYIYA_PORT
}

/// The TSP server (RFC 5572), on TCP and UDP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TspConfig {
    /// Port on `pop.ipv4` (and `pop.ipv6`), TCP and UDP; v6udpv4 data arrives there too.
    #[serde(default = "default_tsp_port")]
    pub port: u16,
    /// The SASL realm of DIGEST-MD5.
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default = "default_tsp_auth")]
    pub auth: Vec<TspAuth>,
    #[serde(default = "default_tsp_types")]
    pub tunnel_types: Vec<TspTunnelType>,
    /// Keepalive interval offered to clients, seconds (at least 5). A tunnel silent for
    /// five intervals goes down until its client is heard again.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u32,
    /// Lifetime offered to authenticated users' tunnels, seconds: without a session for
    /// that long, the tunnel goes down (its addresses stay the user's).
    #[serde(default = "default_lifetime")]
    pub lifetime_secs: u64,
    /// Lifetime of anonymous tunnels, seconds: then they are deleted.
    #[serde(default = "default_anonymous_lifetime")]
    pub anonymous_lifetime_secs: u64,
    /// MTU of TSP tunnels (clients default to 1280).
    #[serde(default = "default_tsp_mtu")]
    pub mtu: Mtu,
    /// Longest control message accepted, bytes.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// A session must reach its tunnel offer within this many seconds.
    #[serde(default = "default_negotiation_timeout")]
    pub negotiation_timeout_secs: u64,
    /// Concurrent negotiations from one source address (a session that got its tunnel no
    /// longer counts: many clients may share one NAT's address).
    #[serde(default = "default_sessions_per_source")]
    pub sessions_per_source: usize,
    /// Authentication failures from one source before its answers are delayed (doubling
    /// up to 30 s, forgotten after a quiet minute).
    #[serde(default = "default_auth_failures")]
    pub auth_failures_before_delay: u32,
    /// The DNS server offered to clients (`<client><dns_server>`). gogoc 1.2 needs the
    /// element in every offer; `::`, the default, says there is none.
    #[serde(default = "default_dns_server")]
    pub dns_server: std::net::Ipv6Addr,
    /// Anonymous tunnels one source address may hold. A new anonymous session beyond it
    /// takes over the address's oldest silent one (its addresses, the new port), or is
    /// refused with 530 while all are alive.
    #[serde(default = "default_anonymous_per_source")]
    pub anonymous_per_source: usize,
    /// Anonymous tunnels negotiated over UDP whose client has not been heard yet, at
    /// once (a forger can negotiate for addresses it does not own); each must carry its
    /// client's first packet within `negotiation_timeout_secs` and two keepalive
    /// intervals, or it is removed.
    #[serde(default = "default_anonymous_unproven_max")]
    pub anonymous_unproven_max: usize,
}

fn default_anonymous_unproven_max() -> usize {
    64
}

fn default_dns_server() -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::UNSPECIFIED
}
fn default_anonymous_per_source() -> usize {
    4
}
fn default_tsp_port() -> u16 {
    broker_common::consts::TSP_PORT
}
/// `tsp.realm` when not set.
pub const DEFAULT_REALM: &str = "broker";

fn default_realm() -> String {
    DEFAULT_REALM.into()
}
fn default_tsp_auth() -> Vec<TspAuth> {
    vec![TspAuth::DigestMd5, TspAuth::Plain]
}
fn default_tsp_types() -> Vec<TspTunnelType> {
    vec![TspTunnelType::V6V4, TspTunnelType::V6UdpV4]
}
fn default_keepalive() -> u32 {
    30
}
fn default_lifetime() -> u64 {
    604_800
}
fn default_anonymous_lifetime() -> u64 {
    86_400
}
fn default_tsp_mtu() -> Mtu {
    Mtu(broker_common::consts::MTU_MIN)
}
fn default_max_message() -> usize {
    4096
}
fn default_negotiation_timeout() -> u64 {
    30
}
fn default_sessions_per_source() -> usize {
    8
}
fn default_auth_failures() -> u32 {
    3
}

/// The TIC server (SixXS, TCP): aiccu fetches its tunnel's settings with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicConfig {
    /// TCP port on `pop.ipv4`.
    #[serde(default = "default_tic_port")]
    pub port: u16,
    /// The `POP Id` clients see (one word); default: the PoP's name.
    #[serde(default)]
    pub pop_id: Option<String>,
    /// PEM certificate chain for `starttls`; with `key`. Without them `starttls` is
    /// refused and aiccu goes on in clear (unless it is set to require TLS).
    #[serde(default)]
    pub certificate: Option<std::path::PathBuf>,
    /// PEM private key of `certificate`.
    #[serde(default)]
    pub key: Option<std::path::PathBuf>,
    /// A connection silent for this long is closed, seconds.
    #[serde(default = "default_tic_idle")]
    pub idle_timeout_secs: u64,
    /// Longest line accepted, bytes (aiccu's buffers are 1024).
    #[serde(default = "default_tic_max_line")]
    pub max_line: usize,
    /// Authentication failures from one source before its answers are delayed (doubling
    /// up to 30 s, forgotten after a quiet minute).
    #[serde(default = "default_auth_failures")]
    pub auth_failures_before_delay: u32,
}

impl Default for TicConfig {
    fn default() -> Self {
        Self {
            port: default_tic_port(),
            pop_id: None,
            certificate: None,
            key: None,
            idle_timeout_secs: default_tic_idle(),
            max_line: default_tic_max_line(),
            auth_failures_before_delay: default_auth_failures(),
        }
    }
}

fn default_tic_port() -> u16 {
    3874
}
fn default_tic_idle() -> u64 {
    60
}
fn default_tic_max_line() -> usize {
    1024
}

/// The heartbeat server (SixXS, UDP): sets `heartbeat` tunnels' endpoints and liveness.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// UDP port on `pop.ipv4`.
    #[serde(default = "default_hb_port")]
    pub port: u16,
    /// A tunnel without a valid beat for this long is put to sleep, seconds (sixxsd: 120).
    #[serde(default = "default_hb_timeout")]
    pub timeout_secs: u64,
    /// The `Heartbeat_Interval` TIC hands out for tunnels without a keepalive of their
    /// own, seconds.
    #[serde(default = "default_hb_interval")]
    pub interval_secs: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            port: default_hb_port(),
            timeout_secs: default_hb_timeout(),
            interval_secs: default_hb_interval(),
        }
    }
}

fn default_hb_port() -> u16 {
    crate::heartbeat::message::PORT
}
fn default_hb_timeout() -> u64 {
    120
}
fn default_hb_interval() -> u32 {
    60
}

/// Prometheus exposition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Series per tunnel (one per tunnel and counter: mind the cardinality).
    #[serde(default)]
    pub per_tunnel: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this PoP's data plane (pins live under /sys/fs/bpf/broker/<instance>/).
    pub instance: String,
    pub interfaces: Vec<Interface>,
    pub pop: Pop,
    #[serde(default)]
    pub dataplane: DataplaneLimits,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub pools: Pools,
    #[serde(default)]
    pub routes: RoutesConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub quotas: Quotas,
    /// The TSP server; absent = off.
    #[serde(default)]
    pub tsp: Option<TspConfig>,
    /// AYIYA tunnels; absent = off.
    #[serde(default)]
    pub ayiya: Option<AyiyaConfig>,
    /// The TIC server; absent = off.
    #[serde(default)]
    pub tic: Option<TicConfig>,
    /// The heartbeat server; absent = off.
    #[serde(default)]
    pub heartbeat: Option<HeartbeatConfig>,
    /// The web portal (docs/PORTAL.md); on by default, on the API's listener.
    #[serde(default)]
    pub portal: PortalConfig,
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
}

impl Config {
    /// The PoP's side of the tunnels, as the data plane needs it.
    pub fn pop(&self) -> crate::model::Pop {
        crate::model::Pop {
            ipv4: self.pop.ipv4.0,
            ipv6: self.pop.ipv6.map(|a| a.0),
            tsp_port: self.tsp.as_ref().map(|t| t.port),
            ayiya_port: self.ayiya.as_ref().map(|a| a.port),
            v4v6_pool: self.pools.v4v6.map(|p| p.0),
        }
    }

    /// The PoP's name in the store (`pop.name`, or the instance name).
    pub fn pop_name(&self) -> String {
        self.pop
            .name
            .clone()
            .unwrap_or_else(|| self.instance.clone())
    }

    /// The `POP Id` TIC clients see (`tic.pop_id`, or the PoP's name).
    pub fn tic_pop_id(&self) -> String {
        self.tic
            .as_ref()
            .and_then(|t| t.pop_id.clone())
            .unwrap_or_else(|| self.pop_name())
    }

    /// The `Heartbeat_Interval` of tunnels without a keepalive of their own.
    pub fn heartbeat_interval(&self) -> u32 {
        self.heartbeat
            .as_ref()
            .map_or_else(default_hb_interval, |h| h.interval_secs)
    }

    /// The SQLite file.
    pub fn store_location(&self) -> StoreLocation {
        match &self.store.url {
            Some(url) => StoreLocation::Postgres {
                url: url.clone(),
                password_file: self.store.password_file.clone(),
                tls_ca_file: self.store.tls_ca_file.clone(),
            },
            None => StoreLocation::Sqlite(self.store_path()),
        }
    }

    /// How often a PoP on a shared store checks it missed no change.
    pub fn reconcile_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.store.reconcile_interval_secs.unwrap_or(30))
    }

    pub fn store_path(&self) -> std::path::PathBuf {
        self.store.path.clone().unwrap_or_else(|| {
            std::path::Path::new("/var/lib/broker").join(format!("{}.db", self.instance))
        })
    }
}

/// A configuration error: what is wrong, at which key, on which line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `tunnels[1].mtu`; empty for syntax errors.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if let Some(line) = spans::too_deep(text) {
            return Err(ConfigError {
                key: String::new(),
                line: Some(line),
                message: format!("nested deeper than {} levels", spans::MAX_DEPTH),
            });
        }
        let spans = spans::SpanIndex::new(text);
        let config: Config =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|e| from_serde(e, &spans))?;
        validate::validate(&config).map_err(|(key, message)| ConfigError {
            line: spans.line_of(&key),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: String::new(),
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&text)
    }
}

/// A deserialisation error: serde_path_to_error knows the key, the span index its line;
/// syntax errors have no key and keep serde_yaml's position.
fn from_serde(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    spans: &spans::SpanIndex,
) -> ConfigError {
    let key = e.path().to_string();
    let key = if key == "." { String::new() } else { key };
    let inner = e.into_inner();
    let mut message = inner.to_string();
    // serde_yaml appends its own position and sometimes the path; keep the message only.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // It may also prefix the path of the enclosing value ("tunnels[1]: ...").
    if let Some((path, rest)) = message.split_once(": ") {
        if !path.is_empty() && !path.contains(' ') && key.starts_with(path) {
            message = rest.to_string();
        }
    }
    let line = spans
        .line_of(&key)
        .filter(|_| !key.is_empty())
        .or_else(|| inner.location().map(|l| l.line()));
    ConfigError { key, line, message }
}

#[cfg(test)]
mod tests;
