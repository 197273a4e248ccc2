//! Prefix arithmetic for allocation, pure. All allocated prefixes are /64 or shorter, so a
//! prefix is its upper 64 bits: a range `[start, end]` of u64.
use ipnet::{Ipv4Net, Ipv6Net};

/// The pools tunnels draw from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSet {
    pub link: Vec<Ipv6Net>,
    pub routed: Vec<Ipv6Net>,
    pub routed_lengths: Vec<u8>,
    pub quarantine_secs: u64,
    /// Inner IPv4 of v4v6 clients; the first host is the PoP's.
    pub v4v6: Option<Ipv4Net>,
}

/// The addresses of a v4v6 pool clients can get: every host but the PoP's (the first)
/// and, in pools of /30 or larger, the network and broadcast addresses.
pub fn v4_hosts(pool: &Ipv4Net) -> impl Iterator<Item = u32> {
    let net = u32::from(pool.network());
    let last = u32::from(pool.broadcast());
    let (first, last) = if pool.prefix_len() <= 30 {
        (net + 2, last - 1)
    } else {
        (net + 1, last)
    };
    first..=last
}

/// Upper 64 bits of a prefix's first address.
pub fn start(p: &Ipv6Net) -> u64 {
    (u128::from(p.network()) >> 64) as u64
}

/// Upper 64 bits of its last /64.
pub fn end(p: &Ipv6Net) -> u64 {
    start(p) | block(p.prefix_len()).wrapping_sub(1)
}

/// Number of /64s in a prefix of length `len` (at most 64); 0 stands for 2^64.
pub fn block(len: u8) -> u64 {
    if len == 0 {
        0
    } else {
        1u64 << (64 - u32::from(len))
    }
}

/// The prefix of length `len` starting at `start`.
pub fn prefix(start: u64, len: u8) -> Ipv6Net {
    Ipv6Net::new((u128::from(start) << 64).into(), len).expect("length at most 64")
}

/// The smallest multiple of `block(len)` at or above `x`, if any.
pub fn align_up(x: u64, len: u8) -> Option<u64> {
    let b = block(len);
    if b == 0 {
        return (x == 0).then_some(0);
    }
    x.checked_add(b - 1).map(|v| v & !(b - 1))
}

/// SQLite integers are signed: flipping the top bit keeps u64 order in i64 order.
pub fn to_sql(x: u64) -> i64 {
    (x ^ (1 << 63)) as i64
}

pub fn from_sql(x: i64) -> u64 {
    (x as u64) ^ (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_alignment() {
        let p: Ipv6Net = "2001:db8:1100::/48".parse().unwrap();
        assert_eq!(start(&p), 0x2001_0db8_1100_0000);
        assert_eq!(end(&p), 0x2001_0db8_1100_ffff);
        assert_eq!(prefix(start(&p), 48), p);
        assert_eq!(
            align_up(0x2001_0db8_1100_0001, 48),
            Some(0x2001_0db8_1101_0000)
        );
        assert_eq!(
            align_up(0x2001_0db8_1100_0000, 48),
            Some(0x2001_0db8_1100_0000)
        );
        assert_eq!(align_up(u64::MAX, 64), Some(u64::MAX));
        assert_eq!(align_up(u64::MAX, 48), None);
        let l: Ipv6Net = "2001:db8:10:1::/64".parse().unwrap();
        assert_eq!(start(&l), end(&l));
    }

    #[test]
    fn v4_hosts_skip_network_gateway_and_broadcast() {
        let p: Ipv4Net = "203.0.113.0/29".parse().unwrap();
        let hosts: Vec<std::net::Ipv4Addr> = v4_hosts(&p).map(Into::into).collect();
        assert_eq!(hosts.first(), Some(&"203.0.113.2".parse().unwrap()));
        assert_eq!(hosts.last(), Some(&"203.0.113.6".parse().unwrap()));
        assert_eq!(hosts.len(), 5);
    }

    #[test]
    fn sql_order_matches_u64_order() {
        let xs = [
            0u64,
            1,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
            u64::MAX,
        ];
        for w in xs.windows(2) {
            assert!(to_sql(w[0]) < to_sql(w[1]));
            assert_eq!(from_sql(to_sql(w[0])), w[0]);
        }
    }
}
