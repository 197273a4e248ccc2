//! The client end of an AYIYA tunnel (SixXS's `ayiya` type), as AICCU ran it: IPv6 packets
//! from a TUN device go to the PoP signed in AYIYA over one UDP socket, and what the PoP
//! sends back is checked and written to the TUN device. A noop beat at start and every
//! interval tells the PoP where the client is (it follows the source address and port,
//! so the client may sit behind a NAT and keeps the NAT's mapping alive).
//!
//! The decisions are pure functions ([`outgoing`], [`incoming`], [`Stats`]) over
//! [`crate::ayiya`]; [`run`] is the thin I/O loop around them.
use std::{
    io::{self, Read, Write},
    net::{Ipv6Addr, SocketAddrV4},
    time::Duration,
};

use ipnet::{IpNet, Ipv6Net};
use tokio::{io::unix::AsyncFd, net::UdpSocket};
use tracing::{debug, info, warn};

use super::{proto41, tic, tun};
use crate::{
    ayiya::{self, Header, Key, NextHeader, Opcode, Reject, HEADER_LEN},
    netlink::Netlink,
    store, sysctl,
};

/// How to run the client, as [`options_from`] fills it from TIC's answer: `server` from
/// `IPv4 POP`, `local_v6`/`pop_v6` from `IPv6 Endpoint`/`IPv6 POP`, `interval` from
/// `Heartbeat_Interval`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The PoP's IPv4 and AYIYA port ([`ayiya::PORT`]).
    pub server: SocketAddrV4,
    /// The client's inner address (`::2`): its identity in every packet it sends.
    pub local_v6: Ipv6Addr,
    /// The PoP's inner address (`::1`): the only identity accepted.
    pub pop_v6: Ipv6Addr,
    /// Prefix length of the tunnel link (64 at SixXS).
    pub prefix_len: u8,
    /// The tunnel password; its SHA-1 is the key.
    pub password: String,
    /// Time between noop beats.
    pub interval: Duration,
    /// The TUN device's MTU.
    pub mtu: u16,
    /// TUN device name.
    pub tun_name: String,
    /// Route `::/0` into the tunnel.
    pub default_route: bool,
}

/// Options that cannot make a working tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("prefix length {prefix_len} is longer than 128")]
    PrefixLen { prefix_len: u8 },
    #[error("MTU {mtu} is below IPv6's minimum of 1280")]
    Mtu { mtu: u16 },
    #[error("the beat interval must be at least a second")]
    Interval,
    #[error("an AYIYA tunnel needs a password (AICCU refuses to start without one too)")]
    NoPassword,
    #[error("the client and the PoP have the same inner address {addr}")]
    SameIdentity { addr: Ipv6Addr },
}

impl Options {
    /// Refuses what would fail later or quietly never work.
    pub fn check(&self) -> Result<(), OptionsError> {
        if self.prefix_len > 128 {
            return Err(OptionsError::PrefixLen {
                prefix_len: self.prefix_len,
            });
        }
        if self.mtu < 1280 {
            return Err(OptionsError::Mtu { mtu: self.mtu });
        }
        if self.interval < Duration::from_secs(1) {
            return Err(OptionsError::Interval);
        }
        if self.password.is_empty() {
            return Err(OptionsError::NoPassword);
        }
        if self.local_v6 == self.pop_v6 {
            return Err(OptionsError::SameIdentity {
                addr: self.local_v6,
            });
        }
        Ok(())
    }
}

/// Turns the IPv6 packet of `len` bytes at `buf[HEADER_LEN..]` (where the TUN read put it)
/// into a signed forward in place and returns the datagram. Link-scope traffic (MLD,
/// router solicitations) stays home, as in the proto-41 client: the PoP would only drop it.
pub fn outgoing<'a>(
    buf: &'a mut [u8],
    len: usize,
    local_v6: Ipv6Addr,
    key: &Key,
    now: u64,
) -> Result<&'a [u8], proto41::Reject> {
    let end = HEADER_LEN + len;
    proto41::outgoing(&buf[HEADER_LEN..end])?;
    let pkt = &mut buf[..end];
    // The epoch field is 32 bits: it carries the clock modulo 2^32, as AICCU's htonl does.
    ayiya::write_header(pkt, local_v6, now as u32, Opcode::Forward, NextHeader::Ipv6);
    ayiya::sign(pkt, key);
    Ok(pkt)
}

