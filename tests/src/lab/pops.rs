//! More PoPs in one lab (docs/MULTI-POP.md): PoP `n` (2, 3, ...) beside the first, each
//! with a link of its own to the ISP (`198.18.n.0/24`, the PoP at `.2`) and to the IPv6
//! internet host (`2001:db8:ff0n::/64`, the PoP at `::1`), and BIRD: one in each PoP,
//! announcing its pools, and one on the internet host, the upstream router, peering with
//! them all. The first PoP peers over its existing link (`2001:db8:ffff::/64`).
//!
//! BIRD runs the configurations of `docs/examples/bird/`, with each PoP's values put in.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{Lab, API_PORT, INET6_HOST, LAB_TOKEN, POP_NATIVE_V6, POP_V4};
use crate::{
    broker_bin,
    netns::{self, NetNs},
    process::Proc,
};

/// The kernel table PoPs keep their announced aggregates in (`routes.announce_table`).
pub const ANNOUNCE_TABLE: u32 = 100;
/// The upstream router's AS; PoP `n` is AS `65000 + n`.
pub const UPSTREAM_AS: u32 = 64500;

/// A PoP beside the lab's first.
#[derive(Debug)]
pub struct MorePop {
    pub n: u8,
    pub ns: NetNs,
    pub instance: String,
    /// Its config, log and BIRD files.
    pub dir: PathBuf,
    /// Its address, where clients send tunnels and TSP.
    pub v4: Ipv4Addr,
    /// Its end of the IPv6 link to the internet host, and the host's.
    pub v6: Ipv6Addr,
    pub v6_peer: Ipv6Addr,
    broker: Option<usize>,
}

/// PoP `n`'s addresses: (IPv4, ISP side), (IPv6, internet host side).
pub fn addresses(n: u8) -> ((Ipv4Addr, Ipv4Addr), (Ipv6Addr, Ipv6Addr)) {
    let net = 0xff00 + u16::from(n);
    (
        (Ipv4Addr::new(198, 18, n, 2), Ipv4Addr::new(198, 18, n, 1)),
        (
            Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, 2),
        ),
    )
}

