//! What the AYIYA worker does to one frame, with no I/O: the metadata XDP put in front of
//! it says what (see `broker_common::maps::XskMeta`).
use std::ops::Range;

use broker_common::maps::XskMeta;

use crate::{ayiya, sha1x16};

/// Ethernet header.
const ETH: usize = 14;
/// Outer IPv4 (no options) and UDP in front of the AYIYA header of an outgoing packet.
const OUTER: usize = 20 + 8;
/// Where the inner IPv6 hop limit sits after the Ethernet and AYIYA headers.
const HOP_LIMIT: usize = ETH + ayiya::HEADER_LEN + 7;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Verified and decapsulated: send `frame[start..end]` out of `egress_ifindex`.
    Verified {
        egress_ifindex: u32,
        start: usize,
        end: usize,
    },
    /// Signed: send `frame[..end]` out of `egress_ifindex`.
    Signed { egress_ifindex: u32, end: usize },
    /// The signature is not the tunnel key's: dropped. `inner_len` is the inner packet's
    /// length, as the tunnel's drops count it.
    BadSignature { inner_len: usize },
    /// Not a frame XDP hands over (metadata or length wrong): dropped.
    Malformed,
}

impl Outcome {
    /// The inner packet's length of a received frame, verified or forged, as the tunnel's
    /// counters count it; 0 for the others.
    pub fn inner_len(&self) -> usize {
        match *self {
            Self::Verified { start, end, .. } => end - start - ETH,
            Self::BadSignature { inner_len } => inner_len,
            Self::Signed { .. } | Self::Malformed => 0,
        }
    }
}

/// What a frame needs: the SHA-1 of `frame[hashed]` with the key in its signature field
/// (see `ayiya::signed_parts`), then [`finish`]. The worker hashes a batch of these at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The AYIYA packet in the frame.
    pub hashed: Range<usize>,
    op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Compare with the signature, then decapsulate; the packet ends at `hashed.end`.
    Verify,
    /// Write the signature; send `frame[..hashed.end]`.
    Sign,
}

/// Verifies and decapsulates, or signs, the frame in place: [`plan`], hash, [`finish`].
pub fn handle(meta: &XskMeta, frame: &mut [u8]) -> Outcome {
    match plan(meta, frame) {
        Ok(p) => {
            let digest = ayiya::signature(&frame[p.hashed.clone()], &meta.key);
            finish(meta, frame, &p, &digest)
        }
        Err(o) => o,
    }
}

/// [`handle`] for a batch of frames, hashed together (`sha1x16`): the outcome of each, in
/// order, into `out`.
pub fn handle_batch(
    hasher: &mut sha1x16::Hasher,
    frames: &mut [(XskMeta, &mut [u8])],
    out: &mut Vec<Outcome>,
) {
    let plans: Vec<Result<Plan, Outcome>> = frames.iter().map(|(m, f)| plan(m, f)).collect();
    let parts: Vec<sha1x16::Parts> = frames
        .iter()
        .zip(&plans)
        .filter_map(|((m, f), p)| {
            let p = p.as_ref().ok()?;
            Some(ayiya::signed_parts(&f[p.hashed.clone()], &m.key))
        })
        .collect();
    let mut digests = Vec::with_capacity(parts.len());
    hasher.digests(&parts, &mut digests);
    let mut digests = digests.iter();
    out.clear();
    for ((m, f), p) in frames.iter_mut().zip(&plans) {
        out.push(match p {
            Ok(p) => finish(m, f, p, digests.next().expect("a digest per plan")),
            Err(o) => *o,
        });
    }
}

/// Checks the frame's layout and says what to hash; `Err` is the outcome of a frame that
/// needs no hash (a malformed one).
pub fn plan(meta: &XskMeta, frame: &[u8]) -> Result<Plan, Outcome> {
    match meta.op {
        XskMeta::OP_VERIFY => plan_verify(frame),
        XskMeta::OP_SIGN => plan_sign(frame),
        _ => Err(Outcome::Malformed),
    }
}

