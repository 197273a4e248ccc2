//! A user's tunnels: the list, a new one, each one's page (state, traffic, client
//! configurations, changes), through the API's operations as the user.
use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::Response,
};

use super::{
    forms::{as_request, notice},
    see,
    views::{self, ClientConfig, Form, Graph, Row, StateWords},
    visitor::{Member, Posted, Visitor},
    Portal,
};
use crate::{
    api::{
        list::ListRequest,
        tunnels::{self as ops, ChangeIn, CreateIn, TunnelOut},
        ApiError, Caller,
    },
    broker::{Projection, RouteOps},
    clientconf,
    store::Store,
};

/// The fields of the creation form, as the API names them.
const CREATE_FIELDS: [&str; 7] = [
    "kind",
    "pop",
    "routed_prefix_length",
    "remote_ipv4",
    "remote_port",
    "remote_ipv6",
    "mtu",
];
/// The fields of the change form.
const CHANGE_FIELDS: [&str; 5] = ["remote_ipv4", "remote_port", "remote_ipv6", "mtu", "state"];
const NUMERIC: [&str; 3] = ["remote_port", "mtu", "routed_prefix_length"];

pub async fn list<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Member(v, user): Member,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let caller = Caller::User(user.clone());
    let query = HashMap::from([("counters".to_string(), "true".to_string())]);
    let req = match ListRequest::parse(&query, &caller) {
        Ok(r) => r,
        Err(e) => return v.problem(e.status, e.message),
    };
    let tunnels = match crate::api::list::page(&portal.app, &req).await {
        Ok(t) => t,
        Err(e) => return v.problem(e.status, e.message),
    };
    let now = crate::store::now();
    let rows = {
        let h = portal.history();
        tunnels
            .iter()
            .map(|t| Row::of(t, h.heard(t.id), now))
            .collect()
    };
    // This PoP's TSP server, as it reports itself (its address, without the port gogoc
    // assumes).
    let tsp = crate::api::pops::shown(&portal.app, &caller)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.this)
        .and_then(|p| p.tsp)
        .map(|at| {
            let host = at
                .parse::<std::net::SocketAddr>()
                .map_or(at.clone(), |a| a.ip().to_string());
            ClientConfig::tsp(&user, &host)
        })
        .unwrap_or_default();
    let mut page = v.page("Your tunnels");
    page.notice = notice(&q);
    v.render(&views::TunnelList { page, rows, tsp }, StatusCode::OK)
}

/// PoPs a user may choose between: the healthy ones, when there are several.
async fn choices<S: Store, P: Projection, R: RouteOps>(
    portal: &Portal<S, P, R>,
    caller: &Caller,
) -> Vec<String> {
    let pops = crate::api::pops::shown(&portal.app, caller)
        .await
        .unwrap_or_default();
    let healthy: Vec<String> = pops
        .into_iter()
        .filter(|p| p.healthy)
        .map(|p| p.name)
        .collect();
    if healthy.len() > 1 {
        healthy
    } else {
        Vec::new()
    }
}

async fn new_page<S: Store, P: Projection, R: RouteOps>(
    portal: &Portal<S, P, R>,
    v: &Visitor,
    form: Form,
    status: StatusCode,
) -> Response {
    let Some(caller) = v.caller() else {
        return see("/login");
    };
    let pops = choices(portal, &caller).await;
    v.render(
        &views::TunnelNew {
            page: v.page("New tunnel"),
            form,
            pops,
            lengths: portal.routed_lengths.clone(),
        },
        status,
    )
}

pub async fn new_form<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Member(v, _): Member,
) -> Response {
    // The address the portal sees is most often the one the tunnel comes from.
    let mut values = HashMap::from([("kind".to_string(), "proto41".to_string())]);
    if let std::net::IpAddr::V4(a) = v.peer {
        values.insert("remote_ipv4".into(), a.to_string());
    }
    new_page(&portal, &v, Form::with(values), StatusCode::OK).await
}

pub async fn create<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    posted: Posted,
) -> Response {
    let v = &posted.visitor;
    let Some(caller) = v.caller() else {
        return see("/login");
    };
    // TSP's kinds are made by the client's session, which gives back only its own.
    let made = if matches!(posted.get("kind"), Some("v6udpv4" | "v4v6")) {
        Err(ApiError::unprocessable(
            Some("kind".into()),
            "kind: your TSP client makes these itself: see your tunnel list",
        ))
    } else {
        match as_request::<CreateIn>(&posted.fields, &CREATE_FIELDS, &NUMERIC) {
            Ok(req) => ops::created(&portal.app, &caller, req).await,
            Err(e) => Err(e),
        }
    };
    match made {
        Ok(t) => see(&format!("/tunnels/{}?done=created", t.id)),
        Err(e) => {
            let mut form = Form::with(posted.fields.clone());
            form.fail_api(&e, &CREATE_FIELDS);
            new_page(&portal, v, form, e.status).await
        }
    }
}

fn id_of(raw: &str) -> Option<u32> {
    raw.parse().ok()
}

/// Where routers reach `/nic/update`: this request's host, if it is a plain one.
fn base_url(headers: &HeaderMap, secure: bool) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    plain.then(|| format!("{}://{host}", if secure { "https" } else { "http" }))
}

/// What a tunnel's page shows beyond the tunnel.
struct Shown<'a> {
    /// The change form as sent, with its errors; `None`: filled with the tunnel.
    form: Option<Form>,
    /// An update key just made, shown this once.
    key: Option<&'a str>,
    notice: Option<String>,
    status: StatusCode,
}

impl Default for Shown<'_> {
    fn default() -> Self {
        Self {
            form: None,
            key: None,
            notice: None,
            status: StatusCode::OK,
        }
    }
}

