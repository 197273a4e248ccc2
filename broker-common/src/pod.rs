//! `aya::Pod` for the map types: all are `#[repr(C)]`, padding is explicit, every bit
//! pattern is valid.
use crate::maps::{Endpoint4, Settings, StatPair, Tunnel, TunnelStats};

unsafe impl aya::Pod for Tunnel {}
unsafe impl aya::Pod for Endpoint4 {}
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for TunnelStats {}
unsafe impl aya::Pod for StatPair {}
