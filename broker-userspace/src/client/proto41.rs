//! The client end of a proto-41 (6in4) tunnel in user space: a TUN device carries the
//! inner IPv6 packets, a raw IPv4 socket of protocol 41 the outer ones. The packet checks
//! are pure functions; [`run`] is the thin I/O loop around them.
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
};

use ipnet::{IpNet, Ipv6Net};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use super::tun;
use crate::{netlink::Netlink, sysctl};

/// How to run the endpoint.
#[derive(Debug, Clone)]
pub struct Options {
    /// The PoP's IPv4.
    pub server: Ipv4Addr,
    /// This host's IPv4 (the tunnel's client endpoint).
    pub local: Ipv4Addr,
    /// The client's address on the tunnel link, e.g. `2001:db8:10:1::2/64`.
    pub address: Ipv6Net,
    /// TUN device name.
    pub name: String,
    pub mtu: u16,
    /// Route `::/0` into the tunnel.
    pub default_route: bool,
    /// Further prefixes routed into the tunnel.
    pub routes: Vec<Ipv6Net>,
}

/// Why a received or outgoing packet is not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Too short for its headers or its length fields.
    Truncated,
    /// Not IPv4 version 4 / IPv6 version 6.
    BadVersion,
    /// Not protocol 41.
    NotProto41,
    /// Not from the tunnel server, or not to this endpoint.
    WrongPeer,
    /// An outer fragment (not reassembled here).
    Fragment,
    /// Link-local source or multicast destination: stays on this host.
    LinkScope,
}

