//! The client side of a tunnel as commands for common systems, as operators hand them to
//! users (`broker tunnel show ID --client-config linux|openwrt|routeros`). Pure text.
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
}

/// Shell-safe interface name for the tunnel.
fn ifname(t: &TunnelOut) -> String {
    format!("broker{}", t.id)
}

pub fn render(t: &TunnelOut, system: System) -> String {
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
    }
    if !routed.is_empty() {
        let _ = writeln!(s, "# Routed to you: {routed}");
    }
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
