//! Turns a session's [`TunnelAsk`] into a tunnel, through the broker core, and the tunnel
//! into the offer.
//!
//! An authenticated user has one TSP tunnel per family (IPv6: proto-41 or v6udpv4; IPv4:
//! v4v6) and gets it back on every session: same link /64, same routed prefix, the
//! endpoint and kind following the client (a new NAT mapping moves it). Anonymous clients
//! get a tunnel of their own per endpoint, at most `tsp.anonymous_per_source` per address
//! (see [`anonymous`]), deleted when its lifetime ends.
use std::{net::IpAddr, time::Instant};

use super::{
    session::TunnelAsk,
    status::Status,
    xml::{Offer, RequestedType},
};
use crate::{
    broker::{Broker, BrokerError, Projection, RouteOps},
    config::TspConfig,
    model::{Endpoint, Kind, State},
    store::{
        self, NewTunnel, Origin, OwnerFilter, Store, StoreError, TunnelChange, TunnelFilter,
        TunnelRecord,
    },
};

/// What a tunnel request gets.
#[derive(Debug)]
pub enum Provided {
    /// This tunnel, and its offer.
    Offer(u32, Offer),
    /// The user's tunnel lives on another PoP: the client goes to its TSP server
    /// (docs/MULTI-POP.md).
    Redirect(Vec<IpAddr>),
}

/// [`provide`], or a redirection when the user's tunnel lives on another PoP.
pub async fn provide_or_redirect<S: Store, P: Projection, R: RouteOps>(
    b: &mut Broker<S, P, R>,
    ask: &TunnelAsk,
    cfg: &TspConfig,
) -> Result<Provided, Status> {
    if let Some(user) = &ask.user {
        let existing = b
            .store
            .tsp_tunnel(user, ask.kind == Kind::V4In6)
            .map_err(|e| status_of(&e.into()))?;
        if let Some(t) = existing.filter(|t| !b.mine(t)) {
            let home = b
                .store
                .pops()
                .map_err(|e| status_of(&e.into()))?
                .into_iter()
                .find(|p| p.name == t.pop)
                .and_then(|p| p.report?.tsp);
            return match home {
                Some(at) => {
                    tracing::info!(user, id = t.spec.id, pop = %t.pop, %at, "TSP: the user's tunnel lives on another PoP: redirected");
                    Ok(Provided::Redirect(vec![at.ip()]))
                }
                None => {
                    tracing::warn!(user, id = t.spec.id, pop = %t.pop, "TSP: the user's tunnel lives on a PoP without a TSP server");
                    Err(Status::ServerError)
                }
            };
        }
    }
    provide(b, ask, cfg)
        .await
        .map(|(id, offer)| Provided::Offer(id, offer))
}

/// Makes (or finds and moves) the tunnel `ask` is for, on this PoP; returns its id and
/// offer.
pub async fn provide<S: Store, P: Projection, R: RouteOps>(
    b: &mut Broker<S, P, R>,
    ask: &TunnelAsk,
    cfg: &TspConfig,
) -> Result<(u32, Offer), Status> {
    let now = store::now();
    let lifetime = if ask.user.is_some() {
        cfg.lifetime_secs
    } else {
        cfg.anonymous_lifetime_secs
    };
    let record = match &ask.user {
        Some(user) => {
            // An anonymous tunnel at this endpoint was left by another client (or this
            // one, before it logged in): the user's tunnel takes the endpoint.
            let anonymous = match anonymous_at(b, ask.endpoint.address()) {
                // The store is away: stale anonymous tunnels are cleared at a later
                // session; the user's own tunnel may still be served as known.
                Err(StoreError::Unavailable { .. }) => Vec::new(),
                r => r.map_err(|e| status_of(&e.into()))?,
            };
            let stale: Vec<u32> = anonymous
                .into_iter()
                .filter(|t| t.spec.endpoint == ask.endpoint)
                .map(|t| t.spec.id)
                .collect();
            for id in stale {
                b.delete_tunnel(id).await.map_err(|e| status_of(&e))?;
            }
            let existing = b
                .store
                .tsp_tunnel(user, ask.kind == Kind::V4In6)
                .map_err(|e| status_of(&e.into()))?;
            match existing {
                // The operator switched it off: a session does not switch it back on.
                Some(t) if t.spec.state == State::Disabled => {
                    tracing::info!(user, id = t.spec.id, "TSP: the user's tunnel is disabled");
                    return Err(Status::ServerError);
                }
                Some(t) => {
                    let adds = ask.router.is_some() && t.spec.routed_prefixes.is_empty();
                    b.check_quota(user, 0, u32::from(adds))
                        .map_err(|e| status_of(&e))?;
                    renew(b, t.spec.id, ask, now + lifetime).await?
                }
                None => {
                    b.check_quota(user, 1, u32::from(ask.router.is_some()))
                        .map_err(|e| status_of(&e))?;
                    create(b, ask, cfg, Some(user.clone()), now + lifetime).await?
                }
            }
        }
        None => anonymous(b, ask, cfg, now + lifetime).await?,
    };
    let offer = offer_for(&record, ask, b, lifetime, cfg.dns_server).ok_or(Status::ServerError)?;
    Ok((record.spec.id, offer))
}