/// Ethernet, AYIYA header, inner IPv6. Lengths come from the inner header (XDP checked it
/// against the outer ones): a frame may carry Ethernet padding after the packet.
fn plan_verify(frame: &[u8]) -> Result<Plan, Outcome> {
    const INNER: usize = ETH + ayiya::HEADER_LEN;
    if frame.len() < INNER + 40 {
        return Err(Outcome::Malformed);
    }
    let end = INNER + 40 + usize::from(u16::from_be_bytes([frame[INNER + 4], frame[INNER + 5]]));
    if end > frame.len() {
        return Err(Outcome::Malformed);
    }
    Ok(Plan {
        hashed: ETH..end,
        op: Op::Verify,
    })
}

/// Ethernet, IPv4, UDP, AYIYA header with its signature field unset, inner packet: the
/// IPv4 packet's UDP payload is signed (its total length says how long; XDP wrote it).
fn plan_sign(frame: &[u8]) -> Result<Plan, Outcome> {
    if frame.len() < ETH + OUTER + ayiya::HEADER_LEN {
        return Err(Outcome::Malformed);
    }
    let end = ETH + usize::from(u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]));
    if end < ETH + OUTER + ayiya::HEADER_LEN || end > frame.len() {
        return Err(Outcome::Malformed);
    }
    Ok(Plan {
        hashed: ETH + OUTER..end,
        op: Op::Sign,
    })
}

