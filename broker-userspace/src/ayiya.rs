//! AYIYA ("Anything In Anything", draft-massar-v6ops-ayiya-02) as SixXS ran it: IPv6 in a
//! signed 44-byte header in UDP over IPv4, port 5072. Byte-compatible with AICCU
//! (`common/ayiya.c`) and sixxsd (`src/ayiya.c`); see `PROTOCOLS.md` section 3.
//!
//! Pure: no I/O, no clock. The PoP controller, the client and the tests share it. The PoP
//! does not know the key before it has read the identity, so the checks come apart:
//! [`parse`] (layout), then the caller's identity lookup, [`fresh`] and [`verify`];
//! [`accept`] runs them all for a side that knows its peer (the client).
//!
//! Layout, big-endian:
//!
//! ```text
//! 0      idlen<<4 | idtype    0x41: 2^4 = 16-byte identity, an integer (an IPv6 address)
//! 1      siglen<<4 | hash     0x52: 5 * 4 = 20-byte signature, SHA-1
//! 2      auth<<4 | opcode     auth 1 = shared secret
//! 3      next header          41 IPv6, 4 IPv4, 59 none
//! 4..8   epoch seconds
//! 8..24  identity: the sender's own inner IPv6 (client ::2, PoP ::1)
//! 24..44 signature
//! 44..   payload
//! ```
use std::{net::Ipv6Addr, ops::Range};

use sha1::{Digest, Sha1};

/// The UDP port of AYIYA at SixXS PoPs (sixxsd `ayiya.h`; AICCU's own `ayiya.h` still says
/// 8374, but the port it used against the PoPs, and the one sixxsd listens on first, is 5072).
pub const PORT: u16 = 5072;
/// Header, identity and signature: bytes before the payload.
pub const HEADER_LEN: usize = 44;
/// Where the identity sits.
pub const IDENTITY: Range<usize> = 8..24;
/// Where the signature sits.
pub const SIGNATURE: Range<usize> = 24..44;
/// Byte 0: identity length 4 (2^4 = 16 bytes), identity type 1 (integer).
pub const ID_BYTE: u8 = 0x41;
/// Byte 1: signature length 5 (5 * 4 = 20 bytes), hash method 2 (SHA-1).
pub const SIG_BYTE: u8 = 0x52;
/// High nibble of byte 2: authentication method 1, a shared secret.
pub const AUTH_SHARED_SECRET: u8 = 1;
/// Seconds a packet's epoch may be off the receiver's clock, either way (sixxsd
/// `MAX_CLOCK_OFF`, AICCU `CLOCK_OFF`). Bounds replay of captured packets.
pub const MAX_CLOCK_OFFSET: u32 = 120;

/// SHA-1 of the tunnel password: the shared secret as both ends hold it.
pub type Key = [u8; 20];

/// The operation of a packet (low nibble of byte 2). The values are the draft's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// No operation: a heartbeat (AICCU's beat, with next header 59 and no payload).
    Noop = 0,
    /// Forward the payload.
    Forward = 1,
    EchoRequest = 2,
    EchoRequestForward = 3,
    EchoResponse = 4,
    Motd = 5,
    QueryRequest = 6,
    QueryResponse = 7,
}

impl Opcode {
    /// The opcode of nibble `v`; `None` for 8..15, which no draft defines.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Noop,
            1 => Self::Forward,
            2 => Self::EchoRequest,
            3 => Self::EchoRequestForward,
            4 => Self::EchoResponse,
            5 => Self::Motd,
            6 => Self::QueryRequest,
            7 => Self::QueryResponse,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Forward => "forward",
            Self::EchoRequest => "echo_request",
            Self::EchoRequestForward => "echo_request_forward",
            Self::EchoResponse => "echo_response",
            Self::Motd => "motd",
            Self::QueryRequest => "query_request",
            Self::QueryResponse => "query_response",
        }
    }
}

/// What the payload is (byte 3, an IP protocol number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NextHeader {
    /// IPv4 (sixxsd only; AICCU never sends or accepts it).
    Ipv4 = 4,
    Ipv6 = 41,
    /// No payload: beats.
    None = 59,
}

