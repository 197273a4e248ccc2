//! The API in process, over a broker with an in-memory store and fake projections.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::connect_info::MockConnectInfo,
    http::{header, Method, Request, StatusCode},
    Router,
};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tower::ServiceExt;

use super::*;
use crate::{broker::tests::broker, metrics::Metrics};

pub(super) const ADMIN: &str = "admin-token-0123456789";

type TestBroker = crate::broker::Broker<
    crate::store::SqliteStore,
    crate::broker::tests::FakeMaps,
    crate::broker::tests::FakeRoutes,
>;

fn app(peer: &str, metrics: Arc<Metrics>, b: TestBroker) -> Router {
    let state = AppState::new(Arc::new(Mutex::new(b)), Some(ADMIN.into()), metrics);
    router(state).layer(MockConnectInfo(peer.parse::<SocketAddr>().unwrap()))
}

pub(super) enum Auth<'a> {
    None,
    Admin,
    Basic(&'a str, &'a str),
    Raw(&'a str),
}

pub(super) struct Client {
    app: Router,
    /// The process's own metrics (API requests, TSP sessions).
    pub(super) metrics: Arc<Metrics>,
    pub(super) rt: tokio::runtime::Runtime,
}

impl Client {
    pub(super) fn new() -> Self {
        Self::from_peer("198.51.100.77:40000")
    }

    pub(super) fn from_peer(peer: &str) -> Self {
        Self::with(peer, false)
    }

    fn with(peer: &str, per_tunnel: bool) -> Self {
        Self::over(peer, per_tunnel, broker())
    }

    /// Over a broker of the caller's making (quotas, pools).
    pub(super) fn over(peer: &str, per_tunnel: bool, b: TestBroker) -> Self {
        let metrics = Arc::new(Metrics::new(per_tunnel));
        Self {
            app: app(peer, metrics.clone(), b),
            metrics,
            // Paused: the delays of failed logins pass at once.
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap(),
        }
    }

