//! Bookkeeping behind the prefix lookup of the data plane, pure and unit-tested: which
//! prefix lengths are in use (one hash probe each) and the few aggregates that cover every
//! tunnel prefix (the "tunnel space" checked before any probe).
use std::collections::BTreeMap;

use broker_common::maps::{mask64, LenMask, Prefix64, PrefixKey, MAX_PREFIX_LENS, MAX_SPACE};
use ipnet::Ipv6Net;

/// The map key of a prefix (at most /64).
pub fn key(p: &Ipv6Net) -> PrefixKey {
    PrefixKey {
        net: upper(p) & mask64(p.prefix_len().into()),
        len: p.prefix_len().into(),
        _pad: 0,
    }
}

/// The data plane form of a prefix of at most 64 bits.
pub fn prefix64(p: &Ipv6Net) -> Prefix64 {
    Prefix64::new(upper_bytes(p), p.prefix_len().into())
}

fn upper_bytes(p: &Ipv6Net) -> [u8; 8] {
    let o = p.network().octets();
    [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
}

fn upper(p: &Ipv6Net) -> u64 {
    u64::from_ne_bytes(upper_bytes(p))
}

/// Prefix lengths in use, with how many prefixes have each.
#[derive(Debug, Default, Clone)]
pub struct Lengths {
    count: BTreeMap<u8, usize>,
}

impl Lengths {
    /// Whether adding prefixes of these lengths stays within `MAX_PREFIX_LENS`.
    pub fn fits(&self, lens: impl IntoIterator<Item = u8>) -> bool {
        let mut all: Vec<u8> = self.count.keys().copied().collect();
        all.extend(lens);
        all.sort_unstable();
        all.dedup();
        all.len() <= MAX_PREFIX_LENS
    }

    pub fn add(&mut self, len: u8) {
        *self.count.entry(len).or_default() += 1;
    }

    pub fn remove(&mut self, len: u8) {
        if let Some(c) = self.count.get_mut(&len) {
            *c -= 1;
            if *c == 0 {
                self.count.remove(&len);
            }
        }
    }

    /// Longest first, as the data plane probes them.
    pub fn table(&self) -> ([LenMask; MAX_PREFIX_LENS], u32) {
        let mut t = [LenMask {
            mask: 0,
            len: 0,
            _pad: 0,
        }; MAX_PREFIX_LENS];
        let mut n = 0;
        for (len, slot) in self.count.keys().rev().zip(t.iter_mut()) {
            *slot = LenMask {
                mask: mask64((*len).into()),
                len: (*len).into(),
                _pad: 0,
            };
            n += 1;
        }
        (t, n)
    }
}

/// Up to `MAX_SPACE` aggregates covering every prefix ever added. They only widen: a
/// removed tunnel leaves its space behind, which costs a probe, never a wrong answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Space {
    aggregates: Vec<Ipv6Net>,
}

impl Space {
    /// Widens the space to cover `p`. Returns true when it changed.
    pub fn cover(&mut self, p: Ipv6Net) -> bool {
        let p = p.trunc();
        if self.aggregates.iter().any(|a| a.contains(&p)) {
            return false;
        }
        self.aggregates.retain(|a| !p.contains(a));
        if self.aggregates.len() < MAX_SPACE {
            self.aggregates.push(p);
        } else {
            // Merge with the aggregate that gives the narrowest common supernet.
            let (i, merged) = self
                .aggregates
                .iter()
                .enumerate()
                .map(|(i, a)| (i, supernet(a, &p)))
                .max_by_key(|(_, s)| s.prefix_len())
                .expect("MAX_SPACE > 0");
            self.aggregates.remove(i);
            self.aggregates.retain(|a| !merged.contains(a));
            self.aggregates.push(merged);
        }
        self.aggregates.sort();
        true
    }

    pub fn aggregates(&self) -> &[Ipv6Net] {
        &self.aggregates
    }

    pub fn table(&self) -> ([Prefix64; MAX_SPACE], u32) {
        let mut t = [Prefix64::NONE; MAX_SPACE];
        for (a, slot) in self.aggregates.iter().zip(t.iter_mut()) {
            *slot = prefix64(a);
        }
        (t, self.aggregates.len() as u32)
    }
}

/// The longest prefix containing both `a` and `b`.
fn supernet(a: &Ipv6Net, b: &Ipv6Net) -> Ipv6Net {
    let x = u128::from(a.network()) ^ u128::from(b.network());
    let common = (x.leading_zeros() as u8)
        .min(a.prefix_len())
        .min(b.prefix_len());
    Ipv6Net::new(a.network(), common)
        .expect("length at most 128")
        .trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn lengths_are_longest_first_and_counted() {
        let mut l = Lengths::default();
        for len in [48, 64, 64, 56] {
            l.add(len);
        }
        let (t, count) = l.table();
        assert_eq!(count, 3);
        assert_eq!(
            t[..3].iter().map(|x| x.len).collect::<Vec<_>>(),
            vec![64, 56, 48]
        );
        l.remove(64);
        assert_eq!(l.table().1, 3);
        l.remove(64);
        assert_eq!(l.table().1, 2);
        assert!(l.fits([1, 2, 3, 4, 5, 6]));
        assert!(!l.fits([1, 2, 3, 4, 5, 6, 7]));
    }

    #[test]
    fn space_covers_everything_added_within_the_limit() {
        let mut s = Space::default();
        let prefixes = [
            "2001:db8:10:1::/64",
            "2001:db8:10:2::/64",
            "2001:db8:1100::/48",
            "2001:db8:1200::/48",
            "2001:db8:ffff:5::/64",
            "3fff:1::/48",
            "2001:db8:10:7::/64",
        ];
        for p in prefixes {
            s.cover(n(p));
            assert!(s.aggregates().len() <= MAX_SPACE);
            for q in &prefixes[..=prefixes.iter().position(|x| *x == p).unwrap()] {
                assert!(
                    s.aggregates().iter().any(|a| a.contains(&n(q))),
                    "{q} not covered by {:?}",
                    s.aggregates()
                );
            }
        }
        assert!(!s.cover(n("2001:db8:10:1::/64")), "already covered");
    }

    #[test]
    fn supernet_is_the_longest_common_prefix() {
        assert_eq!(
            supernet(&n("2001:db8:10:1::/64"), &n("2001:db8:10:2::/64")),
            n("2001:db8:10::/62")
        );
        assert_eq!(
            supernet(&n("2001:db8::/32"), &n("2001:db8:10:1::/64")),
            n("2001:db8::/32")
        );
        assert_eq!(supernet(&n("2001::/16"), &n("3fff::/16")), n("2000::/3"));
        assert_eq!(supernet(&n("2001::/16"), &n("c000::/16")), n("::/0"));
    }

    #[test]
    fn keys_mask_host_bits() {
        let k = key(&n("2001:db8:1100::/40"));
        assert_eq!(k.len, 40);
        assert_eq!(k, key(&n("2001:db8:1100::/40")));
        let p = prefix64(&n("2001:db8:1100::/40"));
        assert_eq!(k.net, p.net);
    }
}