impl NextHeader {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            4 => Some(Self::Ipv4),
            41 => Some(Self::Ipv6),
            59 => Some(Self::None),
            _ => None,
        }
    }

    /// Whether `payload` is what this next header announces: an IP packet of that
    /// version, or nothing at all for 59. Both C implementations check the first nibble;
    /// a 59 with a payload is refused too, so a beat cannot smuggle bytes.
    pub fn matches(self, payload: &[u8]) -> bool {
        match (self, payload.first()) {
            (Self::None, first) => first.is_none(),
            (Self::Ipv6, Some(b)) => b >> 4 == 6,
            (Self::Ipv4, Some(b)) => b >> 4 == 4,
            (_, None) => false,
        }
    }
}

/// A parsed packet. The payload borrows the received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub opcode: Opcode,
    pub next_header: NextHeader,
    /// The sender's clock, seconds since 1970 (mod 2^32).
    pub epoch: u32,
    /// The sender's inner IPv6 address.
    pub identity: Ipv6Addr,
    pub payload: &'a [u8],
}

/// Why a packet is dropped. Plain and `Copy`: matched and counted on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Shorter than the 44-byte header.
    Truncated,
    /// Byte 0, byte 1 or the authentication method is not the one SixXS uses (0x41, 0x52,
    /// shared secret).
    BadHeader,
    /// Opcode 8..15.
    UnknownOpcode,
    /// Next header other than 4, 41 or 59.
    UnknownNextHeader,
    /// The payload is not what the next header says.
    NextHeaderMismatch,
    /// Not from the expected peer.
    WrongIdentity,
    /// The epoch is more than [`MAX_CLOCK_OFFSET`] off (a replay, or a wrong clock).
    StaleEpoch,
    /// The signature does not match the key.
    BadSignature,
}

impl Reject {
    /// Every reason, in [`Reject::index`] order.
    pub const ALL: [Self; 8] = [
        Self::Truncated,
        Self::BadHeader,
        Self::UnknownOpcode,
        Self::UnknownNextHeader,
        Self::NextHeaderMismatch,
        Self::WrongIdentity,
        Self::StaleEpoch,
        Self::BadSignature,
    ];

    /// A dense index for per-reason counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadHeader => "bad_header",
            Self::UnknownOpcode => "unknown_opcode",
            Self::UnknownNextHeader => "unknown_next_header",
            Self::NextHeaderMismatch => "next_header_mismatch",
            Self::WrongIdentity => "wrong_identity",
            Self::StaleEpoch => "stale_epoch",
            Self::BadSignature => "bad_signature",
        }
    }
}

/// The shared secret of `password`: its SHA-1, as AICCU and sixxsd derive it (the
/// password as given, no terminator, no salt).
pub fn key(password: &str) -> Key {
    Sha1::digest(password.as_bytes()).into()
}

/// Checks the layout and returns the typed header. Says nothing about who sent it, when,
/// or whether it is signed: see [`accept`].
pub fn parse(packet: &[u8]) -> Result<Header<'_>, Reject> {
    if packet.len() < HEADER_LEN {
        return Err(Reject::Truncated);
    }
    if packet[0] != ID_BYTE || packet[1] != SIG_BYTE || packet[2] >> 4 != AUTH_SHARED_SECRET {
        return Err(Reject::BadHeader);
    }
    let opcode = Opcode::from_u8(packet[2] & 0xf).ok_or(Reject::UnknownOpcode)?;
    let next_header = NextHeader::from_u8(packet[3]).ok_or(Reject::UnknownNextHeader)?;
    let payload = &packet[HEADER_LEN..];
    if !next_header.matches(payload) {
        return Err(Reject::NextHeaderMismatch);
    }
    let identity: [u8; 16] = packet[IDENTITY].try_into().expect("16 bytes");
    Ok(Header {
        opcode,
        next_header,
        epoch: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        identity: identity.into(),
        payload,
    })
}

