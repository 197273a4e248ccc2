//! Keepalives of a TSP client (gogoc `net_ka.c`): an ICMP echo request to the offer's
//! keepalive address every interval, through the tunnel; a reply is awaited 5 s; three
//! misses in a row mean the tunnel is gone (a NAT mapping lost, the PoP away) and the
//! client negotiates again. They also keep the client's NAT mapping alive. Pure: packets
//! in and out, time passed in.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use broker_common::csum;

/// How long a reply is waited for.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Misses in a row after which the tunnel counts as dead.
pub const MAX_MISSES: u32 = 3;

/// An echo request from `src` to `dst` (both of one family) with identifier `id`.
pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    let payload = b"broker keepalive";
    let mut icmp = vec![0u8; 8];
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            icmp[0] = 128;
            let seed = csum::ipv6_pseudo_header(&s.octets(), &d.octets(), icmp.len() as u32, 58);
            let sum = csum::finish(csum::add_slice(seed, &icmp));
            icmp[2..4].copy_from_slice(&sum);
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            p.extend_from_slice(&[58, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&icmp);
            p
        }
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            icmp[0] = 8;
            let sum = csum::finish(csum::add_slice(0, &icmp));
            icmp[2..4].copy_from_slice(&sum);
            let total = (20 + icmp.len()) as u16;
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = 1;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = csum::ipv4_header(&h);
            h[10..12].copy_from_slice(&c);
            let mut p = h.to_vec();
            p.extend_from_slice(&icmp);
            p
        }
        _ => Vec::new(),
    }
}

/// The sequence number if `pkt` is an echo reply with identifier `id` (IPv6 without
/// extension headers, IPv4 with any header length).
pub fn reply_seq(pkt: &[u8], id: u16) -> Option<u16> {
    let icmp = match pkt.first()? >> 4 {
        6 if pkt.len() >= 48 && pkt[6] == 58 && pkt[40] == 129 => &pkt[40..],
        4 => {
            let ihl = usize::from(pkt[0] & 0xf) * 4;
            (pkt.len() >= ihl + 8 && pkt[9] == 1 && pkt[ihl] == 0).then(|| &pkt[ihl..])?
        }
        _ => return None,
    };
    (u16::from_be_bytes([icmp[4], icmp[5]]) == id).then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Nothing,
    Send(u16),
    Dead,
}

/// The keepalive clock of one tunnel.
#[derive(Debug)]
pub struct Keepalive {
    interval: Duration,
    next: Instant,
    waiting: Option<(u16, Instant)>,
    seq: u16,
    misses: u32,
}

impl Keepalive {
    /// The first echo goes at once (as gogoc's): it also shows the server that this
    /// end receives what the offer said (an anonymous tunnel over UDP is removed unless
    /// its client is heard soon).
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            next: now,
            waiting: None,
            seq: 0,
            misses: 0,
        }
    }

    pub fn tick(&mut self, now: Instant) -> Due {
        if let Some((_, sent)) = self.waiting {
            if now.saturating_duration_since(sent) >= REPLY_TIMEOUT {
                self.waiting = None;
                self.misses += 1;
                if self.misses >= MAX_MISSES {
                    return Due::Dead;
                }
            }
        }
        if now >= self.next && self.waiting.is_none() {
            self.seq = self.seq.wrapping_add(1);
            self.waiting = Some((self.seq, now));
            self.next = now + self.interval;
            return Due::Send(self.seq);
        }
        Due::Nothing
    }

    /// A reply arrived.
    pub fn replied(&mut self, seq: u16) {
        if self.waiting.is_some_and(|(s, _)| s == seq) {
            self.waiting = None;
            self.misses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, Icmpv6Type, SlicedPacket, TransportSlice};
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn echo_requests_are_valid_packets() {
        let (s, d): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::2".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        );
        let p = echo_request(s.into(), d.into(), 7, 9);
        let sliced = SlicedPacket::from_ip(&p).unwrap();
        let Some(TransportSlice::Icmpv6(i)) = sliced.transport else {
            panic!("not ICMPv6")
        };
        assert!(matches!(i.icmp_type(), Icmpv6Type::EchoRequest(h) if h.id == 7 && h.seq == 9));
        let computed = i
            .header()
            .icmp_type
            .calc_checksum(s.octets(), d.octets(), i.payload())
            .unwrap();
        assert_eq!(i.checksum(), computed);

        let (s4, d4) = (Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(203, 0, 113, 1));
        let p = echo_request(s4.into(), d4.into(), 7, 9);
        let sliced = SlicedPacket::from_ip(&p).unwrap();
        let Some(TransportSlice::Icmpv4(i)) = sliced.transport else {
            panic!("not ICMPv4")
        };
        assert!(matches!(i.icmp_type(), Icmpv4Type::EchoRequest(h) if h.id == 7 && h.seq == 9));
        assert_eq!(
            i.checksum(),
            i.header().icmp_type.calc_checksum(i.payload())
        );
    }

    #[test]
    fn replies_are_recognised_by_identifier() {
        let mut r = Vec::new();
        etherparse::PacketBuilder::ipv6([1; 16], [2; 16], 64)
            .icmpv6_echo_reply(7, 3)
            .write(&mut r, b"x")
            .unwrap();
        assert_eq!(reply_seq(&r, 7), Some(3));
        assert_eq!(reply_seq(&r, 8), None);
        let mut r4 = Vec::new();
        etherparse::PacketBuilder::ipv4([1; 4], [2; 4], 64)
            .icmpv4_echo_reply(7, 4)
            .write(&mut r4, b"x")
            .unwrap();
        assert_eq!(reply_seq(&r4, 7), Some(4));
        assert_eq!(reply_seq(&r4[..10], 7), None);
        assert_eq!(reply_seq(&[], 7), None);
    }

    #[test]
    fn three_misses_in_a_row_are_death() {
        let t0 = Instant::now();
        let s = |x: u64| t0 + Duration::from_secs(x);
        let mut k = Keepalive::new(Duration::from_secs(10), t0);
        assert_eq!(k.tick(s(0)), Due::Send(1), "the first at once");
        k.replied(1);
        assert_eq!(k.tick(s(5)), Due::Nothing);
        assert_eq!(k.tick(s(10)), Due::Send(2));
        k.replied(2);
        assert_eq!(k.tick(s(20)), Due::Send(3));
        assert_eq!(k.tick(s(25)), Due::Nothing, "one miss");
        assert_eq!(k.tick(s(30)), Due::Send(4));
        assert_eq!(k.tick(s(35)), Due::Nothing, "two misses");
        assert_eq!(k.tick(s(40)), Due::Send(5));
        k.replied(4); // too late: not the one waited for
        assert_eq!(k.tick(s(45)), Due::Dead);
    }
}
