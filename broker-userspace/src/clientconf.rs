//! The client side of a tunnel as commands for common systems, as operators hand them to
//! users (`broker tunnel show ID --client-config SYSTEM`, and each tunnel's page in the
//! portal). Pure text.
use std::fmt::Write as _;

use crate::api::tunnels::TunnelOut;

/// Systems a configuration can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// iproute2 with the `sit` module, and the broker's own client for kernels without it.
    Linux,
    /// OpenWrt's `6in4` protocol (package 6in4), via uci.
    Openwrt,
    /// MikroTik RouterOS 6/7.
    Routeros,
    /// The broker's own client (`broker client ...`), for any kind.
    Broker,
    /// gogoc 1.2's gogoc.conf, for tunnels TSP sets up.
    Gogoc,
    /// AICCU's aiccu.conf, for SixXS tunnels (ayiya, heartbeat).
    Aiccu,
}

/// What a configuration asks the user to fill in: the account's password, which the
/// broker keeps only hashed.
pub const ACCOUNT_PASSWORD: &str = "YOUR-ACCOUNT-PASSWORD";

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            System::Linux => "linux",
            System::Openwrt => "openwrt",
            System::Routeros => "routeros",
            System::Broker => "broker",
            System::Gogoc => "gogoc",
            System::Aiccu => "aiccu",
        }
    }

    /// What to call it on a page.
    pub fn title(self) -> &'static str {
        match self {
            System::Linux => "Linux (iproute2)",
            System::Openwrt => "OpenWrt",
            System::Routeros => "RouterOS",
            System::Broker => "broker client",
            System::Gogoc => "gogoc.conf",
            System::Aiccu => "aiccu.conf",
        }
    }

    /// The systems a tunnel of this kind (and origin) has a configuration for.
    pub fn for_tunnel(t: &TunnelOut) -> Vec<System> {
        match t.kind.as_str() {
            "ayiya" | "heartbeat" => vec![System::Aiccu, System::Broker],
            _ if t.origin == "tsp" => vec![System::Gogoc, System::Broker],
            "proto41" => vec![
                System::Linux,
                System::Openwrt,
                System::Routeros,
                System::Broker,
            ],
            // v6udpv4 and v4v6 made by the operator for a fixed endpoint: set up by hand.
            _ => vec![System::Broker],
        }
    }
}

/// The `/nic/update` URL a router's dynamic-DNS setting calls when its address changes
/// (HE's form): the tunnel's owner (or id) and its update key as credentials, `base` the
/// broker's address as the router reaches it (`http://host:port`).
pub fn nic_update_url(t: &TunnelOut, base: &str, key: Option<&str>) -> String {
    let (scheme, host) = base.split_once("://").unwrap_or(("http", base));
    // A user name may hold '@', which a URL's user part must not.
    let user = t
        .owner
        .clone()
        .unwrap_or_else(|| t.id.to_string())
        .replace('@', "%40");
    format!(
        "{scheme}://{user}:{}@{host}/nic/update?hostname={}",
        key.unwrap_or("UPDATE-KEY"),
        t.id
    )
}

/// Shell-safe interface name for the tunnel.
fn ifname(t: &TunnelOut) -> String {
    format!("broker{}", t.id)
}

pub fn render(t: &TunnelOut, system: System) -> String {
    match system {
        System::Broker => broker_client(t),
        System::Gogoc => gogoc(t),
        System::Aiccu => aiccu(t),
        System::Linux | System::Openwrt | System::Routeros => native(t, system),
    }
}

