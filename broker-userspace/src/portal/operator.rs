//! The operator's pages: accounts, every tunnel (searched and filtered), PoPs, and the
//! data plane's counters, through the API's operations as the administrator.
use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use broker_common::stats::{DropReason, Event, PassReason, ACTIONS};

use super::{
    forms::{as_request, notice},
    see,
    views::{self, CounterRow, CounterSection, Form, PopRow, Row, UserRow},
    visitor::{Operator, Posted, Visitor},
    Portal,
};
use crate::{
    api::{
        list::ListRequest,
        tunnels::{self as ops, ChangeIn},
        users, ApiError, Caller,
    },
    broker::{Projection, RouteOps},
    store::Store,
};

/// What each XDP verdict of [`ACTIONS`] means here.
const ACTION_WORDS: [&str; 5] = [
    "The program failed on a packet (a bug): dropped.",
    "Dropped: see the drop reasons below.",
    "Handed to the kernel: not tunnel traffic, or for the kernel to finish (see the pass reasons).",
    "Answered out of the interface it came in on (echo replies, Packet Too Big, Time Exceeded).",
    "Forwarded, de- or encapsulated, out of another interface (or to the AYIYA worker's socket).",
];

/// Tunnels on one page of the operator's list.
const PAGE: usize = 100;
/// The filters of the operator's tunnel list, as the API's list names them.
const FILTERS: [&str; 6] = ["owner", "kind", "state", "pop", "endpoint", "prefix"];

/// The visitor of a form, if an operator's.
fn operator_of(posted: &Posted) -> Option<&Visitor> {
    Some(&posted.visitor).filter(|v| v.operator)
}

fn refused(v: &Visitor) -> Response {
    v.problem(StatusCode::NOT_FOUND, "There is no such page.")
}

async fn users_page<S: Store, P: Projection, R: RouteOps>(
    portal: &Portal<S, P, R>,
    v: &Visitor,
    form: Form,
    notice: Option<String>,
    status: StatusCode,
) -> Response {
    let users = {
        let b = portal.app.broker.lock().await;
        let all = match b.store.users() {
            Ok(u) => u,
            Err(e) => return v.problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        all.into_iter()
            .map(|u| UserRow {
                tunnels: b.store.tunnels_of(&u.name).map_or(0, |t| t.len()),
                created: views::date(u.created_at),
                disabled: u.secrets.disabled(),
                operator: portal.is_operator(&u.name),
                name: u.name,
            })
            .collect()
    };
    let mut page = v.page("Accounts");
    page.notice = notice;
    v.render(&views::OpUsers { page, users, form }, status)
}

pub async fn users<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Operator(v): Operator,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    users_page(&portal, &v, Form::default(), notice(&q), StatusCode::OK).await
}

pub async fn create_user<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    posted: Posted,
) -> Response {
    let Some(v) = operator_of(&posted) else {
        return refused(&posted.visitor);
    };
    let name = posted.get("name").unwrap_or_default();
    let made = users::created(&portal.app, &Caller::Admin, name, posted.get("password")).await;
    match made {
        // A generated password is shown this once: only what checks it is kept.
        Ok((u, password)) => {
            let said = if posted.get("password").is_some() {
                format!("Account {} is made.", u.name)
            } else {
                format!(
                    "Account {} is made with the password {password}: hand it over now, it is not shown again.",
                    u.name
                )
            };
            users_page(&portal, v, Form::default(), Some(said), StatusCode::CREATED).await
        }
        Err(e) => {
            let mut form = Form::with(posted.fields.clone());
            form.values.remove("password");
            form.fail_api(&e, &["name", "password"]);
            users_page(&portal, v, form, None, e.status).await
        }
    }
}

/// `POST /operator/users/{name}/{action}`: `disable`, `enable`, `password` (a new one,
/// shown once), `delete`.
pub async fn user_action<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Path((name, action)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    let Some(v) = operator_of(&posted) else {
        return refused(&posted.visitor);
    };
    let admin = Caller::Admin;
    let done: Result<String, ApiError> = match action.as_str() {
        "disable" | "enable" => {
            let off = action == "disable";
            users::set_disabled(&portal.app, &admin, &name, off)
                .await
                .map(|tunnels| {
                    if off {
                        portal.sessions().end_user(&name, None);
                        format!(
                            "Account {name} is disabled, and {} of its tunnels with it.",
                            tunnels.len()
                        )
                    } else {
                        format!("Account {name} is enabled; its tunnels stay disabled until you enable them.")
                    }
                })
        }
        "password" => {
            let password = crate::store::random_token(16);
            users::set_password(&portal.app, &admin, &name, &password)
                .await
                .map(|()| {
                    portal.sessions().end_user(&name, None);
                    format!("Account {name} has the new password {password}: hand it over now, it is not shown again.")
                })
        }
        "delete" => users::deleted(&portal.app, &admin, &name).await.map(|()| {
            portal.sessions().end_user(&name, None);
            format!("Account {name} is deleted.")
        }),
        _ => return refused(v),
    };
    match done {
        Ok(said) => users_page(&portal, v, Form::default(), Some(said), StatusCode::OK).await,
        Err(e) => {
            let mut form = Form::default();
            form.fail(None, e.message.clone());
            users_page(&portal, v, form, None, e.status).await
        }
    }
}

