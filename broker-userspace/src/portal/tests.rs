//! The portal in process, over a broker with an in-memory store and fake projections:
//! sessions, CSRF, who sees what, errors at their fields, escaping. The browser tests
//! (tests/tests/e2e_portal.rs) drive the real thing.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::connect_info::MockConnectInfo,
    http::{header, Method, Request, StatusCode},
    Router,
};
use tower::ServiceExt;

use super::*;
use crate::{
    api::AppState,
    broker::tests::broker,
    config::{PortalConfig, Signup},
    metrics::Metrics,
};

const INVITE: &str = "invite-code-0123456789";

/// A browser: its cookies, and the last page's CSRF token.
struct Browser {
    app: Router,
    cookies: HashMap<String, String>,
    rt: tokio::runtime::Runtime,
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
    headers: axum::http::HeaderMap,
}

impl Answer {
    /// The CSRF token of the page's first form.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form") + 19;
        self.body[at..at + 32].to_string()
    }
}

fn app(
    config: PortalConfig,
    secure: bool,
) -> (
    Router,
    AppState<
        crate::store::SqliteStore,
        crate::broker::tests::FakeMaps,
        crate::broker::tests::FakeRoutes,
    >,
) {
    let state = AppState::new(
        Arc::new(tokio::sync::Mutex::new(broker())),
        Some("admin-token-0123456789".into()),
        Arc::new(Metrics::new(false)),
    );
    let portal = Portal::new(
        state.clone(),
        config,
        secure,
        Arc::new(Mutex::new(History::new(6))),
        vec![48, 56],
    );
    let router = crate::api::router_with(state.clone(), Some(routes(portal))).layer(
        MockConnectInfo("198.51.100.77:40000".parse::<SocketAddr>().unwrap()),
    );
    (router, state)
}

fn config() -> PortalConfig {
    PortalConfig {
        signup: Signup::Open,
        operators: vec!["olga".into()],
        ..Default::default()
    }
}

impl Browser {
    fn new(app: Router) -> Self {
        Self {
            app,
            cookies: HashMap::new(),
            // Paused: the delays of failed logins pass at once.
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap(),
        }
    }

    fn send(&mut self, method: Method, uri: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "portal.example:8080");
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header(header::COOKIE, jar.join("; "));
        }
        let req = match form {
            Some(f) => req
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(serde_urlencoded::to_string(f).unwrap())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = self.rt.block_on(self.app.clone().oneshot(req)).unwrap();
        let headers = res.headers().clone();
        let set_cookies: Vec<String> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let (kv, _) = c.split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.into(), v.into());
            }
        }
        let status = res.status();
        let body = self
            .rt
            .block_on(axum::body::to_bytes(res.into_body(), 1 << 20))
            .unwrap();
        Answer {
            status,
            location: headers
                .get(header::LOCATION)
                .map(|v| v.to_str().unwrap().to_string()),
            set_cookies,
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
        }
    }

    fn get(&mut self, uri: &str) -> Answer {
        self.send(Method::GET, uri, None)
    }

    /// Posts `form` with the CSRF token of the page at `from`.
    fn post_from(&mut self, from: &str, to: &str, form: &[(&str, &str)]) -> Answer {
        let csrf = self.get(from).csrf();
        let mut f = form.to_vec();
        f.push(("csrf", &csrf));
        self.send(Method::POST, to, Some(&f))
    }

    fn signup(&mut self, name: &str) -> Answer {
        self.post_from(
            "/signup",
            "/signup",
            &[
                ("name", name),
                ("password", "password-of-8"),
                ("password2", "password-of-8"),
            ],
        )
    }

    /// The operator's account (`config()`'s `olga`), made through the API as an
    /// administrator makes it (sign-up refuses an operator's name), and logged in.
    fn operator(&mut self) {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/users")
            .header(header::AUTHORIZATION, "Bearer admin-token-0123456789")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"name": "olga", "password": "password-of-8"}"#,
            ))
            .unwrap();
        let res = self.rt.block_on(self.app.clone().oneshot(req)).unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(
            self.login("olga", "password-of-8").status,
            StatusCode::SEE_OTHER
        );
    }

    fn login(&mut self, name: &str, password: &str) -> Answer {
        self.post_from(
            "/login",
            "/login",
            &[("name", name), ("password", password)],
        )
    }

    /// Makes a proto-41 tunnel from `remote`; its id.
    fn tunnel(&mut self, remote: &str) -> u32 {
        let a = self.post_from(
            "/tunnels/new",
            "/tunnels/new",
            &[
                ("kind", "proto41"),
                ("remote_ipv4", remote),
                ("routed_prefix_length", "56"),
            ],
        );
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        let at = a.location.unwrap();
        at.trim_start_matches("/tunnels/")
            .split('?')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// HTML text as a browser reads it (what askama escapes).
fn unescape(html: &str) -> String {
    let mut s = html.to_string();
    for (e, c) in [
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&quot;", "\""),
        ("&#39;", "'"),
        ("&#x27;", "'"),
        ("&#34;", "\""),
        ("&#60;", "<"),
        ("&#62;", ">"),
        ("&#38;", "&"),
        ("&amp;", "&"),
    ] {
        s = s.replace(e, c);
    }
    s
}

