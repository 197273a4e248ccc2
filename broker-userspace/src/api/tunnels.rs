//! `/api/v1/tunnels` and `/nic/update`.
use std::net::{SocketAddr, SocketAddrV4};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use broker_common::maps::TunnelStats;
use serde::{Deserialize, Serialize};

use super::{auth, body::Body, nic, ApiError, AppState, Caller};
use crate::{
    broker::{Projection, RouteOps},
    config::{Ipv4Field, Ipv6Field, LinkPrefix, Mtu, Prefix6, TunnelKind, TunnelState},
    model::{Endpoint, Kind, Pop, State as TState},
    store::{NewTunnel, Origin, Store, StoreError, TunnelChange, TunnelRecord},
};

/// A tunnel as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelOut {
    pub id: u32,
    /// The PoP it lives on.
    #[serde(default)]
    pub pop: String,
    pub owner: Option<String>,
    pub origin: String,
    pub kind: String,
    pub state: String,
    /// The client fell silent (liveness of TSP tunnels): down in the data plane until it
    /// is heard again, while `state` (the stored one) stays `up`.
    #[serde(default)]
    pub asleep: bool,
    /// The client's endpoint: IPv4 (proto41, v6udpv4) and port (v6udpv4), or IPv6 (v4v6).
    pub remote_ipv4: Option<String>,
    pub remote_port: Option<u16>,
    pub remote_ipv6: Option<String>,
    /// The PoP's endpoint.
    pub pop_ipv4: Option<String>,
    pub pop_ipv6_endpoint: Option<String>,
    /// Inside tunnels that carry IPv6.
    pub link_prefix: Option<String>,
    pub pop_ipv6: Option<String>,
    pub client_ipv6: Option<String>,
    pub routed_prefixes: Vec<String>,
    /// Inside v4v6 tunnels.
    pub client_ipv4: Option<String>,
    pub pop_ipv4_inner: Option<String>,
    pub mtu: u16,
    pub keepalive: Option<u32>,
    pub expires_at: Option<u64>,
    pub password: String,
    /// Only when the tunnel was just made: kept as a hash (docs/SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_key: Option<String>,
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

impl From<&Counters> for TunnelStats {
    fn from(c: &Counters) -> Self {
        Self {
            from_client_packets: c.from_client_packets,
            from_client_bytes: c.from_client_bytes,
            to_client_packets: c.to_client_packets,
            to_client_bytes: c.to_client_bytes,
            drop_packets: c.drop_packets,
            drop_bytes: c.drop_bytes,
        }
    }
}

pub(super) fn out(
    r: &TunnelRecord,
    pop: &Pop,
    asleep: bool,
    counters: Option<TunnelStats>,
) -> TunnelOut {
    let s = &r.spec;
    let (v4, remote_port, v6) = s.endpoint.parts();
    let v4v6 = s.kind == Kind::V4In6;
    TunnelOut {
        id: s.id,
        pop: r.pop.clone(),
        owner: r.owner.clone(),
        origin: r.origin.as_str().into(),
        kind: s.kind.as_str().into(),
        state: s.state.as_str().into(),
        asleep,
        remote_ipv4: v4.map(|a| a.to_string()),
        remote_port,
        remote_ipv6: v6.map(|a| a.to_string()),
        pop_ipv4: (!v4v6).then(|| pop.ipv4.to_string()),
        pop_ipv6_endpoint: pop.ipv6.filter(|_| v4v6).map(|a| a.to_string()),
        link_prefix: s.link_prefix.map(|p| p.to_string()),
        pop_ipv6: s.pop_v6().map(|a| a.to_string()),
        client_ipv6: s.client_v6().map(|a| a.to_string()),
        routed_prefixes: s.routed_prefixes.iter().map(|p| p.to_string()).collect(),
        client_ipv4: s.client_v4.map(|a| a.to_string()),
        pop_ipv4_inner: pop.v4v6_gateway().filter(|_| v4v6).map(|a| a.to_string()),
        mtu: s.mtu,
        keepalive: s.keepalive,
        expires_at: r.expires_at,
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
    /// proto41 and v6udpv4.
    #[serde(default)]
    remote_ipv4: Option<Ipv4Field>,
    /// v6udpv4.
    #[serde(default)]
    remote_port: Option<u16>,
    /// v4v6.
    #[serde(default)]
    remote_ipv6: Option<Ipv6Field>,
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
    /// The PoP to create it on; default: the least loaded healthy one
    /// ([`crate::broker::placement`]).
    #[serde(default)]
    pop: Option<String>,
}

/// `PATCH /api/v1/tunnels/{id}`: endpoint, state, MTU.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeIn {
    #[serde(default)]
    remote_ipv4: Option<Ipv4Field>,
    #[serde(default)]
    remote_port: Option<u16>,
    #[serde(default)]
    remote_ipv6: Option<Ipv6Field>,
    #[serde(default)]
    state: Option<TunnelState>,
    #[serde(default)]
    mtu: Option<Mtu>,
    /// Moves the tunnel to this PoP: its prefixes are renumbered from that PoP's pools.
    #[serde(default)]
    pop: Option<String>,
}

