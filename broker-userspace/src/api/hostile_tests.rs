//! The API against a hostile user or internet (docs/SECURITY.md): each test is an attack
//! that worked before its defence.
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::tests::{field, Auth, Client};

/// Creates a proto-41 tunnel for `owner` as the administrator; returns its id.
fn tunnel_for(c: &Client, owner: Option<&str>, remote: &str) -> u64 {
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"owner": owner, "remote_ipv4": remote})),
    );
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_u64().unwrap()
}

#[test]
fn a_user_cannot_undo_the_operators_disabled() {
    let c = Client::new();
    let pw = c.user("mallory");
    let id = tunnel_for(&c, Some("mallory"), "198.51.100.10");
    let uri = format!("/api/v1/tunnels/{id}");
    let (s, v) = c.json(
        Method::PATCH,
        &uri,
        Auth::Admin,
        Some(json!({"state": "disabled"})),
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    for state in ["up", "down"] {
        let (s, v) = c.json(
            Method::PATCH,
            &uri,
            Auth::Basic("mallory", &pw),
            Some(json!({ "state": state })),
        );
        assert_eq!(s, StatusCode::FORBIDDEN, "{state}: {v}");
    }
    let (_, v) = c.json(Method::GET, &uri, Auth::Basic("mallory", &pw), None);
    assert_eq!(v["state"], "disabled");
    // The user may still move it (the operator's switch stays off), and the operator
    // switches it back on.
    let (s, _) = c.json(
        Method::PATCH,
        &uri,
        Auth::Basic("mallory", &pw),
        Some(json!({"remote_ipv4": "198.51.100.11"})),
    );
    assert_eq!(s, StatusCode::OK);
    let (s, _) = c.json(
        Method::PATCH,
        &uri,
        Auth::Admin,
        Some(json!({"state": "up"})),
    );
    assert_eq!(s, StatusCode::OK);
    // Nor may a user disable (their word is `down`), or create disabled.
    let (s, _) = c.json(
        Method::PATCH,
        &uri,
        Auth::Basic("mallory", &pw),
        Some(json!({"state": "disabled"})),
    );
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Basic("mallory", &pw),
        Some(json!({"remote_ipv4": "198.51.100.12", "state": "disabled"})),
    );
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = c.json(
        Method::PATCH,
        &uri,
        Auth::Basic("mallory", &pw),
        Some(json!({"state": "down"})),
    );
    assert_eq!(s, StatusCode::OK);
}

#[test]
fn endpoints_that_are_no_hosts_are_refused() {
    let c = Client::new();
    let id = tunnel_for(&c, None, "198.51.100.10");
    for bad in [
        "0.0.0.0",
        "127.0.0.1",
        "255.255.255.255",
        "224.0.0.1",
        "240.0.0.1",
        // Private: pop.private_endpoints is off.
        "10.0.0.1",
        "192.168.1.1",
        "100.64.0.1",
    ] {
        let (s, v) = c.json(
            Method::POST,
            "/api/v1/tunnels",
            Auth::Admin,
            Some(json!({ "remote_ipv4": bad })),
        );
        assert_eq!(
            (s, field(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("remote_ipv4")),
            "create at {bad}: {v}"
        );
        let (s, v) = c.json(
            Method::PATCH,
            &format!("/api/v1/tunnels/{id}"),
            Auth::Admin,
            Some(json!({ "remote_ipv4": bad })),
        );
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "move to {bad}: {v}");
    }
    for bad in [
        "::1",
        "ff0e::1",
        "fe80::1",
        "fd00::1",
        "::ffff:198.51.100.1",
    ] {
        let (s, v) = c.json(
            Method::POST,
            "/api/v1/tunnels",
            Auth::Admin,
            Some(json!({ "kind": "v4v6", "remote_ipv6": bad })),
        );
        assert_eq!(
            (s, field(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("remote_ipv6")),
            "{bad}: {v}"
        );
    }
    let (_, v) = c.json(Method::GET, "/api/v1/tunnels", Auth::Admin, None);
    let remote: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["remote_ipv4"])
        .collect();
    assert_eq!(remote, [&json!("198.51.100.10")]);
}