/// Acts on the frame with the digest of its plan: a received packet is compared with it,
/// then has its hop limit decremented and the Ethernet header moved over the AYIYA header;
/// an outgoing one gets it as its signature.
pub fn finish(meta: &XskMeta, frame: &mut [u8], plan: &Plan, digest: &ayiya::Key) -> Outcome {
    let end = plan.hashed.end;
    match plan.op {
        Op::Verify => {
            if !ayiya::carries(&frame[plan.hashed.clone()], digest) {
                return Outcome::BadSignature {
                    inner_len: plan.hashed.len() - ayiya::HEADER_LEN,
                };
            }
            // XDP checked it is above 1.
            if frame[HOP_LIMIT] <= 1 {
                return Outcome::Malformed;
            }
            frame[HOP_LIMIT] -= 1;
            frame.copy_within(..ETH, ayiya::HEADER_LEN);
            Outcome::Verified {
                egress_ifindex: meta.egress_ifindex,
                start: ayiya::HEADER_LEN,
                end,
            }
        }
        Op::Sign => {
            frame[plan.hashed.start + ayiya::SIGNATURE.start
                ..plan.hashed.start + ayiya::SIGNATURE.end]
                .copy_from_slice(digest);
            Outcome::Signed {
                egress_ifindex: meta.egress_ifindex,
                end,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 20] = [7; 20];

    fn meta(op: u32) -> XskMeta {
        XskMeta {
            key: KEY,
            slot: 3,
            egress_ifindex: 42,
            op,
        }
    }

    /// An inner IPv6 packet of `len` bytes with hop limit `hop`.
    fn inner(len: usize, hop: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = 17;
        p[7] = hop;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    /// Ethernet (next hop's MACs), a signed AYIYA header, the inner packet: what XDP hands
    /// over for `OP_VERIFY`.
    fn decap_frame(key: &[u8; 20], hop: u8) -> Vec<u8> {
        let mut ay = vec![0u8; ayiya::HEADER_LEN];
        ay[0] = ayiya::ID_BYTE;
        ay[1] = ayiya::SIG_BYTE;
        ay[2] = 0x11;
        ay[3] = 41;
        ay.extend_from_slice(&inner(100, hop));
        ayiya::sign(&mut ay, key);
        let mut f: Vec<u8> = (0..12).collect();
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&ay);
        f
    }

    #[test]
    fn metadata_round_trips() {
        let m = meta(XskMeta::OP_SIGN);
        assert_eq!(XskMeta::from_bytes(&m.to_bytes()), m);
        let b = m.to_bytes();
        assert_eq!(&b[..20], &KEY);
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 42);
    }

    #[test]
    fn verified_frame_is_stripped_and_hop_decremented() {
        let mut f = decap_frame(&KEY, 64);
        let want_inner = {
            let mut i = f[14 + 44..].to_vec();
            i[7] = 63;
            i
        };
        let eth = f[..14].to_vec();
        let end = f.len();
        // Ethernet padding after the packet is neither hashed nor sent.
        f.extend_from_slice(&[0xee; 6]);
        let out = handle(&meta(XskMeta::OP_VERIFY), &mut f);
        assert_eq!(
            out,
            Outcome::Verified {
                egress_ifindex: 42,
                start: 44,
                end
            }
        );
        assert_eq!(&f[44..58], &eth[..]);
        assert_eq!(&f[58..end], &want_inner[..]);
    }

    #[test]
    fn forged_frame_is_refused_untouched() {
        let mut f = decap_frame(&[8; 20], 64);
        let before = f.clone();
        assert_eq!(
            handle(&meta(XskMeta::OP_VERIFY), &mut f),
            Outcome::BadSignature { inner_len: 100 }
        );
        assert_eq!(f, before);
        // One flipped payload bit is as bad as a wrong key.
        let mut f = decap_frame(&KEY, 64);
        let last = f.len() - 1;
        f[last] ^= 1;
        assert_eq!(
            handle(&meta(XskMeta::OP_VERIFY), &mut f),
            Outcome::BadSignature { inner_len: 100 }
        );
    }

    #[test]
    fn short_or_unknown_frames_are_malformed() {
        let mut f = decap_frame(&KEY, 64);
        assert_eq!(
            handle(&meta(XskMeta::OP_VERIFY), &mut f[..14 + 44 + 39]),
            Outcome::Malformed
        );
        assert_eq!(handle(&meta(0), &mut f), Outcome::Malformed);
        let mut f = decap_frame(&KEY, 1);
        assert_eq!(
            handle(&meta(XskMeta::OP_VERIFY), &mut f),
            Outcome::Malformed
        );
        assert_eq!(
            handle(&meta(XskMeta::OP_SIGN), &mut [0u8; 14 + 28 + 43]),
            Outcome::Malformed
        );
    }

    /// A batch mixing every kind of frame comes out as frame by frame, in order.
    #[test]
    fn batch_matches_frame_by_frame() {
        let mut frames: Vec<(XskMeta, Vec<u8>)> = Vec::new();
        for i in 0..40usize {
            let (op, f) = match i % 5 {
                0 | 1 => (XskMeta::OP_VERIFY, decap_frame(&KEY, 64)),
                2 => (XskMeta::OP_VERIFY, decap_frame(&[8; 20], 64)),
                3 => (XskMeta::OP_SIGN, sign_frame(64 + 37 * i)),
                _ => (XskMeta::OP_VERIFY, vec![0; 14 + 44 + i]),
            };
            frames.push((meta(op), f));
        }
        let mut one = frames.clone();
        let want: Vec<Outcome> = one.iter_mut().map(|(m, f)| handle(m, f)).collect();
        let mut batch: Vec<(XskMeta, &mut [u8])> = frames
            .iter_mut()
            .map(|(m, f)| (*m, f.as_mut_slice()))
            .collect();
        let mut got = Vec::new();
        handle_batch(&mut sha1x16::Hasher::default(), &mut batch, &mut got);
        assert_eq!(got, want);
        assert_eq!(frames, one, "the same bytes written");
        assert!(
            got.contains(&Outcome::BadSignature { inner_len: 100 })
                && got.contains(&Outcome::Malformed)
        );
    }

    /// Ethernet, IPv4 (total length set), UDP, an unsigned AYIYA header, an inner packet:
    /// what XDP hands over for `OP_SIGN`, with Ethernet padding after it.
    fn sign_frame(inner_len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[14 + 2..14 + 4].copy_from_slice(&((28 + 44 + inner_len) as u16).to_be_bytes());
        let mut ay = vec![0u8; ayiya::HEADER_LEN];
        ay[0] = ayiya::ID_BYTE;
        ay[1] = ayiya::SIG_BYTE;
        ay[2] = 0x11;
        ay[3] = 41;
        f.extend_from_slice(&ay);
        f.extend_from_slice(&inner(inner_len, 64));
        f.extend_from_slice(&[0xee; 6]);
        f
    }

    #[test]
    fn signed_frame_verifies() {
        let mut f = sign_frame(576);
        let end = f.len() - 6;
        assert_eq!(
            handle(&meta(XskMeta::OP_SIGN), &mut f),
            Outcome::Signed {
                egress_ifindex: 42,
                end
            }
        );
        assert!(ayiya::verify(&f[42..end], &KEY));
        assert!(!ayiya::verify(&f[42..end], &[8; 20]));
    }
}
