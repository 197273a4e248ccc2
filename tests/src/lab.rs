//! The lab topology and its processes.
//!
//! ```text
//!  c1 198.51.100.10 ─┐                                         2001:db8:ffff::2
//!  c2 198.51.100.20 ─┤ isp (bridge, 198.51.100.1 | 192.0.2.254) ── pop ── inet6
//!  ...               ┘                          eth4 192.0.2.1 ─┘   └─ eth6 2001:db8:ffff::1
//! ```
//!
//! Clients are IPv4-only and reach the PoP through the `isp` router; each runs
//! `broker client proto41` for its tunnel. The PoP runs `broker run` with XDP on `eth4`
//! and `eth6`. `inet6` stands for the IPv6 internet.
//!
//! [`Lab::add_tsp_hosts`] adds hosts for TSP clients:
//!
//! ```text
//!  t1 203.0.113.10 ── nat (masquerade, 198.51.100.200 | .201) ─┐
//!  t2 198.51.100.150 ──────────────────────────────────────────┤ isp bridge
//!  t3 198.51.100.160 ──────────────────────────────────────────┘
//!  t6 2001:db8:fffe::6 (IPv6 only) ── inet6 (2001:db8:fffe::1, routes) ── pop eth6
//! ```
//!
//! [`Lab::add_sixxs_hosts`] adds hosts for SixXS clients (TIC, AYIYA, heartbeat), after
//! the TSP hosts (it uses their NAT):
//!
//! ```text
//!  a1 203.0.113.70 ── nat lan1 (the same masquerade) ─┐
//!  h1 198.51.100.170 (.171 to move to) ───────────────┘ isp bridge
//! ```
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    broker_bin,
    netns::{self, NetNs},
    process::Proc,
};

pub const POP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The user who sees the portal's operator pages in the lab (`portal.operators`).
pub const LAB_OPERATOR: &str = "operator";
/// The administrator's token of the lab's broker.
pub const LAB_TOKEN: &str = "lab-admin-token-not-secret";
/// The broker's API inside the PoP namespace (also reachable from clients at 192.0.2.1).
pub const API_PORT: u16 = 8080;
/// Pools tunnels created through the API draw from.
pub const LINK_POOL: &str = "2001:db8:20::/48";
pub const ROUTED_POOL: &str = "2001:db8:3000::/36";
pub const ISP_UPLINK_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const ISP_LAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const POP_NATIVE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
pub const INET6_HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2);
/// Name of the tunnel clients' TUN device.
pub const CLIENT_TUN: &str = "brk6in4";
/// Name of the TSP clients' TUN device.
pub const TSP_TUN: &str = "tsp0";
/// The NAT's public addresses: the first in use, the second for a new mapping.
pub const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
pub const NAT_PUBLIC_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 201);
/// The client behind the NAT.
pub const NATTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NAT_LAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// TSP clients without a NAT.
pub const TSP_DIRECT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 150);
pub const TSP_DIRECT_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 160);
/// The IPv6-only client and its router in `inet6`.
pub const V6_ONLY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 6);
const V6_ONLY_GW: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 1);
/// Inner IPv4 of v4v6 clients; `.129` is the PoP's.
pub const V4V6_POOL: &str = "203.0.113.128/25";
/// The AYIYA client's host behind the NAT (a second LAN of the NAT), and its gateway.
pub const AYIYA_NATTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 70);
const NAT_LAN_2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 65);
/// The heartbeat client's host on the ISP's LAN, and the address it can move to.
pub const HEARTBEAT_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 170);
pub const HEARTBEAT_HOST_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 171);
/// Name of the SixXS clients' TUN device (`broker client ayiya|heartbeat`).
pub const SIXXS_TUN: &str = "sixxs";
/// The lab's `heartbeat.interval_secs`: the `Heartbeat_Interval` TIC hands out, so how
/// often AYIYA and heartbeat clients beat (10 s is the least the config allows).
pub const BEAT_INTERVAL_SECS: u32 = 10;
/// The lab's `heartbeat.timeout_secs`.
pub const BEAT_TIMEOUT_SECS: u32 = 30;

/// One client of the lab and the tunnel it has.
#[derive(Debug)]
pub struct LabClient {
    pub ns: NetNs,
    /// 1-based; also the tunnel id.
    pub index: u32,
    /// Its endpoint address, and a second address for endpoint changes.
    pub v4: Ipv4Addr,
    pub v4_extra: Ipv4Addr,
}

impl LabClient {
    pub fn tunnel_id(&self) -> u32 {
        self.index
    }

    /// `2001:db8:10:<i>::/64`.
    pub fn link_prefix(&self) -> String {
        format!("2001:db8:10:{:x}::/64", self.index)
    }

    /// The client's tunnel address, `::2` of the link.
    pub fn address(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x10, self.index as u16, 0, 0, 0, 2)
    }

    /// The PoP's tunnel address, `::1` of the link.
    pub fn pop_address(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0x10, self.index as u16, 0, 0, 0, 1)
    }

    /// `2001:db8:<1000 + 100 i>::/48`, routed to the client.
    pub fn routed_prefix(&self) -> String {
        format!("2001:db8:{:x}::/48", 0x1000 + 0x100 * self.index)
    }
}

