//! Types shared by the XDP programs (`broker-ebpf`) and the controller (`broker-userspace`).
//!
//! Everything here is `#![no_std]` plain old data. Rules that both sides rely on:
//! - map keys and values are `#[repr(C)]` with explicit padding, so the layout is the same in
//!   the kernel and in userspace;
//! - addresses and ports are stored in network byte order as byte arrays (`[u8; 4]`,
//!   `[u8; 16]`, `[u8; 2]`), other integers in host order;
//! - counter and reason enums are append-only: a discriminant never changes meaning, so a
//!   controller can read maps written by an older or newer program.
//!
//! The `user` feature adds the `aya::Pod` impls the controller needs.
#![no_std]

pub mod consts;
pub mod csum;
pub mod maps;
pub mod scope;
pub mod stats;

#[cfg(feature = "user")]
mod pod;