    pub(super) fn call(
        &self,
        method: Method,
        uri: &str,
        auth: Auth<'_>,
        body: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        match auth {
            Auth::None => {}
            Auth::Admin => req = req.header(header::AUTHORIZATION, format!("Bearer {ADMIN}")),
            Auth::Basic(u, p) => {
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                req = req.header(header::AUTHORIZATION, format!("Basic {b}"));
            }
            Auth::Raw(v) => req = req.header(header::AUTHORIZATION, v),
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        self.rt.block_on(async {
            let res = self.app.clone().oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// A GET of one page: status, body and the `Link` header's next page.
    pub(super) fn page(&self, uri: &str, auth: Auth<'_>) -> (StatusCode, Value, Option<String>) {
        let mut req = Request::builder().method(Method::GET).uri(uri);
        if let Auth::Admin = auth {
            req = req.header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
        } else if let Auth::Basic(u, p) = auth {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req = req.header(header::AUTHORIZATION, format!("Basic {b}"));
        }
        self.rt.block_on(async {
            let res = self
                .app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = res.status();
            let link = res
                .headers()
                .get(header::LINK)
                .map(|v| v.to_str().unwrap().to_string());
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, serde_json::from_slice(&bytes).unwrap(), link)
        })
    }

    pub(super) fn json(
        &self,
        method: Method,
        uri: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let b = body.map(|v| v.to_string());
        let (s, text) = self.call(method, uri, auth, b.as_deref());
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Creates user `name` and returns its password.
    pub(super) fn user(&self, name: &str) -> String {
        let (s, v) = self.json(
            Method::POST,
            "/api/v1/users",
            Auth::Admin,
            Some(json!({"name": name})),
        );
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["password"].as_str().unwrap().to_string()
    }
}

pub(super) fn field(v: &Value) -> Option<&str> {
    v["field"].as_str()
}

#[test]
fn health_and_unknown_routes() {
    let c = Client::new();
    assert_eq!(
        c.call(Method::GET, "/healthz", Auth::None, None),
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        c.call(Method::GET, "/readyz", Auth::None, None).0,
        StatusCode::OK
    );
    assert_eq!(
        c.call(Method::GET, "/nope", Auth::None, None).0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn authentication_failures_are_401() {
    let c = Client::new();
    for auth in [
        Auth::None,
        Auth::Raw("Bearer wrong"),
        Auth::Raw("Basic !!"),
        Auth::Basic("nobody", "x"),
    ] {
        let (s, _) = c.call(Method::GET, "/api/v1/tunnels", auth, None);
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let pw = c.user("alice");
    assert_eq!(
        c.call(
            Method::GET,
            "/api/v1/tunnels",
            Auth::Basic("alice", "wrong-password"),
            None
        )
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        c.call(
            Method::GET,
            "/api/v1/tunnels",
            Auth::Basic("alice", &pw),
            None
        )
        .0,
        StatusCode::OK
    );
    // Users do not administer.
    assert_eq!(
        c.call(
            Method::GET,
            "/api/v1/users",
            Auth::Basic("alice", &pw),
            None
        )
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        c.call(
            Method::POST,
            "/api/v1/users",
            Auth::Basic("alice", &pw),
            Some(r#"{"name":"eve"}"#)
        )
        .0,
        StatusCode::FORBIDDEN
    );
}

#[test]
fn users_are_created_listed_shown_and_deleted() {
    let c = Client::new();
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/users",
        Auth::Admin,
        Some(json!({"name": "bob", "password": "correct horse"})),
    );
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["password"], "correct horse");
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/users",
        Auth::Admin,
        Some(json!({"name": "bob"})),
    );
    assert_eq!((s, field(&v)), (StatusCode::CONFLICT, Some("name")));
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/users",
        Auth::Admin,
        Some(json!({"name": "b o b"})),
    );
    assert_eq!(
        (s, field(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );
    let (s, v) = c.json(Method::GET, "/api/v1/users", Auth::Admin, None);
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["name"], "bob");
    assert!(v[0].get("password").is_none(), "passwords are shown once");
    let (s, v) = c.json(
        Method::GET,
        "/api/v1/users/bob",
        Auth::Basic("bob", "correct horse"),
        None,
    );
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("bob")));
    // Bob may set his password, not his account's state: a request that asks both
    // changes nothing.
    let (s, _) = c.json(
        Method::PATCH,
        "/api/v1/users/bob",
        Auth::Basic("bob", "correct horse"),
        Some(json!({"password": "battery staple", "disabled": false})),
    );
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c.json(
        Method::PATCH,
        "/api/v1/users/bob",
        Auth::Basic("bob", "correct horse"),
        Some(json!({"password": "battery staple"})),
    );
    assert_eq!(s, StatusCode::OK, "the old password still held");
    let (s, v) = c.json(
        Method::PATCH,
        "/api/v1/users/bob",
        Auth::Admin,
        Some(json!({"disabled": true})),
    );
    assert_eq!((s, v["disabled"].as_bool()), (StatusCode::OK, Some(true)));
    assert_eq!(
        c.call(
            Method::GET,
            "/api/v1/users/bob",
            Auth::Basic("bob", "battery staple"),
            None
        )
        .0,
        StatusCode::UNAUTHORIZED,
        "a disabled account logs in nowhere"
    );
    let (s, _) = c.json(
        Method::PATCH,
        "/api/v1/users/bob",
        Auth::Admin,
        Some(json!({"disabled": false, "password": "correct horse"})),
    );
    assert_eq!(s, StatusCode::OK);
    // Bob owns a tunnel: he cannot be deleted until it is gone.
    let (s, t) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Basic("bob", "correct horse"),
        Some(json!({"remote_ipv4": "198.51.100.10"})),
    );
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(
        c.call(Method::DELETE, "/api/v1/users/bob", Auth::Admin, None)
            .0,
        StatusCode::CONFLICT
    );
    let id = t["id"].as_u64().unwrap();
    assert_eq!(
        c.call(
            Method::DELETE,
            &format!("/api/v1/tunnels/{id}"),
            Auth::Admin,
            None
        )
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.call(Method::DELETE, "/api/v1/users/bob", Auth::Admin, None)
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.call(Method::GET, "/api/v1/users/bob", Auth::Admin, None)
            .0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn tunnels_are_created_shown_changed_and_deleted() {
    let c = Client::new();
    let pw = c.user("alice");
    let alice = || Auth::Basic("alice", &pw);
    let (s, t) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        alice(),
        Some(json!({"remote_ipv4": "198.51.100.10", "routed_prefix_length": 48, "mtu": 1400})),
    );
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["owner"], "alice");
    assert_eq!(t["kind"], "proto41");
    assert_eq!(t["state"], "up");
    assert_eq!(t["pop_ipv4"], "192.0.2.1");
    assert_eq!(t["link_prefix"], "2001:db8:10::/64");
    assert_eq!(t["pop_ipv6"], "2001:db8:10::1");
    assert_eq!(t["client_ipv6"], "2001:db8:10::2");
    assert_eq!(t["routed_prefixes"][0], "2001:db8:1000::/48");
    assert_eq!(t["mtu"], 1400);
    assert_eq!(t["update_key"].as_str().unwrap().len(), 16);
    let id = t["id"].as_u64().unwrap();
    let uri = format!("/api/v1/tunnels/{id}");

    let (s, v) = c.json(Method::GET, &uri, alice(), None);
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["counters"]["from_client_packets"], 0);
    let (s, v) = c.json(Method::GET, "/api/v1/tunnels", alice(), None);
    assert_eq!((s, v.as_array().unwrap().len()), (StatusCode::OK, 1));

    // Another user sees nothing of it; the administrator sees it.
    let pw2 = c.user("mallory");
    let (_, v) = c.json(
        Method::GET,
        "/api/v1/tunnels",
        Auth::Basic("mallory", &pw2),
        None,
    );
    assert_eq!(v.as_array().unwrap().len(), 0);
    assert_eq!(
        c.call(Method::GET, &uri, Auth::Basic("mallory", &pw2), None)
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.call(Method::DELETE, &uri, Auth::Basic("mallory", &pw2), None)
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.call(Method::GET, &uri, Auth::Admin, None).0,
        StatusCode::OK
    );

    let (s, v) = c.json(
        Method::PATCH,
        &uri,
        alice(),
        Some(json!({"remote_ipv4": "198.51.100.11", "state": "down", "mtu": 1280})),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["remote_ipv4"].as_str(),
            v["state"].as_str(),
            v["mtu"].as_u64()
        ),
        (Some("198.51.100.11"), Some("down"), Some(1280))
    );
    let (s, _) = c.json(Method::PATCH, &uri, alice(), Some(json!({})));
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(
        c.call(Method::DELETE, &uri, alice(), None).0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.call(Method::GET, &uri, alice(), None).0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        c.call(Method::GET, "/api/v1/tunnels/x", alice(), None).0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn bad_input_names_the_field_and_creates_nothing() {
    let c = Client::new();
    let (s, _) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"remote_ipv4": "198.51.100.10"})),
    );
    assert_eq!(s, StatusCode::CREATED);
    let cases: Vec<(&str, StatusCode, Option<&str>)> = vec![
        (
            r#"{"remote_ipv4": "198.51.100.20""#,
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            r#"{"remote_ipv4": 42}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("remote_ipv4"),
        ),
        (
            r#"{"remote_ipv4": "2001:db8::1"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("remote_ipv4"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "colour": "red"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("colour"),
        ),
        (
            r#"{}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("remote_ipv4"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "mtu": 9000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("mtu"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "state": "maybe"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("state"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "routed_prefix_length": 60}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("routed_prefix_length"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "link_prefix": "2001:db8:99::/64"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("link_prefix"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "routed_prefix": "2001:db8:99::/48"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("routed_prefix"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "link_prefix": "2001:db8:10::/48"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("link_prefix"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.10"}"#,
            StatusCode::CONFLICT,
            Some("remote_ipv4"),
        ),
        (
            r#"{"remote_ipv4": "192.0.2.1"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("remote_ipv4"),
        ),
        (
            r#"{"remote_ipv4": "198.51.100.20", "owner": "ghost"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("owner"),
        ),
    ];
    for (body, status, f) in cases {
        let (s, text) = c.call(Method::POST, "/api/v1/tunnels", Auth::Admin, Some(body));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((s, field(&v)), (status, f), "{body} -> {v}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    let (_, v) = c.json(Method::GET, "/api/v1/tunnels", Auth::Admin, None);
    assert_eq!(v.as_array().unwrap().len(), 1, "nothing half-created: {v}");
}

#[test]
fn tunnels_of_every_kind_take_their_own_endpoint_fields() {
    let c = Client::new();
    let (s, udp) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"kind": "v6udpv4", "remote_ipv4": "198.51.100.30", "remote_port": 40000})),
    );
    assert_eq!(s, StatusCode::CREATED, "{udp}");
    assert_eq!(
        (&udp["kind"], &udp["remote_port"], &udp["mtu"]),
        (&json!("v6udpv4"), &json!(40000), &json!(1472))
    );
    let (s, v4v6) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"kind": "v4v6", "remote_ipv6": "2001:db8:fffe::6"})),
    );
    assert_eq!(s, StatusCode::CREATED, "{v4v6}");
    assert_eq!(v4v6["client_ipv4"], "203.0.113.2");
    assert_eq!(v4v6["pop_ipv4_inner"], "203.0.113.1");
    assert_eq!(v4v6["pop_ipv6_endpoint"], "2001:db8:ffff::1");
    assert!(v4v6["link_prefix"].is_null() && v4v6["remote_ipv4"].is_null());
    // The port of a v6udpv4 tunnel alone can change.
    let id = udp["id"].as_u64().unwrap();
    let (s, moved) = c.json(
        Method::PATCH,
        &format!("/api/v1/tunnels/{id}"),
        Auth::Admin,
        Some(json!({"remote_port": 40001})),
    );
    assert_eq!(s, StatusCode::OK, "{moved}");
    assert_eq!(
        (&moved["remote_ipv4"], &moved["remote_port"]),
        (&json!("198.51.100.30"), &json!(40001))
    );
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"kind": "v6udpv4", "remote_ipv4": "198.51.100.31"}),
            "remote_port",
        ),
        (
            json!({"kind": "v6udpv4", "remote_ipv4": "198.51.100.31", "remote_port": 0}),
            "remote_port",
        ),
        (
            json!({"kind": "v4v6", "remote_ipv4": "198.51.100.31"}),
            "remote_ipv6",
        ),
        (json!({"kind": "v4v6"}), "remote_ipv6"),
        (
            json!({"remote_ipv4": "198.51.100.31", "remote_port": 1}),
            "remote_port",
        ),
        (
            json!({"remote_ipv4": "198.51.100.31", "remote_ipv6": "2001:db8::1"}),
            "remote_ipv6",
        ),
        (
            json!({"kind": "v6udpv4", "remote_ipv4": "198.51.100.31", "remote_port": 1, "mtu": 1480}),
            "mtu",
        ),
        (
            json!({"kind": "v4v6", "remote_ipv6": "2001:db8:ffff::1"}),
            "remote_ipv6",
        ),
        (
            json!({"kind": "gre", "remote_ipv4": "198.51.100.31"}),
            "kind",
        ),
    ];
    for (body, want) in bad {
        let (s, v) = c.json(
            Method::POST,
            "/api/v1/tunnels",
            Auth::Admin,
            Some(body.clone()),
        );
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(field(&v), Some(want), "{body}: {v}");
    }
    let (_, all) = c.json(Method::GET, "/api/v1/tunnels", Auth::Admin, None);
    assert_eq!(all.as_array().unwrap().len(), 2, "nothing half made");
}