pub fn model_kind(k: TunnelKind) -> Kind {
    match k {
        TunnelKind::Proto41 => Kind::Proto41,
        TunnelKind::V6Udp4 => Kind::V6Udp4,
        TunnelKind::V4In6 => Kind::V4In6,
        TunnelKind::Ayiya => Kind::Ayiya,
        TunnelKind::Heartbeat => Kind::Heartbeat,
    }
}

/// The endpoint a request's fields give for a tunnel of `kind`, naming the missing or
/// superfluous field otherwise.
fn endpoint_of(
    kind: Kind,
    v4: Option<std::net::Ipv4Addr>,
    port: Option<u16>,
    v6: Option<std::net::Ipv6Addr>,
) -> Result<Endpoint, ApiError> {
    let bad = |field: &str, msg: &str| {
        Err(ApiError::unprocessable(
            Some(field.into()),
            format!("{field}: {msg}"),
        ))
    };
    match (kind, v4, port, v6) {
        (Kind::Ayiya | Kind::Heartbeat, None, None, None) => Ok(Endpoint::unspecified(kind)),
        (Kind::Ayiya | Kind::Heartbeat, ..) => {
            let field = match (v4, port) {
                (Some(_), _) => "remote_ipv4",
                (_, Some(_)) => "remote_port",
                _ => "remote_ipv6",
            };
            bad(
                field,
                "ayiya and heartbeat tunnels learn their endpoint from the client",
            )
        }
        (Kind::Proto41, Some(a), None, None) => Ok(Endpoint::Ipv4(a)),
        (Kind::V6Udp4, Some(a), Some(p), None) if p != 0 => {
            Ok(Endpoint::Udp4(SocketAddrV4::new(a, p)))
        }
        (Kind::V4In6, None, None, Some(a)) => Ok(Endpoint::Ipv6(a)),
        (Kind::V4In6, _, _, None) => bad("remote_ipv6", "required for v4v6 tunnels"),
        (Kind::V4In6, Some(_), _, _) => bad("remote_ipv4", "not for v4v6 tunnels"),
        (_, None, _, _) => bad("remote_ipv4", "required"),
        (Kind::V6Udp4, _, _, _) if v6.is_some() => bad("remote_ipv6", "only for v4v6 tunnels"),
        (Kind::V6Udp4, _, _, _) => bad("remote_port", "required for v6udpv4 tunnels (1-65535)"),
        (_, _, Some(_), _) => bad("remote_port", "only for v6udpv4 tunnels"),
        (_, _, _, Some(_)) => bad("remote_ipv6", "only for v4v6 tunnels"),
    }
}

/// An MTU within the kind's largest (the field's type already holds 1280-1480).
fn mtu_for(kind: Kind, m: Mtu) -> Result<u16, ApiError> {
    if m.0 > kind.mtu_max() {
        return Err(ApiError::unprocessable(
            Some("mtu".into()),
            format!(
                "mtu: {} is above {}, the most for {} tunnels",
                m.0,
                kind.mtu_max(),
                kind.as_str()
            ),
        ));
    }
    Ok(m.0)
}