pub async fn tunnels<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Operator(v): Operator,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut query: HashMap<String, String> = q
        .iter()
        .filter(|(k, val)| {
            (FILTERS.contains(&k.as_str()) || k.as_str() == "after") && !val.is_empty()
        })
        .map(|(k, val)| (k.clone(), val.trim().to_string()))
        .collect();
    let filter = Form::with(query.clone());
    query.insert("counters".into(), "true".into());
    query.insert("limit".into(), PAGE.to_string());
    let mut page = v.page("All tunnels");
    page.notice = notice(&q);
    let pops = crate::api::pops::shown(&portal.app, &Caller::Admin)
        .await
        .map(|p| p.into_iter().map(|p| p.name).collect())
        .unwrap_or_default();
    let found = match ListRequest::parse(&query, &Caller::Admin) {
        Ok(req) => crate::api::list::page(&portal.app, &req).await,
        Err(e) => Err(e),
    };
    let (rows, next, filter) = match found {
        Ok(tunnels) => {
            let now = crate::store::now();
            let h = portal.history();
            let rows: Vec<Row> = tunnels
                .iter()
                .map(|t| Row::of(t, h.heard(t.id), now))
                .collect();
            let next = (rows.len() == PAGE).then(|| {
                let mut pairs: Vec<(String, String)> = filter
                    .values
                    .iter()
                    .filter(|(k, _)| k.as_str() != "after")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                pairs.sort();
                pairs.push(("after".into(), rows.last().map_or(0, |r| r.id).to_string()));
                serde_urlencoded::to_string(pairs).unwrap_or_default()
            });
            (rows, next, filter)
        }
        Err(e) => {
            let mut filter = filter;
            filter.fail_api(&e, &FILTERS);
            (Vec::new(), None, filter)
        }
    };
    let status = if filter.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    v.render(
        &views::OpTunnels {
            page,
            filter,
            rows,
            next,
            pops,
        },
        status,
    )
}

/// `POST /operator/tunnels/{id}/{action}`: `disable`, `enable`; back to the list as it
/// was filtered.
pub async fn tunnel_action<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Path((id, action)): Path<(String, String)>,
    posted: Posted,
) -> Response {
    let Some(v) = operator_of(&posted) else {
        return refused(&posted.visitor);
    };
    let state = match action.as_str() {
        "disable" => "disabled",
        "enable" => "up",
        _ => return refused(v),
    };
    let Ok(id) = id.parse::<u32>() else {
        return v.problem(StatusCode::NOT_FOUND, "There is no such tunnel.");
    };
    let fields = HashMap::from([("state".to_string(), state.to_string())]);
    let done = match as_request::<ChangeIn>(&fields, &["state"], &[]) {
        Ok(req) => ops::changed(&portal.app, &Caller::Admin, id, req).await,
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        return v.problem(e.status, e.message);
    }
    // Back to the list as it was: only a query of the list's own filters.
    let back = posted.get("back").unwrap_or_default();
    let query: Vec<(String, String)> = serde_urlencoded::from_str::<Vec<(String, String)>>(back)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| FILTERS.contains(&k.as_str()) || k == "after")
        .chain([("done".to_string(), format!("{action}d"))])
        .collect();
    see(&format!(
        "/operator/tunnels?{}",
        serde_urlencoded::to_string(query).unwrap_or_default()
    ))
}

pub async fn pops<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Operator(v): Operator,
) -> Response {
    match crate::api::pops::shown(&portal.app, &Caller::Admin).await {
        Ok(pops) => {
            let now = crate::store::now();
            let pops = pops.into_iter().map(|p| PopRow::of(p, now)).collect();
            v.render(
                &views::OpPops {
                    page: v.page("PoPs"),
                    pops,
                },
                StatusCode::OK,
            )
        }
        Err(e) => v.problem(e.status, e.message),
    }
}

pub async fn counters<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    Operator(v): Operator,
) -> Response {
    let read = portal.app.broker.lock().await.maps.global_counters();
    let g = match read {
        Ok(g) => g,
        Err(e) => return v.problem(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let row = |name: &'static str, p: broker_common::maps::StatPair, meaning| CounterRow {
        name,
        packets: p.packets,
        bytes: views::bytes(p.bytes),
        // docs/ARCHITECTURE.md's words where it has a row for the name.
        meaning: views::documented(name).unwrap_or(meaning),
    };
    let sections = vec![
        CounterSection {
            title: "XDP verdicts",
            about: "What the data plane did with each packet it saw, since its maps were made.",
            rows: ACTIONS
                .iter()
                .zip(ACTION_WORDS)
                .enumerate()
                .map(|(i, (a, words))| row(a, g.action(i as u32), words))
                .collect(),
        },
        CounterSection {
            title: "Events",
            about: "What the data plane did to packets besides passing or dropping them.",
            rows: Event::ALL
                .iter()
                .map(|e| row(e.as_str(), g.event(*e), e.describe()))
                .collect(),
        },
        CounterSection {
            title: "Drop reasons",
            about: "Why identified tunnel traffic was dropped (docs/ARCHITECTURE.md).",
            rows: DropReason::ALL
                .iter()
                .map(|r| row(r.as_str(), g.dropped(*r), r.describe()))
                .collect(),
        },
        CounterSection {
            title: "Pass reasons",
            about: "Why packets went on to the kernel untouched or to be forwarded by it.",
            rows: PassReason::ALL
                .iter()
                .map(|r| row(r.as_str(), g.passed(*r), r.describe()))
                .collect(),
        },
    ];
    v.render(
        &views::OpCounters {
            page: v.page("Counters"),
            sections,
        },
        StatusCode::OK,
    )
}