/// An anonymous session's tunnel. The tunnel at its endpoint is this client's again
/// (restarted on the same port): taken over. Otherwise a new one, unless its address
/// already holds `tsp.anonymous_per_source`: then the one silent longest is taken over
/// (gogoc restarted by a supervisor comes back from a new port every time; its old
/// tunnels must not each hold a /64 for a day), and with none silent the session gets 530.
async fn anonymous<S: Store, P: Projection, R: RouteOps>(
    b: &mut Broker<S, P, R>,
    ask: &TunnelAsk,
    cfg: &TspConfig,
    expires_at: u64,
) -> Result<TunnelRecord, Status> {
    let mine = anonymous_at(b, ask.endpoint.address()).map_err(|e| status_of(&e.into()))?;
    let same = mine.iter().find(|t| t.spec.endpoint == ask.endpoint);
    if let Some(t) = same.filter(|t| t.spec.state == State::Disabled) {
        // The operator switched it off, as for a user's tunnel.
        tracing::info!(
            id = t.spec.id,
            "TSP: the anonymous tunnel at this endpoint is disabled"
        );
        return Err(Status::ServerError);
    }
    let take = same.or_else(|| {
        (mine.len() >= cfg.anonymous_per_source)
            .then(|| {
                mine.iter()
                    .filter(|t| t.spec.state == State::Up && b.is_asleep(t.spec.id))
                    .min_by_key(|t| (t.expires_at, t.spec.id))
            })
            .flatten()
    });
    let proof_due = Instant::now() + std::time::Duration::from_secs(cfg.negotiation_timeout_secs);
    match take {
        Some(t) => {
            let id = t.spec.id;
            if same.is_none() {
                tracing::info!(
                    id,
                    source = %ask.endpoint.address(),
                    "TSP: an anonymous session takes over its address's silent tunnel"
                );
                if ask.over_udp {
                    b.mark_unproven(id, proof_due, false);
                }
            }
            renew(b, id, ask, expires_at).await
        }
        None if mine.len() >= cfg.anonymous_per_source => {
            tracing::info!(
                source = %ask.endpoint.address(),
                held = mine.len(),
                "TSP: anonymous tunnels of this address all alive; refused"
            );
            Err(Status::ServerTooBusy)
        }
        None if ask.over_udp && b.unproven() >= cfg.anonymous_unproven_max => {
            crate::logs::info_limited(
                "tsp_unproven_full",
                "TSP: too many anonymous tunnels wait for their client's first packet; refused",
            );
            Err(Status::ServerTooBusy)
        }
        None => {
            let t = create(b, ask, cfg, None, expires_at).await?;
            if ask.over_udp {
                b.mark_unproven(t.spec.id, proof_due, true);
            }
            Ok(t)
        }
    }
}

/// The anonymous TSP tunnels whose client is at `address` (any port).
fn anonymous_at<S: Store, P, R>(
    b: &Broker<S, P, R>,
    address: IpAddr,
) -> store::Result<Vec<TunnelRecord>> {
    // This PoP's: an anonymous client's tunnel is where its session arrives.
    let filter = TunnelFilter {
        pop: Some(b.store.pop().to_string()),
        owner: Some(OwnerFilter::Nobody),
        origin: Some(Origin::Tsp),
        address: Some(address),
        ..Default::default()
    };
    b.store.tunnel_page(&filter, None, usize::MAX)
}

/// A session finds its tunnel again: up, at the session's endpoint and kind, lifetime
/// renewed, awake.
async fn renew<S: Store, P: Projection, R: RouteOps>(
    b: &mut Broker<S, P, R>,
    id: u32,
    ask: &TunnelAsk,
    expires_at: u64,
) -> Result<TunnelRecord, Status> {
    let change = TunnelChange {
        kind: Some(ask.kind),
        endpoint: Some(ask.endpoint),
        state: Some(State::Up),
        keepalive: Some(Some(ask.keepalive)),
        expires_at: Some(Some(expires_at)),
        add_routed_length: ask.router,
        mtu: None,
        pop: None,
        password: None,
    };
    let r = match b.update_tunnel_learnt(id, &change).await {
        Ok(r) => r,
        Err(BrokerError::Store(StoreError::Unavailable { .. })) => as_known(b, id, ask).await?,
        Err(e) => return Err(status_of(&e)),
    };
    // A new session is a sign of life.
    b.set_asleep(r.spec.id, false).map_err(|e| status_of(&e))?;
    Ok(r)
}