#[test]
fn nic_update_answers_like_tunnelbroker_net() {
    let c = Client::from_peer("198.51.100.30:5555");
    let pw = c.user("carol");
    let (_, t) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Basic("carol", &pw),
        Some(json!({"remote_ipv4": "198.51.100.10"})),
    );
    let id = t["id"].as_u64().unwrap();
    let key = t["update_key"].as_str().unwrap().to_string();
    let nic =
        |q: &str, auth: Auth<'_>| c.call(Method::GET, &format!("/nic/update?{q}"), auth, None);

    assert_eq!(
        nic(
            &format!("hostname={id}&myip=198.51.100.11"),
            Auth::Basic("carol", &key)
        ),
        (StatusCode::OK, "good 198.51.100.11\n".into())
    );
    assert_eq!(
        nic(
            &format!("hostname={id}&myip=198.51.100.11"),
            Auth::Basic("carol", &key)
        ),
        (StatusCode::OK, "nochg 198.51.100.11\n".into())
    );
    // myip defaults to the address the request came from.
    assert_eq!(
        nic(&format!("hostname={id}"), Auth::Basic("carol", &key)),
        (StatusCode::OK, "good 198.51.100.30\n".into())
    );
    // Credentials as query parameters.
    assert_eq!(
        nic(
            &format!("hostname={id}&myip=198.51.100.12&username=carol&password={key}"),
            Auth::None
        ),
        (StatusCode::OK, "good 198.51.100.12\n".into())
    );
    assert_eq!(
        nic(&format!("hostname={id}"), Auth::Basic("carol", "wrong")),
        (StatusCode::UNAUTHORIZED, "badauth\n".into())
    );
    assert_eq!(
        nic(&format!("hostname={id}"), Auth::Basic("mallory", &key)),
        (StatusCode::UNAUTHORIZED, "badauth\n".into())
    );
    assert_eq!(
        nic(&format!("hostname={id}"), Auth::None),
        (StatusCode::UNAUTHORIZED, "badauth\n".into())
    );
    // A tunnel that does not exist answers as a wrong key does (ids not enumerable).
    assert_eq!(
        nic("hostname=999", Auth::Basic("carol", &key)),
        (StatusCode::UNAUTHORIZED, "badauth\n".into())
    );
    assert_eq!(
        nic("myip=198.51.100.12", Auth::Basic("carol", &key)),
        (StatusCode::OK, "notfqdn\n".into())
    );
    let (s, body) = nic(
        &format!("hostname={id}&myip=2001:db8::1"),
        Auth::Basic("carol", &key),
    );
    assert_eq!(s, StatusCode::OK);
    assert!(body.starts_with("-ERROR: "), "{body}");
    // The account password is not the update key.
    assert_eq!(
        nic(&format!("hostname={id}"), Auth::Basic("carol", &pw)).1,
        "badauth\n"
    );
    let (_, v) = c.json(
        Method::GET,
        &format!("/api/v1/tunnels/{id}"),
        Auth::Admin,
        None,
    );
    assert_eq!(v["remote_ipv4"], "198.51.100.12");
}