/// A tunnel's page.
async fn tunnel_page<S: Store, P: Projection, R: RouteOps>(
    portal: &Portal<S, P, R>,
    v: &Visitor,
    caller: &Caller,
    headers: &HeaderMap,
    id: u32,
    shown: Shown<'_>,
) -> Response {
    let Shown {
        form,
        key,
        notice,
        status,
    } = shown;
    let t = match ops::shown(&portal.app, caller, id).await {
        Ok(t) => t,
        Err(e) => return v.problem(e.status, e.message),
    };
    let now = crate::store::now();
    let (heard, bars) = {
        let mut h = portal.history();
        if let Some(c) = &t.counters {
            h.observe(id, now, &c.into());
        }
        (h.heard(id), h.bars(id, now))
    };
    let counters = t.counters.as_ref().map_or_else(Vec::new, |c| {
        vec![
            (
                "From you",
                format!(
                    "{} packets, {}",
                    c.from_client_packets,
                    views::bytes(c.from_client_bytes)
                ),
            ),
            (
                "To you",
                format!(
                    "{} packets, {}",
                    c.to_client_packets,
                    views::bytes(c.to_client_bytes)
                ),
            ),
            (
                "Dropped",
                format!("{} packets, {}", c.drop_packets, views::bytes(c.drop_bytes)),
            ),
        ]
    });
    let nic_url = (t.kind == "proto41" || t.kind == "v6udpv4")
        .then(|| base_url(headers, portal.secure))
        .flatten()
        .map(|base| clientconf::nic_update_url(&t, &base, key));
    let mut form = form.unwrap_or_default();
    if form.values.is_empty() {
        form.values = current(&t);
    }
    let mut page = v.page(format!("Tunnel {id}"));
    page.notice = notice;
    v.render(
        &views::TunnelPage {
            page,
            state: StateWords::of(&t),
            heard: views::heard_words(heard, now),
            counters,
            graph: Graph::of(&bars),
            form,
            configs: ClientConfig::all(&t),
            nic_url,
            endpoint: views::endpoint(&t),
            t,
        },
        status,
    )
}

/// The change form filled with the tunnel as it is.
fn current(t: &TunnelOut) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("remote_ipv4", t.remote_ipv4.clone());
    put("remote_port", t.remote_port.map(|p| p.to_string()));
    put("remote_ipv6", t.remote_ipv6.clone());
    put("mtu", Some(t.mtu.to_string()));
    put("state", Some(t.state.clone()));
    m
}

pub async fn show<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Member(v, user): Member,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(id) = id_of(&id) else {
        return v.problem(StatusCode::NOT_FOUND, "There is no such tunnel.");
    };
    let caller = Caller::User(user);
    let shown = Shown {
        notice: notice(&q),
        ..Default::default()
    };
    tunnel_page(&portal, &v, &caller, &headers, id, shown).await
}

pub async fn change<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    posted: Posted,
) -> Response {
    let v = &posted.visitor;
    let (Some(caller), Some(id)) = (v.caller(), id_of(&id)) else {
        return v.problem(StatusCode::NOT_FOUND, "There is no such tunnel.");
    };
    let changed = match as_request::<ChangeIn>(&posted.fields, &CHANGE_FIELDS, &NUMERIC) {
        Ok(req) => ops::changed(&portal.app, &caller, id, req).await,
        Err(e) => Err(e),
    };
    match changed {
        Ok(_) => see(&format!("/tunnels/{id}?done=changed")),
        Err(e) if e.status == StatusCode::NOT_FOUND => v.problem(e.status, e.message),
        Err(e) => {
            let mut form = Form::with(posted.fields.clone());
            form.fail_api(&e, &CHANGE_FIELDS);
            let shown = Shown {
                form: Some(form),
                status: e.status,
                ..Default::default()
            };
            tunnel_page(&portal, v, &caller, &headers, id, shown).await
        }
    }
}

/// `POST /tunnels/{id}/{action}`: `password`, `update-key`, `delete`.
pub async fn act<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    let v = &posted.visitor;
    let (Some(caller), Some(id)) = (v.caller(), id_of(&id)) else {
        return v.problem(StatusCode::NOT_FOUND, "There is no such tunnel.");
    };
    let failed = |e: ApiError| v.problem(e.status, e.message);
    match action.as_str() {
        "password" => match ops::renewed(&portal.app, &caller, id).await {
            Ok(_) => see(&format!("/tunnels/{id}?done=tunnel-password")),
            Err(e) => failed(e),
        },
        // Shown on this answer only: only its hash is kept.
        "update-key" => match ops::new_key(&portal.app, &caller, id).await {
            Ok(key) => {
                let shown = Shown {
                    key: Some(&key),
                    notice: Some("A new update key is in the URL below. It is shown this once: copy it now; the old one no longer works.".into()),
                    ..Default::default()
                };
                tunnel_page(&portal, v, &caller, &headers, id, shown).await
            }
            Err(e) => failed(e),
        },
        "delete" if posted.get("confirm") != Some("yes") => {
            let mut form = Form::default();
            form.fail(Some("confirm"), "Tick the box to confirm the deletion.");
            let shown = Shown {
                form: Some(form),
                status: StatusCode::UNPROCESSABLE_ENTITY,
                ..Default::default()
            };
            tunnel_page(&portal, v, &caller, &headers, id, shown).await
        }
        "delete" => match ops::deleted(&portal.app, &caller, id).await {
            Ok(()) => see("/tunnels?done=deleted"),
            Err(e) => failed(e),
        },
        _ => v.problem(StatusCode::NOT_FOUND, "There is no such page."),
    }
}
