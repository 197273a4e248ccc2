//! The HTTP interface (axum): REST for tunnels and users under `/api/v1`, the
//! HE-compatible `/nic/update`, `/metrics`, `/healthz` and `/readyz`.
//!
//! Handlers are thin: authenticate, parse (errors name the field), call the broker core,
//! render JSON. See docs/API.md for every route.

mod auth;
pub mod body;
pub mod import;
pub mod list;
pub mod listener;
mod nic;
pub mod pops;
pub mod starting;
pub mod tunnels;
pub mod users;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::{
    broker::{Broker, BrokerError, Projection, RouteOps},
    metrics::Metrics,
    store::{Store, StoreError},
};

pub use auth::Caller;

/// What every handler shares.
pub struct AppState<S, P, R> {
    pub broker: Arc<Mutex<Broker<S, P, R>>>,
    /// The administrator's bearer token; `None` disables administration over HTTP.
    pub admin_token: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    /// Set once the data plane is reconciled and attached.
    pub ready: Arc<AtomicBool>,
    /// Failed logins (API and `/nic/update`) per source address.
    pub auth_failures: Arc<std::sync::Mutex<crate::ratelimit::Failures<std::net::IpAddr>>>,
}

/// A hash no password matches, checked for unknown users so that they take as long as
/// known ones.
static UNKNOWN_USER_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::secret::hash_password(&crate::store::random_token(24)));

/// Failures from a source answered at once before the delays start.
pub const FREE_AUTH_FAILURES: u32 = 3;

impl<S, P, R> AppState<S, P, R> {
    pub fn new(
        broker: Arc<Mutex<Broker<S, P, R>>>,
        admin_token: Option<Arc<str>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            broker,
            admin_token,
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            auth_failures: Arc::new(std::sync::Mutex::new(crate::ratelimit::Failures::new(
                FREE_AUTH_FAILURES,
            ))),
        }
    }

    pub(crate) fn failures(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::ratelimit::Failures<std::net::IpAddr>> {
        self.auth_failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S, P, R> Clone for AppState<S, P, R> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
            admin_token: self.admin_token.clone(),
            metrics: self.metrics.clone(),
            ready: self.ready.clone(),
            auth_failures: self.auth_failures.clone(),
        }
    }
}

/// The routes.
pub fn router<S, P, R>(state: AppState<S, P, R>) -> Router
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    router_with(state, None)
}

/// The routes, and the portal's beside them (`portal.listen` unset).
pub fn router_with<S, P, R>(state: AppState<S, P, R>, portal: Option<Router>) -> Router
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    // Credentials before anything else of a request is read: a body (and its errors)
    // is only for those who may send it.
    let api = Router::new()
        .route(
            "/api/v1/tunnels",
            get(list::list::<S, P, R>).post(tunnels::create::<S, P, R>),
        )
        .route(
            "/api/v1/tunnels/{id}",
            get(tunnels::show::<S, P, R>)
                .patch(tunnels::change::<S, P, R>)
                .delete(tunnels::delete::<S, P, R>),
        )
        .route(
            "/api/v1/tunnels/import",
            axum::routing::post(import::import::<S, P, R>),
        )
        .route(
            "/api/v1/tunnels/{id}/update-key",
            axum::routing::post(tunnels::new_update_key::<S, P, R>),
        )
        .route(
            "/api/v1/tunnels/{id}/password",
            axum::routing::post(tunnels::new_password::<S, P, R>),
        )
        .route(
            "/api/v1/users",
            get(users::list::<S, P, R>).post(users::create::<S, P, R>),
        )
        .route("/api/v1/pops", get(pops::list::<S, P, R>))
        .route(
            "/api/v1/users/{name}",
            get(users::show::<S, P, R>)
                .patch(users::change::<S, P, R>)
                .delete(users::delete::<S, P, R>),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticated::<S, P, R>,
        ));
    Router::new()
        .merge(api)
        .route("/nic/update", get(tunnels::nic_update::<S, P, R>))
        .route("/metrics", get(metrics::<S, P, R>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S, P, R>))
        .with_state(state.clone())
        .merge(portal.unwrap_or_default())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(state, count::<S, P, R>))
}

/// What routers on the internet need, for `api.public_listen`: `/nic/update` and the
/// health check, nothing an administrator uses.
pub fn public_router<S, P, R>(state: AppState<S, P, R>) -> Router
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    Router::new()
        .route("/nic/update", get(tunnels::nic_update::<S, P, R>))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count::<S, P, R>,
        ))
        .with_state(state)
}

/// Serves `router` on `tcp` (HTTPS with `tls`) until `shutdown` resolves, under the
/// limits of [`listener`].
pub async fn serve(
    tcp: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(at) = tcp.local_addr() {
        tracing::info!(%at, https = tls.is_some(), "API listening");
    }
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    listener::serve(tcp, router, acceptor, listener::CAPS, metrics, shutdown).await
}

/// Counts every response by status code (`broker_api_requests_total`).
async fn count<S, P, R>(
    State(state): State<AppState<S, P, R>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let res = next.run(req).await;
    state.metrics.api_request(
        route.as_deref().unwrap_or("unmatched"),
        res.status().as_u16(),
    );
    res
}

