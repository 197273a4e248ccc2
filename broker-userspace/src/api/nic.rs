//! `/nic/update?hostname=<tunnel id>[&myip=<ipv4>]`: the endpoint update Hurricane
//! Electric's broker offers and routers (FritzBox, MikroTik, UniFi, ddclient) already
//! script, answered in the dyndns2 style they parse. The decision is pure.
use std::net::{IpAddr, Ipv4Addr};

/// The answer, as the body a client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The endpoint was changed to this address.
    Good(Ipv4Addr),
    /// The endpoint already was this address.
    NoChange(Ipv4Addr),
    /// Missing or wrong credentials, or no such tunnel (`nohost` would tell which tunnel
    /// ids exist).
    BadAuth,
    /// No `hostname`, or not a tunnel id.
    NotFqdn,
    /// `myip` is not an IPv4 address, or there is none to take from the request.
    BadIp(String),
    /// The change failed inside the broker.
    ServerError,
}

impl Answer {
    pub fn body(&self) -> String {
        match self {
            Answer::Good(ip) => format!("good {ip}"),
            Answer::NoChange(ip) => format!("nochg {ip}"),
            Answer::BadAuth => "badauth".into(),
            Answer::NotFqdn => "notfqdn".into(),
            Answer::BadIp(why) => format!("-ERROR: {why}"),
            Answer::ServerError => "911".into(),
        }
    }
}

/// The tunnel id in `hostname`.
pub fn tunnel_id(hostname: Option<&str>) -> Result<u32, Answer> {
    hostname
        .and_then(|h| h.trim().parse().ok())
        .ok_or(Answer::NotFqdn)
}

/// The endpoint to set: `myip` when given, else the address the request came from.
pub fn endpoint(myip: Option<&str>, source: IpAddr) -> Result<Ipv4Addr, Answer> {
    match myip.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if is_unicast(a) => Ok(a),
            Ok(IpAddr::V4(a)) => Err(Answer::BadIp(format!("{a} is not a unicast address"))),
            Ok(IpAddr::V6(_)) => Err(Answer::BadIp("myip must be an IPv4 address".into())),
            Err(_) => Err(Answer::BadIp(format!("invalid IPv4 address {s:?}"))),
        },
        None => match source {
            IpAddr::V4(a) => Ok(a),
            IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .ok_or_else(|| Answer::BadIp("the request came over IPv6; give myip".into())),
        },
    }
}

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_dyndns2() {
        let ip = Ipv4Addr::new(198, 51, 100, 11);
        assert_eq!(Answer::Good(ip).body(), "good 198.51.100.11");
        assert_eq!(Answer::NoChange(ip).body(), "nochg 198.51.100.11");
        assert_eq!(Answer::BadAuth.body(), "badauth");
        assert_eq!(Answer::NotFqdn.body(), "notfqdn");
    }

    #[test]
    fn hostname_is_a_tunnel_id() {
        assert_eq!(tunnel_id(Some("42")), Ok(42));
        assert_eq!(tunnel_id(Some("tunnel.example")), Err(Answer::NotFqdn));
        assert_eq!(tunnel_id(None), Err(Answer::NotFqdn));
    }

    #[test]
    fn myip_defaults_to_the_source() {
        let src: IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(endpoint(None, src), Ok(Ipv4Addr::new(198, 51, 100, 10)));
        assert_eq!(endpoint(Some(""), src), Ok(Ipv4Addr::new(198, 51, 100, 10)));
        assert_eq!(
            endpoint(Some("198.51.100.11"), src),
            Ok(Ipv4Addr::new(198, 51, 100, 11))
        );
        let mapped: IpAddr = "::ffff:198.51.100.12".parse().unwrap();
        assert_eq!(endpoint(None, mapped), Ok(Ipv4Addr::new(198, 51, 100, 12)));
        assert!(matches!(
            endpoint(None, "2001:db8::1".parse().unwrap()),
            Err(Answer::BadIp(_))
        ));
        assert!(matches!(
            endpoint(Some("2001:db8::1"), src),
            Err(Answer::BadIp(_))
        ));
        assert!(matches!(
            endpoint(Some("300.1.1.1"), src),
            Err(Answer::BadIp(_))
        ));
        assert!(matches!(
            endpoint(Some("224.0.0.1"), src),
            Err(Answer::BadIp(_))
        ));
    }
}
