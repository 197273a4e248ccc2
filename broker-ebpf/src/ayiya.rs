//! AYIYA (SixXS, draft-massar-v6ops-ayiya-02): IPv6 after a signed 44-byte header in UDP
//! over IPv4. Every packet is checked: identity names the tunnel, epoch within 120 s of the
//! PoP's clock, SHA-1 signature with the tunnel's key. A verified packet from a new address
//! or port moves the tunnel there (NAT roaming, as sixxsd does).
//!
//! Outgoing packets carry the PoP's identity (`::1`), the current epoch and a signature
//! ([`seal`]), for encapsulation, echo responses and in-tunnel echo replies alike.
use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_tai_ns},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
};
use broker_common::{
    consts::{
        AYIYA_AUTH_SHARED, AYIYA_HDR_LEN, AYIYA_ID_BYTE, AYIYA_MAX_CLOCK_OFF,
        AYIYA_OP_ECHO_REQUEST, AYIYA_OP_ECHO_RESPONSE, AYIYA_OP_FORWARD, AYIYA_OP_NOOP,
        AYIYA_SIG_BYTE, ENCAP_TTL, ETH_HDR_LEN, ETH_P_IPV6_BE, IPPROTO_IPV6, IPV4_HDR_LEN,
        UDP_HDR_LEN,
    },
    csum,
    maps::{hint, Settings, Tunnel, TunnelKind, TunnelState, XskMeta},
    stats::{DropReason, Event},
};

use crate::{
    decap, forward, head,
    headers::{AyiyaHdr, Ipv4Hdr, Ipv6Hdr, UdpHdr},
    icmp6,
    maps::{self, TUNNELS},
    outcome::{Outcome, Resume, Step, Verdict},
    ptr, ratelimit, sha1,
    stats::{self, Dir},
    tunnel::{self, Way},
    xsk,
};

/// Offset of the AYIYA header in the frame (the outer IPv4 has no options).
const HDR: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN;
/// Bytes in front of the inner packet, after the Ethernet header.
pub const OUTER: usize = IPV4_HDR_LEN + UDP_HDR_LEN + AYIYA_HDR_LEN;

