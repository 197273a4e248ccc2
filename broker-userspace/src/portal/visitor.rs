//! Who is visiting, from the request's cookies: [`Visitor`] for any page, [`Member`] for
//! pages that need a login, [`Operator`] for the operator's, and [`Posted`] for every
//! form, which is refused without the visitor's CSRF token. Every POST handler takes a
//! [`Posted`], so no form can skip the check.
use std::{collections::HashMap, net::IpAddr};

use axum::{
    extract::{ConnectInfo, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::Response,
};

use super::{session, views, Portal};
use crate::{api::Caller, store::Store};

/// A visitor, logged in or not.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub user: Option<String>,
    pub operator: bool,
    /// The session's token, to log out.
    pub(super) token: Option<String>,
    /// What this visitor's forms carry.
    pub csrf: String,
    /// The session's [`session::stamp`].
    stamp: String,
    /// A `csrf` cookie to set: a first visit, before any login.
    new_csrf: bool,
    pub peer: IpAddr,
    secure: bool,
}

/// Cookie names: `__Host-` ones need `Secure`, and cannot be set by a sibling domain.
pub fn cookie_names(secure: bool) -> (&'static str, &'static str) {
    if secure {
        ("__Host-broker_session", "__Host-broker_csrf")
    } else {
        ("broker_session", "broker_csrf")
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, for the whole portal; `max_age` 0 ends
/// it.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

impl Visitor {
    fn of<S, P, R>(portal: &Portal<S, P, R>, headers: &HeaderMap, peer: IpAddr) -> Self {
        let (session_name, csrf_name) = cookie_names(portal.secure);
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join("; ");
        let now = std::time::Instant::now();
        let found = session::cookie(&cookies, session_name)
            .and_then(|t| Some((t.to_string(), portal.sessions().get(t, now)?)));
        let pre = session::cookie(&cookies, csrf_name).filter(|c| c.len() == 32);
        match found {
            Some((token, s)) => Self {
                operator: portal.is_operator(&s.user),
                user: Some(s.user),
                token: Some(token),
                csrf: s.csrf,
                stamp: s.stamp,
                new_csrf: false,
                peer,
                secure: portal.secure,
            },
            None => Self {
                user: None,
                operator: false,
                token: None,
                csrf: pre.map_or_else(session::token, str::to_string),
                stamp: String::new(),
                new_csrf: pre.is_none(),
                peer,
                secure: portal.secure,
            },
        }
    }

    /// The caller the API's operations see: the user (the operator's pages use
    /// [`Caller::Admin`] through [`Operator`]).
    pub fn caller(&self) -> Option<Caller> {
        self.user.clone().map(Caller::User)
    }

    /// What every page shows of the visitor.
    pub fn page(&self, title: impl Into<String>) -> views::Page {
        views::Page {
            title: title.into(),
            user: self.user.clone(),
            operator: self.operator,
            csrf: self.csrf.clone(),
            notice: None,
        }
    }

    /// `res` with the cookie this visitor's forms rely on, if it is new.
    pub fn finish(&self, mut res: Response) -> Response {
        if self.new_csrf {
            let (_, name) = cookie_names(self.secure);
            res.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(name, &self.csrf, 86_400, self.secure),
            );
        }
        res
    }

    /// A rendered page for this visitor.
    pub fn render(&self, t: &impl askama::Template, status: StatusCode) -> Response {
        self.finish(super::html(t, status))
    }

    /// A page that only says what went wrong.
    pub fn problem(&self, status: StatusCode, message: impl Into<String>) -> Response {
        let title = status.canonical_reason().unwrap_or("Error");
        self.render(
            &views::Problem {
                page: self.page(title),
                message: message.into(),
            },
            status,
        )
    }
}

async fn visit<S: Store, P, R>(parts: &mut Parts, portal: &Portal<S, P, R>) -> Visitor
where
    Portal<S, P, R>: Send + Sync,
{
    let from = peer(parts, portal).await;
    let v = Visitor::of(portal, &parts.headers, from);
    still_allowed(portal, v).await
}

/// A session whose account was deleted, disabled or given a new password since (here,
/// through the API, at another PoP) ends at its next request: the visitor is a stranger
/// again.
async fn still_allowed<S: Store, P, R>(portal: &Portal<S, P, R>, v: Visitor) -> Visitor {
    let (Some(user), Some(token)) = (&v.user, &v.token) else {
        return v;
    };
    let found = portal.app.broker.lock().await.store.user(user);
    match found {
        Ok(Some(u)) if !u.secrets.disabled() && session::stamp(&u) == v.stamp => v,
        // A store that cannot be read (PostgreSQL away) does not log anyone out.
        Err(_) => v,
        _ => {
            portal.sessions().end(token);
            Visitor {
                user: None,
                operator: false,
                token: None,
                csrf: session::token(),
                new_csrf: true,
                ..v
            }
        }
    }
}

/// The address the request came from (the listener's, or a test's mock).
async fn peer<St: Send + Sync>(parts: &mut Parts, state: &St) -> IpAddr {
    ConnectInfo::<std::net::SocketAddr>::from_request_parts(parts, state)
        .await
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

impl<S: Store, P: Send + 'static, R: Send + 'static> FromRequestParts<Portal<S, P, R>> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        portal: &Portal<S, P, R>,
    ) -> Result<Self, Self::Rejection> {
        Ok(visit(parts, portal).await)
    }
}