/// The text of the element whose `id` is given, roughly (up to its closing tag).
fn element<'a>(body: &'a str, id: &str) -> &'a str {
    let start = body
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {body}"));
    let end = body[start..].find("</").map_or(body.len(), |e| start + e);
    &body[start..end]
}

#[test]
fn signing_up_logs_in_with_a_session_cookie_and_logging_out_ends_it() {
    let (app, _) = app(config(), false);
    let mut b = Browser::new(app);
    let first = b.get("/login");
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.set_cookies[0].starts_with("broker_csrf="),
        "{:?}",
        first.set_cookies
    );
    let csp = first.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(first.headers[header::CACHE_CONTROL], "no-store");

    let a = b.signup("ann");
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let cookie = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("broker_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax")
            && !cookie.contains("Secure")
    );
    assert!(b.get("/tunnels").body.contains("You have no tunnels yet"));

    let out = b.post_from("/tunnels", "/logout", &[]);
    assert_eq!(out.location.as_deref(), Some("/login?done=logout"));
    assert_eq!(b.get("/tunnels").location.as_deref(), Some("/login"));
    // The old cookie, replayed, is no session any more.
    let a2 = b.login("ann", "password-of-8");
    assert_eq!(a2.status, StatusCode::SEE_OTHER);
}

#[test]
fn behind_tls_the_cookies_are_secure_and_host_only() {
    let (app, _) = app(config(), true);
    let mut b = Browser::new(app);
    let first = b.get("/login");
    assert!(first.set_cookies[0].starts_with("__Host-broker_csrf="));
    let a = b.signup("ann");
    let cookie = a
        .set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-broker_session="))
        .unwrap();
    assert!(cookie.contains("; Secure") && cookie.contains("Path=/"));
}

#[test]
fn a_form_without_its_csrf_token_is_refused_and_changes_nothing() {
    let (app, state) = app(config(), false);
    let mut b = Browser::new(app);
    b.signup("ann");
    let id = b.tunnel("198.51.100.10");
    // No token, and another session's token.
    let none = b.send(
        Method::POST,
        &format!("/tunnels/{id}/delete"),
        Some(&[("confirm", "yes")]),
    );
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    assert!(none.body.contains("did not come from this portal"));
    let mut other = Browser::new(b.app.clone());
    other.signup("bob");
    let theirs = other.get("/tunnels").csrf();
    let forged = b.send(
        Method::POST,
        &format!("/tunnels/{id}/delete"),
        Some(&[("confirm", "yes"), ("csrf", &theirs)]),
    );
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    // Before login too: a login form needs the csrf cookie's token.
    let mut fresh = Browser::new(b.app.clone());
    let login = fresh.send(
        Method::POST,
        "/login",
        Some(&[
            ("name", "ann"),
            ("password", "password-of-8"),
            ("csrf", "x"),
        ]),
    );
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    let st =
        b.rt.block_on(async { state.broker.lock().await.store.tunnel(id).unwrap() });
    assert!(st.is_some(), "still there");
}

