//! One heartbeat datagram: `HEARTBEAT TUNNEL <ipv6> <ipv4|sender> <epoch> <md5hex>`, where
//! the digest is the MD5 of the same line with the tunnel's password in place of the
//! digest (sixxsd `hb.c`, aiccu `heartbeat.c`). Parsing, the checks that need no tunnel,
//! the signature, and the client's side ([`beat`]). Pure.
use std::net::{Ipv4Addr, Ipv6Addr};

use md5::{Digest, Md5};

/// The UDP port heartbeats go to on the PoP.
pub const PORT: u16 = 3740;
/// sixxsd drops datagrams of this many bytes or more.
pub const MAX_LEN: usize = 256;
/// How far the client's clock may be off, seconds (`CLOCK_OFF` in sixxsd and aiccu).
pub const CLOCK_OFF: u64 = 120;

const PREFIX: &str = "HEARTBEAT TUNNEL ";
/// The IPv4 field of a client behind a NAT: "use the address the datagram came from".
const SENDER: &str = "sender";

/// Why a datagram is not a valid beat. Dropped without an answer (as sixxsd), counted by
/// [`Reject::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("{MAX_LEN} bytes or more")]
    TooLong,
    #[error("not a HEARTBEAT TUNNEL message")]
    NotHeartbeat,
    #[error("malformed {field}")]
    Malformed { field: &'static str },
    #[error("epoch more than {CLOCK_OFF} s off")]
    ClockSkew,
    #[error("named IPv4 is not the sender's")]
    Ipv4Mismatch,
    #[error("no tunnel has that IPv6 endpoint")]
    UnknownTunnel,
    #[error("the tunnel is not a heartbeat tunnel")]
    WrongKind,
    #[error("MD5 digest does not match")]
    BadDigest,
    #[error("a beat seen before, from another address")]
    Replayed,
}

impl Reject {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLong => "too_long",
            Reject::NotHeartbeat => "not_heartbeat",
            Reject::Malformed { .. } => "malformed",
            Reject::ClockSkew => "clock_skew",
            Reject::Ipv4Mismatch => "ipv4_mismatch",
            Reject::UnknownTunnel => "unknown_tunnel",
            Reject::WrongKind => "wrong_kind",
            Reject::BadDigest => "bad_digest",
            Reject::Replayed => "replayed",
        }
    }
}

/// A parsed beat, borrowing the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat<'a> {
    /// The client's tunnel address (`::2`), which names the tunnel.
    pub ipv6: Ipv6Addr,
    /// The address the client says it has; `None` for `sender`.
    pub ipv4: Option<Ipv4Addr>,
    pub epoch: u64,
    /// The line up to and including the space before the digest, as sent: the digest
    /// covers these bytes exactly (not a reformatted address).
    signed: &'a str,
    digest: &'a str,
}

/// Parses a datagram. Everything from the first CR or LF on is ignored (sixxsd cuts
/// there too: `nc` adds a newline, aiccu none).
pub fn parse(datagram: &[u8]) -> Result<Beat<'_>, Reject> {
    if datagram.len() >= MAX_LEN {
        return Err(Reject::TooLong);
    }
    let end = datagram
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(datagram.len());
    let line = std::str::from_utf8(&datagram[..end]).map_err(|_| Reject::NotHeartbeat)?;
    let rest = line.strip_prefix(PREFIX).ok_or(Reject::NotHeartbeat)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [ipv6, ipv4, epoch, digest] = fields[..] else {
        return Err(Reject::Malformed { field: "fields" });
    };
    let ipv6: Ipv6Addr = ipv6
        .parse()
        .map_err(|_| Reject::Malformed { field: "ipv6" })?;
    let ipv4 = match ipv4 {
        SENDER => None,
        a => Some(
            a.parse::<Ipv4Addr>()
                .map_err(|_| Reject::Malformed { field: "ipv4" })?,
        ),
    };
    // Digits only: `+5` or ` 5` would parse as numbers but sign other bytes.
    if epoch.is_empty() || epoch.len() > 20 || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::Malformed { field: "epoch" });
    }
    let epoch: u64 = epoch
        .parse()
        .map_err(|_| Reject::Malformed { field: "epoch" })?;
    if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Reject::Malformed { field: "digest" });
    }
    let signed = &line[..line.len() - digest.len()];
    Ok(Beat {
        ipv6,
        ipv4,
        epoch,
        signed,
        digest,
    })
}

