//! `broker client heartbeat`: what aiccu does for a `6in4-heartbeat` tunnel. Fetch the
//! tunnel over TIC, run the proto-41 endpoint ([`super::proto41`]), and send a beat to the
//! PoP at start and every `Heartbeat_Interval` so the PoP keeps the tunnel pointed at this
//! host and awake.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::Context;
use ipnet::Ipv6Net;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use super::{proto41, tic};
use crate::heartbeat::message;

#[derive(Debug, Clone)]
pub struct Options {
    /// The TIC server.
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    /// The tunnel; `None` takes the first the account lists.
    pub tunnel: Option<u32>,
    /// This host's IPv4 (the tunnel's client endpoint and the beats' source).
    pub local: Ipv4Addr,
    /// The PoP's heartbeat port.
    pub heartbeat_port: u16,
    /// TUN device name.
    pub name: String,
    pub default_route: bool,
    pub routes: Vec<Ipv6Net>,
}

/// What to run for a fetched tunnel: the proto-41 endpoint, and beats every so often
/// (`None`: a static `6in4` tunnel, which needs none).
#[derive(Debug, Clone)]
pub struct Plan {
    pub proto41: proto41::Options,
    pub beat_every: Option<Duration>,
}

/// Turns `tunnel show` into what to run, refusing what this client cannot.
pub fn plan(t: &tic::TicTunnel, opts: &Options) -> anyhow::Result<Plan> {
    if !t.enabled() {
        anyhow::bail!(
            "tunnel T{} is not enabled (UserState: {}, AdminState: {})",
            t.id,
            t.user_state,
            t.admin_state
        );
    }
    let beat_every = match t.kind.as_str() {
        "6in4-heartbeat" => Some(Duration::from_secs(u64::from(t.heartbeat_interval.max(1)))),
        "6in4" => None,
        other => anyhow::bail!("tunnel T{} is of type {other}, not 6in4(-heartbeat)", t.id),
    };
    let address = Ipv6Net::new(t.ipv6_endpoint, t.prefix_len)
        .with_context(|| format!("IPv6 PrefixLength {} is not valid", t.prefix_len))?;
    Ok(Plan {
        proto41: proto41::Options {
            server: t.ipv4_pop,
            local: opts.local,
            address,
            name: opts.name.clone(),
            mtu: t.mtu,
            default_route: opts.default_route,
            routes: opts.routes.clone(),
        },
        beat_every,
    })
}

/// Runs until SIGINT/SIGTERM (which the proto-41 endpoint handles).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let t = tic::fetch(opts.server, &opts.username, &opts.password, opts.tunnel).await?;
    info!(
        tunnel = t.id, kind = %t.kind, pop = %t.pop_id, pop_ipv4 = %t.ipv4_pop,
        address = %t.ipv6_endpoint, interval = t.heartbeat_interval,
        "tunnel fetched over TIC"
    );
    let plan = plan(&t, &opts)?;
    let Some(every) = plan.beat_every else {
        return proto41::run(plan.proto41).await;
    };
    let pop = SocketAddrV4::new(t.ipv4_pop, opts.heartbeat_port);
    let beats = beat_loop(opts.local, pop, t.ipv6_endpoint, t.password.clone(), every);
    tokio::select! {
        r = proto41::run(plan.proto41) => r,
        r = beats => r,
    }
}

/// Sends a beat at once and then every `every`, from `local` (so the PoP sees the same
/// source as the proto-41 packets). Always `sender`, as aiccu: behind a NAT the client
/// cannot name its public address.
async fn beat_loop(
    local: Ipv4Addr,
    pop: SocketAddrV4,
    ipv6: std::net::Ipv6Addr,
    password: String,
    every: Duration,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 0))
        .await
        .with_context(|| format!("binding a UDP socket on {local}"))?;
    socket
        .connect(pop)
        .await
        .with_context(|| format!("heartbeat destination {pop}"))?;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let line = message::beat(ipv6, None, crate::store::now(), &password);
        match socket.send(line.as_bytes()).await {
            Ok(_) => debug!(%pop, "heartbeat sent"),
            // A network that is down for a while is no reason to stop: the next beat may
            // get through.
            Err(e) => warn!(%pop, error = %e, "sending the heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(kind: &str, user_state: &str) -> tic::TicTunnel {
        tic::TicTunnel {
            user_state: user_state.into(),
            heartbeat_interval: 45,
            mtu: 1400,
            ..tic::sample(9, kind)
        }
    }

    fn opts() -> Options {
        Options {
            server: "192.0.2.1:3874".parse().unwrap(),
            username: "u".into(),
            password: "p".into(),
            tunnel: None,
            local: "198.51.100.20".parse().unwrap(),
            heartbeat_port: 3740,
            name: "hb0".into(),
            default_route: true,
            routes: vec![],
        }
    }

    #[test]
    fn a_heartbeat_tunnel_runs_proto41_and_beats() {
        let p = plan(&tunnel("6in4-heartbeat", "enabled"), &opts()).unwrap();
        assert_eq!(p.beat_every, Some(Duration::from_secs(45)));
        assert_eq!(p.proto41.server, "192.0.2.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            p.proto41.local,
            "198.51.100.20".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(p.proto41.address, "2001:db8:10:9::2/64".parse().unwrap());
        assert_eq!(p.proto41.mtu, 1400);
        let p = plan(&tunnel("6in4", "enabled"), &opts()).unwrap();
        assert_eq!(p.beat_every, None);
    }

    #[test]
    fn refuses_disabled_and_other_kinds() {
        assert!(plan(&tunnel("6in4-heartbeat", "disabled"), &opts()).is_err());
        assert!(plan(&tunnel("ayiya", "enabled"), &opts()).is_err());
    }

    #[tokio::test]
    async fn beats_arrive_at_once_and_verify() {
        let pop = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(at) = pop.local_addr().unwrap() else {
            unreachable!()
        };
        let ipv6 = "2001:db8:10:9::2".parse().unwrap();
        let task = tokio::spawn(beat_loop(
            Ipv4Addr::LOCALHOST,
            at,
            ipv6,
            "pw".into(),
            Duration::from_secs(3600),
        ));
        let mut buf = [0u8; 512];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), pop.recv_from(&mut buf))
            .await
            .expect("the first beat goes out at once")
            .unwrap();
        task.abort();
        assert!(!buf[..n].ends_with(b"\n"), "no newline, as aiccu");
        let beat = message::parse(&buf[..n]).unwrap();
        assert_eq!(beat.ipv6, ipv6);
        assert_eq!(beat.ipv4, None, "always `sender`");
        let SocketAddr::V4(from) = from else {
            unreachable!()
        };
        beat.check(*from.ip(), crate::store::now()).unwrap();
        beat.verify("pw").unwrap();
    }
}