/// A noop beat: opcode 0, next header 59, no payload (AICCU `ayiya_beat`).
pub fn beat(local_v6: Ipv6Addr, key: &Key, now: u64) -> Vec<u8> {
    ayiya::build(
        local_v6,
        now as u32,
        Opcode::Noop,
        NextHeader::None,
        &[],
        key,
    )
}

/// What to do with a datagram from the PoP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// An IPv6 packet for the TUN device.
    Deliver(&'a [u8]),
    /// Genuine, nothing to deliver: a noop beat, an echo request without payload, an
    /// IPv4 payload (the tunnel carries IPv6 only), or an opcode this client has no use
    /// for (echo response, MOTD, query).
    Ignore(Opcode, NextHeader),
    Reject(Reject),
}

/// Checks a datagram from the PoP: its identity must be `pop_v6`, its epoch within
/// [`ayiya::MAX_CLOCK_OFFSET`] of `now`, its signature `key`'s, its next header its
/// payload's. An IPv6 payload is delivered for forward and both echo requests, as AICCU
/// does; neither AICCU nor sixxsd ever answers an echo request, so this client does not
/// either.
pub fn incoming<'a>(pkt: &'a [u8], pop_v6: Ipv6Addr, key: &Key, now: u64) -> Incoming<'a> {
    match ayiya::accept(pkt, pop_v6, key, now) {
        Err(why) => Incoming::Reject(why),
        Ok(Header {
            opcode: Opcode::Forward | Opcode::EchoRequest | Opcode::EchoRequestForward,
            next_header: NextHeader::Ipv6,
            payload,
            ..
        }) => Incoming::Deliver(payload),
        Ok(h) => Incoming::Ignore(h.opcode, h.next_header),
    }
}

/// Counters of one run, logged when it ends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Forwards sent to the PoP.
    pub sent: u64,
    /// IPv6 packets from the TUN device not sent (link scope, malformed).
    pub not_sent: u64,
    pub beats_sent: u64,
    /// Packets delivered to the TUN device.
    pub delivered: u64,
    /// Genuine packets with nothing to deliver, PoP beats included.
    pub ignored: u64,
    /// Rejected datagrams, indexed by [`Reject::index`].
    pub rejected: [u64; Reject::ALL.len()],
}

impl Stats {
    /// Counts what [`incoming`] decided.
    pub fn record(&mut self, what: &Incoming<'_>) {
        match what {
            Incoming::Deliver(_) => self.delivered += 1,
            Incoming::Ignore(..) => self.ignored += 1,
            Incoming::Reject(why) => self.rejected[why.index()] += 1,
        }
    }

    /// The non-zero reject counters, by name.
    pub fn rejects(&self) -> Vec<(&'static str, u64)> {
        Reject::ALL
            .iter()
            .filter(|r| self.rejected[r.index()] > 0)
            .map(|r| (r.as_str(), self.rejected[r.index()]))
            .collect()
    }
}

/// Errors of the UDP socket that say something about the path or the PoP (an ICMP error
/// reported on the connected socket), not about this host: keep going, the next beat tries
/// again.
pub fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    ) || e.raw_os_error() == Some(libc::EMSGSIZE)
}