/// Whether `epoch` is within [`MAX_CLOCK_OFFSET`] of `now` (Unix seconds), either way.
/// The difference is taken modulo 2^32, so the check keeps working when the 32-bit field
/// wraps in 2106.
pub fn fresh(epoch: u32, now: u64) -> bool {
    // Truncating `now` is the point: compare in the field's own 32-bit arithmetic.
    let offset = (now as u32).wrapping_sub(epoch) as i32;
    offset.unsigned_abs() <= MAX_CLOCK_OFFSET
}

/// What a packet's signature is the SHA-1 of: the packet with the key in the signature
/// field, as three pieces so the packet is neither copied nor changed (the worker hashes
/// many at once, see `sha1x16`).
///
/// # Panics
///
/// If `packet` is shorter than [`HEADER_LEN`].
pub fn signed_parts<'a>(packet: &'a [u8], key: &'a Key) -> [&'a [u8]; 3] {
    [
        &packet[..SIGNATURE.start],
        key.as_slice(),
        &packet[SIGNATURE.end..],
    ]
}

/// The signature a packet should carry: SHA-1 over the whole UDP payload with the key in
/// the signature field.
pub fn signature(packet: &[u8], key: &Key) -> Key {
    let mut h = Sha1::new();
    for part in signed_parts(packet, key) {
        h.update(part);
    }
    h.finalize().into()
}

/// Whether `packet` carries `expected` as its signature. The comparison does not stop at
/// the first differing byte, so its time says nothing about where they differ.
pub fn carries(packet: &[u8], expected: &Key) -> bool {
    if packet.len() < HEADER_LEN {
        return false;
    }
    let diff = expected
        .iter()
        .zip(&packet[SIGNATURE])
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    diff == 0
}

/// Signs a packet in place: the signature of the packet with `key` in the field goes into
/// the field (what AICCU's `ayiya_reader` and sixxsd's `ayiya_out_pseudo` do by copying
/// the key in first).
///
/// # Panics
///
/// If `packet` is shorter than [`HEADER_LEN`].
pub fn sign(packet: &mut [u8], key: &Key) {
    assert!(
        packet.len() >= HEADER_LEN,
        "an AYIYA packet has 44 bytes of header"
    );
    let sig = signature(packet, key);
    packet[SIGNATURE].copy_from_slice(&sig);
}

/// Whether the packet is signed with `key`. No allocation, no copy.
pub fn verify(packet: &[u8], key: &Key) -> bool {
    packet.len() >= HEADER_LEN && carries(packet, &signature(packet, key))
}

/// Writes the fixed header and identity into `buf[..44]`, leaving the signature field for
/// [`sign`]. Lets a sender read the payload straight into `buf[44..]` and send in place.
///
/// # Panics
///
/// If `buf` is shorter than [`HEADER_LEN`].
pub fn write_header(
    buf: &mut [u8],
    identity: Ipv6Addr,
    epoch: u32,
    opcode: Opcode,
    next_header: NextHeader,
) {
    buf[0] = ID_BYTE;
    buf[1] = SIG_BYTE;
    buf[2] = AUTH_SHARED_SECRET << 4 | opcode as u8;
    buf[3] = next_header as u8;
    buf[4..8].copy_from_slice(&epoch.to_be_bytes());
    buf[IDENTITY].copy_from_slice(&identity.octets());
    buf[SIGNATURE].fill(0);
}

/// A signed packet. Does not check that `payload` fits `next_header` (tests build wrong
/// ones on purpose).
pub fn build(
    identity: Ipv6Addr,
    epoch: u32,
    opcode: Opcode,
    next_header: NextHeader,
    payload: &[u8],
    key: &Key,
) -> Vec<u8> {
    let mut p = vec![0u8; HEADER_LEN + payload.len()];
    write_header(&mut p, identity, epoch, opcode, next_header);
    p[HEADER_LEN..].copy_from_slice(payload);
    sign(&mut p, key);
    p
}

