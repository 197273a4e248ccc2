//! Wire headers. Multi-byte fields are byte arrays in network order: no alignment is
//! assumed (the IP header follows a 14-byte Ethernet header) and no byte swapping happens by
//! accident.
use broker_common::consts::{
    AYIYA_HDR_LEN, ETH_HDR_LEN, ICMPV6_HDR_LEN, IPV4_HDR_LEN, IPV6_HDR_LEN, UDP_HDR_LEN,
};

/// A header copied out of the packet onto the stack, 8-aligned. Headers are 1-aligned
/// (they sit at any offset in the frame), and with misaligned access enabled LLVM reads
/// their fields with wide loads; the verifier accepts those from packet memory but not
/// from a misaligned stack slot, which a plain 1-aligned copy may get.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Aligned<T>(pub T);

impl<T> core::ops::Deref for Aligned<T> {
    type Target = T;
    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// EtherType; compare `u16::from_ne_bytes(proto)` with the `*_BE` constants.
    pub proto: [u8; 2],
}

impl EthHdr {
    /// Writes both MACs byte by byte: an array assignment would become a call to the
    /// `memmove` builtin, a byte loop. For the ICMP answers; the forwarding path moves
    /// [`MacWords`].
    #[inline(always)]
    pub fn set_macs(&mut self, dst: &[u8; 6], src: &[u8; 6]) {
        let mut i = 0;
        while i < 6 {
            self.dst[i] = dst[i];
            self.src[i] = src[i];
            i += 1;
        }
    }

    /// Both MACs, read as two words from the frame.
    #[inline(always)]
    pub fn mac_words(&self) -> MacWords {
        let p = self as *const Self as *const u8;
        // SAFETY: the header's first 12 bytes; packet memory, where misaligned loads are
        // allowed (docs/TOOLCHAIN.md).
        unsafe {
            MacWords(
                p.cast::<u64>().read_unaligned(),
                p.add(8).cast::<u32>().read_unaligned(),
            )
        }
    }

    /// Writes both MACs as two words into the frame.
    #[inline(always)]
    pub fn set_mac_words(&mut self, m: MacWords) {
        let p = self as *mut Self as *mut u8;
        // SAFETY: as in `mac_words`, stores.
        unsafe {
            p.cast::<u64>().write_unaligned(m.0);
            p.add(8).cast::<u32>().write_unaligned(m.1);
        }
    }

    /// Writes the EtherType (network order, as `ETH_P_*_BE`) as one word.
    #[inline(always)]
    pub fn set_proto(&mut self, proto_be: u16) {
        let p = self as *mut Self as *mut u8;
        // SAFETY: bytes 12-13 of the header; packet memory, as above.
        unsafe { p.add(12).cast::<u16>().write_unaligned(proto_be) };
    }
}

/// Destination and source MAC, 12 bytes in memory order, as an 8-byte and a 4-byte word:
/// copied with two loads and two stores where bytewise copies took 24 of each, about a
/// tenth of a forwarded packet's time in the program (docs/ARCHITECTURE.md).
#[derive(Clone, Copy)]
pub struct MacWords(pub u64, pub u32);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    /// More-fragments flag and fragment offset: non-zero for any fragment.
    pub const FRAG_MASK: u16 = 0x3fff;
    /// Don't Fragment.
    pub const DF: u16 = 0x4000;

    #[inline(always)]
    pub fn tot_len(&self) -> usize {
        u16::from_be_bytes(self.tot_len) as usize
    }

    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & Self::FRAG_MASK != 0
    }

    /// A fragment other than the first: what follows the header is not a transport header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & 0x1fff != 0
    }

    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & Self::DF != 0
    }

    /// Header length in bytes (IHL).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        (self.version_ihl & 0xf) as usize * 4
    }

    #[inline(always)]
    pub fn as_bytes(&self) -> &[u8; IPV4_HDR_LEN] {
        // SAFETY: repr(C), 20 bytes of u8 and byte arrays, no padding.
        unsafe { &*(self as *const Self as *const [u8; IPV4_HDR_LEN]) }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.vtc_flow[0] >> 4
    }

    #[inline(always)]
    pub fn traffic_class(&self) -> u8 {
        (self.vtc_flow[0] << 4) | (self.vtc_flow[1] >> 4)
    }

    /// Length of the whole packet, header included.
    #[inline(always)]
    pub fn packet_len(&self) -> usize {
        u16::from_be_bytes(self.payload_len) as usize + IPV6_HDR_LEN
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    /// Header and payload.
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// The AYIYA header as SixXS sends it: 16-byte identity, 20-byte SHA-1 signature.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AyiyaHdr {
    /// Identity length (log2, high nibble) and type (low nibble): 0x41.
    pub id: u8,
    /// Signature length (in words, high nibble) and hash: 0x52.
    pub sig: u8,
    /// Authentication method (high nibble) and opcode (low nibble).
    pub auth_op: u8,
    pub next_header: u8,
    /// Seconds since 1970 (UTC) when sent.
    pub epoch: [u8; 4],
    /// The sender's inner IPv6: the client's `::2`, the PoP's `::1`.
    pub identity: [u8; 16],
    pub signature: [u8; 20],
}

/// The first 8 bytes of ICMPv4 and ICMPv6 messages, which share this layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: [u8; 2],
    /// Identifier and sequence (echo), MTU (ICMPv6 Packet Too Big; the low two bytes in
    /// ICMPv4 fragmentation needed).
    pub data: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HDR_LEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_HDR_LEN);
const _: () = assert!(core::mem::size_of::<Ipv6Hdr>() == IPV6_HDR_LEN);
const _: () = assert!(core::mem::size_of::<IcmpHdr>() == ICMPV6_HDR_LEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HDR_LEN);
const _: () = assert!(core::mem::size_of::<AyiyaHdr>() == AYIYA_HDR_LEN);