/// Creates and configures the TUN device, then tunnels until SIGINT/SIGTERM.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    opts.check()?;
    let key = ayiya::key(&opts.password);

    let tun = tun::open(&opts.tun_name)?;
    // No link-local address: nothing on the point-to-point tunnel link uses one.
    let _ = sysctl::set(
        &format!("net.ipv6.conf.{}.addr_gen_mode", opts.tun_name),
        "1",
    );
    let nl = Netlink::connect()?;
    let index = nl.ifindex(&opts.tun_name).await?;
    nl.up(index, u32::from(opts.mtu)).await?;
    let address = Ipv6Net::new(opts.local_v6, opts.prefix_len)?;
    nl.add_address(index, IpNet::V6(address)).await?;
    if opts.default_route {
        nl.add_route_dev("::/0".parse().expect("valid"), index)
            .await?;
    }

    // Any local port: the PoP answers wherever the packets come from (NAT included).
    // Connected, so the kernel drops datagrams from anyone but the PoP.
    let sock = UdpSocket::bind("0.0.0.0:0").await?;
    sock.connect(opts.server).await?;
    info!(
        tun = %opts.tun_name, server = %opts.server, local = %sock.local_addr()?,
        address = %address, pop = %opts.pop_v6, mtu = opts.mtu,
        beat_s = opts.interval.as_secs(), "AYIYA tunnel up"
    );

    // SAFETY: the file is owned by the AsyncFd for as long as it is registered.
    let tun = unsafe { AsyncFd::register(tun) }.map_err(|e| e.into_parts().1)?;
    // Room for the AYIYA header in front of what the TUN read returns, so a packet is
    // signed and sent from where it was read.
    let mut buf_tun = vec![0u8; HEADER_LEN + 65_536];
    let mut buf_net = vec![0u8; 65_536];
    let mut stats = Stats::default();
    // The first tick is immediate: a beat at start, as AICCU beats once set up.
    let mut beats = tokio::time::interval(opts.interval);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    loop {
        tokio::select! {
            r = tun.readable() => {
                let mut guard = r?;
                match guard.try_io(|t| t.get_ref().read(&mut buf_tun[HEADER_LEN..])) {
                    Ok(Ok(n)) => match outgoing(&mut buf_tun, n, opts.local_v6, &key, store::now()) {
                        Ok(pkt) => match sock.send(pkt).await {
                            Ok(_) => stats.sent += 1,
                            Err(e) if transient(&e) => debug!(error = %e, "forward not sent"),
                            Err(e) => return Err(e.into()),
                        },
                        Err(why) => {
                            stats.not_sent += 1;
                            debug!(?why, "not sent into the tunnel");
                        }
                    },
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_would_block) => {}
                }
            }
            r = sock.recv(&mut buf_net) => match r {
                Ok(n) => {
                    let what = incoming(&buf_net[..n], opts.pop_v6, &key, store::now());
                    stats.record(&what);
                    match what {
                        Incoming::Deliver(pkt) => {
                            if let Err(e) = tun.get_ref().write(pkt) {
                                warn!(error = %e, "write to TUN failed");
                            }
                        }
                        Incoming::Ignore(op, nh) => debug!(opcode = op.as_str(), next_header = nh as u8, "nothing to deliver"),
                        Incoming::Reject(why) => debug!(why = why.as_str(), len = n, "dropped from the network"),
                    }
                }
                Err(e) if transient(&e) => debug!(error = %e, "receive error from the path"),
                Err(e) => return Err(e.into()),
            },
            _ = beats.tick() => {
                match sock.send(&beat(opts.local_v6, &key, store::now())).await {
                    Ok(_) => stats.beats_sent += 1,
                    Err(e) if transient(&e) => debug!(error = %e, "beat not sent"),
                    Err(e) => return Err(e.into()),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    info!(
        sent = stats.sent, not_sent = stats.not_sent, beats_sent = stats.beats_sent,
        delivered = stats.delivered, ignored = stats.ignored,
        rejected = ?stats.rejects(), "AYIYA tunnel closed"
    );
    Ok(())
}

/// `broker client ayiya`: where to fetch the tunnel (TIC, as AICCU does) and how to run it.
#[derive(Debug, Clone)]
pub struct TicOptions {
    pub server: std::net::SocketAddr,
    pub username: String,
    pub password: String,
    /// The tunnel id; `None` takes the first the account lists.
    pub tunnel: Option<u32>,
    /// The PoP's AYIYA port (TIC does not say; SixXS PoPs use 5072).
    pub port: u16,
    pub tun_name: String,
    pub default_route: bool,
}

/// The client's options for an AYIYA tunnel TIC described; refuses other types and
/// tunnels not enabled.
pub fn options_from(t: &tic::TicTunnel, o: &TicOptions) -> anyhow::Result<Options> {
    if t.kind != "ayiya" {
        anyhow::bail!("tunnel T{} is of type {}, not ayiya", t.id, t.kind);
    }
    if !t.enabled() {
        anyhow::bail!(
            "tunnel T{} is not enabled (UserState: {}, AdminState: {})",
            t.id,
            t.user_state,
            t.admin_state
        );
    }
    Ok(Options {
        server: SocketAddrV4::new(t.ipv4_pop, o.port),
        local_v6: t.ipv6_endpoint,
        pop_v6: t.ipv6_pop,
        prefix_len: t.prefix_len,
        password: t.password.clone(),
        interval: Duration::from_secs(u64::from(t.heartbeat_interval.max(1))),
        mtu: t.mtu,
        tun_name: o.tun_name.clone(),
        default_route: o.default_route,
    })
}

/// Fetches the tunnel over TIC and runs it.
pub async fn run_from_tic(o: TicOptions) -> anyhow::Result<()> {
    let t = tic::fetch(o.server, &o.username, &o.password, o.tunnel).await?;
    info!(tunnel = t.id, pop = %t.ipv4_pop, "tunnel fetched over TIC");
    run(options_from(&t, &o)?).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn fetched(kind: &str, admin: &str) -> tic::TicTunnel {
        tic::TicTunnel {
            admin_state: admin.into(),
            password: "secret".into(),
            heartbeat_interval: 30,
            ..tic::sample(8, kind)
        }
    }

    fn tic_options() -> TicOptions {
        TicOptions {
            server: "192.0.2.1:3874".parse().unwrap(),
            username: "alice".into(),
            password: "pw".into(),
            tunnel: None,
            port: 5072,
            tun_name: "sixxs".into(),
            default_route: true,
        }
    }

    #[test]
    fn tic_answers_become_options() {
        let o = options_from(&fetched("ayiya", "enabled"), &tic_options()).unwrap();
        assert_eq!(o.server, "192.0.2.1:5072".parse().unwrap());
        assert_eq!(o.local_v6, "2001:db8:10:8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(o.pop_v6, "2001:db8:10:8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!((o.prefix_len, o.mtu), (64, 1280));
        assert_eq!(o.interval, Duration::from_secs(30));
        assert_eq!(o.password, "secret");
    }

    #[test]
    fn other_types_and_disabled_tunnels_are_refused() {
        let e = options_from(&fetched("6in4-heartbeat", "enabled"), &tic_options());
        assert!(e.unwrap_err().to_string().contains("not ayiya"));
        let e = options_from(&fetched("ayiya", "disabled"), &tic_options());
        assert!(e.unwrap_err().to_string().contains("not enabled"));
    }

    const NOW: u64 = 1_700_000_000;
    const LOCAL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 1, 0, 0, 0, 2);
    const POP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 1, 0, 0, 0, 1);
    const FAR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 9);

    fn inner(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
            .udp(1000, 2000)
            .write(&mut v, b"hello")
            .unwrap();
        v
    }

    fn options() -> Options {
        Options {
            server: SocketAddrV4::new([192, 0, 2, 1].into(), ayiya::PORT),
            local_v6: LOCAL,
            pop_v6: POP,
            prefix_len: 64,
            password: "secret".into(),
            interval: Duration::from_secs(60),
            mtu: 1280,
            tun_name: "ayiya0".into(),
            default_route: false,
        }
    }

    /// What the TUN read would leave in the buffer.
    fn read_into(pkt: &[u8]) -> Vec<u8> {
        let mut buf = vec![0xffu8; HEADER_LEN + pkt.len() + 100];
        buf[HEADER_LEN..HEADER_LEN + pkt.len()].copy_from_slice(pkt);
        buf
    }

    #[test]
    fn outgoing_is_a_signed_forward_from_the_client() {
        let k = ayiya::key("secret");
        let p = inner(LOCAL, FAR);
        let mut buf = read_into(&p);
        let out = outgoing(&mut buf, p.len(), LOCAL, &k, NOW)
            .unwrap()
            .to_vec();
        assert_eq!(
            out,
            ayiya::build(LOCAL, NOW as u32, Opcode::Forward, NextHeader::Ipv6, &p, &k)
        );
        // What the PoP checks: the client's identity, its key.
        let h = ayiya::accept(&out, LOCAL, &k, NOW).unwrap();
        assert_eq!(h.payload, &p[..]);
    }

    #[test]
    fn link_scope_stays_home() {
        let k = ayiya::key("secret");
        let p = inner("fe80::2".parse().unwrap(), FAR);
        let mut buf = read_into(&p);
        assert_eq!(
            outgoing(&mut buf, p.len(), LOCAL, &k, NOW),
            Err(proto41::Reject::LinkScope)
        );
        let mut buf = read_into(&[0x45, 0, 0, 20]);
        assert!(outgoing(&mut buf, 4, LOCAL, &k, NOW).is_err());
    }

    #[test]
    fn beat_is_the_protocols_md_vector() {
        let b = beat(
            "2001:db8::2".parse().unwrap(),
            &ayiya::key("secret"),
            1_700_000_000,
        );
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(
            hex,
            "4152103b6553f10020010db80000000000000000000000024cb1502a94426bf9828d453ff1c7a16ad038a682"
        );
    }

    #[test]
    fn forwards_and_echo_requests_from_the_pop_are_delivered() {
        let k = ayiya::key("secret");
        let p = inner(FAR, LOCAL);
        for op in [
            Opcode::Forward,
            Opcode::EchoRequest,
            Opcode::EchoRequestForward,
        ] {
            let d = ayiya::build(POP, NOW as u32, op, NextHeader::Ipv6, &p, &k);
            assert_eq!(
                incoming(&d, POP, &k, NOW),
                Incoming::Deliver(&p[..]),
                "{op:?}"
            );
        }
    }

    #[test]
    fn beats_and_other_genuine_packets_are_ignored() {
        let k = ayiya::key("secret");
        let noop = ayiya::build(POP, NOW as u32, Opcode::Noop, NextHeader::None, &[], &k);
        assert_eq!(
            incoming(&noop, POP, &k, NOW),
            Incoming::Ignore(Opcode::Noop, NextHeader::None)
        );
        let v4 = [0x45, 0, 0, 20];
        let d = ayiya::build(POP, NOW as u32, Opcode::Forward, NextHeader::Ipv4, &v4, &k);
        assert_eq!(
            incoming(&d, POP, &k, NOW),
            Incoming::Ignore(Opcode::Forward, NextHeader::Ipv4)
        );
        let motd = ayiya::build(POP, NOW as u32, Opcode::Motd, NextHeader::None, &[], &k);
        assert!(matches!(
            incoming(&motd, POP, &k, NOW),
            Incoming::Ignore(Opcode::Motd, _)
        ));
    }

    #[test]
    fn rejects_what_is_not_the_pops() {
        let k = ayiya::key("secret");
        let p = inner(FAR, LOCAL);
        let from = |id, epoch, key: &Key| {
            ayiya::build(id, epoch, Opcode::Forward, NextHeader::Ipv6, &p, key)
        };
        // Our own packet reflected back.
        let d = from(LOCAL, NOW as u32, &k);
        assert_eq!(
            incoming(&d, POP, &k, NOW),
            Incoming::Reject(Reject::WrongIdentity)
        );
        let d = from(POP, NOW as u32 - 121, &k);
        assert_eq!(
            incoming(&d, POP, &k, NOW),
            Incoming::Reject(Reject::StaleEpoch)
        );
        let d = from(POP, NOW as u32, &ayiya::key("other"));
        assert_eq!(
            incoming(&d, POP, &k, NOW),
            Incoming::Reject(Reject::BadSignature)
        );
        assert_eq!(
            incoming(&d[..10], POP, &k, NOW),
            Incoming::Reject(Reject::Truncated)
        );
    }

    #[test]
    fn stats_count_by_reason() {
        let mut s = Stats::default();
        s.record(&Incoming::Deliver(&[]));
        s.record(&Incoming::Ignore(Opcode::Noop, NextHeader::None));
        s.record(&Incoming::Reject(Reject::StaleEpoch));
        s.record(&Incoming::Reject(Reject::StaleEpoch));
        s.record(&Incoming::Reject(Reject::BadSignature));
        assert_eq!((s.delivered, s.ignored), (1, 1));
        assert_eq!(s.rejects(), [("stale_epoch", 2), ("bad_signature", 1)]);
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(options().check(), Ok(()));
        let mut o = options();
        o.mtu = 1279;
        assert_eq!(o.check(), Err(OptionsError::Mtu { mtu: 1279 }));
        let mut o = options();
        o.prefix_len = 129;
        assert!(matches!(o.check(), Err(OptionsError::PrefixLen { .. })));
        let mut o = options();
        o.interval = Duration::ZERO;
        assert_eq!(o.check(), Err(OptionsError::Interval));
        let mut o = options();
        o.password.clear();
        assert_eq!(o.check(), Err(OptionsError::NoPassword));
        let mut o = options();
        o.pop_v6 = LOCAL;
        assert!(matches!(o.check(), Err(OptionsError::SameIdentity { .. })));
    }

    #[test]
    fn path_errors_are_transient() {
        assert!(transient(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(transient(&io::Error::from_raw_os_error(libc::EMSGSIZE)));
        assert!(!transient(&io::Error::from_raw_os_error(libc::EBADF)));
    }
}
