//! Tunnel rows to records: the columns read, and what each must hold.
use std::net::SocketAddrV4;

use ipnet::Ipv6Net;

use super::{sql::Row, Origin, Result, StoreError, TunnelRecord};
use crate::model::{Endpoint, Kind, State, TunnelSpec};

pub(super) fn parse_kind(s: &str) -> Result<Kind> {
    Kind::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: format!("unknown tunnel kind {s:?}"),
    })
}

pub(super) fn parse_state(s: &str) -> Result<State> {
    State::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: format!("unknown tunnel state {s:?}"),
    })
}

pub(super) fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what: format!("{what} {s:?}"),
    })
}

pub(super) const TUNNEL_COLUMNS: &str =
    "id, owner, origin, kind, state, remote_v4, remote_port, remote_v6, \
                              link_prefix, client_v4, mtu, keepalive, expires_at, password, \
                              update_key_hash, created_at, updated_at, pop";

/// The columns of `tunnels` as read, before the routed prefixes are joined in.
pub(super) struct TunnelRow {
    pub id: u32,
    owner: Option<String>,
    origin: String,
    kind: String,
    state: String,
    remote_v4: Option<String>,
    remote_port: Option<u16>,
    remote_v6: Option<String>,
    link_prefix: Option<String>,
    client_v4: Option<String>,
    mtu: u16,
    keepalive: Option<u32>,
    expires_at: Option<u64>,
    password: String,
    update_key_hash: Option<String>,
    created_at: u64,
    updated_at: u64,
    pop: Option<String>,
}

pub(super) fn row(r: &dyn Row) -> Result<TunnelRow> {
    Ok(TunnelRow {
        id: r.get(0)?,
        owner: r.get(1)?,
        origin: r.get(2)?,
        kind: r.get(3)?,
        state: r.get(4)?,
        remote_v4: r.get(5)?,
        remote_port: r.get(6)?,
        remote_v6: r.get(7)?,
        link_prefix: r.get(8)?,
        client_v4: r.get(9)?,
        mtu: r.get(10)?,
        keepalive: r.get(11)?,
        expires_at: r.get(12)?,
        password: r.get(13)?,
        update_key_hash: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
        pop: r.get(17)?,
    })
}

fn required<'a>(v: &'a Option<String>, what: &str, id: u32) -> Result<&'a str> {
    v.as_deref().ok_or_else(|| StoreError::Corrupt {
        what: format!("tunnel {id} has no {what}"),
    })
}

pub(super) fn record(r: TunnelRow, routed: Vec<Ipv6Net>) -> Result<TunnelRecord> {
    let kind = parse_kind(&r.kind)?;
    let endpoint = match kind {
        Kind::Proto41 | Kind::Heartbeat => Endpoint::Ipv4(parse(
            required(&r.remote_v4, "remote_v4", r.id)?,
            "IPv4 address",
        )?),
        Kind::V6Udp4 | Kind::Ayiya => Endpoint::Udp4(SocketAddrV4::new(
            parse(required(&r.remote_v4, "remote_v4", r.id)?, "IPv4 address")?,
            r.remote_port.ok_or_else(|| StoreError::Corrupt {
                what: format!("tunnel {} has no remote_port", r.id),
            })?,
        )),
        Kind::V4In6 => Endpoint::Ipv6(parse(
            required(&r.remote_v6, "remote_v6", r.id)?,
            "IPv6 address",
        )?),
    };
    Ok(TunnelRecord {
        spec: TunnelSpec {
            id: r.id,
            kind,
            state: parse_state(&r.state)?,
            endpoint,
            link_prefix: r
                .link_prefix
                .as_deref()
                .map(|p| parse(p, "prefix"))
                .transpose()?,
            routed_prefixes: routed,
            client_v4: r
                .client_v4
                .as_deref()
                .map(|a| parse(a, "IPv4 address"))
                .transpose()?,
            mtu: r.mtu,
            keepalive: r.keepalive,
            ayiya_key: None,
        },
        // Unclaimed only in a store of before PoPs, until a PoP opens it.
        pop: r.pop.unwrap_or_default(),
        owner: r.owner,
        origin: Origin::parse(&r.origin).ok_or_else(|| StoreError::Corrupt {
            what: format!("unknown origin {:?}", r.origin),
        })?,
        password: r.password,
        update_key: None,
        // Empty only for a store of before version 3 not yet upgraded: nothing matches.
        update_key_hash: r.update_key_hash.unwrap_or_default(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        expires_at: r.expires_at,
    })
}

/// The endpoint columns (`remote_v4`, `remote_port`, `remote_v6`) of an endpoint.
pub(super) fn endpoint_columns(e: &Endpoint) -> (Option<String>, Option<u16>, Option<String>) {
    let (v4, port, v6) = e.parts();
    (v4.map(|a| a.to_string()), port, v6.map(|a| a.to_string()))
}