/// Checks an IPv4 packet read from the raw socket and returns the IPv6 packet inside.
pub fn decapsulate(pkt: &[u8], server: Ipv4Addr, local: Ipv4Addr) -> Result<&[u8], Reject> {
    if pkt.len() < 20 {
        return Err(Reject::Truncated);
    }
    if pkt[0] >> 4 != 4 {
        return Err(Reject::BadVersion);
    }
    let ihl = usize::from(pkt[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || total > pkt.len() {
        return Err(Reject::Truncated);
    }
    if pkt[9] != 41 {
        return Err(Reject::NotProto41);
    }
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return Err(Reject::Fragment);
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    if src != server || dst != local {
        return Err(Reject::WrongPeer);
    }
    let inner = &pkt[ihl..total];
    check_ipv6(inner)?;
    Ok(inner)
}

/// Checks an IPv6 packet read from the TUN device before it goes into the tunnel. The
/// kernel's link-scope chatter (MLD, router solicitations) is not sent: the PoP would only
/// count it as spoofed.
pub fn outgoing(pkt: &[u8]) -> Result<&[u8], Reject> {
    check_ipv6(pkt)?;
    let src_link_local = pkt[8] == 0xfe && pkt[9] & 0xc0 == 0x80;
    let dst_multicast = pkt[24] == 0xff;
    if src_link_local || dst_multicast {
        return Err(Reject::LinkScope);
    }
    Ok(pkt)
}

fn check_ipv6(pkt: &[u8]) -> Result<(), Reject> {
    if pkt.len() < 40 {
        return Err(Reject::Truncated);
    }
    if pkt[0] >> 4 != 6 {
        return Err(Reject::BadVersion);
    }
    if usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 != pkt.len() {
        return Err(Reject::Truncated);
    }
    Ok(())
}

/// Creates and configures the TUN device, then forwards in both directions until
/// SIGINT/SIGTERM.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let tun = tun::open(&opts.name)?;
    // No link-local address: nothing on a point-to-point 6in4 link uses one.
    let _ = sysctl::set(&format!("net.ipv6.conf.{}.addr_gen_mode", opts.name), "1");
    let nl = Netlink::connect()?;
    let index = nl.ifindex(&opts.name).await?;
    nl.up(index, u32::from(opts.mtu)).await?;
    nl.add_address(index, IpNet::V6(opts.address)).await?;
    if opts.default_route {
        nl.add_route_dev("::/0".parse().expect("valid"), index)
            .await?;
    }
    for r in &opts.routes {
        nl.add_route_dev(IpNet::V6(*r), index).await?;
    }

    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(41)))?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(opts.local, 0)).into())?;
    sock.set_nonblocking(true)?;
    set_dont_fragment(&sock)?;
    info!(
        tun = %opts.name, server = %opts.server, local = %opts.local, address = %opts.address,
        "proto-41 tunnel up"
    );

    // SAFETY: both are owned files/sockets that stay open as long as the AsyncFd holds them.
    let tun = unsafe { AsyncFd::register(tun) }.map_err(|e| e.into_parts().1)?;
    // SAFETY: as above.
    let sock = unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)?;
    let server: socket2::SockAddr = SocketAddr::V4(SocketAddrV4::new(opts.server, 0)).into();
    let mut buf_tun = vec![0u8; 65536];
    let mut buf_net = vec![std::mem::MaybeUninit::<u8>::uninit(); 65536];
    let mut sent = 0u64;
    let mut received = 0u64;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    loop {
        tokio::select! {
            r = tun.readable() => {
                let mut guard = r?;
                match guard.try_io(|t| t.get_ref().read(&mut buf_tun)) {
                    Ok(Ok(n)) => match outgoing(&buf_tun[..n]) {
                        Ok(pkt) => match sock.get_ref().send_to(pkt, &server) {
                            Ok(_) => sent += 1,
                            Err(e) => debug!(error = %e, "send to server failed"),
                        },
                        Err(why) => debug!(?why, "not sent into the tunnel"),
                    },
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_would_block) => {}
                }
            }
            r = sock.readable() => {
                let mut guard = r?;
                match guard.try_io(|s| s.get_ref().recv(&mut buf_net)) {
                    Ok(Ok(n)) => {
                        // SAFETY: recv initialised the first n bytes.
                        let pkt = unsafe { &*(&buf_net[..n] as *const _ as *const [u8]) };
                        match decapsulate(pkt, opts.server, opts.local) {
                            Ok(inner) => match tun.get_ref().write(inner) {
                                Ok(_) => received += 1,
                                Err(e) => warn!(error = %e, "write to TUN failed"),
                            },
                            Err(why) => debug!(?why, "dropped from the network"),
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_would_block) => {}
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    info!(sent, received, "proto-41 tunnel closed");
    Ok(())
}

/// Outer packets carry DF (RFC 4213 section 3.2: the tunnel MTU is fixed, so path MTU
/// problems show up as Packet Too Big on the inner side rather than as fragments).
fn set_dont_fragment(sock: &Socket) -> io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: setsockopt with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of_val(&v) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    fn inner(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv6(src, dst, 64)
            .udp(1000, 2000)
            .write(&mut v, b"hello")
            .unwrap();
        v
    }

    fn outer(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut h = etherparse::Ipv4Header::new(
            payload.len() as u16,
            64,
            etherparse::IpNumber(41),
            src.octets(),
            dst.octets(),
        )
        .unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    const A: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2,
    ];
    const B: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
    ];

    #[test]
    fn decapsulates_from_the_server_only() {
        let i = inner(B, A);
        let o = outer(SERVER, LOCAL, &i);
        assert_eq!(decapsulate(&o, SERVER, LOCAL).unwrap(), &i[..]);
        let o = outer(Ipv4Addr::new(203, 0, 113, 9), LOCAL, &i);
        assert_eq!(decapsulate(&o, SERVER, LOCAL), Err(Reject::WrongPeer));
    }

    #[test]
    fn rejects_every_truncation() {
        let o = outer(SERVER, LOCAL, &inner(B, A));
        for len in 0..o.len() {
            assert!(decapsulate(&o[..len], SERVER, LOCAL).is_err(), "len {len}");
        }
    }

    #[test]
    fn rejects_fragments_and_other_protocols() {
        let mut o = outer(SERVER, LOCAL, &inner(B, A));
        o[6] = 0x20; // MF
        assert_eq!(decapsulate(&o, SERVER, LOCAL), Err(Reject::Fragment));
        let mut o = outer(SERVER, LOCAL, &inner(B, A));
        o[9] = 17;
        assert_eq!(decapsulate(&o, SERVER, LOCAL), Err(Reject::NotProto41));
    }

    #[test]
    fn keeps_link_scope_traffic_home() {
        let mut ll = A;
        ll[..2].copy_from_slice(&[0xfe, 0x80]);
        assert_eq!(outgoing(&inner(ll, B)), Err(Reject::LinkScope));
        let mut mc = B;
        mc[0] = 0xff;
        assert_eq!(outgoing(&inner(A, mc)), Err(Reject::LinkScope));
        assert!(outgoing(&inner(A, B)).is_ok());
    }
}