/// A UDP datagram to the PoP's AYIYA port, whose IPv4 and UDP headers the caller copied.
/// Everything on this port is AYIYA: every defect is a counted drop. The cheap checks
/// come first; then the signature is hashed (see [`resume`]).
#[inline(always)]
pub fn decap(ctx: &XdpContext, s: &Settings, ip: &Ipv4Hdr, udp: &UdpHdr) -> Verdict {
    decap::check_outer_ipv4(ctx, ip)?;
    if ip.is_fragment() {
        return Err(DropReason::OuterFragment);
    }
    let payload = payload_len(ip, udp)?;
    let h = ptr::at::<AyiyaHdr>(ctx, HDR).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; only the fixed fields and the identity are copied (stack is
    // scarce in this frame).
    let (fixed, epoch, identity) = unsafe {
        (
            [(*h).id, (*h).sig, (*h).auth_op, (*h).next_header],
            (*h).epoch,
            (*h).identity,
        )
    };
    let [id, sig, auth_op, next_header] = fixed;
    if id != AYIYA_ID_BYTE || sig != AYIYA_SIG_BYTE || auth_op & 0xf0 != AYIYA_AUTH_SHARED {
        return Err(DropReason::BadAyiyaHeader);
    }
    let (slot, t) = tunnel::by_endpoint(&maps::AYIYA_IDS, identity, hint::ayiya(&identity), |t| {
        t.kind == TunnelKind::Ayiya as u8 && t.client_v6 == identity
    })?;
    let inner_len = payload - AYIYA_HDR_LEN;
    tunnel::check_usable(t, slot, TunnelKind::Ayiya, Way::FromClient, inner_len)?;
    if !epoch_ok(s, epoch) {
        return Err(tunnel::drop(slot, inner_len, DropReason::StaleEpoch));
    }
    let forward = auth_op & 0x0f == AYIYA_OP_FORWARD && next_header == IPPROTO_IPV6;
    // The client's own address and port: a packet from elsewhere roams the tunnel once
    // verified, which XDP does. An asleep tunnel's packets stay here too: they are
    // counted as the client's only once verified, so a forged one cannot wake it. So do a
    // suspect tunnel's, for which the worker found forged packets (`xsk::suspect`).
    if forward
        && t.state == TunnelState::Up as u8
        && ip.src == t.remote_v4
        && udp.src == t.remote_port
        && payload >= s.xsk_min_payload as usize
    {
        if let Some(index) = xsk::socket(ctx, s) {
            if !xsk::suspect(slot) {
                if let Some(v) = offload(ctx, s, t, slot, index, inner_len) {
                    return v;
                }
            }
        }
    }
    sha1::prepare(HDR, payload, &t.key)?;
    Ok(Outcome::Hash(Resume::at(Step::Verified, slot)))
}

/// AF_XDP engine: hands a forward packet that passes every check but its signature to the
/// worker, with the outer IPv4 and UDP headers stripped and the next hop's Ethernet header
/// in front of the AYIYA header (see `XskMeta::OP_VERIFY`). `None` when the packet needs
/// more than the worker does (it goes to the PoP, into another tunnel, or has no next hop
/// the worker can reach, or fails a check): XDP verifies it and acts as always, so every
/// drop is still counted after the signature was checked.
///
/// Counted here only as `redirect`: whether it is the client's packet (`from_client`,
/// `decap`) or a forged one (a drop, `bad_signature`) only the worker knows, and it counts
/// it so (`XskVerdicts`).
#[inline(always)]
fn offload(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    index: u32,
    inner_len: usize,
) -> Option<Verdict> {
    let inner = ptr::at::<Ipv6Hdr>(ctx, ETH_HDR_LEN + OUTER)?;
    // SAFETY: bounds checked.
    let inner = unsafe { &*inner };
    if inner.version() != 6
        || inner.packet_len() != inner_len
        || inner.hop_limit <= 1
        || inner.dst == t.pop_v6
        || !t.owns(&inner.src)
        || maps::prefix_slot(s, &inner.dst).is_some()
    {
        return None;
    }
    let hop = forward::native_hop6(ctx, s, inner, inner_len).ok()?;
    if !xsk::serves(hop.ifindex) {
        return None;
    }
    Some(strip_and_hand_off(ctx, t, slot, index, &hop))
}

#[inline(always)]
fn strip_and_hand_off(
    ctx: &XdpContext,
    t: &Tunnel,
    slot: u32,
    index: u32,
    hop: &broker_common::maps::Nexthop,
) -> Verdict {
    head::shift(ctx, (IPV4_HDR_LEN + UDP_HDR_LEN) as i32, ETH_P_IPV6_BE)?;
    forward::set_macs(ctx, hop)?;
    xsk::hand_off(ctx, index, &t.key, slot, hop.ifindex, XskMeta::OP_VERIFY)
}

/// The UDP payload's length, checked against the outer headers; at least an AYIYA header.
#[inline(always)]
fn payload_len(ip: &Ipv4Hdr, udp: &UdpHdr) -> Result<usize, DropReason> {
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    if udp_len != ip.tot_len() - IPV4_HDR_LEN || udp_len < UDP_HDR_LEN {
        return Err(DropReason::BadUdpHeader);
    }
    let payload = udp_len - UDP_HDR_LEN;
    if payload < AYIYA_HDR_LEN {
        return Err(DropReason::Truncated);
    }
    Ok(payload)
}

/// Picks up where a handler left for its hash: the digest is ready.
#[inline(always)]
pub fn resume(ctx: &XdpContext, s: &Settings, r: Resume) -> Verdict {
    let t = tunnel::get(r.slot)?;
    let digest = sha1::digest().ok_or(DropReason::AdjustFailed)?;
    match r.step {
        Step::Verified => verified(ctx, s, t, r.slot, digest),
        Step::Forward => {
            sign(ctx, digest)?;
            let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::AdjustFailed)?;
            // SAFETY: bounds checked.
            let (outer_len, tos) = unsafe { ((*ip).tot_len(), (*ip).tos) };
            forward::to_client(ctx, s, t, r.slot, OUTER, outer_len, tos)
        }
        Step::Tx => {
            sign(ctx, digest)?;
            Ok(Outcome::TX)
        }
        Step::Start => Err(DropReason::AdjustFailed),
    }
}

