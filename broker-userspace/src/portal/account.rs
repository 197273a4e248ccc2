//! Logging in and out, signing up, changing one's password.
use std::time::Instant;

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::Response,
};
use sha2::{Digest, Sha256};

use super::{
    forms::notice,
    see,
    views::{self, Form},
    visitor::{cookie_names, set_cookie, Member, Posted, Visitor},
    Portal,
};
use crate::{
    api::{self, users, Caller},
    broker::{Projection, RouteOps},
    config::Signup,
    store::Store,
};

pub async fn home(v: Visitor) -> Response {
    v.finish(see(if v.user.is_some() {
        "/tunnels"
    } else {
        "/login"
    }))
}

pub async fn login_form<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    v: Visitor,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if v.user.is_some() {
        return see("/tunnels");
    }
    let mut page = v.page("Log in");
    page.notice = notice(&q);
    v.render(
        &views::Login {
            page,
            form: Form::default(),
            signup: portal.config.signup != Signup::Closed,
        },
        StatusCode::OK,
    )
}

/// Counts a failed login from `v`'s address and waits as the API does.
async fn failed<S, P, R>(portal: &Portal<S, P, R>, v: &Visitor, what: &str) {
    let delay = portal.app.failures().failed(v.peer, Instant::now());
    portal.app.metrics.defended("portal", "login_failed");
    crate::logs::warn_limited(
        "portal_login_failed",
        &format!("portal: {what} from {}", v.peer),
    );
    tokio::time::sleep(delay).await;
}

pub async fn login<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    posted: Posted,
) -> Response {
    let v = &posted.visitor;
    let mut form = Form::with(posted.fields.clone());
    form.values.remove("password");
    let name = posted.get("name").unwrap_or_default().to_string();
    let password = posted.get("password").unwrap_or_default().to_string();
    if name.is_empty() {
        form.fail(Some("name"), "Give your user name.");
    }
    if password.is_empty() {
        form.fail(Some("password"), "Give your password.");
    }
    let signup = portal.config.signup != Signup::Closed;
    if !form.is_ok() {
        let page = v.page("Log in");
        return v.render(
            &views::Login { page, form, signup },
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    match api::password_matches(&portal.app, &name, password).await {
        Ok(true) => {}
        Ok(false) => {
            failed(&portal, v, "failed login").await;
            form.fail(
                Some("password"),
                "Wrong user name or password (or the account is disabled).",
            );
            let page = v.page("Log in");
            return v.render(
                &views::Login { page, form, signup },
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return v.problem(e.status, e.message),
    }
    portal.app.failures().succeeded(&v.peer);
    let account = portal.app.broker.lock().await.store.user(&name);
    let Ok(Some(account)) = account else {
        return v.problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "The account cannot be read now.",
        );
    };
    tracing::info!(user = name, from = %v.peer, "portal login");
    logged_in(&portal, &account, "/tunnels")
}

/// A new session for `account`: its cookie, and on to `to`.
fn logged_in<S, P, R>(
    portal: &Portal<S, P, R>,
    account: &crate::store::UserRecord,
    to: &str,
) -> Response {
    let stamp = crate::portal::session::stamp(account);
    let token = portal
        .sessions()
        .start(&account.name, &stamp, Instant::now());
    let (session_name, _) = cookie_names(portal.secure);
    let mut res = see(to);
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            session_name,
            &token,
            u64::from(portal.config.session_hours) * 3600,
            portal.secure,
        ),
    );
    res
}

pub async fn logout<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    posted: Posted,
) -> Response {
    if let Some(t) = &posted.visitor.token {
        portal.sessions().end(t);
    }
    let (session_name, _) = cookie_names(portal.secure);
    let mut res = see("/login?done=logout");
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(session_name, "", 0, portal.secure),
    );
    res
}

pub async fn signup_form<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    v: Visitor,
) -> Response {
    if portal.config.signup == Signup::Closed {
        return v.problem(
            StatusCode::NOT_FOUND,
            "Accounts are made by the operator here: ask them for one.",
        );
    }
    v.render(
        &views::Signup {
            page: v.page("Sign up"),
            form: Form::default(),
            invite: portal.config.signup == Signup::Invite,
        },
        StatusCode::OK,
    )
}

/// The store's counter that marks an invitation code used (only its hash is named).
fn invite_counter(code: &str) -> String {
    format!(
        "invite:{}",
        crate::secret::hex(Sha256::digest(code.as_bytes()))
    )
}