#[test]
fn metrics_are_exposed() {
    let c = Client::new();
    c.call(Method::GET, "/healthz", Auth::None, None);
    let (s, text) = c.call(Method::GET, "/metrics", Auth::None, None);
    assert_eq!(s, StatusCode::OK);
    for name in [
        "broker_traffic_packets_total{direction=\"from_client\",kind=\"proto41\"} 0",
        "broker_drops_total{reason=\"spoofed_source\"} 0",
        "broker_restarts_adopted_total 0",
        "broker_api_requests_total{route=\"/healthz\",code=\"200\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    assert!(!text.contains("# EOF"));
    assert!(
        !text.contains("broker_tunnel_packets_total"),
        "no per-tunnel series unless asked"
    );
}

#[test]
fn per_tunnel_series_only_when_configured() {
    let c = Client::with("198.51.100.77:1", true);
    let (s, t) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"remote_ipv4": "198.51.100.10"})),
    );
    assert_eq!(s, StatusCode::CREATED);
    let id = t["id"].as_u64().unwrap();
    let (_, text) = c.call(Method::GET, "/metrics", Auth::None, None);
    for series in [
        format!("broker_tunnel_packets_total{{tunnel=\"{id}\",direction=\"from_client\"}} 0"),
        format!("broker_tunnel_bytes_total{{tunnel=\"{id}\",direction=\"to_client\"}} 0"),
        format!("broker_tunnel_drops_total{{tunnel=\"{id}\"}} 0"),
        "broker_tunnels{kind=\"proto41\",state=\"up\"} 1".to_string(),
    ] {
        assert!(text.contains(&series), "{series} missing in\n{text}");
    }
}

