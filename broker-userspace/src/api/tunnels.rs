//! `/api/v1/tunnels` and `/nic/update`.
use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use broker_common::maps::TunnelStats;
use serde::{Deserialize, Serialize};

use super::{auth, authenticate, body::Body, nic, ApiError, AppState, Caller};
use crate::{
    broker::{Projection, RouteOps},
    config::{Ipv4Field, LinkPrefix, Mtu, Prefix6, TunnelKind, TunnelState},
    model::{Kind, State as TState},
    store::{NewTunnel, Store, StoreError, TunnelChange, TunnelRecord},
};

/// A tunnel as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelOut {
    pub id: u32,
    pub owner: Option<String>,
    pub origin: String,
    pub kind: String,
    pub state: String,
    pub remote_ipv4: String,
    pub pop_ipv4: String,
    pub link_prefix: String,
    pub pop_ipv6: String,
    pub client_ipv6: String,
    pub routed_prefixes: Vec<String>,
    pub mtu: u16,
    pub password: String,
    pub update_key: String,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

/// Per-tunnel counters, summed over CPUs.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub from_client_packets: u64,
    pub from_client_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

impl From<TunnelStats> for Counters {
    fn from(s: TunnelStats) -> Self {
        Self {
            from_client_packets: s.from_client_packets,
            from_client_bytes: s.from_client_bytes,
            to_client_packets: s.to_client_packets,
            to_client_bytes: s.to_client_bytes,
            drop_packets: s.drop_packets,
            drop_bytes: s.drop_bytes,
        }
    }
}

pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Proto41 => "proto41",
    }
}

pub fn state_name(s: TState) -> &'static str {
    match s {
        TState::Up => "up",
        TState::Down => "down",
        TState::Disabled => "disabled",
    }
}

fn out(r: &TunnelRecord, pop: std::net::Ipv4Addr, counters: Option<TunnelStats>) -> TunnelOut {
    let s = &r.spec;
    TunnelOut {
        id: s.id,
        owner: r.owner.clone(),
        origin: r.origin.as_str().into(),
        kind: kind_name(s.kind).into(),
        state: state_name(s.state).into(),
        remote_ipv4: s.remote_v4.to_string(),
        pop_ipv4: pop.to_string(),
        link_prefix: s.link_prefix.to_string(),
        pop_ipv6: s.pop_v6().to_string(),
        client_ipv6: s.client_v6().to_string(),
        routed_prefixes: s.routed_prefixes.iter().map(|p| p.to_string()).collect(),
        mtu: s.mtu,
        password: r.password.clone(),
        update_key: r.update_key.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        counters: counters.map(Into::into),
    }
}

/// `POST /api/v1/tunnels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIn {
    /// Only the administrator may create for someone else (or for nobody).
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    kind: Option<TunnelKind>,
    #[serde(default)]
    state: Option<TunnelState>,
    remote_ipv4: Ipv4Field,
    #[serde(default)]
    mtu: Option<Mtu>,
    /// Allocate a routed prefix of this length.
    #[serde(default)]
    routed_prefix_length: Option<u8>,
    /// A specific link /64 from the link pools.
    #[serde(default)]
    link_prefix: Option<LinkPrefix>,
    /// A specific routed prefix from the routed pools.
    #[serde(default)]
    routed_prefix: Option<Prefix6>,
}

/// `PATCH /api/v1/tunnels/{id}`: endpoint, state, MTU.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeIn {
    #[serde(default)]
    remote_ipv4: Option<Ipv4Field>,
    #[serde(default)]
    state: Option<TunnelState>,
    #[serde(default)]
    mtu: Option<Mtu>,
}

fn model_state(s: TunnelState) -> TState {
    match s {
        TunnelState::Up => TState::Up,
        TunnelState::Down => TState::Down,
        TunnelState::Disabled => TState::Disabled,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Include each tunnel's counters (one map read per tunnel).
    #[serde(default)]
    counters: bool,
}

pub async fn list<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<TunnelOut>>, ApiError> {
    let caller = authenticate(&state, &headers).await?;
    let b = state.broker.lock().await;
    let tunnels = b.store.tunnels()?;
    Ok(Json(
        tunnels
            .iter()
            .filter(|t| caller.may_use(t.owner.as_deref()))
            .map(|t| {
                out(
                    t,
                    b.pop,
                    q.counters.then(|| b.maps.counters(t.spec.id)).flatten(),
                )
            })
            .collect(),
    ))
}

/// The tunnel if it exists and the caller may see it: a user gets 404 for tunnels of
/// others, so ids of other users' tunnels are not revealed.
async fn visible<S: Store, P, R>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    id: u32,
) -> Result<TunnelRecord, ApiError> {
    let b = state.broker.lock().await;
    match b.store.tunnel(id)? {
        Some(t) if caller.may_use(t.owner.as_deref()) => Ok(t),
        _ => Err(StoreError::NoSuchTunnel { id }.into()),
    }
}

fn tunnel_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no tunnel {raw:?}")))
}