#[test]
fn another_users_tunnel_is_not_found_by_guessing_its_url() {
    let (app, state) = app(config(), false);
    let mut ann = Browser::new(app.clone());
    ann.signup("ann");
    let id = ann.tunnel("198.51.100.10");
    let mut bob = Browser::new(app);
    bob.signup("bob");
    for path in [
        format!("/tunnels/{id}"),
        "/tunnels/999999".into(),
        "/tunnels/x".into(),
    ] {
        assert_eq!(bob.get(&path).status, StatusCode::NOT_FOUND, "{path}");
    }
    let change = bob.post_from("/tunnels", &format!("/tunnels/{id}"), &[("mtu", "1300")]);
    assert_eq!(change.status, StatusCode::NOT_FOUND);
    let del = bob.post_from(
        "/tunnels",
        &format!("/tunnels/{id}/delete"),
        &[("confirm", "yes")],
    );
    assert_eq!(del.status, StatusCode::NOT_FOUND);
    let key = bob.post_from("/tunnels", &format!("/tunnels/{id}/update-key"), &[]);
    assert_eq!(key.status, StatusCode::NOT_FOUND);
    assert!(!bob.get("/tunnels").body.contains(&format!("T{id}<")));
    let t = ann
        .rt
        .block_on(async { state.broker.lock().await.store.tunnel(id).unwrap().unwrap() });
    assert_eq!(t.spec.mtu, 1480);
    // Nor are the operator's pages there for a user.
    assert_eq!(bob.get("/operator/users").status, StatusCode::NOT_FOUND);
    let op = bob.post_from("/tunnels", &format!("/operator/tunnels/{id}/disable"), &[]);
    assert_eq!(op.status, StatusCode::NOT_FOUND);
}

#[test]
fn errors_stand_at_their_fields_and_what_was_sent_comes_back_escaped() {
    let (app, _) = app(config(), false);
    let mut b = Browser::new(app);
    let bad = b.post_from(
        "/signup",
        "/signup",
        &[
            ("name", "<script>alert(1)</script>"),
            ("password", "short"),
            ("password2", "short"),
        ],
    );
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!bad.body.contains("<script>alert"), "escaped");
    assert!(bad.body.contains("&#60;script&#62;") || bad.body.contains("&lt;script&gt;"));
    assert!(element(&bad.body, "e-name").contains("1-64 characters"));
    assert!(element(&bad.body, "e-password").contains("At least 8"));
    b.signup("ann");
    for (field, value, says) in [
        ("remote_ipv4", "198.51.100", "IPv4"),
        ("mtu", "9000", "1280"),
        ("routed_prefix_length", "40", "40"),
    ] {
        let mut form = vec![("kind", "proto41"), ("remote_ipv4", "198.51.100.10")];
        form.retain(|(k, _)| *k != field);
        form.push((field, value));
        let a = b.post_from("/tunnels/new", "/tunnels/new", &form);
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert!(
            element(&a.body, &format!("e-{field}")).contains(says),
            "{field}: {}",
            a.body
        );
    }
    let id = b.tunnel("198.51.100.10");
    let dup = b.post_from(
        "/tunnels/new",
        "/tunnels/new",
        &[("kind", "proto41"), ("remote_ipv4", "198.51.100.10")],
    );
    assert!(
        element(&dup.body, "e-remote_ipv4").contains("already"),
        "{}",
        dup.body
    );
    let unconfirmed = b.post_from(
        &format!("/tunnels/{id}"),
        &format!("/tunnels/{id}/delete"),
        &[],
    );
    assert!(element(&unconfirmed.body, "e-confirm").contains("Tick the box"));
}

