//! `POST /api/v1/tunnels/import`: the operator creates many tunnels in one request (a
//! migration from another broker, a new PoP filled at once).
//!
//! The body is a JSON array of what `POST /api/v1/tunnels` takes, at most [`MAX_ITEMS`]. A
//! body that does not parse creates nothing (422 naming the item and field, e.g.
//! `[3].mtu`); otherwise every item is tried on its own, in one store transaction, and
//! the answer (200) has one element per item, in order: the tunnel as created (its update
//! key shown this once), or `{"error", "field", "status"}`.
use axum::{extract::State, Extension, Json};
use serde_json::{json, Value};

use super::{
    body::Body,
    tunnels::{new_tunnel, out, CreateIn},
    ApiError, AppState, Caller,
};
use crate::broker::{Projection, RouteOps};
use crate::store::Store;

/// Items per request: a body of this many stays under the API's 2 MB body limit.
pub const MAX_ITEMS: usize = 5000;

pub async fn import<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Body(items): Body<Vec<CreateIn>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    if !matches!(caller, Caller::Admin) {
        return Err(ApiError::forbidden("administrator only"));
    }
    if items.len() > MAX_ITEMS {
        return Err(ApiError::unprocessable(
            None,
            format!("{} items: at most {MAX_ITEMS} per request", items.len()),
        ));
    }
    let mut answers: Vec<Option<Value>> = Vec::with_capacity(items.len());
    let mut reqs = Vec::with_capacity(items.len());
    for item in items {
        match new_tunnel(&caller, item) {
            Ok(r) => {
                answers.push(None);
                reqs.push(r);
            }
            Err(e) => answers.push(Some(refusal(e))),
        }
    }
    let mut b = state.broker.lock().await;
    let created = b.import(&reqs).await?;
    let sides = b.sides(created.iter().filter_map(|r| r.as_ref().ok()))?;
    let mut created = created.into_iter();
    Ok(Json(
        answers
            .into_iter()
            .map(|a| match a {
                Some(refused) => refused,
                None => match created.next().expect("one result per request") {
                    Ok(t) => serde_json::to_value(out(&t, &sides.of(&t), false, None))
                        .unwrap_or(Value::Null),
                    Err(e) => refusal(e.into()),
                },
            })
            .collect(),
    ))
}

fn refusal(e: ApiError) -> Value {
    let mut v = json!({"error": e.message, "status": e.status.as_u16()});
    if let Some(f) = e.field {
        v["field"] = json!(f);
    }
    v
}
