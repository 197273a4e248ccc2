//! Value types whose parsing is itself validation, so that serde_yaml reports the key and
//! line of a bad value.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use broker_common::consts::{MTU_MAX, MTU_MIN};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{de, Deserialize, Deserializer};

/// An IPv4 address; an IPv6 one is rejected as the wrong family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Field(pub Ipv4Addr);

impl FromStr for Ipv4Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Ok(Self(a)),
            Ok(IpAddr::V6(a)) => Err(format!(
                "expected an IPv4 address, found the IPv6 address {a}"
            )),
            Err(_) => Err(format!("expected an IPv4 address, found {s:?}")),
        }
    }
}

/// An IPv6 address; an IPv4 one is rejected as the wrong family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Field(pub Ipv6Addr);

impl FromStr for Ipv6Field {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => Ok(Self(a)),
            Ok(IpAddr::V4(a)) => Err(format!(
                "expected an IPv6 address, found the IPv4 address {a}"
            )),
            Err(_) => Err(format!("expected an IPv6 address, found {s:?}")),
        }
    }
}

/// An IPv4 prefix; host bits must be zero, an IPv6 prefix is the wrong family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix4(pub Ipv4Net);

impl FromStr for Prefix4 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<IpNet>() {
            Ok(IpNet::V4(n)) if n.trunc() == n => Ok(Self(n)),
            Ok(IpNet::V4(n)) => Err(format!(
                "{n} has host bits set; the prefix is {}",
                n.trunc()
            )),
            Ok(IpNet::V6(n)) => Err(format!(
                "expected an IPv4 prefix, found the IPv6 prefix {n}"
            )),
            Err(_) => Err(format!(
                "expected an IPv4 prefix like 203.0.113.0/24, found {s:?}"
            )),
        }
    }
}

/// An IPv6 prefix; host bits must be zero, an IPv4 prefix is the wrong family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix6(pub Ipv6Net);

impl FromStr for Prefix6 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<IpNet>() {
            Ok(IpNet::V6(n)) if n.trunc() == n => Ok(Self(n)),
            Ok(IpNet::V6(n)) => Err(format!(
                "{n} has host bits set; the prefix is {}",
                n.trunc()
            )),
            Ok(IpNet::V4(n)) => Err(format!(
                "expected an IPv6 prefix, found the IPv4 prefix {n}"
            )),
            Err(_) => Err(format!(
                "expected an IPv6 prefix like 2001:db8::/48, found {s:?}"
            )),
        }
    }
}

/// The tunnel's link prefix: exactly a /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkPrefix(pub Ipv6Net);

impl FromStr for LinkPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Prefix6(n) = s.parse()?;
        if n.prefix_len() != 64 {
            return Err(format!("a link prefix is a /64, found /{}", n.prefix_len()));
        }
        Ok(Self(n))
    }
}

/// Tunnel MTU, 1280-1480.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtu(pub u16);

impl Default for Mtu {
    fn default() -> Self {
        Self(MTU_MAX)
    }
}

impl<'de> Deserialize<'de> for Mtu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if (MTU_MIN as i64..=MTU_MAX as i64).contains(&v) {
            Ok(Self(v as u16))
        } else {
            Err(de::Error::custom(format!(
                "MTU {v} is outside {MTU_MIN}-{MTU_MAX}"
            )))
        }
    }
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(Ipv4Field, Ipv6Field, Prefix4, Prefix6, LinkPrefix);

impl fmt::Display for Ipv4Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Prefix6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
