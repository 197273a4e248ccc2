//! The XDP data plane of `broker`, one concern per module (as Katran's `bpf/`):
//!
//! - [`ptr`] — every packet access, bounds-checked;
//! - [`headers`] — the wire headers;
//! - [`head`] — stripping and pushing outer headers, reshaping into ICMP errors;
//! - [`maps`] — the maps, written by the controller, read here (counters written here);
//! - [`hints`] — remembered slots in front of the lookup maps, checked against `TUNNELS`;
//! - [`stats`] — counting;
//! - [`ingress`] — classify a frame: tunnel packet to decapsulate, native packet to
//!   encapsulate, or not ours;
//! - [`decap`] — proto-41 and v6udpv4 to native IPv6 (`from_6in4`);
//! - [`encap`] — native IPv6 into proto-41 or v6udpv4 (`to_6in4`);
//! - [`v4v6`] — IPv4 in IPv6, both directions;
//! - [`ayiya`] — AYIYA (SixXS): verify and decapsulate, sign, answer echo and beats;
//! - [`sha1`] — SHA-1 over part of the frame, for AYIYA's signatures;
//! - [`icmp6`], [`icmp4`] — echo replies, Packet Too Big (fragmentation needed) and Time
//!   Exceeded, generated in XDP;
//! - [`ratelimit`] — the token buckets every generated ICMP message and every
//!   `no_neighbour` pass of a decapsulated packet go through;
//! - [`forward`] — `bpf_fib_lookup` and redirect, or hand over to the kernel;
//! - [`fate`] — the debug object's aya-log record of each packet's verdict (feature
//!   `log`; nothing in the default object).
#![no_std]
// The BPF target has no `AtomicU64::compare_exchange` (see `ratelimit`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

pub mod ayiya;
pub mod decap;
pub mod encap;
pub mod fate;
pub mod forward;
pub mod head;
pub mod headers;
pub mod hints;
pub mod icmp4;
pub mod icmp6;
pub mod ingress;
pub mod maps;
pub mod outcome;
pub mod ptr;
pub mod ratelimit;
pub mod sha1;
pub mod stats;
pub mod tunnel;
pub mod v4v6;
pub mod xsk;