#[test]
fn the_grafana_dashboard_uses_only_exported_names() {
    let c = Client::with("198.51.100.77:1", true);
    c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"remote_ipv4": "198.51.100.10"})),
    );
    c.call(Method::GET, "/healthz", Auth::None, None);
    c.metrics.tsp_session("udp", "established");
    let (_, text) = c.call(Method::GET, "/metrics", Auth::None, None);
    // Every family has its TYPE line, with or without samples.
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard = include_str!("../../../docs/grafana/broker-pop.json");
    let mut used = 0;
    for (i, _) in dashboard.match_indices("broker_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name == "broker_" || name.starts_with("broker_pop") {
            continue;
        }
        used += 1;
        assert!(
            exported.contains(name.as_str()),
            "the dashboard uses {name}, which is not exported"
        );
    }
    assert!(used > 10);
}

#[test]
fn lists_come_in_pages_with_filters() {
    let c = Client::new();
    let pw = c.user("bob");
    for (i, owner) in [None, Some("bob"), None, Some("bob"), None]
        .into_iter()
        .enumerate()
    {
        let mut body = json!({"remote_ipv4": format!("198.51.100.{}", 10 + i)});
        if let Some(o) = owner {
            body["owner"] = json!(o);
        }
        let (s, t) = c.json(Method::POST, "/api/v1/tunnels", Auth::Admin, Some(body));
        assert_eq!(s, StatusCode::CREATED, "{t}");
    }
    // Two at a time, following `Link` to the end.
    let mut uri = "/api/v1/tunnels?limit=2&state=up".to_string();
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let (s, v, next) = c.page(&uri, Auth::Admin);
        assert_eq!(s, StatusCode::OK, "{v}");
        pages += 1;
        ids.extend(
            v.as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_u64().unwrap()),
        );
        match next {
            Some(n) => {
                let target = n.split_once('>').unwrap().0.trim_start_matches('<');
                assert!(target.contains("state=up"), "{n}");
                uri = target.to_string();
            }
            None => break,
        }
    }
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    // A user's list is theirs, whatever `owner` asks; the operator filters by owner.
    let (_, v, _) = c.page("/api/v1/tunnels?owner=-", Auth::Basic("bob", &pw));
    let ids = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&v), vec![2, 4]);
    let (_, v, _) = c.page("/api/v1/tunnels?owner=-", Auth::Admin);
    assert_eq!(ids(&v), vec![1, 3, 5]);
    let (_, v, _) = c.page("/api/v1/tunnels?endpoint=198.51.100.12", Auth::Admin);
    assert_eq!(ids(&v), vec![3]);
    let (s, v) = c.json(Method::GET, "/api/v1/tunnels?limit=0", Auth::Admin, None);
    assert_eq!((s, field(&v)), (StatusCode::BAD_REQUEST, Some("limit")));
}