/// A received packet whose digest is ready: compare it with the signature, then act on
/// the opcode.
#[inline(always)]
fn verified(ctx: &XdpContext, s: &Settings, t: &Tunnel, slot: u32, digest: &[u32; 5]) -> Verdict {
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    let udp = ptr::at::<UdpHdr>(ctx, ETH_HDR_LEN + IPV4_HDR_LEN).ok_or(DropReason::Truncated)?;
    let h = ptr::at::<AyiyaHdr>(ctx, HDR).ok_or(DropReason::Truncated)?;
    // SAFETY: bounds checked; copies of what is used after the packet changes.
    let (src, sport, udp_len, auth_op, next_header) = unsafe {
        (
            (*ip).src,
            (*udp).src,
            u16::from_be_bytes((*udp).len) as usize,
            (*h).auth_op,
            (*h).next_header,
        )
    };
    let payload = udp_len - UDP_HDR_LEN;
    let inner_len = payload - AYIYA_HDR_LEN;
    // SAFETY: bounds checked.
    if !same(digest, unsafe { &(*h).signature }) {
        return Err(tunnel::drop(slot, inner_len, DropReason::BadSignature));
    }
    match auth_op & 0x0f {
        AYIYA_OP_FORWARD => {
            if next_header != IPPROTO_IPV6 {
                return Err(tunnel::drop(slot, inner_len, DropReason::WrongNextHeader));
            }
            roam(s, slot, t, src, sport);
            decap::inner_ipv6(ctx, s, t, slot, OUTER, inner_len)
        }
        AYIYA_OP_NOOP => {
            roam(s, slot, t, src, sport);
            // A packet from the client without bytes: what liveness watches.
            stats::tunnel(slot, Dir::FromClient, 0);
            stats::event(Event::Beat, t.kind, 0);
            Ok(Outcome::CONSUMED)
        }
        AYIYA_OP_ECHO_REQUEST => {
            roam(s, slot, t, src, sport);
            // Not ICMP, but generated on a stranger's behalf all the same.
            if !ratelimit::icmp(s) {
                return Err(tunnel::drop(slot, inner_len, DropReason::IcmpRateLimited));
            }
            echo_response(ctx, s, t, slot, payload, next_header)
        }
        _ => Err(tunnel::drop(slot, inner_len, DropReason::AyiyaOpcode)),
    }
}

/// Moves the tunnel to the address and port a verified packet came from. The controller
/// reads the new endpoint back into the store.
#[inline(always)]
fn roam(s: &Settings, slot: u32, t: &Tunnel, src: [u8; 4], port: [u8; 2]) {
    if t.remote_v4 == src && t.remote_port == port {
        return;
    }
    if let Some(p) = TUNNELS.get_ptr_mut(slot) {
        // SAFETY: an array value; concurrent writers store the same kind of value, and a
        // reader sees either endpoint, both of which were the client's.
        unsafe {
            (*p).remote_v4 = src;
            (*p).remote_port = port;
        }
    }
    // This CPU's cached next hop was for the old address; other CPUs' age out (at most
    // `nexthop_max_age_ticks`).
    if let Some(c) = maps::client_hop(s, slot) {
        // SAFETY: this CPU's entry, which only this CPU writes.
        unsafe { (*c).gen = 0 };
    }
}

/// Answers an AYIYA echo request (opcode 2) in place: same payload, opcode 4, the PoP's
/// identity, signed, back where it came from.
#[inline(always)]
fn echo_response(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    slot: u32,
    payload: usize,
    next_header: u8,
) -> Verdict {
    turn_around(ctx)?;
    icmp6::swap_macs(ctx)?;
    let inner = payload - AYIYA_HDR_LEN;
    stats::tunnel(slot, Dir::FromClient, inner as u64);
    stats::tunnel(slot, Dir::ToClient, inner as u64);
    stats::event(Event::EchoReply, t.kind, inner as u64);
    seal(
        ctx,
        s,
        t,
        payload,
        AYIYA_OP_ECHO_RESPONSE,
        next_header,
        Resume::at(Step::Tx, slot),
    )
}

/// Swaps the outer IPv4 addresses and UDP ports of a received packet to send it back:
/// TTL 64, DF, checksum recomputed, UDP checksum 0 (as sixxsd sends).
#[inline(always)]
pub fn turn_around(ctx: &XdpContext) -> Result<(), DropReason> {
    let ip = ptr::at::<Ipv4Hdr>(ctx, ETH_HDR_LEN).ok_or(DropReason::Truncated)?;
    let udp = ptr::at::<UdpHdr>(ctx, ETH_HDR_LEN + IPV4_HDR_LEN).ok_or(DropReason::Truncated)?;
    // SAFETY: both bounds checked, distinct headers.
    unsafe {
        let o = &mut *ip;
        core::mem::swap(&mut o.src, &mut o.dst);
        o.ttl = ENCAP_TTL;
        o.frag_off = Ipv4Hdr::DF.to_be_bytes();
        o.check = [0, 0];
        o.check = csum::ipv4_header(o.as_bytes());
        let u = &mut *udp;
        core::mem::swap(&mut u.src, &mut u.dst);
        u.check = [0, 0];
    }
    Ok(())
}

/// Writes the AYIYA header in front of `payload - 44` bytes of payload (the header's room
/// is already there) with the PoP's identity and the current epoch, and asks for its
/// signature; `then` writes it and sends the packet.
#[inline(always)]
pub fn seal(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    payload: usize,
    opcode: u8,
    next_header: u8,
    then: Resume,
) -> Verdict {
    write_header(ctx, s, t, opcode, next_header)?;
    sha1::prepare(HDR, payload, &t.key)?;
    Ok(Outcome::Hash(then))
}