/// A proto-41 tunnel set up with the system's own tools.
fn native(t: &TunnelOut, system: System) -> String {
    let mut s = String::new();
    if t.kind == "ayiya" || t.kind == "heartbeat" {
        let _ = writeln!(
            s,
            "# Tunnel {} is {}: its client fetches it over TIC (aiccu, or):",
            t.id, t.kind
        );
        let _ = writeln!(
            s,
            "# broker client {} --server {} --username {} --password ... --tunnel T{}{}",
            t.kind,
            t.pop_ipv4.clone().unwrap_or_default(),
            t.owner.as_deref().unwrap_or("<user>"),
            t.id,
            if t.kind == "heartbeat" {
                " --local <this host's IPv4>"
            } else {
                ""
            }
        );
        return s;
    }
    if t.kind != "proto41" {
        let _ = writeln!(
            s,
            "# Tunnel {} is {}: its client sets it up itself with TSP:",
            t.id, t.kind
        );
        let _ = writeln!(
            s,
            "# broker client tsp --server {} --user {} --password ...",
            t.pop_ipv4
                .clone()
                .or_else(|| t.pop_ipv6_endpoint.clone())
                .unwrap_or_default(),
            t.owner.as_deref().unwrap_or("<user>")
        );
        return s;
    }
    let name = ifname(t);
    let routed = t.routed_prefixes.join(", ");
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    let (remote, pop, client6, pop6) = (
        field(&t.remote_ipv4),
        field(&t.pop_ipv4),
        field(&t.client_ipv6),
        field(&t.pop_ipv6),
    );
    match system {
        System::Linux => {
            let _ = writeln!(s, "# Tunnel {}: {} <-> {} (proto-41)", t.id, remote, pop);
            let _ = writeln!(
                s,
                "ip tunnel add {name} mode sit remote {} local {} ttl 255",
                pop, remote
            );
            let _ = writeln!(s, "ip link set {name} up mtu {}", t.mtu);
            let _ = writeln!(s, "ip -6 addr add {}/64 dev {name}", client6);
            let _ = writeln!(s, "ip -6 route add ::/0 dev {name}");
            let _ = writeln!(s, "# Without the sit module (containers, some kernels), the broker's client does the same:");
            let _ = writeln!(
                s,
                "# broker client proto41 --server {} --local {} --address {}/64 --mtu {} --name {name}",
                pop, remote, client6, t.mtu
            );
        }
        System::Openwrt => {
            let _ = writeln!(
                s,
                "# Tunnel {}: needs the 6in4 package (opkg install 6in4)",
                t.id
            );
            let _ = writeln!(s, "uci set network.{name}=interface");
            let _ = writeln!(s, "uci set network.{name}.proto='6in4'");
            let _ = writeln!(s, "uci set network.{name}.peeraddr='{}'", pop);
            let _ = writeln!(s, "uci set network.{name}.ipaddr='{}'", remote);
            let _ = writeln!(s, "uci set network.{name}.ip6addr='{}/64'", client6);
            if let Some(p) = t.routed_prefixes.first() {
                let _ = writeln!(s, "uci set network.{name}.ip6prefix='{p}'");
            }
            let _ = writeln!(s, "uci set network.{name}.mtu='{}'", t.mtu);
            let _ = writeln!(s, "uci add_list firewall.@zone[1].network='{name}'");
            let _ = writeln!(s, "uci commit network && uci commit firewall");
            let _ = writeln!(s, "/etc/init.d/network reload");
        }
        System::Routeros => {
            let _ = writeln!(s, "# Tunnel {}", t.id);
            let _ = writeln!(
                s,
                "/interface 6to4 add name={name} remote-address={} local-address={} mtu={} disabled=no",
                pop, remote, t.mtu
            );
            let _ = writeln!(
                s,
                "/ipv6 address add address={}/64 interface={name} advertise=no",
                client6
            );
            let _ = writeln!(s, "/ipv6 route add dst-address=::/0 gateway={}", pop6);
        }
        // Their own renderers (see `render`).
        System::Broker | System::Gogoc | System::Aiccu => {}
    }
    if !routed.is_empty() {
        let _ = writeln!(s, "# Routed to you: {routed}");
    }
    s
}

/// The PoP's address a client talks to.
fn server(t: &TunnelOut) -> String {
    t.pop_ipv4
        .clone()
        .or_else(|| t.pop_ipv6_endpoint.clone())
        .unwrap_or_default()
}

fn owner(t: &TunnelOut) -> &str {
    t.owner.as_deref().unwrap_or("<user>")
}