async fn readyz<S, P, R>(State(state): State<AppState<S, P, R>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics<S, P, R>(State(state): State<AppState<S, P, R>>) -> Response
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    let snapshot = {
        let b = state.broker.lock().await;
        crate::metrics::Snapshot::take(&b, state.metrics.per_tunnel())
    };
    match snapshot.and_then(|s| state.metrics.encode(s)) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            // A failed read exports nothing rather than partial counters.
            tracing::warn!(error = %e, "metrics scrape failed");
            ApiError::internal(e).into_response()
        }
    }
}

/// The caller, from the `Authorization` header.
/// Lets a request to `/api/v1` through only with valid credentials, which it then
/// carries as its [`Caller`]. A failure is answered late, the later the more a source
/// fails ([`crate::ratelimit::Failures`]), and logged (at a reader's rate).
async fn authenticated<S: Store, P, R>(
    State(state): State<AppState<S, P, R>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    match authenticate(&state, req.headers()).await {
        Ok(caller) => {
            state.failures().succeeded(&peer.ip());
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            let delay = state
                .failures()
                .failed(peer.ip(), std::time::Instant::now());
            state.metrics.defended("api", "auth_failed");
            crate::logs::warn_limited(
                "api_auth_failed",
                &format!(
                    "API authentication failed from {} ({})",
                    peer.ip(),
                    e.message
                ),
            );
            tokio::time::sleep(delay).await;
            e.into_response()
        }
    }
}

pub async fn authenticate<S: Store, P, R>(
    state: &AppState<S, P, R>,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::parse)
        .ok_or_else(|| ApiError::unauthorized("credentials required"))?;
    match presented {
        auth::Presented::Bearer(t) => match &state.admin_token {
            Some(admin) if auth::same(&t, admin) => Ok(Caller::Admin),
            _ => Err(ApiError::unauthorized("wrong token")),
        },
        auth::Presented::Basic { user, password } => {
            if password_matches(state, &user, password).await? {
                Ok(Caller::User(user))
            } else {
                Err(ApiError::unauthorized("wrong user or password"))
            }
        }
    }
}

/// Whether `password` is `user`'s (the API's basic authentication, the portal's login).
/// A disabled account's matches nothing.
pub async fn password_matches<S: Store, P, R>(
    state: &AppState<S, P, R>,
    user: &str,
    password: String,
) -> Result<bool, ApiError> {
    let hash = {
        let b = state.broker.lock().await;
        b.store.user(user).map_err(ApiError::internal)?
    }
    // A disabled account's hash is no hash (`!`): it is checked like an unknown user's,
    // so that neither answers sooner than a wrong password.
    .filter(|u| !u.secrets.disabled())
    .map(|u| u.secrets.password_hash);
    // argon2 takes tens of milliseconds: off the thread every service shares, and
    // without the broker's lock. An unknown user costs as much as a wrong password.
    let hash = hash.unwrap_or_else(|| UNKNOWN_USER_HASH.clone());
    Ok(
        tokio::task::spawn_blocking(move || crate::secret::verify_password(&password, &hash))
            .await
            .unwrap_or(false),
    )
}

/// An error answer: status, message, and the field it is about.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: Option<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            field,
            message: message.into(),
        }
    }

    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, field, message)
    }

    pub fn unprocessable(field: Option<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, field, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, None, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, None, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, None, message)
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, None, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"broker\", Bearer"),
            );
        }
        res
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let msg = crate::broker::error_chain(&e);
        match e {
            BrokerError::Invalid { field, message } => {
                Self::unprocessable(Some(field.into()), format!("{field}: {message}"))
            }
            BrokerError::Maps(_) | BrokerError::Routes(_) => Self::internal(msg),
            BrokerError::Quota { .. } => Self::new(StatusCode::FORBIDDEN, None, msg),
            BrokerError::Store(s) => {
                let (status, field) = match &s {
                    StoreError::NoSuchTunnel { .. } => (StatusCode::NOT_FOUND, None),
                    StoreError::NoSuchUser { .. } => (StatusCode::NOT_FOUND, None),
                    StoreError::UserExists { .. } => (StatusCode::CONFLICT, Some("name")),
                    StoreError::UserHasTunnels { .. } => (StatusCode::CONFLICT, None),
                    StoreError::DuplicateEndpoint { .. } => {
                        (StatusCode::CONFLICT, Some("remote_ipv4"))
                    }
                    StoreError::PoolExhausted { .. } => (StatusCode::SERVICE_UNAVAILABLE, None),
                    StoreError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, None),
                    StoreError::LengthNotOffered { .. } => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Some("routed_prefix_length"),
                    ),
                    StoreError::OutsidePool { pool, .. } => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Some(if *pool == "link" {
                            "link_prefix"
                        } else {
                            "routed_prefix"
                        }),
                    ),
                    StoreError::PrefixInUse { .. } => (StatusCode::CONFLICT, None),
                    StoreError::NoSuchPop { .. } => (StatusCode::UNPROCESSABLE_ENTITY, Some("pop")),
                    StoreError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, None),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
                };
                Self::new(status, field.map(String::from), s.to_string())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        BrokerError::Store(e).into()
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;