#[test]
fn a_tunnels_page_has_its_configurations_and_changes_go_through_the_api() {
    let (app, state) = app(config(), false);
    let mut b = Browser::new(app);
    b.signup("ann");
    let id = b.tunnel("198.51.100.10");
    let page = b.get(&format!("/tunnels/{id}?done=created"));
    assert!(page.body.contains("The tunnel is created"));
    let linux = element(&page.body, "config-linux");
    assert!(
        linux.contains(&format!(
            "ip tunnel add broker{id} mode sit remote 192.0.2.1 local 198.51.100.10"
        )),
        "{linux}"
    );
    assert!(element(&page.body, "config-broker").contains("broker client proto41"));
    // The same text as `broker tunnel show --client-config`.
    let shown =
        b.rt.block_on(crate::api::tunnels::shown(
            &state,
            &crate::api::Caller::Admin,
            id,
        ))
        .unwrap();
    for system in crate::clientconf::System::for_tunnel(&shown) {
        let text = crate::clientconf::render(&shown, system);
        let on_page = unescape(element(&page.body, &format!("config-{}", system.as_str())));
        assert!(on_page.ends_with(&text), "{system:?}: {on_page}");
    }
    assert!(element(&page.body, "nic-url").contains(&format!(
        "http://ann:UPDATE-KEY@portal.example:8080/nic/update?hostname={id}"
    )));
    // A new update key is shown once, in the URL, and works.
    let key = b.post_from(
        &format!("/tunnels/{id}"),
        &format!("/tunnels/{id}/update-key"),
        &[],
    );
    let url = element(&key.body, "nic-url").to_string();
    assert!(!url.contains("UPDATE-KEY"), "{url}");
    // Change the endpoint and MTU.
    let ch = b.post_from(
        &format!("/tunnels/{id}"),
        &format!("/tunnels/{id}"),
        &[
            ("remote_ipv4", "198.51.100.11"),
            ("mtu", "1400"),
            ("state", "up"),
        ],
    );
    assert_eq!(
        ch.location.as_deref(),
        Some(&*format!("/tunnels/{id}?done=changed")),
        "{}",
        ch.body
    );
    let t =
        b.rt.block_on(async { state.broker.lock().await.store.tunnel(id).unwrap().unwrap() });
    assert_eq!(
        (t.spec.mtu, t.spec.endpoint.to_string().as_str()),
        (1400, "198.51.100.11")
    );
    let del = b.post_from(
        &format!("/tunnels/{id}"),
        &format!("/tunnels/{id}/delete"),
        &[("confirm", "yes")],
    );
    assert_eq!(del.location.as_deref(), Some("/tunnels?done=deleted"));
    assert_eq!(
        b.get(&format!("/tunnels/{id}")).status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn the_operator_disables_a_tunnel_and_its_user_cannot_enable_it() {
    let (app, state) = app(config(), false);
    let mut ann = Browser::new(app.clone());
    ann.signup("ann");
    let id = ann.tunnel("198.51.100.10");
    let mut olga = Browser::new(app);
    olga.operator();
    let list = olga.get("/operator/tunnels?owner=ann");
    assert!(list.body.contains(&format!("id=\"tunnel-{id}\"")));
    let off = olga.post_from(
        "/operator/tunnels?owner=ann",
        &format!("/operator/tunnels/{id}/disable"),
        &[("back", "owner=ann&evil=1")],
    );
    assert_eq!(
        off.location.as_deref(),
        Some("/operator/tunnels?owner=ann&done=disabled")
    );
    let page = ann.get(&format!("/tunnels/{id}"));
    assert!(element(&page.body, "tunnel-state").contains("disabled"));
    assert!(page.body.contains("Only the operator can enable it again"));
    let up = ann.post_from(
        &format!("/tunnels/{id}"),
        &format!("/tunnels/{id}"),
        &[("state", "up")],
    );
    assert_eq!(up.status, StatusCode::FORBIDDEN);
    assert!(
        element(&up.body, "e-state").contains("only the operator"),
        "{}",
        up.body
    );
    let t = ann
        .rt
        .block_on(async { state.broker.lock().await.store.tunnel(id).unwrap().unwrap() });
    assert_eq!(t.spec.state, crate::model::State::Disabled);
    // Filters are checked as the API checks them, at their field.
    let bad = olga.get("/operator/tunnels?kind=sit");
    assert!(element(&bad.body, "e-kind").contains("sit"));
    assert!(olga
        .get("/operator/counters")
        .body
        .contains("spoofed_source"));
    assert!(olga.get("/operator/pops").status.is_success());
}

#[test]
fn a_disabled_account_logs_in_nowhere_until_enabled() {
    let (app, _) = app(config(), false);
    let mut ann = Browser::new(app.clone());
    ann.signup("ann");
    let id = ann.tunnel("198.51.100.10");
    let mut olga = Browser::new(app.clone());
    olga.operator();
    let off = olga.post_from("/operator/users", "/operator/users/ann/disable", &[]);
    assert!(
        off.body
            .contains("Account ann is disabled, and 1 of its tunnels"),
        "{}",
        off.body
    );
    // Ann's session ended with it, and no login succeeds.
    assert_eq!(ann.get("/tunnels").location.as_deref(), Some("/login"));
    let again = ann.login("ann", "password-of-8");
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(element(&again.body, "e-password").contains("disabled"));
    olga.post_from("/operator/users", "/operator/users/ann/enable", &[]);
    assert_eq!(
        ann.login("ann", "password-of-8").status,
        StatusCode::SEE_OTHER
    );
    let page = ann.get(&format!("/tunnels/{id}"));
    assert!(
        element(&page.body, "tunnel-state").contains("disabled"),
        "tunnels stay disabled"
    );
}

#[test]
fn signing_up_is_as_the_operator_chose() {
    let (app, _) = app(
        PortalConfig {
            signup: Signup::Closed,
            ..config()
        },
        false,
    );
    let mut b = Browser::new(app);
    assert_eq!(b.get("/signup").status, StatusCode::NOT_FOUND);
    assert!(!b.get("/login").body.contains("/signup"));

    let invite = PortalConfig {
        signup: Signup::Invite,
        invite_codes: vec![INVITE.into()],
        ..config()
    };
    let (app, _) = app_with(invite);
    let mut b = Browser::new(app.clone());
    let form = |code: &'static str| {
        vec![
            ("name", "ann"),
            ("password", "password-of-8"),
            ("password2", "password-of-8"),
            ("invite", code),
        ]
    };
    let wrong = b.post_from("/signup", "/signup", &form("not-the-code-at-all"));
    assert!(element(&wrong.body, "e-invite").contains("not valid"));
    assert_eq!(
        b.post_from("/signup", "/signup", &form(INVITE)).status,
        StatusCode::SEE_OTHER
    );
    let mut c = Browser::new(app);
    let mut used = form(INVITE);
    used[0] = ("name", "bob");
    let twice = c.post_from("/signup", "/signup", &used);
    assert!(element(&twice.body, "e-invite").contains("used already"));
}

fn app_with(config: PortalConfig) -> (Router, ()) {
    (app(config, false).0, ())
}

#[test]
fn failed_logins_are_counted_and_slowed() {
    let (app, state) = app(config(), false);
    let mut b = Browser::new(app);
    for _ in 0..5 {
        assert_eq!(
            b.login("nobody", "wrong-password").status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(state.metrics.defended_count("portal", "login_failed"), 5);
    b.get("/login");
    b.send(Method::POST, "/login", Some(&[("name", "ann")]));
    assert_eq!(state.metrics.defended_count("portal", "csrf"), 1);
}

#[test]
fn an_account_disabled_through_the_api_ends_its_portal_session() {
    let (app, _) = app(config(), false);
    let mut ann = Browser::new(app.clone());
    ann.signup("ann");
    assert_eq!(ann.get("/tunnels").status, StatusCode::OK);
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/users/ann")
        .header(header::AUTHORIZATION, "Bearer admin-token-0123456789")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"disabled": true}"#))
        .unwrap();
    let res = ann.rt.block_on(app.clone().oneshot(req)).unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(ann.get("/tunnels").location.as_deref(), Some("/login"));
}

#[test]
fn the_portal_can_be_apart_or_absent() {
    let state = AppState::new(
        Arc::new(tokio::sync::Mutex::new(broker())),
        None,
        Arc::new(Metrics::new(false)),
    );
    let portal = Portal::new(
        state.clone(),
        config(),
        false,
        Arc::new(Mutex::new(History::new(6))),
        vec![48],
    );
    let peer = MockConnectInfo("198.51.100.77:40000".parse::<SocketAddr>().unwrap());
    let mut apart = Browser::new(own_router(portal).layer(peer));
    assert_eq!(apart.get("/login").status, StatusCode::OK);
    assert_eq!(apart.get("/healthz").status, StatusCode::OK);
    assert_eq!(apart.get("/api/v1/tunnels").status, StatusCode::NOT_FOUND);
    assert_eq!(apart.get("/metrics").status, StatusCode::NOT_FOUND);
    let nic = apart.get("/nic/update?hostname=1");
    assert_eq!(nic.status, StatusCode::UNAUTHORIZED, "/nic/update is there");
    let mut api_only = Browser::new(crate::api::router(state).layer(peer));
    assert_eq!(api_only.get("/login").status, StatusCode::NOT_FOUND);
    assert_eq!(api_only.get("/healthz").status, StatusCode::OK);
}

#[test]
fn a_new_password_ends_every_other_session_of_the_account() {
    let (app, _) = app(config(), false);
    let mut one = Browser::new(app.clone());
    one.signup("ann");
    let mut two = Browser::new(app.clone());
    assert_eq!(
        two.login("ann", "password-of-8").status,
        StatusCode::SEE_OTHER
    );
    let changed = one.post_from(
        "/account",
        "/account",
        &[
            ("current", "password-of-8"),
            ("password", "another-password"),
            ("password2", "another-password"),
        ],
    );
    assert_eq!(
        changed.location.as_deref(),
        Some("/account?done=password"),
        "{}",
        changed.body
    );
    assert_eq!(
        one.get("/tunnels").status,
        StatusCode::OK,
        "the changing session goes on"
    );
    assert_eq!(two.get("/tunnels").location.as_deref(), Some("/login"));
    // Changed through the API (or at another PoP): this session ends too.
    let req = Request::builder()
        .method(Method::PATCH)
        .uri("/api/v1/users/ann")
        .header(header::AUTHORIZATION, "Bearer admin-token-0123456789")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"password": "a-third-password"}"#))
        .unwrap();
    let res = one.rt.block_on(app.clone().oneshot(req)).unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(one.get("/tunnels").location.as_deref(), Some("/login"));
}

#[test]
fn an_operators_name_cannot_be_signed_up_for() {
    let (app, _) = app(config(), false);
    let mut b = Browser::new(app);
    let a = b.signup("olga");
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(element(&a.body, "e-name").contains("taken"));
}

#[test]
fn tsps_kinds_are_left_to_tsp_clients() {
    let (app, _) = app(config(), false);
    let mut b = Browser::new(app);
    b.signup("ann");
    for kind in ["v6udpv4", "v4v6"] {
        let a = b.post_from(
            "/tunnels/new",
            "/tunnels/new",
            &[
                ("kind", kind),
                ("remote_ipv4", "198.51.100.10"),
                ("remote_port", "4000"),
            ],
        );
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{kind}");
        assert!(element(&a.body, "e-kind").contains("TSP client"), "{kind}");
    }
}