pub async fn signup<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    posted: Posted,
) -> Response {
    let v = &posted.visitor;
    let mode = portal.config.signup;
    if mode == Signup::Closed {
        return v.problem(
            StatusCode::NOT_FOUND,
            "Accounts are made by the operator here: ask them for one.",
        );
    }
    let invite = mode == Signup::Invite;
    let mut form = Form::with(posted.fields.clone());
    for k in ["password", "password2"] {
        form.values.remove(k);
    }
    let name = posted.get("name").unwrap_or_default().to_string();
    let password = posted.get("password").unwrap_or_default().to_string();
    if !crate::broker::valid_user_name(&name) {
        form.fail(
            Some("name"),
            "1-64 characters of a-z, A-Z, 0-9, '-', '_', '.', '@'.",
        );
    } else if portal.is_operator(&name) {
        // An operator's name is the operator's, also before (or after) their account
        // exists: whoever took it would see the operator's pages.
        form.fail(Some("name"), "This name is taken.");
    }
    if password.len() < 8 {
        form.fail(Some("password"), "At least 8 characters.");
    } else if posted.get("password2") != Some(password.as_str()) {
        form.fail(Some("password2"), "The two passwords differ.");
    }
    let code = posted.get("invite").unwrap_or_default().to_string();
    if invite {
        let known = portal
            .config
            .invite_codes
            .iter()
            .any(|c| crate::secret::same(c, &code));
        let used = {
            let b = portal.app.broker.lock().await;
            b.store.counter(&invite_counter(&code)).unwrap_or(1) > 0
        };
        if !known || used {
            failed(&portal, v, "sign-up with a wrong invitation code").await;
            form.fail(
                Some("invite"),
                "This invitation code is not valid, or was used already.",
            );
        }
    }
    let again = |form: Form, status| {
        v.render(
            &views::Signup {
                page: v.page("Sign up"),
                form,
                invite,
            },
            status,
        )
    };
    if !form.is_ok() {
        return again(form, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let allowed = portal
        .signups
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(&v.peer, Instant::now());
    if !allowed {
        portal.app.metrics.defended("portal", "signup_limited");
        form.fail(
            None,
            "Too many accounts were made from your address lately: try again in an hour.",
        );
        return again(form, StatusCode::TOO_MANY_REQUESTS);
    }
    let made = {
        let mut b = portal.app.broker.lock().await;
        let made = b.create_user(&name, Some(&password));
        if made.is_ok() && invite {
            if let Err(e) = b.store.bump(&invite_counter(&code)) {
                tracing::warn!(error = %e, "marking an invitation code used failed");
            }
        }
        made
    };
    let account = match made {
        Ok((account, _)) => account,
        Err(e) => {
            form.fail_api(&e.into(), &["name", "password"]);
            return again(form, StatusCode::UNPROCESSABLE_ENTITY);
        }
    };
    tracing::info!(user = name, from = %v.peer, "portal sign-up");
    logged_in(&portal, &account, "/tunnels?done=welcome")
}

pub async fn account(
    Member(v, _): Member,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut page = v.page("Account");
    page.notice = notice(&q);
    v.render(
        &views::Account {
            page,
            form: Form::default(),
        },
        StatusCode::OK,
    )
}

pub async fn change_password<S: Store, P: Projection, R: RouteOps>(
    State(portal): State<Portal<S, P, R>>,
    posted: Posted,
) -> Response {
    let v = &posted.visitor;
    let Some(user) = v.user.clone() else {
        return see("/login");
    };
    let mut form = Form::default();
    let current = posted.get("current").unwrap_or_default().to_string();
    let password = posted.get("password").unwrap_or_default().to_string();
    if password.len() < 8 {
        form.fail(Some("password"), "At least 8 characters.");
    } else if posted.get("password2") != Some(password.as_str()) {
        form.fail(Some("password2"), "The two passwords differ.");
    }
    match api::password_matches(&portal.app, &user, current).await {
        Ok(true) => {}
        Ok(false) => {
            failed(&portal, v, "wrong current password").await;
            form.fail(Some("current"), "This is not your current password.");
        }
        Err(e) => return v.problem(e.status, e.message),
    }
    if form.is_ok() {
        let caller = Caller::User(user.clone());
        match users::set_password(&portal.app, &caller, &user, &password).await {
            Ok(()) => {
                // Whoever else held a session of this account is logged out; this one
                // goes on with the account as it is now.
                portal.sessions().end_user(&user, v.token.as_deref());
                let now = portal.app.broker.lock().await.store.user(&user);
                if let (Ok(Some(u)), Some(t)) = (now, &v.token) {
                    portal
                        .sessions()
                        .restamp(t, &crate::portal::session::stamp(&u));
                }
                return see("/account?done=password");
            }
            Err(e) => form.fail_api(&e, &["password"]),
        }
    }
    v.render(
        &views::Account {
            page: v.page("Account"),
            form,
        },
        StatusCode::UNPROCESSABLE_ENTITY,
    )
}