#[test]
fn the_operator_imports_many_tunnels_each_on_its_own() {
    let c = Client::new();
    let pw = c.user("bob");
    let items = json!([
        {"remote_ipv4": "198.51.100.10", "owner": "bob"},
        {"remote_ipv4": "198.51.100.10"},
        {"remote_ipv4": "198.51.100.11", "routed_prefix_length": 56},
        {"remote_ipv4": "127.0.0.1"},
    ]);
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/tunnels/import",
        Auth::Admin,
        Some(items.clone()),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = v.as_array().unwrap();
    assert_eq!(v.len(), 4);
    assert_eq!(
        (v[0]["id"].as_u64(), v[0]["owner"].as_str()),
        (Some(1), Some("bob"))
    );
    assert_eq!(v[0]["update_key"].as_str().unwrap().len(), 16);
    assert_eq!(v[1]["status"], 409, "{}", v[1]);
    assert_eq!(v[2]["routed_prefixes"].as_array().unwrap().len(), 1);
    assert_eq!(
        (v[3]["status"].as_u64(), field(&v[3])),
        (Some(422), Some("remote_ipv4"))
    );
    let (_, all, _) = c.page("/api/v1/tunnels", Auth::Admin);
    assert_eq!(all.as_array().unwrap().len(), 2);
    // A body that does not parse creates nothing and names the item; users may not.
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/tunnels/import",
        Auth::Admin,
        Some(json!([{"remote_ipv4": "198.51.100.20"}, {"remote_ipv4": "198.51.100.21", "mtu": "big"}])),
    );
    assert_eq!(
        (s, field(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("[1].mtu"))
    );
    let (s, _) = c.json(
        Method::POST,
        "/api/v1/tunnels/import",
        Auth::Basic("bob", &pw),
        Some(items),
    );
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, all, _) = c.page("/api/v1/tunnels", Auth::Admin);
    assert_eq!(all.as_array().unwrap().len(), 2);
}
