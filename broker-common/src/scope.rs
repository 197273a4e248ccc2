//! Address scopes the data plane tells apart.

/// Whether an IPv6 packet from `src` to `dst` belongs to the link it was sent on: a
/// link-local (`fe80::/10`) or unspecified source, or a link-local or link-scope
/// multicast (`ff02::/16`) destination. A client's kernel sends such packets into every
/// fresh tunnel (router and neighbour solicitations, MLD reports); they are never
/// forwarded, and they are not spoofing.
#[inline(always)]
pub fn link_scoped(src: &[u8; 16], dst: &[u8; 16]) -> bool {
    is_link_local(src) || is_unspecified(src) || is_link_local(dst) || is_link_multicast(dst)
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
    let hi = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    hi | lo == 0
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
}
