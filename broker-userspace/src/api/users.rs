//! `/api/v1/users`: administered by the administrator; a user may read their own entry.
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};

use super::{body::Body, ApiError, AppState, Caller};
use crate::{
    broker::{Projection, RouteOps},
    store::{Store, UserRecord},
};

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserOut {
    pub name: String,
    pub created_at: u64,
    /// No login succeeds (docs/PORTAL.md, "Disabling an account").
    #[serde(default)]
    pub disabled: bool,
    /// Shown once, when the user is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    pub tunnels: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIn {
    name: String,
    /// Generated when absent.
    #[serde(default)]
    password: Option<String>,
}

/// `password`: in clear, only when it was just made.
fn out(u: &UserRecord, tunnels: Vec<u32>, password: Option<String>) -> UserOut {
    UserOut {
        name: u.name.clone(),
        created_at: u.created_at,
        disabled: u.secrets.disabled(),
        password,
        tunnels,
    }
}

/// `PATCH /api/v1/users/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeIn {
    /// The administrator's only.
    #[serde(default)]
    disabled: Option<bool>,
    /// A new password: the user's own, or any the administrator sets.
    #[serde(default)]
    password: Option<String>,
}

pub async fn change<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(req): Body<ChangeIn>,
) -> Result<Json<UserOut>, ApiError> {
    if caller != Caller::Admin && caller != Caller::User(name.clone()) {
        return Err(ApiError::not_found(format!("no user {name:?}")));
    }
    if req.disabled.is_some() {
        // Checked before anything changes: a request is applied whole or not at all.
        admin(&caller)?;
    }
    if let Some(p) = &req.password {
        set_password(&state, &caller, &name, p).await?;
    }
    if let Some(d) = req.disabled {
        set_disabled(&state, &caller, &name, d).await?;
    }
    Ok(Json(user_out(&state, &name).await?))
}

// What the API and the portal do to accounts, for a caller.

/// A new password for `name`: the user's own, or any account's by the administrator.
pub async fn set_password<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    name: &str,
    password: &str,
) -> Result<(), ApiError> {
    if !caller.may_use(Some(name)) {
        return Err(ApiError::not_found(format!("no user {name:?}")));
    }
    Ok(state.broker.lock().await.set_password(name, password)?)
}

/// Disables or enables an account (the administrator's only); the tunnels disabled.
pub async fn set_disabled<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    name: &str,
    disabled: bool,
) -> Result<Vec<u32>, ApiError> {
    admin(caller)?;
    Ok(state
        .broker
        .lock()
        .await
        .set_user_disabled(name, disabled)
        .await?)
}

/// A user as the API shows it (without a password).
async fn user_out<S: Store, P, R>(
    state: &AppState<S, P, R>,
    name: &str,
) -> Result<UserOut, ApiError> {
    let b = state.broker.lock().await;
    let u = b
        .store
        .user(name)?
        .ok_or_else(|| ApiError::not_found(format!("no user {name:?}")))?;
    Ok(out(&u, owned(&b.store, name)?, None))
}

fn admin(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::User(_) => Err(ApiError::forbidden("administrator only")),
    }
}

fn owned<S: Store>(store: &S, name: &str) -> Result<Vec<u32>, ApiError> {
    Ok(store.tunnels_of(name)?.iter().map(|t| t.spec.id).collect())
}

pub async fn list<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<UserOut>>, ApiError> {
    admin(&caller)?;
    let b = state.broker.lock().await;
    let mut all = Vec::new();
    for u in b.store.users()? {
        all.push(out(&u, owned(&b.store, &u.name)?, None));
    }
    Ok(Json(all))
}

pub async fn show<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<UserOut>, ApiError> {
    if caller != Caller::Admin && caller != Caller::User(name.clone()) {
        return Err(ApiError::not_found(format!("no user {name:?}")));
    }
    Ok(Json(user_out(&state, &name).await?))
}

pub async fn create<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<CreateIn>,
) -> Result<Response, ApiError> {
    let (u, password) = created(&state, &caller, &req.name, req.password.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(out(&u, Vec::new(), Some(password))),
    )
        .into_response())
}

/// Makes an account (the administrator's only); the password in clear, generated when
/// none is given.
pub async fn created<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    name: &str,
    password: Option<&str>,
) -> Result<(UserRecord, String), ApiError> {
    admin(caller)?;
    Ok(state.broker.lock().await.create_user(name, password)?)
}

pub async fn delete<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    deleted(&state, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an account that owns no tunnels (the administrator's only).
pub async fn deleted<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    caller: &Caller,
    name: &str,
) -> Result<(), ApiError> {
    admin(caller)?;
    Ok(state.broker.lock().await.delete_user(name)?)
}