/// A logged-in visitor; others are sent to the login page.
pub struct Member(pub Visitor, pub String);

impl<S: Store, P: Send + 'static, R: Send + 'static> FromRequestParts<Portal<S, P, R>> for Member {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        portal: &Portal<S, P, R>,
    ) -> Result<Self, Self::Rejection> {
        let v = visit(parts, portal).await;
        match v.user.clone() {
            Some(u) => Ok(Member(v, u)),
            None => Err(v.finish(super::see("/login"))),
        }
    }
}

/// An operator (`portal.operators`); anyone else gets "no such page".
pub struct Operator(pub Visitor);

impl Operator {
    pub fn caller(&self) -> Caller {
        Caller::Admin
    }
}

fn not_operator(v: &Visitor) -> Response {
    if v.user.is_none() {
        return v.finish(super::see("/login"));
    }
    v.problem(StatusCode::NOT_FOUND, "There is no such page.")
}

impl<S: Store, P: Send + 'static, R: Send + 'static> FromRequestParts<Portal<S, P, R>>
    for Operator
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        portal: &Portal<S, P, R>,
    ) -> Result<Self, Self::Rejection> {
        let v = visit(parts, portal).await;
        if v.operator {
            Ok(Operator(v))
        } else {
            Err(not_operator(&v))
        }
    }
}

/// A form that carried the visitor's CSRF token, and its fields (an empty value is an
/// absent one).
pub struct Posted {
    pub visitor: Visitor,
    pub fields: HashMap<String, String>,
}

impl Posted {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }
}

impl<S: Store, P: Send + 'static, R: Send + 'static> FromRequest<Portal<S, P, R>> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, portal: &Portal<S, P, R>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let from = peer(&mut parts, portal).await;
        let visitor = still_allowed(portal, Visitor::of(portal, &parts.headers, from)).await;
        let bytes = match axum::body::to_bytes(body, super::BODY_LIMIT).await {
            Ok(b) => b,
            Err(_) => {
                return Err(visitor.problem(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))
            }
        };
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| visitor.problem(StatusCode::BAD_REQUEST, "The form could not be read."))?;
        let mut fields = HashMap::new();
        for (k, v) in pairs {
            if !v.is_empty() {
                fields.insert(k, v);
            }
        }
        // A session's token, or before login the csrf cookie's: never one of a page's
        // own making that the cookie does not hold.
        let expected = (!visitor.new_csrf).then_some(visitor.csrf.as_str());
        if !session::csrf_ok(expected, fields.get("csrf").map(String::as_str)) {
            portal.app.metrics.defended("portal", "csrf");
            crate::logs::warn_limited(
                "portal_csrf",
                &format!(
                    "portal: a form without its CSRF token from {}",
                    visitor.peer
                ),
            );
            return Err(visitor.problem(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this portal. Reload the page and send it again.",
            ));
        }
        fields.remove("csrf");
        Ok(Posted { visitor, fields })
    }
}
