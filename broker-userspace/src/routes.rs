//! Routes for the tunnel prefixes (rtnetlink), in a configurable table and marked with
//! the broker's own protocol number, so a routing daemon can redistribute them and
//! `ip -6 route show proto 200` lists them.
pub const DEFAULT_PROTOCOL: u8 = 200;