/// A running lab; everything is removed when it drops.
pub struct Lab {
    // Processes first: fields drop in order, and they must end before their namespaces go.
    procs: Vec<Proc>,
    pub prefix: String,
    /// Config files and logs.
    pub dir: PathBuf,
    pub pop: NetNs,
    pub isp: NetNs,
    pub inet6: NetNs,
    pub clients: Vec<LabClient>,
    /// The TSP hosts by role (`nat`, `t1`, `t2`, `t3`, `t6`), and the SixXS hosts (`a1`,
    /// `h1`), once added.
    pub tsp_hosts: Vec<(&'static str, NetNs)>,
    /// The broker instance name, once started.
    pub instance: Option<String>,
    /// Index of `broker run` in `procs`.
    broker: Option<usize>,
    /// Left running by [`Lab::keep`].
    kept: bool,
    /// How long [`Lab::wait_for`] waits (10 s; the scale benchmark raises it).
    pub wait_limit: Duration,
    /// PoPs beside the first, once added ([`Lab::add_pop`]).
    pub more_pops: Vec<pops::MorePop>,
}

pub mod pops;

impl Lab {
    /// Builds the namespaces and links for `clients` clients (at most 20).
    pub fn create(prefix: &str, clients: u32, dir: &Path) -> Result<Self> {
        if clients == 0 || clients > 20 {
            bail!("the lab has 1-20 clients");
        }
        std::fs::create_dir_all(dir)?;
        let name = |role: &str| format!("{prefix}-{role}");
        let pop = NetNs::create(&name("pop"))?;
        let isp = NetNs::create(&name("isp"))?;
        let inet6 = NetNs::create(&name("inet6"))?;
        let mut lab = Self {
            procs: Vec::new(),
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
            pop,
            isp,
            inet6,
            clients: Vec::new(),
            tsp_hosts: Vec::new(),
            instance: None,
            broker: None,
            kept: false,
            wait_limit: Duration::from_secs(10),
            more_pops: Vec::new(),
        };
        for ns in [&lab.pop, &lab.isp, &lab.inet6] {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }

        // isp: a bridge for the client LAN, routing to the PoP.
        let isp = &lab.isp;
        isp.sysctl("net.ipv4.ip_forward", "1")?;
        // A fixed MAC: a bridge otherwise takes the lowest of its ports', which changes
        // when ports are added later (the TSP hosts) and leaves every client's neighbour
        // entry for its gateway pointing nowhere until it expires.
        isp.ip(&[
            "link",
            "add",
            "br0",
            "address",
            "02:00:00:00:01:01",
            "type",
            "bridge",
        ])?;
        isp.ip(&["addr", "add", &format!("{ISP_LAN_V4}/24"), "dev", "br0"])?;
        isp.ip(&["link", "set", "br0", "up"])?;
        veth(isp, "eth0", &lab.pop, "eth4")?;
        isp.ip(&["addr", "add", &format!("{ISP_UPLINK_V4}/24"), "dev", "eth0"])?;
        isp.ip(&["link", "set", "eth0", "up"])?;

        // pop: IPv4 uplink eth4, IPv6 side eth6, forwarding.
        let pop = &lab.pop;
        pop.sysctl("net.ipv4.ip_forward", "1")?;
        pop.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        pop.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        pop.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        pop.ip(&["addr", "add", &format!("{POP_V4}/24"), "dev", "eth4"])?;
        pop.ip(&["link", "set", "eth4", "up"])?;
        pop.ip(&["route", "add", "default", "via", &ISP_UPLINK_V4.to_string()])?;
        veth(pop, "eth6", &lab.inet6, "eth0")?;
        pop.ip(&["addr", "add", &format!("{POP_NATIVE_V6}/64"), "dev", "eth6"])?;
        pop.ip(&["link", "set", "eth6", "up"])?;

        // inet6: one host, default route via the PoP.
        let inet6 = &lab.inet6;
        inet6.ip(&["addr", "add", &format!("{INET6_HOST}/64"), "dev", "eth0"])?;
        inet6.ip(&["link", "set", "eth0", "up"])?;
        inet6.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &POP_NATIVE_V6.to_string(),
        ])?;
        // A veth hands locally generated TCP/UDP over with the checksum still to be filled
        // in (CHECKSUM_PARTIAL); XDP cannot see that state, so an encapsulated segment would
        // leave with a wrong checksum. Real NICs deliver finished checksums: make this
        // "internet host" compute its own, as a remote machine would.
        inet6.exec("ethtool", &["-K", "eth0", "tx", "off"])?;