/// Every check for a receiver that knows its peer: layout, identity (AICCU drops packets
/// not from the PoP's IPv6), epoch, then the signature, the costliest, last.
pub fn accept<'a>(
    packet: &'a [u8],
    identity: Ipv6Addr,
    key: &Key,
    now: u64,
) -> Result<Header<'a>, Reject> {
    let h = parse(packet)?;
    if h.identity != identity {
        return Err(Reject::WrongIdentity);
    }
    if !fresh(h.epoch, now) {
        return Err(Reject::StaleEpoch);
    }
    if !verify(packet, key) {
        return Err(Reject::BadSignature);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;
    const CLIENT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const POP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A minimal IPv6 packet: version 6, no payload.
    fn ipv6() -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = 59;
        p[7] = 64;
        p
    }

    fn forward(payload: &[u8]) -> Vec<u8> {
        build(
            CLIENT,
            NOW as u32,
            Opcode::Forward,
            NextHeader::Ipv6,
            payload,
            &key("secret"),
        )
    }

    #[test]
    fn protocols_md_vector() {
        let k = key("secret");
        let p = build(CLIENT, NOW as u32, Opcode::Noop, NextHeader::None, &[], &k);
        assert_eq!(
            p,
            hex("4152103b6553f10020010db80000000000000000000000024cb1502a94426bf9828d453ff1c7a16ad038a682")
        );
        assert!(verify(&p, &k));
        let h = accept(&p, CLIENT, &k, NOW).unwrap();
        assert_eq!(h.opcode, Opcode::Noop);
        assert_eq!(h.next_header, NextHeader::None);
        assert_eq!(h.epoch, 1_700_000_000);
        assert!(h.payload.is_empty());
    }

    #[test]
    fn key_is_sha1_of_the_password() {
        // SHA-1("secret"), as `printf secret | sha1sum` gives it.
        assert_eq!(
            key("secret").to_vec(),
            hex("e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4")
        );
    }

    #[test]
    fn sign_puts_the_key_in_the_field_first() {
        // The literal algorithm of AICCU and sixxsd, against the three-piece hash.
        let k = key("hunter2");
        let mut p = forward(&ipv6());
        p[SIGNATURE].copy_from_slice(&k);
        let literal: Key = Sha1::digest(&p).into();
        sign(&mut p, &k);
        assert_eq!(p[SIGNATURE], literal);
    }

    #[test]
    fn round_trips() {
        let k = key("secret");
        let inner = ipv6();
        for (op, nh, payload) in [
            (Opcode::Forward, NextHeader::Ipv6, inner.clone()),
            (Opcode::EchoRequestForward, NextHeader::Ipv6, inner.clone()),
            (Opcode::Noop, NextHeader::None, vec![]),
            (Opcode::Forward, NextHeader::Ipv4, vec![0x45, 0, 0, 20]),
        ] {
            let p = build(POP, 42, op, nh, &payload, &k);
            assert_eq!(p.len(), HEADER_LEN + payload.len());
            assert_eq!(p[2], 0x10 | op as u8);
            let h = accept(&p, POP, &k, 42).unwrap();
            assert_eq!(
                h,
                Header {
                    opcode: op,
                    next_header: nh,
                    epoch: 42,
                    identity: POP,
                    payload: &payload,
                }
            );
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let p = forward(&ipv6());
        for len in 0..HEADER_LEN {
            assert_eq!(parse(&p[..len]), Err(Reject::Truncated), "len {len}");
            assert!(!verify(&p[..len], &key("secret")), "len {len}");
        }
    }

    #[test]
    fn bad_header_fields_are_rejected() {
        let k = key("secret");
        for (byte, value) in [
            (0, 0x40), // idtype none
            (0, 0x42), // idtype string
            (0, 0x31), // 8-byte identity
            (1, 0x51), // MD5
            (1, 0x53), // UMAC
            (1, 0x82), // dz-paji's SHA-256 (siglen 8)
            (2, 0x01), // no authentication
            (2, 0x21), // public key
        ] {
            let mut p = forward(&ipv6());
            p[byte] = value;
            sign(&mut p, &k);
            assert_eq!(
                parse(&p),
                Err(Reject::BadHeader),
                "byte {byte} = {value:#x}"
            );
        }
    }

    #[test]
    fn unknown_opcodes_are_rejected() {
        for op in 8..16u8 {
            let mut p = forward(&ipv6());
            p[2] = 0x10 | op;
            assert_eq!(parse(&p), Err(Reject::UnknownOpcode), "opcode {op}");
        }
        for op in 0..8u8 {
            assert_eq!(Opcode::from_u8(op).map(|o| o as u8), Some(op));
        }
    }

    #[test]
    fn next_header_must_fit_the_payload() {
        let k = key("secret");
        let v4 = [0x45u8, 0, 0, 20];
        let cases: [(NextHeader, &[u8]); 5] = [
            (NextHeader::Ipv6, &v4),
            (NextHeader::Ipv6, &[]),
            (NextHeader::Ipv4, &ipv6()),
            (NextHeader::Ipv4, &[]),
            (NextHeader::None, &[0x60]),
        ];
        for (nh, payload) in cases {
            let p = build(CLIENT, 1, Opcode::Forward, nh, payload, &k);
            assert_eq!(
                parse(&p),
                Err(Reject::NextHeaderMismatch),
                "{nh:?} {payload:?}"
            );
        }
        let mut p = forward(&ipv6());
        p[3] = 17;
        assert_eq!(parse(&p), Err(Reject::UnknownNextHeader));
    }

    #[test]
    fn identity_must_be_the_peer() {
        let k = key("secret");
        let p = forward(&ipv6());
        assert_eq!(accept(&p, POP, &k, NOW), Err(Reject::WrongIdentity));
        assert!(accept(&p, CLIENT, &k, NOW).is_ok());
    }

    #[test]
    fn epoch_within_120_seconds_either_way() {
        let k = key("secret");
        let p = forward(&ipv6());
        for now in [NOW - 120, NOW, NOW + 120] {
            assert!(accept(&p, CLIENT, &k, now).is_ok(), "now {now}");
        }
        for now in [NOW - 121, NOW + 121, 0, u64::from(u32::MAX)] {
            assert_eq!(
                accept(&p, CLIENT, &k, now),
                Err(Reject::StaleEpoch),
                "now {now}"
            );
        }
    }

    #[test]
    fn epoch_check_survives_the_2106_wrap() {
        let wrap = 1u64 << 32;
        assert!(fresh(u32::MAX - 10, wrap + 10));
        assert!(fresh(5, wrap - 5));
        assert!(!fresh(u32::MAX - 200, wrap + 10));
    }

    #[test]
    fn wrong_key_is_a_bad_signature() {
        let p = forward(&ipv6());
        assert_eq!(
            accept(&p, CLIENT, &key("Secret"), NOW),
            Err(Reject::BadSignature)
        );
    }

    #[test]
    fn reject_index_is_dense() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    proptest! {
        #[test]
        fn a_flipped_bit_anywhere_breaks_the_signature(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let k = key("secret");
            let mut inner = ipv6();
            inner.extend_from_slice(&payload);
            let mut p = forward(&inner);
            prop_assert!(verify(&p, &k));
            let i = bit.index(p.len() * 8);
            p[i / 8] ^= 1 << (i % 8);
            prop_assert!(!verify(&p, &k));
            // And whichever check sees it first, the packet is not accepted.
            prop_assert!(accept(&p, CLIENT, &k, NOW).is_err());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse(&bytes);
            let _ = accept(&bytes, CLIENT, &key("x"), NOW);
        }

        #[test]
        fn build_then_accept(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            epoch in any::<u32>(),
            password in ".*",
        ) {
            let k = key(&password);
            let mut inner = ipv6();
            inner.extend_from_slice(&payload);
            let p = build(POP, epoch, Opcode::Forward, NextHeader::Ipv6, &inner, &k);
            let h = accept(&p, POP, &k, u64::from(epoch)).unwrap();
            prop_assert_eq!(h.payload, &inner[..]);
        }
    }
}