pub async fn show<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TunnelOut>, ApiError> {
    let caller = authenticate(&state, &headers).await?;
    let t = visible(&state, &caller, tunnel_id(&id)?).await?;
    let b = state.broker.lock().await;
    Ok(Json(out(&t, b.pop, b.maps.counters(t.spec.id))))
}

pub async fn create<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    headers: HeaderMap,
    Body(req): Body<CreateIn>,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &headers).await?;
    let owner = match (&caller, req.owner) {
        (Caller::Admin, owner) => owner,
        (Caller::User(u), None) => Some(u.clone()),
        (Caller::User(u), Some(o)) if &o == u => Some(o),
        (Caller::User(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "owner: a user creates tunnels for themselves only",
            ))
        }
    };
    let new = NewTunnel {
        owner,
        kind: match req.kind.unwrap_or(TunnelKind::Proto41) {
            TunnelKind::Proto41 => Kind::Proto41,
        },
        state: model_state(req.state.unwrap_or_default()),
        remote_v4: req.remote_ipv4.0,
        mtu: req.mtu.unwrap_or_default().0,
        routed_length: req.routed_prefix_length,
        link_prefix: req.link_prefix.map(|p| p.0),
        routed_prefix: req.routed_prefix.map(|p| p.0),
    };
    if let Some(owner) = &new.owner {
        let b = state.broker.lock().await;
        if b.store.user(owner)?.is_none() {
            return Err(ApiError::unprocessable(
                Some("owner".into()),
                format!("owner: no user {owner:?}"),
            ));
        }
    }
    let mut b = state.broker.lock().await;
    let t = b.create_tunnel(&new).await?;
    Ok((StatusCode::CREATED, Json(out(&t, b.pop, None))).into_response())
}

pub async fn change<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Body(req): Body<ChangeIn>,
) -> Result<Json<TunnelOut>, ApiError> {
    let caller = authenticate(&state, &headers).await?;
    let id = tunnel_id(&id)?;
    visible(&state, &caller, id).await?;
    let change = TunnelChange {
        remote_v4: req.remote_ipv4.map(|a| a.0),
        state: req.state.map(model_state),
        mtu: req.mtu.map(|m| m.0),
    };
    if change == TunnelChange::default() {
        return Err(ApiError::unprocessable(
            None,
            "nothing to change: give remote_ipv4, state or mtu",
        ));
    }
    let mut b = state.broker.lock().await;
    let t = b.update_tunnel(id, &change).await?;
    Ok(Json(out(&t, b.pop, None)))
}

pub async fn delete<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = authenticate(&state, &headers).await?;
    let id = tunnel_id(&id)?;
    visible(&state, &caller, id).await?;
    state.broker.lock().await.delete_tunnel(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct NicQuery {
    hostname: Option<String>,
    myip: Option<String>,
    /// Credentials as query parameters, as HE also accepts them.
    username: Option<String>,
    password: Option<String>,
}

/// `GET /nic/update`: the username is the tunnel's owner (or, for a tunnel without one,
/// its id), the password the tunnel's update key.
pub async fn nic_update<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<NicQuery>,
) -> Response {
    let answer = nic_answer(&state, peer, &headers, &q).await;
    let status = if answer == nic::Answer::BadAuth {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut res = (status, format!("{}\n", answer.body())).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"broker\""),
        );
    }
    res
}

async fn nic_answer<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    peer: SocketAddr,
    headers: &HeaderMap,
    q: &NicQuery,
) -> nic::Answer {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::parse);
    let (user, key) = match (presented, &q.username, &q.password) {
        (Some(auth::Presented::Basic { user, password }), _, _) => (user, password),
        (_, Some(u), Some(p)) => (u.clone(), p.clone()),
        _ => return nic::Answer::BadAuth,
    };
    let id = match nic::tunnel_id(q.hostname.as_deref()) {
        Ok(id) => id,
        Err(a) => return a,
    };
    let mut b = state.broker.lock().await;
    let t = match b.store.tunnel(id) {
        Ok(Some(t)) => t,
        Ok(None) => return nic::Answer::NoHost,
        Err(_) => return nic::Answer::ServerError,
    };
    let expected_user = t.owner.clone().unwrap_or_else(|| id.to_string());
    if !(auth::same(&user, &expected_user) && auth::same(&key, &t.update_key)) {
        return nic::Answer::BadAuth;
    }
    let ip = match nic::endpoint(q.myip.as_deref(), peer.ip()) {
        Ok(ip) => ip,
        Err(a) => return a,
    };
    if ip == t.spec.remote_v4 {
        return nic::Answer::NoChange(ip);
    }
    let change = TunnelChange {
        remote_v4: Some(ip),
        ..Default::default()
    };
    match b.update_tunnel(id, &change).await {
        Ok(_) => nic::Answer::Good(ip),
        Err(crate::broker::BrokerError::Store(StoreError::DuplicateEndpoint { .. }))
        | Err(crate::broker::BrokerError::Invalid { .. }) => {
            nic::Answer::BadIp(format!("{ip} is not available as an endpoint"))
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "endpoint update failed");
            nic::Answer::ServerError
        }
    }
}
