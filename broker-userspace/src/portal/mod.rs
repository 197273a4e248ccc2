//! The web portal (docs/PORTAL.md): server-rendered pages for tunnel users and operators,
//! served by the API's server (or a listener of its own) over the same operations the
//! API runs ([`crate::api::tunnels`], [`crate::api::users`]): no second source of truth.
//!
//! - [`visitor`]: sessions in cookies and the CSRF check every form passes;
//! - [`account`]: log in and out, sign up, change the password;
//! - [`tunnels`]: a user's tunnels, their configurations and traffic;
//! - [`operator`]: accounts, every tunnel, PoPs, the data plane's counters;
//! - [`views`]: what the templates (`templates/portal/`, askama, escaped) show.
mod account;
mod forms;
mod operator;
pub mod session;
mod tunnels;
mod views;
pub mod visitor;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{DefaultBodyLimit, Request},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};

use crate::{
    api::AppState,
    broker::{Projection, RouteOps},
    config::PortalConfig,
    history::History,
    ratelimit::{Keyed, Rate},
    store::Store,
};

/// Accounts one source address may make: 3, then one an hour.
const SIGNUPS: Rate = Rate::new(1.0 / 3600.0, 3.0);
/// Largest form body.
const BODY_LIMIT: usize = 16 * 1024;

/// What the portal's handlers share.
pub struct Portal<S, P, R> {
    pub app: AppState<S, P, R>,
    pub config: Arc<PortalConfig>,
    /// Cookies are marked `Secure` (and take the `__Host-` prefix).
    pub secure: bool,
    pub sessions: Arc<Mutex<session::Sessions>>,
    pub history: Arc<Mutex<History>>,
    /// Routed prefix lengths a tunnel may ask for (`pools.routed_lengths`).
    pub routed_lengths: Vec<u8>,
    signups: Arc<Mutex<Keyed<IpAddr>>>,
}

impl<S, P, R> Clone for Portal<S, P, R> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            config: self.config.clone(),
            secure: self.secure,
            sessions: self.sessions.clone(),
            history: self.history.clone(),
            routed_lengths: self.routed_lengths.clone(),
            signups: self.signups.clone(),
        }
    }
}

impl<S, P, R> Portal<S, P, R> {
    pub fn new(
        app: AppState<S, P, R>,
        config: PortalConfig,
        secure: bool,
        history: Arc<Mutex<History>>,
        routed_lengths: Vec<u8>,
    ) -> Self {
        let lifetime = Duration::from_secs(u64::from(config.session_hours) * 3600);
        Self {
            app,
            config: Arc::new(config),
            secure,
            sessions: Arc::new(Mutex::new(session::Sessions::new(lifetime))),
            history,
            routed_lengths,
            signups: Arc::new(Mutex::new(Keyed::new(SIGNUPS, 100_000))),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, session::Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` sees the operator's pages.
    fn is_operator(&self, user: &str) -> bool {
        self.config.operators.iter().any(|o| o == user)
    }
}

/// The portal's routes (without `/nic/update` and the health checks, which the API's
/// router or [`own_router`] adds).
pub fn routes<S, P, R>(portal: Portal<S, P, R>) -> Router
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    Router::new()
        .route("/", get(account::home))
        .route(
            "/login",
            get(account::login_form::<S, P, R>).post(account::login::<S, P, R>),
        )
        .route("/logout", post(account::logout::<S, P, R>))
        .route(
            "/signup",
            get(account::signup_form::<S, P, R>).post(account::signup::<S, P, R>),
        )
        .route(
            "/account",
            get(account::account).post(account::change_password::<S, P, R>),
        )
        .route("/tunnels", get(tunnels::list::<S, P, R>))
        .route(
            "/tunnels/new",
            get(tunnels::new_form::<S, P, R>).post(tunnels::create::<S, P, R>),
        )
        .route(
            "/tunnels/{id}",
            get(tunnels::show::<S, P, R>).post(tunnels::change::<S, P, R>),
        )
        .route("/tunnels/{id}/{action}", post(tunnels::act::<S, P, R>))
        .route(
            "/operator/users",
            get(operator::users::<S, P, R>).post(operator::create_user::<S, P, R>),
        )
        .route(
            "/operator/users/{name}/{action}",
            post(operator::user_action::<S, P, R>),
        )
        .route("/operator/tunnels", get(operator::tunnels::<S, P, R>))
        .route(
            "/operator/tunnels/{id}/{action}",
            post(operator::tunnel_action::<S, P, R>),
        )
        .route("/operator/pops", get(operator::pops::<S, P, R>))
        .route("/operator/counters", get(operator::counters::<S, P, R>))
        .route("/static/portal.css", get(css))
        .route("/static/portal.js", get(js))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(guarded))
        .with_state(portal)
}

/// The portal alone on a listener of its own (`portal.listen`): with `/nic/update`, which
/// routers call from the internet, and the health check.
pub fn own_router<S, P, R>(portal: Portal<S, P, R>) -> Router
where
    S: Store + 'static,
    P: Projection + 'static,
    R: RouteOps + 'static,
{
    routes(portal.clone()).merge(crate::api::public_router(portal.app))
}

/// Headers every page carries: no scripts or styles but the portal's own, no framing,
/// nothing cached, no referrer.
async fn guarded(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    res
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("static/portal.css"))
}

async fn js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("static/portal.js"),
    )
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// After a form: the page to see (303, so that reloading does not post again).
fn see(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A page as HTML, or a plain error if a template failed.
fn html(t: &impl askama::Template, status: StatusCode) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "rendering a portal page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "page failed\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests;
