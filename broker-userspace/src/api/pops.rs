//! `/api/v1/pops`: the PoPs of the store, as each last reported itself
//! (docs/MULTI-POP.md, "PoPs are visible"). Users see where they may put a tunnel; the
//! administrator also sees versions, data planes and counts.
use std::collections::BTreeMap;

use axum::{extract::State, Extension, Json};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller};
use crate::{
    broker::{placement::HEALTHY_WITHIN_SECS, Projection, RouteOps},
    store::{PopRecord, Store},
};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PopOut {
    pub name: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// Where its TSP server listens.
    pub tsp: Option<String>,
    /// Reported within 30 s with its data plane attached: new tunnels may go there.
    pub healthy: bool,
    /// The PoP that answered.
    pub this: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<PopDetail>,
}

/// What the administrator also sees.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PopDetail {
    pub version: Option<String>,
    pub attached: bool,
    pub started_at: Option<u64>,
    pub last_seen: Option<u64>,
    pub link_pools: Vec<String>,
    pub routed_pools: Vec<String>,
    /// Tunnels by state (`up`, `down`, `disabled`), every kind together, and the total.
    pub tunnels: BTreeMap<String, u64>,
}

fn out(p: &PopRecord, here: &str, now: u64, admin: bool) -> PopOut {
    let r = p.report.as_ref();
    PopOut {
        name: p.name.clone(),
        ipv4: r.map(|r| r.ipv4.to_string()),
        ipv6: r.and_then(|r| r.ipv6).map(|a| a.to_string()),
        tsp: r.and_then(|r| r.tsp).map(|a| a.to_string()),
        healthy: p.healthy(now, HEALTHY_WITHIN_SECS),
        this: p.name == here,
        detail: admin.then(|| {
            let mut tunnels = BTreeMap::new();
            for (_, state, n) in &p.tunnels {
                *tunnels.entry(state.as_str().to_string()).or_insert(0) += n;
            }
            tunnels.insert("total".into(), p.tunnel_count());
            PopDetail {
                version: r.map(|r| r.version.clone()),
                attached: r.is_some_and(|r| r.attached),
                started_at: r.map(|r| r.started_at),
                last_seen: p.last_seen,
                link_pools: p.pools.link.iter().map(ToString::to_string).collect(),
                routed_pools: p.pools.routed.iter().map(ToString::to_string).collect(),
                tunnels,
            }
        }),
    }
}

pub async fn list<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<PopOut>>, ApiError> {
    Ok(Json(shown(&state, &caller).await?))
}

/// The PoPs as `caller` sees them (the API, the portal).
pub async fn shown<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
) -> Result<Vec<PopOut>, ApiError> {
    let b = state.broker.lock().await;
    let now = crate::store::now();
    let admin = matches!(caller, Caller::Admin);
    Ok(b.store
        .pops()?
        .iter()
        .map(|p| out(p, b.store.pop(), now, admin))
        .collect())
}