/// `broker client ...` for the tunnel's kind.
fn broker_client(t: &TunnelOut) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Tunnel {} ({}), run as root:", t.id, t.kind);
    match t.kind.as_str() {
        "proto41" => {
            let _ = write!(
                s,
                "broker client proto41 --server {} --local {} --address {}/64 --mtu {} --name {}",
                server(t),
                t.remote_ipv4.as_deref().unwrap_or_default(),
                t.client_ipv6.as_deref().unwrap_or_default(),
                t.mtu,
                ifname(t)
            );
            for p in &t.routed_prefixes {
                let _ = write!(s, " --route {p}");
            }
            s.push('\n');
        }
        "ayiya" | "heartbeat" => {
            let _ = writeln!(
                s,
                "broker client {} --server {} --username {} --password '{ACCOUNT_PASSWORD}' --tunnel T{}{}",
                t.kind,
                server(t),
                owner(t),
                t.id,
                if t.kind == "heartbeat" {
                    format!(" --local {}", t.remote_ipv4.as_deref().unwrap_or("<this host's IPv4>"))
                } else {
                    String::new()
                }
            );
        }
        kind if t.origin != "tsp" => {
            let _ = writeln!(
                s,
                "# A {kind} tunnel for a fixed endpoint, set up by hand: no client negotiates \
                 it. TSP clients get tunnels of their own (see the tunnel list)."
            );
        }
        kind => {
            let (ty, mode) = match kind {
                "v4v6" => ("v4v6", ""),
                _ if t.routed_prefixes.is_empty() => ("v6anyv4", ""),
                _ => ("v6anyv4", " --mode router"),
            };
            let _ = writeln!(
                s,
                "broker client tsp --server {} --user {} --password '{ACCOUNT_PASSWORD}' --type {ty}{mode}",
                server(t),
                owner(t)
            );
        }
    }
    s
}

/// gogoc.conf (gogoc 1.2) for a tunnel TSP set up: its next sessions get it back.
fn gogoc(t: &TunnelOut) -> String {
    if t.kind == "ayiya" || t.kind == "heartbeat" || t.origin != "tsp" {
        return format!(
            "# Tunnel {} ({}, made {}) is not one TSP sets up: gogoc would get a tunnel of \
             its own (see the tunnel list for that).\n",
            t.id,
            t.kind,
            if t.origin == "static" {
                "by the PoP's configuration"
            } else {
                "here"
            }
        );
    }
    let mode = match t.kind.as_str() {
        "v4v6" => "v4v6",
        "v6udpv4" => "v6udpv4",
        _ => "v6anyv4",
    };
    let len = t
        .routed_prefixes
        .first()
        .map(|p| p.rsplit_once('/').map_or("48", |(_, l)| l));
    gogoc_conf(
        &format!("gogoc.conf for tunnel {} (gogoc 1.2)", t.id),
        owner(t),
        &server(t),
        mode,
        len,
    )
}

/// The keys gogoc 1.2 reads; the rest (`gogoc_dir`, logs, the broker list) are the
/// installation's, in the gogoc.conf it came with.
fn gogoc_conf(title: &str, user: &str, server: &str, mode: &str, routed: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {title}: set these in the gogoc.conf your gogoc came with"
    );
    let _ = writeln!(s, "# (it has gogoc_dir, where template/linux.sh is).");
    let _ = writeln!(s, "userid={user}");
    let _ = writeln!(s, "passwd={ACCOUNT_PASSWORD}");
    let _ = writeln!(s, "server={server}");
    let _ = writeln!(s, "auth_method=any");
    let _ = writeln!(s, "tunnel_mode={mode}");
    match routed {
        Some(len) => {
            let _ = writeln!(s, "host_type=router");
            let _ = writeln!(s, "prefixlen={len}");
            let _ = writeln!(s, "# The LAN interface the routed prefix is announced on:");
            let _ = writeln!(s, "if_prefix=eth0");
        }
        None => {
            let _ = writeln!(s, "host_type=host");
        }
    }
    let _ = writeln!(s, "if_tunnel_v6v4=sit1");
    let _ = writeln!(s, "if_tunnel_v6udpv4=tun");
    let _ = writeln!(s, "if_tunnel_v4v6=sit0");
    let _ = writeln!(s, "template=linux");
    let _ = writeln!(s, "keepalive=yes");
    let _ = writeln!(s, "keepalive_interval=30");
    let _ = writeln!(s, "auto_retry_connect=yes");
    let _ = writeln!(s, "retry_delay=30");
    s
}