/// While the store is away: the tunnel as this PoP last knew it, if it is what the session
/// asks for (up, same kind, a routed prefix if asked), its endpoint following the client
/// (written when the store returns); its lifetime is renewed at the next session after.
/// Anything else waits for the store: 530.
async fn as_known<S: Store, P: Projection, R: RouteOps>(
    b: &mut Broker<S, P, R>,
    id: u32,
    ask: &TunnelAsk,
) -> Result<TunnelRecord, Status> {
    let known = b
        .store
        .tunnel(id)
        .map_err(|e| status_of(&e.into()))?
        .ok_or(Status::ServerTooBusy)?;
    let s = &known.spec;
    if s.state != State::Up
        || s.kind != ask.kind
        || (ask.router.is_some() && s.routed_prefixes.is_empty())
    {
        return Err(Status::ServerTooBusy);
    }
    if s.endpoint == ask.endpoint {
        return Ok(known);
    }
    let moved = TunnelChange {
        endpoint: Some(ask.endpoint),
        ..Default::default()
    };
    b.update_tunnel_learnt(id, &moved)
        .await
        .map_err(|e| status_of(&e))
}

async fn create<S: Store, P: Projection, R: RouteOps>(
    b: &mut Broker<S, P, R>,
    ask: &TunnelAsk,
    cfg: &TspConfig,
    owner: Option<String>,
    expires_at: u64,
) -> Result<TunnelRecord, Status> {
    // A session's tunnel lives on the PoP the client reached: its configuration chose it.
    let req = NewTunnel {
        pop: None,
        owner,
        origin: Origin::Tsp,
        kind: ask.kind,
        state: State::Up,
        endpoint: ask.endpoint,
        mtu: cfg.mtu.0.min(ask.kind.mtu_max()),
        keepalive: Some(ask.keepalive),
        expires_at: Some(expires_at),
        routed_length: ask.router,
        link_prefix: None,
        routed_prefix: None,
    };
    b.create_tunnel(&req).await.map_err(|e| status_of(&e))
}

/// The status a client can act on for a failure.
fn status_of(e: &BrokerError) -> Status {
    match e {
        BrokerError::Store(StoreError::DuplicateEndpoint { .. }) => Status::Ipv4AlreadyUsed,
        BrokerError::Store(StoreError::LengthNotOffered { .. }) => Status::UnsupportedPrefixLength,
        BrokerError::Store(StoreError::PoolExhausted { pool: "routed", .. }) => {
            Status::PrefixLengthUnavailable
        }
        BrokerError::Store(StoreError::PoolExhausted { .. } | StoreError::NoPool { .. }) => {
            Status::NoTunnels
        }
        BrokerError::Quota {
            routed: true,
            message,
        } => {
            tracing::info!(message, "TSP: over quota");
            Status::PrefixLengthUnavailable
        }
        BrokerError::Quota {
            routed: false,
            message,
        } => {
            tracing::info!(message, "TSP: over quota");
            Status::NoTunnels
        }
        // The shared store is away (docs/MULTI-POP.md): try again later.
        BrokerError::Store(StoreError::Unavailable { what }) => {
            tracing::info!(what, "TSP: the store is unavailable");
            Status::ServerTooBusy
        }
        BrokerError::Invalid { field, .. } if field.contains("ipv6") => Status::InvalidIpv6,
        BrokerError::Invalid { .. } => Status::InvalidIpv4,
        other => {
            tracing::warn!(error = %crate::broker::error_chain(other), "TSP: making the tunnel failed");
            Status::ServerError
        }
    }
}

/// The offer for a tunnel as RFC 5572 lays it out: for tunnels carrying IPv6 the PoP's
/// IPv4 and `::1`, the client's IPv4 and `::2`; for v4v6 the PoP's inner IPv4 and outer
/// IPv6, the client's inner IPv4 and outer IPv6. Keepalives go to the PoP's inner address,
/// which the data plane answers.
fn offer_for<S, P, R>(
    t: &TunnelRecord,
    ask: &TunnelAsk,
    b: &Broker<S, P, R>,
    lifetime: u64,
    dns_server: std::net::Ipv6Addr,
) -> Option<Offer> {
    let s = &t.spec;
    let pop = &b.pop;
    let (tunnel_type, server_ipv4, server_ipv6, client_ipv4, client_ipv6, keepalive_to) =
        match (s.kind, s.endpoint) {
            (Kind::V4In6, Endpoint::Ipv6(client6)) => {
                let gw = pop.v4v6_gateway()?;
                (
                    RequestedType::V4V6,
                    gw,
                    pop.ipv6?,
                    s.client_v4?,
                    client6,
                    IpAddr::V4(gw),
                )
            }
            (kind, endpoint) => {
                let ty = if kind == Kind::V6Udp4 {
                    RequestedType::V6UdpV4
                } else {
                    RequestedType::V6V4
                };
                let client4 = ask.claimed_ipv4.or(endpoint.ipv4())?;
                (
                    ty,
                    pop.ipv4,
                    s.pop_v6()?,
                    client4,
                    s.client_v6()?,
                    IpAddr::V6(s.pop_v6()?),
                )
            }
        };
    Some(Offer {
        tunnel_type,
        lifetime,
        mtu: s.mtu,
        server_ipv4,
        server_ipv6,
        client_ipv4,
        client_ipv6,
        keepalive: s.keepalive.map(|k| (k, keepalive_to)),
        dns_server,
        router_prefix: ask.router.and(s.routed_prefixes.first().copied()),
    })
}

#[cfg(test)]
mod tests;