impl Beat<'_> {
    /// The checks that need no tunnel: the clock, and a named IPv4 must be the datagram's
    /// source (otherwise anyone could point a tunnel elsewhere with a replayed beat).
    pub fn check(&self, source: Ipv4Addr, now: u64) -> Result<(), Reject> {
        if now.abs_diff(self.epoch) > CLOCK_OFF {
            return Err(Reject::ClockSkew);
        }
        if self.ipv4.is_some_and(|a| a != source) {
            return Err(Reject::Ipv4Mismatch);
        }
        Ok(())
    }

    /// Whether the digest is the MD5 of the line with `password` in its place.
    pub fn verify(&self, password: &str) -> Result<(), Reject> {
        let ours = md5_hex(&[self.signed.as_bytes(), password.as_bytes()]);
        if crate::secret::same(&ours, &self.digest.to_ascii_lowercase()) {
            Ok(())
        } else {
            Err(Reject::BadDigest)
        }
    }
}

/// A beat as the client sends it (no newline, as aiccu). `ipv4: None` sends `sender`,
/// which is what aiccu always does: behind a NAT the client cannot know its address.
pub fn beat(ipv6: Ipv6Addr, ipv4: Option<Ipv4Addr>, epoch: u64, password: &str) -> String {
    let who = ipv4.map_or_else(|| SENDER.to_string(), |a| a.to_string());
    let signed = format!("{PREFIX}{ipv6} {who} {epoch} ");
    let digest = md5_hex(&[signed.as_bytes(), password.as_bytes()]);
    format!("{signed}{digest}")
}