#[test]
fn a_user_cannot_take_every_tunnel_and_prefix() {
    let mut b = crate::broker::tests::broker();
    b.quotas = crate::config::Quotas {
        tunnels_per_user: 3,
        routed_prefixes_per_user: 2,
    };
    let c = Client::over("198.51.100.77:40000", false, b);
    let pw = c.user("greedy");
    let create = |i: u8, routed: bool| {
        let mut body = json!({ "remote_ipv4": format!("198.51.100.{i}") });
        if routed {
            body["routed_prefix_length"] = json!(56);
        }
        c.json(
            Method::POST,
            "/api/v1/tunnels",
            Auth::Basic("greedy", &pw),
            Some(body),
        )
    };
    assert_eq!(create(1, true).0, StatusCode::CREATED);
    assert_eq!(create(2, true).0, StatusCode::CREATED);
    let (s, v) = create(3, true);
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("quotas.routed_prefixes_per_user"));
    assert_eq!(create(3, false).0, StatusCode::CREATED);
    let (s, v) = create(4, false);
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("quotas.tunnels_per_user"));
    // The operator is not held to them.
    let (s, v) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Admin,
        Some(json!({"owner": "greedy", "remote_ipv4": "198.51.100.5", "routed_prefix_length": 56})),
    );
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[test]
fn credentials_come_before_the_body() {
    let c = Client::new();
    // Unauthenticated requests with a body that does not parse, or names unknown fields:
    // the answer is about the credentials, not about the body.
    for body in [
        r#"{"remote_ipv4": "#,
        r#"{"colour": "red"}"#,
        r#"{"remote_ipv4": 42}"#,
    ] {
        let (s, text) = c.call(Method::POST, "/api/v1/tunnels", Auth::None, Some(body));
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}: {text}");
        assert!(
            !text.contains("colour") && !text.contains("remote_ipv4"),
            "{text}"
        );
        let (s, _) = c.call(
            Method::POST,
            "/api/v1/users",
            Auth::Basic("nobody", "guess"),
            Some(body),
        );
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    }
}

#[test]
fn password_guessing_is_slowed_down_and_counted() {
    let c = Client::new();
    c.user("victim");
    let virtual_now = || c.rt.block_on(async { tokio::time::Instant::now() });
    let mut waits = Vec::new();
    for i in 0..8 {
        let before = virtual_now();
        let (s, _) = c.call(
            Method::GET,
            "/api/v1/tunnels",
            Auth::Basic("victim", &format!("guess{i}")),
            None,
        );
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        waits.push((virtual_now() - before).as_secs());
    }
    // Three free tries, then 1, 2, 4, 8, 16 s before each answer (the clock is paused,
    // so the test does not wait): guessing runs at a few tries a minute, not 1700 a second.
    assert_eq!(waits, vec![0, 0, 0, 1, 2, 4, 8, 16]);
    assert_eq!(c.metrics.defended_count("api", "auth_failed"), 8);
    // /nic/update's keys are guessed from the same budget.
    let before = virtual_now();
    let (s, _) = c.call(
        Method::GET,
        "/nic/update?hostname=1",
        Auth::Basic("x", "y"),
        None,
    );
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!((virtual_now() - before).as_secs(), 30);
}

#[test]
fn update_keys_are_shown_once_and_can_be_made_anew() {
    let c = Client::new();
    let pw = c.user("owner");
    let (s, created) = c.json(
        Method::POST,
        "/api/v1/tunnels",
        Auth::Basic("owner", &pw),
        Some(json!({"remote_ipv4": "198.51.100.10"})),
    );
    assert_eq!(s, StatusCode::CREATED);
    let id = created["id"].as_u64().unwrap();
    let first = created["update_key"].as_str().unwrap().to_string();
    let uri = format!("/api/v1/tunnels/{id}");
    let (_, shown) = c.json(Method::GET, &uri, Auth::Basic("owner", &pw), None);
    assert!(
        shown.get("update_key").is_none(),
        "only its hash is kept: {shown}"
    );
    let nic = |key: &str| {
        c.call(
            Method::GET,
            &format!("/nic/update?hostname={id}&myip=198.51.100.11"),
            Auth::Basic("owner", key),
            None,
        )
    };
    assert_eq!(nic(&first).0, StatusCode::OK);
    // Another user cannot make one for this tunnel.
    let other = c.user("other");
    let (s, _) = c.json(
        Method::POST,
        &format!("{uri}/update-key"),
        Auth::Basic("other", &other),
        None,
    );
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = c.json(
        Method::POST,
        &format!("{uri}/update-key"),
        Auth::Basic("owner", &pw),
        None,
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    let second = v["update_key"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert_eq!(
        nic(&first).0,
        StatusCode::UNAUTHORIZED,
        "the old key stops working"
    );
    assert_eq!(nic(&second).0, StatusCode::OK);
}