        for i in 1..=clients {
            let ns = NetNs::create(&name(&format!("c{i}")))?;
            let v4 = Ipv4Addr::new(198, 51, 100, (10 * i) as u8);
            let v4_extra = Ipv4Addr::new(198, 51, 100, (10 * i + 1) as u8);
            let port = format!("c{i}");
            veth(&ns, "eth0", &lab.isp, &port)?;
            lab.isp.ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{v4_extra}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &ISP_LAN_V4.to_string()])?;
            // IPv4 only: the only IPv6 a client has comes through its tunnel.
            ns.sysctl("net.ipv6.conf.eth0.disable_ipv6", "1")?;
            lab.clients.push(LabClient {
                ns,
                index: i,
                v4,
                v4_extra,
            });
        }
        Ok(lab)
    }

    /// A whole lab: namespaces, `broker run` with the default config plus `extra` YAML (as
    /// instance `prefix`), every client's tunnel endpoint, each tunnel forwarding.
    pub fn start(prefix: &str, clients: u32, dir: &Path, extra: &str) -> Result<Self> {
        let mut lab = Self::create(prefix, clients, dir)?;
        let config = format!("{}{extra}", lab.config_yaml(prefix));
        lab.start_broker(prefix, &config)?;
        for i in 1..=clients {
            let v4 = lab.clients[(i - 1) as usize].v4;
            lab.start_client(i, v4)?;
        }
        for i in 1..=clients {
            lab.wait_reachable(i, INET6_HOST)?;
        }
        Ok(lab)
    }

    /// The default config: one static proto-41 tunnel per client, a store in the lab's
    /// directory, the API and the portal (open sign-up, [`LAB_OPERATOR`] its operator) on
    /// port 8080 of the PoP, pools for tunnels created at run time,
    /// TSP with every mechanism and tunnel type (keepalives every 5 s, so that lost tunnels
    /// show quickly), and the SixXS side: TIC, heartbeats (every
    /// [`BEAT_INTERVAL_SECS`]) and AYIYA. The sections come before `tunnels`, which is
    /// last so that tests can cut tunnels off the end.
    pub fn config_yaml(&self, instance: &str) -> String {
        let store = self.dir.join("broker.db");
        let mut y = format!(
            "# Generated by the lab.\ninstance: {instance}\ninterfaces:\n  - {{ name: eth4, mode: driver }}\n  - {{ name: eth6, mode: driver }}\npop:\n  ipv4: {POP_V4}\n  ipv6: {POP_NATIVE_V6}\nstore:\n  path: {}\napi:\n  listen: 0.0.0.0:{API_PORT}\n  admin_token: {LAB_TOKEN}\npools:\n  link: [{LINK_POOL}]\n  routed: [{ROUTED_POOL}]\n  routed_lengths: [48, 56, 64]\n  v4v6: {V4V6_POOL}\n  quarantine_secs: 60\ntsp:\n  auth: [digest-md5, plain, anonymous]\n  tunnel_types: [v6v4, v6udpv4, v4v6]\n  keepalive_secs: 5\ntic: {{}}\nheartbeat:\n  interval_secs: {BEAT_INTERVAL_SECS}\n  timeout_secs: {BEAT_TIMEOUT_SECS}\nayiya:\n  port: 5072\nportal:\n  signup: open\n  operators: [{LAB_OPERATOR}]\ntunnels:\n",
            store.display()
        );
        for c in &self.clients {
            let _ = write!(
                y,
                "  - id: {}\n    kind: proto41\n    state: up\n    remote_ipv4: {}\n    link_prefix: {}\n    routed_prefixes: [{}]\n    mtu: 1480\n",
                c.tunnel_id(),
                c.v4,
                c.link_prefix(),
                c.routed_prefix()
            );
        }
        y
    }

    /// `config` (as [`Lab::config_yaml`] makes it) with the store in PostgreSQL at `url`
    /// instead of the lab's SQLite file, the password in a file of the lab's (0600).
    pub fn on_postgres(&self, config: &str, url: &str, password: &str) -> Result<String> {
        use std::os::unix::fs::PermissionsExt;
        let sqlite = format!("store:\n  path: {}\n", self.dir.join("broker.db").display());
        if !config.contains(&sqlite) {
            bail!("the config has no store.path of the lab's own");
        }
        let file = self.dir.join("db-password");
        std::fs::write(&file, format!("{password}\n"))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        Ok(config.replace(
            &sqlite,
            &format!(
                "store:\n  url: {url}\n  password_file: {}\n",
                file.display()
            ),
        ))
    }

    /// One request to the API as the administrator, from inside the PoP (HTTP/1.0, as the
    /// API closes each connection anyway): the status and the body, `None` without an
    /// answer.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let body = body.unwrap_or("").to_string();
        let (method, path) = (method.to_string(), path.to_string());
        self.pop.within(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", API_PORT)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
            let req = format!(
                "{method} {path} HTTP/1.0\r\nHost: lab\r\nAuthorization: Bearer {LAB_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).ok()?;
            let mut out = Vec::new();
            crate::io::uninterrupted(|| s.read_to_end(&mut out)).ok()?;
            let text = String::from_utf8_lossy(&out).into_owned();
            let status = text.get(9..12)?.parse().ok()?;
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
            Some((status, body))
        })
    }

    /// Adds the hosts of TSP clients (see the module docs): a NAT with one client behind
    /// it, two clients without, an IPv6-only client behind `inet6`.
    pub fn add_tsp_hosts(&mut self) -> Result<()> {
        let name = |role: &str| format!("{}-{role}", self.prefix);
        let nat = NetNs::create(&name("nat"))?;
        let t1 = NetNs::create(&name("t1"))?;
        let t2 = NetNs::create(&name("t2"))?;
        let t3 = NetNs::create(&name("t3"))?;
        let t6 = NetNs::create(&name("t6"))?;
        for ns in [&nat, &t1, &t2, &t3, &t6] {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        // The NAT: public side on the ISP's bridge, the client's LAN behind it.
        veth(&nat, "eth0", &self.isp, "nat")?;
        self.isp
            .ip(&["link", "set", "nat", "master", "br0", "up"])?;
        nat.ip(&["addr", "add", &format!("{NAT_PUBLIC}/24"), "dev", "eth0"])?;
        nat.ip(&["addr", "add", &format!("{NAT_PUBLIC_2}/24"), "dev", "eth0"])?;
        nat.ip(&["link", "set", "eth0", "up"])?;
        nat.ip(&["route", "add", "default", "via", &ISP_LAN_V4.to_string()])?;
        nat.sysctl("net.ipv4.ip_forward", "1")?;
        veth(&nat, "lan0", &t1, "eth0")?;
        nat.ip(&["addr", "add", &format!("{NAT_LAN}/26"), "dev", "lan0"])?;
        nat.ip(&["link", "set", "lan0", "up"])?;
        self.set_nat_address(&nat, NAT_PUBLIC)?;
        t1.ip(&["addr", "add", &format!("{NATTED}/26"), "dev", "eth0"])?;
        t1.ip(&["link", "set", "eth0", "up"])?;
        t1.ip(&["route", "add", "default", "via", &NAT_LAN.to_string()])?;
        t1.sysctl("net.ipv6.conf.eth0.disable_ipv6", "1")?;
        // Two hosts straight on the ISP's LAN.
        for (ns, addr, port) in [(&t2, TSP_DIRECT, "t2"), (&t3, TSP_DIRECT_2, "t3")] {
            veth(ns, "eth0", &self.isp, port)?;
            self.isp.ip(&["link", "set", port, "master", "br0", "up"])?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &ISP_LAN_V4.to_string()])?;
            ns.sysctl("net.ipv6.conf.eth0.disable_ipv6", "1")?;
        }
        // The IPv6-only host, routed by inet6; the ISP routes the v4v6 pool to the PoP.
        veth(&t6, "eth0", &self.inet6, "t6")?;
        self.inet6.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{V6_ONLY_GW}/64"),
            "dev",
            "t6",
        ])?;
        self.inet6.ip(&["link", "set", "t6", "up"])?;
        self.inet6.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        t6.ip(&["-6", "addr", "add", &format!("{V6_ONLY}/64"), "dev", "eth0"])?;
        t6.ip(&["link", "set", "eth0", "up"])?;
        t6.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &V6_ONLY_GW.to_string(),
        ])?;
        self.pop.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:fffe::/64",
            "via",
            &INET6_HOST.to_string(),
        ])?;
        self.isp
            .ip(&["route", "add", V4V6_POOL, "via", &POP_V4.to_string()])?;
        self.tsp_hosts = vec![("nat", nat), ("t1", t1), ("t2", t2), ("t3", t3), ("t6", t6)];
        Ok(())
    }

    /// A TSP host by role (`nat`, `t1`, `t2`, `t3`, `t6`).
    pub fn host(&self, role: &str) -> &NetNs {
        &self
            .tsp_hosts
            .iter()
            .find(|(r, _)| *r == role)
            .unwrap_or_else(|| panic!("no TSP host {role}: call add_tsp_hosts"))
            .1
    }

    /// Makes the NAT translate to `public` (source NAT of everything leaving `eth0`).
    fn set_nat_address(&self, nat: &NetNs, public: Ipv4Addr) -> Result<()> {
        let _ = nat.exec("nft", &["delete", "table", "ip", "lab_nat"]);
        nat.exec("nft", &["add", "table", "ip", "lab_nat"])?;
        nat.exec(
            "nft",
            &["add chain ip lab_nat post { type nat hook postrouting priority srcnat; }"],
        )?;
        nat.exec(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "lab_nat",
                "post",
                "oifname",
                "eth0",
                "snat",
                "to",
                &public.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Gives the NAT's client a new mapping: translated to `public` from now on, and every
    /// existing mapping forgotten.
    pub fn renat(&self, public: Ipv4Addr) -> Result<()> {
        let nat = self.host("nat");
        self.set_nat_address(nat, public)?;
        nat.exec("conntrack", &["-F"])?;
        Ok(())
    }

    /// Starts `broker client tsp` on TSP host `role` with `args` (after `--server`);
    /// returns its index among the lab's processes.
    pub fn start_tsp_client(&mut self, role: &str, server: &str, args: &[&str]) -> Result<usize> {
        let bin = broker_bin()?;
        let mut cmd = self.host(role).cmd(bin.to_str().context("path")?);
        cmd.args(["client", "tsp", "--server", server, "--name", TSP_TUN])
            .args(args);
        let log = self.dir.join(format!("tsp-{role}.log"));
        self.procs
            .push(Proc::spawn(&format!("tsp client {role}"), cmd, &log)?);
        Ok(self.procs.len() - 1)
    }

    /// Adds the hosts of SixXS clients (see the module docs): `a1` on a second LAN behind
    /// the TSP hosts' NAT (call [`Lab::add_tsp_hosts`] first), `h1` straight on the ISP's
    /// LAN at [`HEARTBEAT_HOST`].
    pub fn add_sixxs_hosts(&mut self) -> Result<()> {
        if !self.tsp_hosts.iter().any(|(r, _)| *r == "nat") {
            bail!("add_sixxs_hosts needs the NAT of add_tsp_hosts");
        }
        let name = |role: &str| format!("{}-{role}", self.prefix);
        let a1 = NetNs::create(&name("a1"))?;
        let h1 = NetNs::create(&name("h1"))?;
        for ns in [&a1, &h1] {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        }
        let nat = self.host("nat");
        veth(nat, "lan1", &a1, "eth0")?;
        nat.ip(&["addr", "add", &format!("{NAT_LAN_2}/26"), "dev", "lan1"])?;
        nat.ip(&["link", "set", "lan1", "up"])?;
        a1.ip(&["addr", "add", &format!("{AYIYA_NATTED}/26"), "dev", "eth0"])?;
        a1.ip(&["link", "set", "eth0", "up"])?;
        a1.ip(&["route", "add", "default", "via", &NAT_LAN_2.to_string()])?;
        a1.sysctl("net.ipv6.conf.eth0.disable_ipv6", "1")?;
        veth(&h1, "eth0", &self.isp, "h1")?;
        self.isp.ip(&["link", "set", "h1", "master", "br0", "up"])?;
        // Moving to another address deletes the first: keep the routes through the second.
        h1.sysctl("net.ipv4.conf.all.promote_secondaries", "1")?;
        h1.sysctl("net.ipv4.conf.default.promote_secondaries", "1")?;
        h1.ip(&[
            "addr",
            "add",
            &format!("{HEARTBEAT_HOST}/24"),
            "dev",
            "eth0",
        ])?;
        h1.ip(&["link", "set", "eth0", "up"])?;
        h1.ip(&["route", "add", "default", "via", &ISP_LAN_V4.to_string()])?;
        h1.sysctl("net.ipv6.conf.eth0.disable_ipv6", "1")?;
        self.tsp_hosts.push(("a1", a1));
        self.tsp_hosts.push(("h1", h1));
        Ok(())
    }

    /// Moves host `role` (one IPv4 on `eth0`, a /24 of the ISP's LAN) from `from` to `to`:
    /// the new address is added, the old one deleted, the default route kept.
    pub fn move_host(&self, role: &str, from: Ipv4Addr, to: Ipv4Addr) -> Result<()> {
        let ns = self.host(role);
        ns.ip(&["addr", "add", &format!("{to}/24"), "dev", "eth0"])?;
        ns.ip(&["addr", "del", &format!("{from}/24"), "dev", "eth0"])?;
        ns.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &ISP_LAN_V4.to_string(),
        ])?;
        Ok(())
    }

    /// Starts `broker client ayiya` on host `role`: it fetches tunnel `tunnel` (or the
    /// first of `user`'s) over TIC from the PoP and runs it on [`SIXXS_TUN`]. Returns its
    /// index among the lab's processes.
    pub fn start_ayiya_client(
        &mut self,
        role: &str,
        user: &str,
        password: &str,
        tunnel: Option<u32>,
    ) -> Result<usize> {
        self.start_sixxs_client(role, "ayiya", (user, password, tunnel), &[])
    }

    /// Starts `broker client heartbeat` on host `role` with its endpoint `local`: it
    /// fetches the tunnel over TIC, runs proto-41 on [`SIXXS_TUN`] and beats. Returns its
    /// index among the lab's processes.
    pub fn start_heartbeat_client(
        &mut self,
        role: &str,
        user: &str,
        password: &str,
        tunnel: Option<u32>,
        local: Ipv4Addr,
    ) -> Result<usize> {
        let extra = ["--local".to_string(), local.to_string()];
        self.start_sixxs_client(role, "heartbeat", (user, password, tunnel), &extra)
    }

    /// `broker client <what>` on host `role`, logged in to the PoP's TIC server as
    /// `(user, password)` for `tunnel` (or the first listed), on [`SIXXS_TUN`], plus `extra`.
    fn start_sixxs_client(
        &mut self,
        role: &str,
        what: &str,
        (user, password, tunnel): (&str, &str, Option<u32>),
        extra: &[String],
    ) -> Result<usize> {
        let mut args: Vec<String> = vec![
            what.into(),
            "--server".into(),
            POP_V4.to_string(),
            "--username".into(),
            user.into(),
            "--password".into(),
            password.into(),
            "--name".into(),
            SIXXS_TUN.into(),
        ];
        if let Some(t) = tunnel {
            args.extend(["--tunnel".into(), format!("T{t}")]);
        }
        args.extend_from_slice(extra);
        let bin = broker_bin()?;
        let mut cmd = self.host(role).cmd(bin.to_str().context("path")?);
        cmd.arg("client").args(&args);
        // One log per start: a restarted client keeps the log of the one before.
        let log = self
            .dir
            .join(format!("{what}-{role}-{}.log", self.procs.len()));
        self.procs
            .push(Proc::spawn(&format!("{what} client {role}"), cmd, &log)?);
        Ok(self.procs.len() - 1)
    }

    /// Waits until the SixXS client `idx` on `role` has a global IPv6 address on
    /// [`SIXXS_TUN`]; returns the `ip addr` output.
    pub fn wait_sixxs_up(&mut self, role: &str, idx: usize) -> Result<String> {
        let role = role.to_string();
        self.wait_for(idx, "the SixXS client's tunnel", |lab| {
            Ok(lab
                .host(&role)
                .ip(&["-6", "addr", "show", "dev", SIXXS_TUN, "scope", "global"])
                .is_ok_and(|s| s.contains("inet6")))
        })?;
        self.host(role.as_str())
            .ip(&["-6", "addr", "show", "dev", SIXXS_TUN])
    }

    /// Waits until the TSP client on `role` has an address of `family` (`-4`/`-6`) on its
    /// TUN device; returns the `ip addr` output.
    pub fn wait_tsp_up(&mut self, role: &str, idx: usize, family: &str) -> Result<String> {
        let role = role.to_string();
        let family = family.to_string();
        self.wait_for(idx, "the TSP client's tunnel", |lab| {
            Ok(lab
                .host(&role)
                .ip(&[&family, "addr", "show", "dev", TSP_TUN])
                .is_ok_and(|s| s.contains("inet")))
        })?;
        self.host(role.as_str())
            .ip(&[&family, "addr", "show", "dev", TSP_TUN])
    }

    /// Sends `signal` to process `idx`.
    pub fn signal_proc(&self, idx: usize, signal: i32) {
        self.procs[idx].signal(signal);
    }

    /// Stops process `idx` (SIGTERM, then SIGKILL).
    pub fn stop_proc(&mut self, idx: usize) {
        self.procs[idx].stop(Duration::from_secs(5));
    }

    /// Runs `program` with `args` in client `i`'s namespace as a long-running process
    /// called `name` (stopped with the lab); its index.
    pub fn spawn_in_client(
        &mut self,
        i: u32,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> Result<usize> {
        let c = &self.clients[(i - 1) as usize];
        let mut cmd = c.ns.cmd(program);
        cmd.args(args);
        let log = self.dir.join(format!("{}.log", name.replace(' ', "-")));
        self.procs.push(Proc::spawn(name, cmd, &log)?);
        Ok(self.procs.len() - 1)
    }

    /// The log of process `idx`.
    pub fn proc_log(&self, idx: usize) -> String {
        self.procs[idx].log()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("broker.yaml")
    }

    /// Attaches an XDP_PASS program to the PoP's veth peers (isp and inet6 `eth0`): a veth
    /// receives what its peer sends with XDP_TX (echo replies, Packet Too Big) only when it
    /// has an XDP program of its own. Real NICs do not need this.
    fn start_peer_programs(&mut self) -> Result<()> {
        let bin = broker_bin()?;
        let bin = bin.to_str().context("path")?;
        for ns in ["isp", "inet6"] {
            let target = if ns == "isp" { &self.isp } else { &self.inet6 };
            let mut cmd = target.cmd(bin);
            cmd.args(["dataplane", "pass", "--iface", "eth0"]);
            let log = self.dir.join(format!("pass-{ns}.log"));
            self.procs
                .push(Proc::spawn(&format!("xdp_pass in {ns}"), cmd, &log)?);
            let idx = self.procs.len() - 1;
            self.wait_for(idx, "xdp_pass on eth0", |lab| {
                let ns = if ns == "isp" { &lab.isp } else { &lab.inet6 };
                Ok(ns
                    .ip(&["link", "show", "eth0"])
                    .is_ok_and(|s| s.contains("xdp")))
            })?;
        }
        Ok(())
    }

    /// Writes `config` and starts `broker run` in the PoP (and the peers' pass programs);
    /// returns once it says it is running.
    pub fn start_broker(&mut self, instance: &str, config: &str) -> Result<()> {
        std::fs::write(self.config_path(), config)?;
        self.instance = Some(instance.to_string());
        self.spawn_broker(&[])
    }

    /// Starts `broker run` (again) with the config already written and `env` set; waits
    /// until it logs that it runs (it may die at a failpoint before that only if `env`
    /// arms one, which the caller then expects).
    pub fn spawn_broker(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let idx = self.spawn_broker_unwaited(env)?;
        self.wait_for(idx, "broker run", |lab| {
            Ok(lab.broker_log().contains("broker running"))
        })
    }

    /// Starts `broker run` and returns at once (its index among the processes): for
    /// measuring a start from its first moment.
    pub fn spawn_broker_unwaited(&mut self, env: &[(&str, &str)]) -> Result<usize> {
        if self.procs.is_empty() {
            self.start_peer_programs()?;
        }
        let mut cmd = self.pop.cmd(broker_bin()?.to_str().context("path")?);
        cmd.arg("run").arg("--config").arg(self.config_path());
        cmd.envs(env.iter().copied());
        let log = self.dir.join("broker.log");
        let proc = Proc::spawn("broker run", cmd, &log)?;
        let idx = match self.broker {
            Some(i) => {
                // The previous broker process is gone (stopped or killed); replace it.
                self.procs[i] = proc;
                i
            }
            None => {
                self.procs.push(proc);
                self.procs.len() - 1
            }
        };
        self.broker = Some(idx);
        Ok(idx)
    }

    /// Polls `/readyz` from `since` (a start of `broker run`) until it answers 200, at most
    /// 10 minutes, while the broker runs; returns the seconds until the API first answered
    /// at all and until it was ready (what the start benchmarks report).
    pub fn ready_after(&mut self, since: std::time::Instant) -> (f64, f64) {
        let mut answered = None;
        loop {
            let answer = self.admin_request("GET", "/readyz", None);
            if answer.is_some() && answered.is_none() {
                answered = Some(since.elapsed().as_secs_f64());
            }
            if let Some((200, _)) = answer {
                let ready = since.elapsed().as_secs_f64();
                return (answered.unwrap_or(ready), ready);
            }
            assert!(since.elapsed() < Duration::from_secs(600), "not ready");
            assert!(
                self.broker().running(),
                "broker run died:\n{}",
                self.broker_log()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILLs `broker run` and waits until it is gone.
    pub fn kill_broker(&mut self) {
        let b = self.broker();
        b.signal(libc::SIGKILL);
        for _ in 0..100 {
            if !b.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the tunnel client of client `i` (1-based) with its endpoint `local` (one
    /// already running is replaced: an endpoint that moved); returns once its TUN device
    /// has its address.
    pub fn start_client(&mut self, i: u32, local: Ipv4Addr) -> Result<()> {
        let address = self.clients[(i - 1) as usize].address();
        self.start_client_at(i, local, address)
    }

    /// Starts the tunnel client of client `i` with its endpoint `local` and its tunnel
    /// address `address` (a /64's `::2`), for a tunnel made at run time.
    pub fn start_client_at(&mut self, i: u32, local: Ipv4Addr, address: Ipv6Addr) -> Result<()> {
        self.start_client_to(i, POP_V4, local, address)
    }

    /// [`Lab::start_client_at`] for a tunnel of the PoP at `server`. A client of `i`
    /// already running is stopped first (its TUN device has the same name).
    pub fn start_client_to(
        &mut self,
        i: u32,
        server: Ipv4Addr,
        local: Ipv4Addr,
        address: Ipv6Addr,
    ) -> Result<()> {
        let name = format!("client {i}");
        for p in self.procs.iter_mut().filter(|p| p.name() == name) {
            p.stop(Duration::from_secs(5));
        }
        let c = &self.clients[(i - 1) as usize];
        let mut cmd = c.ns.cmd(broker_bin()?.to_str().context("path")?);
        cmd.args([
            "client",
            "proto41",
            "--server",
            &server.to_string(),
            "--local",
            &local.to_string(),
            "--address",
            &format!("{address}/64"),
            "--name",
            CLIENT_TUN,
        ]);
        let log = self.dir.join(format!("client{i}.log"));
        self.procs
            .push(Proc::spawn(&format!("client {i}"), cmd, &log)?);
        let idx = self.procs.len() - 1;
        let want = address.to_string();
        self.wait_for(idx, "the client's TUN address", |lab| {
            let c = &lab.clients[(i - 1) as usize];
            Ok(c.ns
                .ip(&["-6", "addr", "show", "dev", CLIENT_TUN])
                .is_ok_and(|s| s.contains(&want)))
        })
    }

    /// The `broker run` process.
    pub fn broker(&mut self) -> &mut Proc {
        let i = self.broker.expect("broker started");
        &mut self.procs[i]
    }

    /// Writes a new config and sends SIGHUP to `broker run`.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        std::fs::write(self.config_path(), config)?;
        self.broker().signal(libc::SIGHUP);
        Ok(())
    }

    /// Polls `ready` every 100 ms for up to `wait_limit` while process `idx` keeps
    /// running.
    fn wait_for(
        &mut self,
        idx: usize,
        what: &str,
        ready: impl Fn(&Self) -> Result<bool>,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        while start.elapsed() < self.wait_limit {
            if ready(self)? {
                return Ok(());
            }
            if !self.procs[idx].running() {
                bail!(
                    "{} exited before {what} was ready; its log:\n{}",
                    self.procs[idx].name(),
                    self.procs[idx].log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{what} not ready after {:?}; {} log:\n{}",
            self.wait_limit,
            self.procs[idx].name(),
            self.procs[idx].log()
        )
    }

    /// `ping -6` from client `i` to `dst`: `count` echoes `interval` apart, each waited for
    /// at most 2 s. Returns ping's output; fails when a reply is missing.
    pub fn ping(&self, i: u32, dst: Ipv6Addr, count: u32, interval: &str) -> Result<String> {
        let c = &self.clients[(i - 1) as usize];
        c.ns.exec(
            "ping",
            &[
                "-6",
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "2",
                &dst.to_string(),
            ],
        )
    }

    /// Pings until one reply arrives (the first packets also resolve neighbours), at most
    /// 10 tries.
    pub fn wait_reachable(&self, i: u32, dst: Ipv6Addr) -> Result<()> {
        let mut last = None;
        for _ in 0..10 {
            match self.ping(i, dst, 1, "1") {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried")).context(format!("client {i} cannot reach {dst}"))
    }

    /// `broker stats` for the running instance (`--json` when `json`).
    pub fn stats(&self, json: bool) -> Result<String> {
        let instance = self.instance.as_deref().context("broker not started")?;
        let mut cmd = std::process::Command::new(broker_bin()?);
        cmd.args(["stats", "--instance", instance]);
        if json {
            cmd.arg("--json");
        }
        netns::run(&mut cmd)
    }

    /// The broker's log so far.
    pub fn broker_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// Records the PIDs of the processes started so far in `dir/pids`, so that
    /// [`Lab::destroy`] can end them if this process dies without cleaning up.
    pub fn record_pids(&self) -> Result<()> {
        let pids: Vec<String> = self
            .procs
            .iter()
            .filter_map(|p| p.pid())
            .map(|p| p.to_string())
            .collect();
        std::fs::write(self.dir.join("pids"), pids.join("\n"))?;
        let more: Vec<&str> = self.more_pops.iter().map(|p| p.instance.as_str()).collect();
        std::fs::write(self.dir.join("instances"), more.join("\n"))?;
        Ok(())
    }

    /// Leaves namespaces and processes running after this value drops; records the PIDs so
    /// that [`Lab::destroy`] can end them.
    pub fn keep(mut self) -> Result<()> {
        self.record_pids()?;
        self.kept = true;
        for p in std::mem::take(&mut self.procs) {
            p.detach();
        }
        self.pop.keep();
        self.isp.keep();
        self.inet6.keep();
        for c in &mut self.clients {
            c.ns.keep();
        }
        for (_, ns) in &mut self.tsp_hosts {
            ns.keep();
        }
        for p in &mut self.more_pops {
            p.ns.keep();
        }
        Ok(())
    }

    /// Ends the processes recorded by [`Lab::keep`] (by PID, only if they are still
    /// `broker`), takes the data plane of `instance` down, deletes the namespaces starting
    /// with `prefix` and the state in `dir`.
    pub fn destroy(prefix: &str, instance: &str, dir: &Path) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        if let Ok(pids) = std::fs::read_to_string(dir.join("pids")) {
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("broker") {
                    // SAFETY: a PID this lab started and recorded, checked to be broker.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    for _ in 0..50 {
                        if !Path::new(&format!("/proc/{pid}")).exists() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    removed.push(format!("process {pid}"));
                }
            }
        }
        let more = std::fs::read_to_string(dir.join("instances")).unwrap_or_default();
        for instance in std::iter::once(instance).chain(more.lines()) {
            if let Ok(out) = detach(instance) {
                removed.extend(
                    out.lines()
                        .filter(|l| l.starts_with("removed "))
                        .map(|l| l[8..].to_string()),
                );
            }
        }
        // A multi-PoP lab's PostgreSQL (`pops::start`), after the brokers.
        if let Ok(pg) = std::fs::read_to_string(dir.join("postgres")) {
            let pg = Path::new(pg.trim());
            crate::postgres::stop_left(pg)?;
            removed.push(format!("PostgreSQL in {}", pg.display()));
        }
        for ns in netns::list(&format!("{prefix}-")) {
            netns::delete(&ns)?;
            removed.push(format!("netns {ns}"));
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(removed)
    }

    /// Everything it takes to reach the API as the administrator: `(url, token)`.
    pub fn api(&self) -> (String, &'static str) {
        (format!("http://127.0.0.1:{API_PORT}"), LAB_TOKEN)
    }

    /// The broker's `/metrics` text, fetched inside the PoP namespace.
    pub fn metrics(&self) -> Result<String> {
        self.pop.within(|| -> Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", API_PORT))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: pop\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            match out.split_once("\r\n\r\n") {
                Some((head, body))
                    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
                {
                    Ok(body.to_string())
                }
                _ => bail!("GET /metrics: {out}"),
            }
        })
    }

    /// The value of one series of `/metrics`, e.g.
    /// `broker_tsp_sessions_total{transport="tcp",outcome="refused"}` (0 when absent).
    pub fn metric(&self, series: &str) -> Result<u64> {
        Ok(self
            .metrics()?
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0))
    }

    /// Runs the `broker` CLI inside the PoP namespace against the lab's API as the
    /// administrator; returns stdout or fails with stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let (url, token) = self.api();
        let mut cmd = self.pop.cmd(broker_bin()?.to_str().context("path")?);
        cmd.args(args)
            .env("BROKER_API", url)
            .env("BROKER_TOKEN", token);
        netns::run(&mut cmd)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failing test shows what the processes said.
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("---- log of {} ----\n{}", p.name(), p.log());
            }
        }
        for p in &mut self.procs {
            p.stop(Duration::from_secs(5));
        }
        // `broker run` leaves its data plane forwarding on purpose; the lab takes it down.
        let more = self.more_pops.iter().map(|p| &p.instance);
        if !self.kept {
            for instance in self.instance.iter().chain(more) {
                if let Err(e) = detach(instance) {
                    eprintln!("warning: detaching instance {instance}: {e:#}");
                }
            }
        }
    }
}

/// `broker dataplane detach --instance <instance>`.
pub fn detach(instance: &str) -> Result<String> {
    netns::run(std::process::Command::new(broker_bin()?).args([
        "dataplane",
        "detach",
        "--instance",
        instance,
    ]))
}

/// A veth pair with one end in each namespace.
fn veth(a: &NetNs, a_name: &str, b: &NetNs, b_name: &str) -> Result<()> {
    netns::run(std::process::Command::new("ip").args([
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]))?;
    Ok(())
}