/// Lower-case hex MD5 of the concatenated parts.
pub fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published SixXS example (archive/sixxs/heartbeat/unix/README.txt).
    const VECTOR: &str =
        "HEARTBEAT TUNNEL 2001:db8::2 10.100.13.42 1063665852 da46fdc28f568bb62d29661f73758095";
    const EPOCH: u64 = 1_063_665_852;
    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 100, 13, 42);

    #[test]
    fn the_published_vector() {
        let b = parse(VECTOR.as_bytes()).unwrap();
        assert_eq!(b.ipv6, "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(b.ipv4, Some(SOURCE));
        assert_eq!(b.epoch, EPOCH);
        assert_eq!(b.check(SOURCE, EPOCH + 5), Ok(()));
        assert_eq!(b.verify("hartslag"), Ok(()));
        assert_eq!(b.verify("hartslag2"), Err(Reject::BadDigest));
        // And the client side produces it byte for byte.
        let ours = beat(
            "2001:db8::2".parse().unwrap(),
            Some(SOURCE),
            EPOCH,
            "hartslag",
        );
        assert_eq!(ours, VECTOR);
    }

    #[test]
    fn sender_and_trailing_newlines() {
        let line = beat("2001:db8::2".parse().unwrap(), None, 1_700_000_000, "pw");
        assert!(line.starts_with("HEARTBEAT TUNNEL 2001:db8::2 sender 1700000000 "));
        assert!(!line.ends_with('\n'));
        for tail in ["", "\n", "\r\n", "\r\ngarbage"] {
            let datagram = format!("{line}{tail}");
            let b = parse(datagram.as_bytes()).unwrap();
            assert_eq!(b.ipv4, None);
            assert_eq!(b.verify("pw"), Ok(()));
            // `sender`: any source will do.
            assert_eq!(
                b.check(Ipv4Addr::new(203, 0, 113, 7), 1_700_000_000),
                Ok(())
            );
        }
    }

    #[test]
    fn upper_case_digests_verify() {
        let (head, digest) = VECTOR.rsplit_once(' ').unwrap();
        let upper = format!("{head} {}", digest.to_ascii_uppercase());
        assert_eq!(parse(upper.as_bytes()).unwrap().verify("hartslag"), Ok(()));
    }

    #[test]
    fn a_changed_byte_breaks_the_digest() {
        // The address spelt differently signs different bytes.
        let other = VECTOR.replace("2001:db8::2", "2001:db8:0::2");
        assert_eq!(
            parse(other.as_bytes()).unwrap().verify("hartslag"),
            Err(Reject::BadDigest)
        );
        let other = VECTOR.replace("1063665852", "1063665853");
        assert_eq!(
            parse(other.as_bytes()).unwrap().verify("hartslag"),
            Err(Reject::BadDigest)
        );
    }

    #[test]
    fn stale_epochs_both_ways() {
        let b = parse(VECTOR.as_bytes()).unwrap();
        assert_eq!(b.check(SOURCE, EPOCH + CLOCK_OFF), Ok(()));
        assert_eq!(b.check(SOURCE, EPOCH - CLOCK_OFF), Ok(()));
        assert_eq!(
            b.check(SOURCE, EPOCH + CLOCK_OFF + 1),
            Err(Reject::ClockSkew)
        );
        assert_eq!(
            b.check(SOURCE, EPOCH - CLOCK_OFF - 1),
            Err(Reject::ClockSkew)
        );
    }

    #[test]
    fn a_named_ipv4_must_be_the_source() {
        let b = parse(VECTOR.as_bytes()).unwrap();
        assert_eq!(
            b.check(Ipv4Addr::new(10, 100, 13, 43), EPOCH),
            Err(Reject::Ipv4Mismatch)
        );
    }

    #[test]
    fn length_limit() {
        let pad = |n: usize| {
            let mut v = VECTOR.as_bytes().to_vec();
            v.push(b'\n');
            v.resize(n, b'x');
            v
        };
        assert!(parse(&pad(MAX_LEN - 1)).is_ok());
        assert_eq!(parse(&pad(MAX_LEN)), Err(Reject::TooLong));
        assert_eq!(parse(&pad(2000)), Err(Reject::TooLong));
    }

    #[test]
    fn malformed_fields() {
        let d = "da46fdc28f568bb62d29661f73758095";
        let cases: [(String, Reject); 12] = [
            ("".into(), Reject::NotHeartbeat),
            ("HEARTBEAT ROUTE x".into(), Reject::NotHeartbeat),
            (
                "heartbeat tunnel 2001:db8::2 sender 1 d".into(),
                Reject::NotHeartbeat,
            ),
            (
                "HEARTBEAT TUNNEL 2001:db8::2 sender 1063665852".into(),
                Reject::Malformed { field: "fields" },
            ),
            (
                format!("HEARTBEAT TUNNEL 2001:db8::2 sender 1063665852 {d} extra"),
                Reject::Malformed { field: "fields" },
            ),
            (
                format!("HEARTBEAT TUNNEL 2001:db8::2  sender 1063665852 {d}"),
                Reject::Malformed { field: "fields" },
            ),
            (
                format!("HEARTBEAT TUNNEL 10.0.0.1 sender 1063665852 {d}"),
                Reject::Malformed { field: "ipv6" },
            ),
            (
                format!("HEARTBEAT TUNNEL 2001:db8::2 10.100.13 1063665852 {d}"),
                Reject::Malformed { field: "ipv4" },
            ),
            (
                format!("HEARTBEAT TUNNEL 2001:db8::2 sender +1063665852 {d}"),
                Reject::Malformed { field: "epoch" },
            ),
            (
                format!("HEARTBEAT TUNNEL 2001:db8::2 sender 99999999999999999999999 {d}"),
                Reject::Malformed { field: "epoch" },
            ),
            (
                "HEARTBEAT TUNNEL 2001:db8::2 sender 1063665852 da46fdc28f".into(),
                Reject::Malformed { field: "digest" },
            ),
            (
                "HEARTBEAT TUNNEL 2001:db8::2 sender 1063665852 zz46fdc28f568bb62d29661f73758095"
                    .into(),
                Reject::Malformed { field: "digest" },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text.as_bytes()), Err(want), "{text:?}");
        }
        assert_eq!(parse(b"HEARTBEAT TUNNEL \xff"), Err(Reject::NotHeartbeat));
    }
}