/// `docs/examples/bird/<name>.conf`.
fn example(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples/bird")
        .join(format!("{name}.conf"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The PoP config of `docs/examples/bird/pop.conf` for a PoP with this router id, addresses
/// and AS.
pub fn pop_bird_conf(
    router_id: Ipv4Addr,
    local: Ipv6Addr,
    peer: Ipv6Addr,
    asn: u32,
) -> Result<String> {
    let conf = example("pop")?;
    let swaps = [
        ("router id 192.0.2.1;", format!("router id {router_id};")),
        (
            "local 2001:db8:ffff::1 as 65001;",
            format!("local {local} as {asn};"),
        ),
        (
            "neighbor 2001:db8:ffff::2 as 64500;",
            format!("neighbor {peer} as {UPSTREAM_AS};"),
        ),
        (
            "kernel table 100;",
            format!("kernel table {ANNOUNCE_TABLE};"),
        ),
    ];
    swap(conf, &swaps)
}

fn swap(mut conf: String, swaps: &[(&str, String)]) -> Result<String> {
    for (from, to) in swaps {
        if !conf.contains(from) {
            bail!("the example BIRD config has no {from:?}");
        }
        conf = conf.replace(from, to);
    }
    Ok(conf)
}

impl Lab {
    /// Adds PoP `n` (2, 3, ...): its namespace and links, and `broker run` with `config`
    /// (its addresses are [`addresses`]`(n)`; the caller's config names them) as
    /// `instance`. Returns once it runs.
    pub fn add_pop(&mut self, n: u8, instance: &str, config: &str) -> Result<()> {
        let ((v4, isp_v4), (v6, v6_peer)) = addresses(n);
        let ns = NetNs::create(&format!("{}-pop{n}", self.prefix))?;
        for (k, v) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            ns.sysctl(k, v)?;
        }
        let port = format!("p{n}");
        super::veth(&self.isp, &port, &ns, "eth4")?;
        self.isp
            .ip(&["addr", "add", &format!("{isp_v4}/24"), "dev", &port])?;
        self.isp.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth4"])?;
        ns.ip(&["link", "set", "eth4", "up"])?;
        ns.ip(&["route", "add", "default", "via", &isp_v4.to_string()])?;
        super::veth(&self.inet6, &port, &ns, "eth6")?;
        self.inet6
            .ip(&["addr", "add", &format!("{v6_peer}/64"), "dev", &port])?;
        self.inet6.ip(&["link", "set", &port, "up"])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth6"])?;
        ns.ip(&["link", "set", "eth6", "up"])?;
        ns.ip(&["-6", "route", "add", "default", "via", &v6_peer.to_string()])?;
        let dir = self.dir.join(format!("pop{n}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("broker.yaml"), config)?;
        // The new ends on the ISP and the internet host take what the PoP sends with
        // XDP_TX or redirects (as the first PoP's peers do).
        let bin = broker_bin()?;
        let bin = bin.to_str().context("path")?;
        for (peer, name) in [(&self.isp, "isp"), (&self.inet6, "inet6")] {
            let mut cmd = peer.cmd(bin);
            cmd.args(["dataplane", "pass", "--iface", &port]);
            let log = dir.join(format!("pass-{name}.log"));
            self.procs.push(Proc::spawn(
                &format!("xdp_pass on {port} in {name}"),
                cmd,
                &log,
            )?);
        }
        self.more_pops.push(MorePop {
            n,
            ns,
            instance: instance.to_string(),
            dir,
            v4,
            v6,
            v6_peer,
            broker: None,
        });
        self.spawn_pop(n)
    }

    fn more_pop(&self, n: u8) -> Result<&MorePop> {
        self.more_pops
            .iter()
            .find(|p| p.n == n)
            .with_context(|| format!("no PoP {n} in the lab"))
    }

    /// Starts PoP `n`'s `broker run` (again, after [`Lab::kill_pop`]); returns once it
    /// runs.
    pub fn spawn_pop(&mut self, n: u8) -> Result<()> {
        let p = self.more_pop(n)?;
        let mut cmd = p.ns.cmd(broker_bin()?.to_str().context("path")?);
        cmd.arg("run")
            .arg("--config")
            .arg(p.dir.join("broker.yaml"));
        let log = p.dir.join("broker.log");
        let _ = std::fs::remove_file(&log);
        let proc = Proc::spawn(&format!("broker run (PoP {n})"), cmd, &log)?;
        let idx = match p.broker {
            Some(i) => {
                self.procs[i] = proc;
                i
            }
            None => {
                self.procs.push(proc);
                self.procs.len() - 1
            }
        };
        if let Some(p) = self.more_pops.iter_mut().find(|p| p.n == n) {
            p.broker = Some(idx);
        }
        self.wait_for(idx, &format!("broker run of PoP {n}"), |lab| {
            Ok(lab.pop_log(n).contains("broker running"))
        })
    }

    /// SIGKILLs PoP `n`'s `broker run`.
    pub fn kill_pop(&mut self, n: u8) -> Result<()> {
        let idx = self.more_pop(n)?.broker.context("not started")?;
        self.procs[idx].signal(libc::SIGKILL);
        for _ in 0..100 {
            if !self.procs[idx].running() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    /// PoP `n`'s broker log (1: the first PoP's).
    pub fn pop_log(&self, n: u8) -> String {
        match n {
            1 => self.broker_log(),
            n => self
                .more_pop(n)
                .map(|p| std::fs::read_to_string(p.dir.join("broker.log")).unwrap_or_default())
                .unwrap_or_default(),
        }
    }

    /// PoP `n`'s namespace (1: the first PoP's).
    pub fn pop_ns(&self, n: u8) -> Result<&NetNs> {
        match n {
            1 => Ok(&self.pop),
            n => Ok(&self.more_pop(n)?.ns),
        }
    }

    /// PoP `n`'s instance name.
    pub fn pop_instance(&self, n: u8) -> Result<String> {
        match n {
            1 => self
                .instance
                .clone()
                .context("the first PoP is not started"),
            n => Ok(self.more_pop(n)?.instance.clone()),
        }
    }

    /// PoP `n`'s IPv4 address (where its tunnels and TSP are).
    pub fn pop_v4(&self, n: u8) -> Result<Ipv4Addr> {
        match n {
            1 => Ok(POP_V4),
            n => Ok(self.more_pop(n)?.v4),
        }
    }

    /// The `broker` CLI inside PoP `n`'s namespace against its API, as the administrator.
    pub fn cli_at(&self, n: u8, args: &[&str]) -> Result<String> {
        let mut cmd = self.pop_ns(n)?.cmd(broker_bin()?.to_str().context("path")?);
        cmd.args(args)
            .env("BROKER_API", format!("http://127.0.0.1:{API_PORT}"))
            .env("BROKER_TOKEN", LAB_TOKEN);
        netns::run(&mut cmd)
    }

    /// BIRD in every PoP (announcing table [`ANNOUNCE_TABLE`]) and on the internet host
    /// (the upstream, AS [`UPSTREAM_AS`]), peering over each PoP's IPv6 link.
    pub fn start_bird(&mut self) -> Result<()> {
        let mut upstream = example("upstream")?;
        let mut peers = vec![(1u8, POP_NATIVE_V6, INET6_HOST, POP_V4)];
        for p in &self.more_pops {
            peers.push((p.n, p.v6, p.v6_peer, p.v4));
        }
        for &(n, v6, _, _) in &peers[1..] {
            upstream.push_str(&format!(
                "\nprotocol bgp pop{n} from pop {{\n    neighbor {v6} as {};\n}}\n",
                65000 + u32::from(n)
            ));
        }
        self.spawn_bird("inet6", &upstream)?;
        for (n, v6, peer, v4) in peers {
            let conf = pop_bird_conf(v4, v6, peer, 65000 + u32::from(n))?;
            self.spawn_bird(&format!("pop{n}"), &conf)?;
        }
        Ok(())
    }

    /// `bird -f` in namespace `role` (`inet6`, `pop1`, `pop2`, ...) with `conf`.
    fn spawn_bird(&mut self, role: &str, conf: &str) -> Result<()> {
        let conf_path = self.dir.join(format!("bird-{role}.conf"));
        std::fs::write(&conf_path, conf)?;
        let ns = match role {
            "inet6" => &self.inet6,
            r => self.pop_ns(r.trim_start_matches("pop").parse().context("a PoP")?)?,
        };
        let mut cmd = ns.cmd("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf_path)
            .arg("-s")
            .arg(self.bird_socket(role))
            .arg("-P")
            .arg(self.dir.join(format!("bird-{role}.pid")));
        let log = self.dir.join(format!("bird-{role}.log"));
        self.procs
            .push(Proc::spawn(&format!("bird ({role})"), cmd, &log)?);
        Ok(())
    }

    fn bird_socket(&self, role: &str) -> PathBuf {
        self.dir.join(format!("bird-{role}.ctl"))
    }

    /// The IPv6 routes the upstream router learnt by BGP and installed (`proto bird`).
    pub fn upstream_routes(&self) -> Result<String> {
        self.inet6.ip(&["-6", "route", "show", "proto", "bird"])
    }

    /// `birdc show protocols` on `role`'s BIRD.
    pub fn birdc(&self, role: &str, args: &[&str]) -> Result<String> {
        let mut cmd = std::process::Command::new("birdc");
        cmd.arg("-s").arg(self.bird_socket(role)).args(args);
        netns::run(&mut cmd)
    }
}

/// The client's address in a tunnel as the API shows it: `::2` of its link /64.
pub fn client_address(tunnel: &serde_json::Value) -> Result<Ipv6Addr> {
    let link = tunnel["link_prefix"].as_str().context("a link prefix")?;
    let network: Ipv6Addr = link.split('/').next().unwrap_or_default().parse()?;
    let mut octets = network.octets();
    octets[15] = 2;
    Ok(octets.into())
}

/// PoP `n`'s pools: the lab's for PoP 1; beside them, never overlapping, for the others
/// (link, routed, v4v6).
pub fn pools(n: u8) -> (String, String, String) {
    match n {
        1 => (
            super::LINK_POOL.into(),
            super::ROUTED_POOL.into(),
            super::V4V6_POOL.into(),
        ),
        n => (
            format!("2001:db8:{:x}::/48", 0x20 + u16::from(n) - 1),
            format!("2001:db8:{:x}000::/36", 3 + u16::from(n) - 1),
            format!("198.18.{}.0/24", 100 + u16::from(n)),
        ),
    }
}

/// PoP `n`'s instance, beside the first PoP's `first`.
pub fn instance_of(first: &str, n: u8) -> String {
    match n {
        1 => first.to_string(),
        n => format!("{first}-pop{n}"),
    }
}

/// The lab's config for PoP `n` (named `pop<n>`) on the store at `url` (password
/// `password`), announcing its pools in [`ANNOUNCE_TABLE`], with the static tunnels of the
/// first `statics` clients (PoP 1; tunnel ids are the store's, shared by every PoP).
pub fn config(lab: &Lab, n: u8, statics: usize, url: &str, password: &str) -> Result<String> {
    let instance = instance_of(lab.instance.as_deref().unwrap_or(&lab.prefix), n);
    let mut config = lab.config_yaml(&instance);
    let cut = config.find("tunnels:\n").context("tunnels last")? + "tunnels:\n".len();
    let kept: String = config[cut..]
        .split("  - id: ")
        .skip(1)
        .take(statics)
        .map(|e| format!("  - id: {e}"))
        .collect();
    config.truncate(cut);
    config.push_str(&kept);
    if kept.is_empty() {
        config = config.replace("tunnels:\n", "tunnels: []\n");
    }
    config = config.replace(
        "pop:\n",
        &format!("routes:\n  announce_table: {ANNOUNCE_TABLE}\npop:\n  name: pop{n}\n"),
    );
    if n > 1 {
        let ((v4, _), (v6, _)) = addresses(n);
        let (link, routed, v4v6) = pools(n);
        config = config
            .replace(&format!("ipv4: {POP_V4}"), &format!("ipv4: {v4}"))
            .replace(&format!("ipv6: {POP_NATIVE_V6}"), &format!("ipv6: {v6}"))
            .replace(super::LINK_POOL, &link)
            .replace(super::ROUTED_POOL, &routed)
            .replace(super::V4V6_POOL, &v4v6);
    }
    lab.on_postgres(&config, url, password)
}

/// A lab of `pops` PoPs on the PostgreSQL cluster `pg` (database `broker`, created here),
/// with BIRD: PoP 1 (instance `prefix`) has a static tunnel per client of the first
/// `clients`; each further PoP `n` gets one more client, whose tunnel is created through
/// PoP 1's API for PoP `n`; then `spare` clients without a tunnel. Returns once every
/// tunnel forwards.
pub fn start(
    prefix: &str,
    clients: u32,
    spare: u32,
    dir: &Path,
    pops: u8,
    pg: &crate::postgres::Cluster,
) -> Result<Lab> {
    if !(2..=9).contains(&pops) {
        bail!("a multi-PoP lab has 2-9 PoPs");
    }
    let extra = u32::from(pops) - 1;
    let mut lab = Lab::create(prefix, clients + extra + spare, dir)?;
    pg.create_database("broker")?;
    let url = crate::postgres::conninfo_of(&[pg], "broker");
    lab.instance = Some(prefix.to_string());
    let first = config(&lab, 1, clients as usize, &url, pg.password())?;
    lab.start_broker(prefix, &first)?;
    for n in 2..=pops {
        let c = config(&lab, n, 0, &url, pg.password())?;
        lab.add_pop(n, &instance_of(prefix, n), &c)?;
    }
    lab.start_bird()?;
    for i in 1..=clients {
        let v4 = lab.clients[(i - 1) as usize].v4;
        lab.start_client(i, v4)?;
    }
    for n in 2..=pops {
        let i = clients + u32::from(n) - 1;
        let c = &lab.clients[(i - 1) as usize];
        let (v4, remote) = (c.v4, c.v4.to_string());
        let out = lab.cli(&[
            "tunnel",
            "add",
            "--remote",
            &remote,
            "--pop",
            &format!("pop{n}"),
            "--json",
        ])?;
        let t: serde_json::Value = serde_json::from_str(&out)?;
        lab.start_client_to(i, addresses(n).0 .0, v4, client_address(&t)?)?;
    }
    // PoP n's tunnels come back through the upstream's BGP routes: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for i in 1..=clients + extra {
        loop {
            match lab.wait_reachable(i, INET6_HOST) {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        }
    }
    Ok(lab)
}