/// How `user` gets a tunnel from a TSP client at `server` (TSP makes it, and gives it
/// back on every later session): gogoc.conf, and `broker client tsp`.
pub fn tsp_account(user: &str, server: &str) -> Vec<(System, String)> {
    vec![
        (
            System::Gogoc,
            gogoc_conf(
                "gogoc.conf (gogoc 1.2)",
                user,
                server,
                // v6v4 where the client is reachable, v6udpv4 behind a NAT: the broker
                // tells them apart.
                "v6anyv4",
                None,
            ),
        ),
        (
            System::Broker,
            format!(
                "# Run as root; behind a NAT it gets v6udpv4, else v6v4 (proto-41):\n\
                 broker client tsp --server {server} --user {user} --password '{ACCOUNT_PASSWORD}'\n"
            ),
        ),
    ]
}

/// aiccu.conf (AICCU 2007.01.15): TIC fetches the rest.
fn aiccu(t: &TunnelOut) -> String {
    let mut s = String::new();
    if t.kind != "ayiya" && t.kind != "heartbeat" {
        let _ = writeln!(
            s,
            "# Tunnel {} is {}: aiccu runs SixXS tunnels (ayiya, heartbeat) only.",
            t.id, t.kind
        );
        return s;
    }
    let _ = writeln!(s, "# aiccu.conf for tunnel T{} (AICCU 2007.01.15)", t.id);
    let _ = writeln!(s, "username {}", owner(t));
    let _ = writeln!(s, "password {ACCOUNT_PASSWORD}");
    let _ = writeln!(s, "protocol tic");
    let _ = writeln!(s, "server {}", server(t));
    let _ = writeln!(s, "tunnel_id T{}", t.id);
    let _ = writeln!(s, "ipv6_interface sixxs");
    let _ = writeln!(s, "verbose false");
    let _ = writeln!(s, "daemonize true");
    let _ = writeln!(s, "automatic true");
    let _ = writeln!(s, "requiretls false");
    let _ = writeln!(s, "defaultroute true");
    let _ = writeln!(
        s,
        "behindnat {}",
        if t.kind == "ayiya" { "true" } else { "false" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel() -> TunnelOut {
        TunnelOut {
            id: 7,
            pop: "pop1".into(),
            owner: Some("alice".into()),
            origin: "api".into(),
            kind: "proto41".into(),
            state: "up".into(),
            asleep: false,
            remote_ipv4: Some("198.51.100.10".into()),
            remote_port: None,
            remote_ipv6: None,
            pop_ipv4: Some("192.0.2.1".into()),
            pop_ipv6_endpoint: None,
            link_prefix: Some("2001:db8:10:7::/64".into()),
            pop_ipv6: Some("2001:db8:10:7::1".into()),
            client_ipv6: Some("2001:db8:10:7::2".into()),
            routed_prefixes: vec!["2001:db8:1100::/48".into()],
            client_ipv4: None,
            pop_ipv4_inner: None,
            mtu: 1480,
            keepalive: None,
            expires_at: None,
            password: "p".into(),
            update_key: None,
            created_at: 0,
            updated_at: 0,
            counters: None,
        }
    }

    #[test]
    fn linux() {
        let s = render(&tunnel(), System::Linux);
        assert!(s.contains(
            "ip tunnel add broker7 mode sit remote 192.0.2.1 local 198.51.100.10 ttl 255\n"
        ));
        assert!(s.contains("ip link set broker7 up mtu 1480\n"));
        assert!(s.contains("ip -6 addr add 2001:db8:10:7::2/64 dev broker7\n"));
        assert!(s.contains("ip -6 route add ::/0 dev broker7\n"));
        assert!(s.contains("broker client proto41 --server 192.0.2.1 --local 198.51.100.10 --address 2001:db8:10:7::2/64"));
        assert!(s.contains("Routed to you: 2001:db8:1100::/48"));
    }

    #[test]
    fn sixxs_kinds_point_at_their_tic_clients() {
        for kind in ["ayiya", "heartbeat"] {
            let t = TunnelOut {
                kind: kind.into(),
                ..tunnel()
            };
            let out = render(&t, System::Linux);
            assert!(
                out.contains(&format!("broker client {kind} --server")),
                "{out}"
            );
            assert!(!out.contains("ip tunnel"), "{out}");
        }
    }

    #[test]
    fn tsp_kinds_point_at_the_tsp_client() {
        let t = TunnelOut {
            kind: "v6udpv4".into(),
            remote_port: Some(40000),
            ..tunnel()
        };
        let s = render(&t, System::Linux);
        assert!(s.contains("broker client tsp --server 192.0.2.1 --user alice"));
        assert!(!s.contains("ip tunnel add"));
    }

    #[test]
    fn each_kind_has_its_clients() {
        let kinds = |k: &str, origin: &str| {
            System::for_tunnel(&TunnelOut {
                kind: k.into(),
                origin: origin.into(),
                ..tunnel()
            })
        };
        assert_eq!(kinds("proto41", "api")[0], System::Linux);
        assert!(!kinds("proto41", "api").contains(&System::Gogoc));
        assert_eq!(kinds("proto41", "tsp"), vec![System::Gogoc, System::Broker]);
        assert_eq!(kinds("ayiya", "api"), vec![System::Aiccu, System::Broker]);
        assert_eq!(kinds("v4v6", "tsp"), vec![System::Gogoc, System::Broker]);
        // gogoc would not get an operator's v6udpv4 tunnel back: TSP keeps its own.
        assert_eq!(kinds("v6udpv4", "api"), vec![System::Broker]);
        let t = TunnelOut {
            kind: "v6udpv4".into(),
            ..tunnel()
        };
        assert!(render(&t, System::Gogoc).contains("not one TSP sets up"));
    }

    #[test]
    fn broker_client_lines() {
        let s = render(&tunnel(), System::Broker);
        assert!(s.contains("broker client proto41 --server 192.0.2.1 --local 198.51.100.10 --address 2001:db8:10:7::2/64 --mtu 1480 --name broker7 --route 2001:db8:1100::/48\n"), "{s}");
        let hb = TunnelOut {
            kind: "heartbeat".into(),
            ..tunnel()
        };
        assert!(render(&hb, System::Broker).contains(
            "broker client heartbeat --server 192.0.2.1 --username alice --password 'YOUR-ACCOUNT-PASSWORD' --tunnel T7 --local 198.51.100.10"
        ));
    }

    #[test]
    fn gogoc_and_aiccu_files() {
        let t = TunnelOut {
            kind: "v6udpv4".into(),
            origin: "tsp".into(),
            ..tunnel()
        };
        let g = render(&t, System::Gogoc);
        for line in [
            "userid=alice\n",
            "server=192.0.2.1\n",
            "tunnel_mode=v6udpv4\n",
            "host_type=router\n",
            "prefixlen=48\n",
            "template=linux\n",
        ] {
            assert!(g.contains(line), "{line} in {g}");
        }
        let a = render(
            &TunnelOut {
                kind: "ayiya".into(),
                ..tunnel()
            },
            System::Aiccu,
        );
        for line in [
            "username alice\n",
            "protocol tic\n",
            "server 192.0.2.1\n",
            "tunnel_id T7\n",
            "behindnat true\n",
        ] {
            assert!(a.contains(line), "{line} in {a}");
        }
        assert!(render(&tunnel(), System::Aiccu).starts_with("# Tunnel 7 is proto41"));
    }

    #[test]
    fn a_tsp_client_gets_its_own_tunnel_with_the_account() {
        let all = tsp_account("bob", "192.0.2.1");
        let gogoc = &all[0].1;
        for line in [
            "userid=bob\n",
            "server=192.0.2.1\n",
            "tunnel_mode=v6anyv4\n",
            "host_type=host\n",
        ] {
            assert!(gogoc.contains(line), "{line} in {gogoc}");
        }
        assert!(all[1]
            .1
            .contains("broker client tsp --server 192.0.2.1 --user bob"));
    }

    /// Keys gogoc 1.2 reads (the names in its `conf/gogoc.conf.in`) and AICCU 2007.01.15
    /// reads (`common/aiccu.c`'s configuration table); both clients were run with these
    /// files against the lab (docs/PORTAL.md, "Checked with the deployed clients").
    const GOGOC_KEYS: &[&str] = &[
        "userid",
        "passwd",
        "server",
        "auth_method",
        "host_type",
        "prefixlen",
        "if_prefix",
        "dns_server",
        "gogoc_dir",
        "auto_retry_connect",
        "retry_delay",
        "retry_delay_max",
        "keepalive",
        "keepalive_interval",
        "tunnel_mode",
        "if_tunnel_v6v4",
        "if_tunnel_v6udpv4",
        "if_tunnel_v4v6",
        "client_v4",
        "client_v6",
        "template",
        "proxy_client",
        "broker_list",
        "last_server",
        "always_use_same_server",
        "log_filename",
        "log_rotation",
        "log_rotation_size",
        "log_rotation_delete",
        "syslog_facility",
    ];
    const AICCU_KEYS: &[&str] = &[
        "username",
        "password",
        "protocol",
        "server",
        "ipv6_interface",
        "tunnel_id",
        "local_ipv4_override",
        "setupscript",
        "automatic",
        "daemonize",
        "verbose",
        "behindnat",
        "requiretls",
        "noconfigure",
        "makebeats",
        "defaultroute",
        "pidfile",
    ];

    #[test]
    fn every_key_written_is_one_the_client_reads() {
        let keys = |text: &str, sep: char| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .map(|l| l.split(sep).next().unwrap().to_string())
                .collect()
        };
        let tsp = TunnelOut {
            kind: "v6udpv4".into(),
            origin: "tsp".into(),
            ..tunnel()
        };
        let mut gogoc = keys(&render(&tsp, System::Gogoc), '=');
        gogoc.extend(keys(&tsp_account("bob", "192.0.2.1")[0].1, '='));
        for k in gogoc {
            assert!(GOGOC_KEYS.contains(&k.as_str()), "gogoc reads no {k}");
        }
        let ayiya = TunnelOut {
            kind: "ayiya".into(),
            ..tunnel()
        };
        for k in keys(&render(&ayiya, System::Aiccu), ' ') {
            assert!(AICCU_KEYS.contains(&k.as_str()), "aiccu reads no {k}");
        }
    }

    #[test]
    fn the_update_url_is_hes_form() {
        assert_eq!(
            nic_update_url(&tunnel(), "https://broker.example:8443", Some("k3y")),
            "https://alice:k3y@broker.example:8443/nic/update?hostname=7"
        );
        assert_eq!(
            nic_update_url(&tunnel(), "192.0.2.1:8080", None),
            "http://alice:UPDATE-KEY@192.0.2.1:8080/nic/update?hostname=7"
        );
        let mail = TunnelOut {
            owner: Some("ann@example.net".into()),
            ..tunnel()
        };
        assert_eq!(
            nic_update_url(&mail, "http://192.0.2.1", Some("k")),
            "http://ann%40example.net:k@192.0.2.1/nic/update?hostname=7"
        );
    }

    #[test]
    fn openwrt() {
        let s = render(&tunnel(), System::Openwrt);
        assert!(s.contains("uci set network.broker7.proto='6in4'\n"));
        assert!(s.contains("uci set network.broker7.peeraddr='192.0.2.1'\n"));
        assert!(s.contains("uci set network.broker7.ip6addr='2001:db8:10:7::2/64'\n"));
        assert!(s.contains("uci set network.broker7.ip6prefix='2001:db8:1100::/48'\n"));
    }

    #[test]
    fn routeros() {
        let s = render(&tunnel(), System::Routeros);
        assert!(s.contains("/interface 6to4 add name=broker7 remote-address=192.0.2.1 local-address=198.51.100.10 mtu=1480 disabled=no\n"));
        assert!(s.contains("/ipv6 route add dst-address=::/0 gateway=2001:db8:10:7::1\n"));
    }
}