/// The AYIYA header of [`seal`], but for the signature.
#[inline(always)]
pub fn write_header(
    ctx: &XdpContext,
    s: &Settings,
    t: &Tunnel,
    opcode: u8,
    next_header: u8,
) -> Result<(), DropReason> {
    let h = ptr::at::<AyiyaHdr>(ctx, HDR).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: bounds checked.
    unsafe {
        let h = &mut *h;
        h.id = AYIYA_ID_BYTE;
        h.sig = AYIYA_SIG_BYTE;
        h.auth_op = AYIYA_AUTH_SHARED | opcode;
        h.next_header = next_header;
        h.epoch = now(s).to_be_bytes();
        let mut i = 0;
        while i < 16 {
            h.identity[i] = t.pop_v6[i];
            i += 1;
        }
    }
    Ok(())
}

/// Writes the digest into the signature field of the packet being sent.
#[inline(always)]
fn sign(ctx: &XdpContext, digest: &[u32; 5]) -> Result<(), DropReason> {
    let h = ptr::at::<AyiyaHdr>(ctx, HDR).ok_or(DropReason::AdjustFailed)?;
    // SAFETY: bounds checked.
    unsafe {
        let h = &mut *h;
        let mut i = 0;
        while i < 5 {
            let b = digest[i].to_be_bytes();
            h.signature[4 * i] = b[0];
            h.signature[4 * i + 1] = b[1];
            h.signature[4 * i + 2] = b[2];
            h.signature[4 * i + 3] = b[3];
            i += 1;
        }
    }
    Ok(())
}

/// This CPU's last reading of the wall clock, good until the next second begins.
#[repr(C)]
pub struct Clock {
    /// UTC seconds, as AYIYA epochs count.
    epoch: u32,
    /// `Settings.utc_minus_tai_s` it was read with.
    offset: i32,
    /// The coarse monotonic clock (ns) when the next second begins.
    until: u64,
}

/// Per CPU: reading TAI (the clock source, then a 64-bit division) costs about 20 ns a
/// packet; the coarse clock and this cache, a few. Not pinned: a new program starts cold.
#[map]
static CLOCK: PerCpuArray<Clock> = PerCpuArray::with_max_entries(1, 0);

/// The PoP's wall clock in seconds (UTC), as AYIYA epochs count: TAI, which follows the
/// host's clock steps without the controller, plus the UTC-TAI offset it keeps in
/// `Settings`. Read at most once a second per CPU; between readings the coarse monotonic
/// clock says when the second is over (it lags by at most a tick, far inside the 120 s
/// an epoch may be off). After a suspend, which the monotonic clock does not count, the
/// cached second may lag for up to a second.
#[inline(always)]
fn now(s: &Settings) -> u32 {
    // SAFETY: helpers without arguments.
    let coarse = unsafe { bpf_ktime_get_coarse_ns() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        return utc(s, unsafe { bpf_ktime_get_tai_ns() }).0;
    };
    // SAFETY: this CPU's entry, which only this program writes.
    let c = unsafe { &mut *c };
    if coarse < c.until && c.offset == s.utc_minus_tai_s {
        return c.epoch;
    }
    // SAFETY: as above.
    let (epoch, rest_ns) = utc(s, unsafe { bpf_ktime_get_tai_ns() });
    *c = Clock {
        epoch,
        offset: s.utc_minus_tai_s,
        until: coarse + (1_000_000_000 - rest_ns),
    };
    epoch
}

/// UTC seconds at TAI `tai_ns`, and the nanoseconds into that second.
#[inline(always)]
fn utc(s: &Settings, tai_ns: u64) -> (u32, u64) {
    let secs = tai_ns / 1_000_000_000;
    (
        (secs as i64 + s.utc_minus_tai_s as i64) as u32,
        tai_ns - secs * 1_000_000_000,
    )
}

#[inline(always)]
fn epoch_ok(s: &Settings, epoch: [u8; 4]) -> bool {
    let d = now(s).wrapping_sub(u32::from_be_bytes(epoch)) as i32;
    d.unsigned_abs() <= AYIYA_MAX_CLOCK_OFF
}

/// Whether the received signature (in the packet) is the digest.
#[inline(always)]
fn same(digest: &[u32; 5], sig: &[u8; 20]) -> bool {
    let mut diff = 0u32;
    let mut i = 0;
    while i < 5 {
        diff |= digest[i]
            ^ u32::from_be_bytes([sig[4 * i], sig[4 * i + 1], sig[4 * i + 2], sig[4 * i + 3]]);
        i += 1;
    }
    diff == 0
}

#[inline(always)]
pub fn is_ayiya(t: &Tunnel) -> bool {
    t.kind == TunnelKind::Ayiya as u8
}
