//! Address scopes the data plane tells apart: what belongs to one link, and where an ICMP
//! message may go.

/// Whether an IPv6 packet from `src` to `dst` belongs to the link it was sent on: a
/// link-local (`fe80::/10`) or unspecified source, or a link-local or link-scope
/// multicast (`ff02::/16`) destination. A client's kernel sends such packets into every
/// fresh tunnel (router and neighbour solicitations, MLD reports); they are never
/// forwarded, and they are not spoofing.
#[inline(always)]
pub fn link_scoped(src: &[u8; 16], dst: &[u8; 16]) -> bool {
    is_link_local(src) || is_unspecified(src) || is_link_local(dst) || is_link_multicast(dst)
}

/// Whether the data plane may send an ICMPv6 message (echo reply or error) to `a`, the
/// source of the packet that asked for it: not multicast, unspecified, loopback (none
/// names one node it could reach, RFC 4443 2.4 (e)) nor link-local (the PoP's messages
/// come from a tunnel's global `::1`; on-link peers have global addresses too).
#[inline(always)]
pub fn may_receive_icmp6(a: &[u8; 16]) -> bool {
    !(a[0] == 0xff || is_link_local(a) || is_unspecified_or_loopback(a))
}

/// Whether the data plane may send an ICMPv4 message to `a`: not in 0.0.0.0/8 ("this
/// network"), 127.0.0.0/8 (loopback), multicast (224.0.0.0/4), nor reserved or limited
/// broadcast (240.0.0.0/4); RFC 1122 3.2.2, RFC 1812 4.3.2.7.
#[inline(always)]
pub fn may_receive_icmp4(a: &[u8; 4]) -> bool {
    !(a[0] == 0 || a[0] == 127 || a[0] >= 224)
}

/// Whether `a` is an IPv6 multicast address (`ff00::/8`).
#[inline(always)]
pub fn is_multicast6(a: &[u8; 16]) -> bool {
    a[0] == 0xff
}

/// Whether `a` is an IPv4 multicast, reserved or broadcast address (224.0.0.0/3): no
/// ICMPv4 error answers a packet sent to one (RFC 1122 3.2.2).
#[inline(always)]
pub fn is_multicast_or_broadcast4(a: &[u8; 4]) -> bool {
    a[0] >= 224
}

#[inline(always)]
fn is_link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_link_multicast(a: &[u8; 16]) -> bool {
    a[0] == 0xff && a[1] & 0x0f == 0x02
}

#[inline(always)]
fn is_unspecified(a: &[u8; 16]) -> bool {
    let (hi, lo) = halves(a);
    hi | lo == 0
}

/// `::` or `::1`.
#[inline(always)]
fn is_unspecified_or_loopback(a: &[u8; 16]) -> bool {
    let (hi, lo) = halves(a);
    hi == 0 && lo & !u64::from_ne_bytes([0, 0, 0, 0, 0, 0, 0, 1]) == 0
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::net::Ipv6Addr;

    fn scoped(src: &str, dst: &str) -> bool {
        let (s, d): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        link_scoped(&s.octets(), &d.octets())
    }

    #[test]
    fn what_a_client_kernel_sends_into_a_fresh_tunnel() {
        // Router solicitation, DAD neighbour solicitation, MLDv2 report.
        assert!(scoped("fe80::1234", "ff02::2"));
        assert!(scoped("::", "ff02::1:ff00:2"));
        assert!(scoped("fe80::1234", "ff02::16"));
        // Neighbour solicitation from the client's own address to the PoP's.
        assert!(scoped("2001:db8:20::2", "ff02::1:ff00:1"));
        // To the PoP's link-local address.
        assert!(scoped("2001:db8:20::2", "fe80::1"));
        assert!(scoped("febf::1", "2001:db8::1"));
    }

    #[test]
    fn global_traffic_is_not_link_scoped() {
        assert!(!scoped("2001:db8:20::2", "2001:db8:ffff::2"));
        // Spoofing stays spoofing.
        assert!(!scoped("2001:db8:99::2", "2001:db8:ffff::2"));
        // Site-local, unique-local and wider multicast are not link scope.
        assert!(!scoped("fec0::1", "2001:db8::1"));
        assert!(!scoped("fd00::1", "2001:db8::1"));
        assert!(!scoped("2001:db8:20::2", "ff05::2"));
        assert!(!scoped("2001:db8:20::2", "ff0e::1"));
        assert!(!scoped("::1", "2001:db8::1"));
    }

    #[test]
    fn icmp6_goes_only_to_addresses_that_name_one_reachable_node() {
        let may = |a: &str| may_receive_icmp6(&a.parse::<Ipv6Addr>().unwrap().octets());
        for a in [
            "2001:db8:ffff::2",
            "2001:db8:10:1::2",
            "fd00::1",
            "::2",
            "::ffff:1.2.3.4",
        ] {
            assert!(may(a), "{a}");
        }
        for a in [
            "ff02::1",
            "ff0e::1",
            "ff05::2",
            "::",
            "::1",
            "fe80::1",
            "febf::ffff",
        ] {
            assert!(!may(a), "{a}");
        }
        assert!(is_multicast6(
            &"ff0e::1".parse::<Ipv6Addr>().unwrap().octets()
        ));
        assert!(!is_multicast6(
            &"fe80::1".parse::<Ipv6Addr>().unwrap().octets()
        ));
    }

    #[test]
    fn icmp4_goes_only_to_addresses_that_name_one_reachable_node() {
        use core::net::Ipv4Addr;
        let may = |a: &str| may_receive_icmp4(&a.parse::<Ipv4Addr>().unwrap().octets());
        for a in ["198.51.100.99", "203.0.113.2", "1.0.0.0", "223.255.255.255"] {
            assert!(may(a), "{a}");
        }
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
        ] {
            assert!(!may(a), "{a}");
        }
        assert!(!may("255.255.255.255"));
        assert!(is_multicast_or_broadcast4(&[224, 0, 0, 251]));
        assert!(is_multicast_or_broadcast4(&[255, 255, 255, 255]));
        assert!(!is_multicast_or_broadcast4(&[223, 0, 0, 1]));
    }
}