fn model_state(s: TunnelState) -> TState {
    match s {
        TunnelState::Up => TState::Up,
        TunnelState::Down => TState::Down,
        TunnelState::Disabled => TState::Disabled,
    }
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<TunnelOut>, ApiError> {
    Ok(Json(shown(&state, &caller, tunnel_id(&id)?).await?))
}

// What follows is what the API and the portal do to tunnels for a caller, each rule in
// one place; the handlers only parse and render.

/// Tunnel `id` with its counters, if the caller may see it.
pub async fn shown<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    id: u32,
) -> Result<TunnelOut, ApiError> {
    let t = visible(state, caller, id).await?;
    let b = state.broker.lock().await;
    Ok(out(
        &t,
        &b.side(&t)?,
        b.is_asleep(t.spec.id),
        b.maps.counters(t.spec.id),
    ))
}

pub async fn create<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateIn>,
) -> Result<Response, ApiError> {
    let t = created(&state, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(t)).into_response())
}

/// Creates a tunnel as `req` asks, if the caller may.
pub async fn created<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    req: CreateIn,
) -> Result<TunnelOut, ApiError> {
    let caller = caller.clone();
    let mut new = new_tunnel(&caller, req)?;
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
    if let (Caller::User(_), Some(owner)) = (&caller, &new.owner) {
        let routed = u32::from(new.routed_length.is_some() || new.routed_prefix.is_some());
        b.check_quota(owner, 1, routed)?;
    }
    if new.pop.is_none() {
        new.pop = Some(b.place()?);
    }
    let t = b.create_tunnel(&new).await?;
    Ok(out(&t, &b.side(&t)?, false, None))
}

/// What a creation request asks the broker for, once the caller may ask it.
pub(super) fn new_tunnel(caller: &Caller, req: CreateIn) -> Result<NewTunnel, ApiError> {
    let owner = match (caller, req.owner) {
        (Caller::Admin, owner) => owner,
        (Caller::User(u), None) => Some(u.clone()),
        (Caller::User(u), Some(o)) if &o == u => Some(o),
        (Caller::User(_), Some(_)) => {
            return Err(ApiError::forbidden(
                "owner: a user creates tunnels for themselves only",
            ))
        }
    };
    if req.state == Some(TunnelState::Disabled) {
        operator_only(caller)?;
    }
    let kind = model_kind(req.kind.unwrap_or(TunnelKind::Proto41));
    let endpoint = endpoint_of(
        kind,
        req.remote_ipv4.map(|a| a.0),
        req.remote_port,
        req.remote_ipv6.map(|a| a.0),
    )?;
    let mtu = match req.mtu {
        Some(m) => mtu_for(kind, m)?,
        None => kind.mtu_max(),
    };
    let pop = req.pop.map(pop_name).transpose()?;
    Ok(NewTunnel {
        pop,
        owner,
        origin: Origin::Api,
        kind,
        state: model_state(req.state.unwrap_or_default()),
        endpoint,
        mtu,
        keepalive: None,
        expires_at: None,
        routed_length: req.routed_prefix_length,
        link_prefix: req.link_prefix.map(|p| p.0),
        routed_prefix: req.routed_prefix.map(|p| p.0),
    })
}

/// A PoP name as a request gives it.
fn pop_name(name: String) -> Result<String, ApiError> {
    if crate::store::valid_pop_name(&name) {
        Ok(name)
    } else {
        Err(ApiError::unprocessable(
            Some("pop".into()),
            format!("pop: {name:?} is not a PoP name"),
        ))
    }
}

pub async fn change<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Body(req): Body<ChangeIn>,
) -> Result<Json<TunnelOut>, ApiError> {
    Ok(Json(changed(&state, &caller, tunnel_id(&id)?, req).await?))
}

