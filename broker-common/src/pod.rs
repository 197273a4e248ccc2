//! `aya::Pod` for the map types: all are `#[repr(C)]`, padding is explicit, every bit
//! pattern is valid.
use crate::maps::{
    Endpoint4, Endpoint6, LenMask, Nexthop, NexthopNative, Prefix64, PrefixKey, Settings, StatPair,
    Tunnel, TunnelStats, TunnelStatsLine, UdpEndpoint4,
};

unsafe impl aya::Pod for Tunnel {}
unsafe impl aya::Pod for Endpoint4 {}
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for TunnelStats {}
unsafe impl aya::Pod for TunnelStatsLine {}
unsafe impl aya::Pod for StatPair {}
unsafe impl aya::Pod for PrefixKey {}
unsafe impl aya::Pod for Nexthop {}
unsafe impl aya::Pod for LenMask {}
unsafe impl aya::Pod for Prefix64 {}
unsafe impl aya::Pod for NexthopNative {}
unsafe impl aya::Pod for UdpEndpoint4 {}
unsafe impl aya::Pod for Endpoint6 {}