/// Changes tunnel `id` as `req` asks, if the caller may.
pub async fn changed<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    id: u32,
    req: ChangeIn,
) -> Result<TunnelOut, ApiError> {
    let current = visible(state, caller, id).await?;
    let disabled_now = current.spec.state == TState::Disabled;
    if req
        .state
        .is_some_and(|s| (s == TunnelState::Disabled) != disabled_now)
    {
        operator_only(caller)?;
    }
    let kind = current.spec.kind;
    let endpoint =
        if req.remote_ipv4.is_some() || req.remote_port.is_some() || req.remote_ipv6.is_some() {
            // Fields not given keep their value.
            let (v4, port, v6) = current.spec.endpoint.parts();
            Some(endpoint_of(
                kind,
                req.remote_ipv4.map(|a| a.0).or(v4),
                req.remote_port.or(port),
                req.remote_ipv6.map(|a| a.0).or(v6),
            )?)
        } else {
            None
        };
    let change = TunnelChange {
        endpoint,
        state: req.state.map(model_state),
        mtu: req.mtu.map(|m| mtu_for(kind, m)).transpose()?,
        pop: req.pop.map(pop_name).transpose()?,
        ..Default::default()
    };
    if change == TunnelChange::default() {
        return Err(ApiError::unprocessable(
            None,
            "nothing to change: give remote_ipv4, remote_port, remote_ipv6, state, mtu or pop",
        ));
    }
    let mut b = state.broker.lock().await;
    let t = b.update_tunnel(id, &change).await?;
    Ok(out(&t, &b.side(&t)?, b.is_asleep(id), None))
}

/// `POST /api/v1/tunnels/{id}/update-key`: a new update key for `/nic/update`, shown in
/// this answer only (only its hash is kept); the old one stops working.
pub async fn new_update_key<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = tunnel_id(&id)?;
    let key = new_key(&state, &caller, id).await?;
    Ok(Json(serde_json::json!({ "id": id, "update_key": key })))
}

/// A new update key for tunnel `id`, if the caller may see it.
pub async fn new_key<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    id: u32,
) -> Result<String, ApiError> {
    visible(state, caller, id).await?;
    Ok(state.broker.lock().await.new_update_key(id)?)
}

/// `POST /api/v1/tunnels/{id}/password`: a new tunnel password (the client fetches its
/// tunnel again over TIC).
pub async fn new_password<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<TunnelOut>, ApiError> {
    Ok(Json(renewed(&state, &caller, tunnel_id(&id)?).await?))
}

/// Tunnel `id` with a new password, if the caller may see it.
pub async fn renewed<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    id: u32,
) -> Result<TunnelOut, ApiError> {
    visible(state, caller, id).await?;
    let mut b = state.broker.lock().await;
    let t = b.new_tunnel_password(id).await?;
    Ok(out(&t, &b.side(&t)?, b.is_asleep(id), None))
}

/// `disabled` is the operator's word: only the administrator sets or clears it (a user
/// has `down`).
fn operator_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::User(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Some("state".into()),
            "state: only the operator sets a tunnel disabled or clears it",
        )),
    }
}

pub async fn delete<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    deleted(&state, &caller, tunnel_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes tunnel `id`, if the caller may see it.
pub async fn deleted<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    id: u32,
) -> Result<(), ApiError> {
    visible(state, caller, id).await?;
    state.broker.lock().await.delete_tunnel(id).await?;
    Ok(())
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
    if answer == nic::Answer::BadAuth {
        // As for the API: answered late when a source keeps failing, and logged.
        let delay = state
            .auth_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(peer.ip(), std::time::Instant::now());
        state.metrics.defended("api", "nic_auth_failed");
        crate::logs::warn_limited(
            "nic_auth_failed",
            &format!("/nic/update: wrong credentials from {}", peer.ip()),
        );
        tokio::time::sleep(delay).await;
    }
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
        // The same answer as a wrong key: which ids exist is nobody's business.
        Ok(None) => return nic::Answer::BadAuth,
        Err(_) => return nic::Answer::ServerError,
    };
    let expected_user = t.owner.clone().unwrap_or_else(|| id.to_string());
    if !(auth::same(&user, &expected_user) && crate::secret::verify_key(&key, &t.update_key_hash)) {
        return nic::Answer::BadAuth;
    }
    let ip = match nic::endpoint(q.myip.as_deref(), peer.ip()) {
        Ok(ip) => ip,
        Err(a) => return a,
    };
    let endpoint = match t.spec.endpoint {
        Endpoint::Ipv4(_) => Endpoint::Ipv4(ip),
        Endpoint::Udp4(a) => Endpoint::Udp4(SocketAddrV4::new(ip, a.port())),
        Endpoint::Ipv6(_) => {
            return nic::Answer::BadIp("the tunnel's endpoint is IPv6 (v4v6)".into())
        }
    };
    if endpoint == t.spec.endpoint {
        return nic::Answer::NoChange(ip);
    }
    let change = TunnelChange {
        endpoint: Some(endpoint),
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
