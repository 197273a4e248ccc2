//! `GET /api/v1/tunnels`: filtered and paginated, so that a list costs what it returns
//! whatever the number of tunnels.
//!
//! Query: `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]), `after` (an id:
//! the page starts after it), and filters `owner` (a name, or `-` for tunnels nobody
//! owns), `kind`, `state`, `origin`, `endpoint` (the client's address) and `prefix`
//! (tunnels whose link or routed prefix overlaps it; an address is a /128), `counters`.
//! A full page carries `Link: <…?after=ID…>; rel="next"` (RFC 8288); the last page none.
use std::collections::HashMap;

use axum::{
    extract::{Query, State},
    http::{header, HeaderMap, HeaderValue},
    Extension, Json,
};

use super::{tunnels::TunnelOut, ApiError, AppState, Caller};
use crate::{
    broker::{Projection, RouteOps},
    model::{Kind, State as TState},
    store::{Origin, OwnerFilter, Store, TunnelFilter},
};

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// What a list asks for, parsed from the query with an error naming the field.
#[derive(Debug, PartialEq, Eq)]
pub struct ListRequest {
    pub filter: TunnelFilter,
    pub after: Option<u32>,
    pub limit: usize,
    pub counters: bool,
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(Some(field.to_string()), message)
}

impl ListRequest {
    /// A user sees only their own tunnels, whatever `owner` says.
    pub fn parse(q: &HashMap<String, String>, caller: &Caller) -> Result<Self, ApiError> {
        for k in q.keys() {
            if ![
                "limit", "after", "owner", "kind", "state", "origin", "endpoint", "prefix",
                "counters", "pop",
            ]
            .contains(&k.as_str())
            {
                return Err(bad(k, "unknown query parameter"));
            }
        }
        let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let limit = match get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| bad("limit", format!("must be 1 to {MAX_LIMIT}")))?,
        };
        let after = get("after")
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| bad("after", "must be a tunnel id"))
            })
            .transpose()?;
        let owner = match (caller, get("owner")) {
            (Caller::User(me), _) => Some(OwnerFilter::User(me.clone())),
            (Caller::Admin, None) => None,
            (Caller::Admin, Some("-")) => Some(OwnerFilter::Nobody),
            (Caller::Admin, Some(name)) => Some(OwnerFilter::User(name.to_string())),
        };
        let kind = get("kind")
            .map(|v| Kind::parse(v).ok_or_else(|| bad("kind", format!("no kind {v:?}"))))
            .transpose()?;
        let state = get("state")
            .map(|v| TState::parse(v).ok_or_else(|| bad("state", format!("no state {v:?}"))))
            .transpose()?;
        let pop = get("pop")
            .map(|v| {
                crate::store::valid_pop_name(v)
                    .then(|| v.to_string())
                    .ok_or_else(|| bad("pop", format!("{v:?} is not a PoP name")))
            })
            .transpose()?;
        let origin = get("origin")
            .map(|v| Origin::parse(v).ok_or_else(|| bad("origin", format!("no origin {v:?}"))))
            .transpose()?;
        let address = get("endpoint")
            .map(|v| {
                v.parse()
                    .map_err(|_| bad("endpoint", "must be an IP address"))
            })
            .transpose()?;
        let prefix = get("prefix")
            .map(|v| {
                v.parse::<ipnet::Ipv6Net>()
                    .or_else(|_| v.parse::<std::net::Ipv6Addr>().map(Into::into))
                    .map_err(|_| bad("prefix", "must be an IPv6 prefix or address"))
            })
            .transpose()?;
        let counters = match get("counters") {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(bad("counters", "must be true or false")),
        };
        Ok(Self {
            filter: TunnelFilter {
                pop,
                owner,
                origin,
                kind,
                state,
                address,
                prefix,
            },
            after,
            limit,
            counters,
        })
    }
}

/// The query of the next page: this one's, `after` the last id shown.
fn next_query(q: &HashMap<String, String>, last: u32) -> String {
    let mut pairs: Vec<(&str, String)> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "after")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    pairs.push(("after", last.to_string()));
    pairs.sort();
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The page of tunnels `req` asks for (the API, the portal).
pub async fn page<S: Store, P: Projection, R: RouteOps>(
    state: &AppState<S, P, R>,
    req: &ListRequest,
) -> Result<Vec<TunnelOut>, ApiError> {
    let b = state.broker.lock().await;
    let page = b.store.tunnel_page(&req.filter, req.after, req.limit)?;
    let sides = b.sides(&page)?;
    Ok(page
        .iter()
        .map(|t| {
            super::tunnels::out(
                t,
                &sides.of(t),
                b.is_asleep(t.spec.id),
                req.counters.then(|| b.maps.counters(t.spec.id)).flatten(),
            )
        })
        .collect())
}

pub async fn list<S: Store, P: Projection, R: RouteOps>(
    State(state): State<AppState<S, P, R>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(HeaderMap, Json<Vec<TunnelOut>>), ApiError> {
    let req = ListRequest::parse(&q, &caller)?;
    let shown = page(&state, &req).await?;
    let mut headers = HeaderMap::new();
    if let (true, Some(last)) = (shown.len() == req.limit, shown.last()) {
        let link = format!(
            "</api/v1/tunnels?{}>; rel=\"next\"",
            next_query(&q, last.id)
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
    }
    Ok((headers, Json(shown)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_user_sees_only_their_own_and_bad_values_name_their_field() {
        let r = ListRequest::parse(&q(&[("owner", "eve")]), &Caller::User("bob".into())).unwrap();
        assert_eq!(r.filter.owner, Some(OwnerFilter::User("bob".into())));
        let r =
            ListRequest::parse(&q(&[("owner", "-"), ("kind", "ayiya")]), &Caller::Admin).unwrap();
        assert_eq!(r.filter.owner, Some(OwnerFilter::Nobody));
        assert_eq!(r.filter.kind, Some(Kind::Ayiya));
        assert_eq!(r.limit, DEFAULT_LIMIT);
        let r = ListRequest::parse(&q(&[("pop", "pop2")]), &Caller::Admin).unwrap();
        assert_eq!(
            r.filter.pop.as_deref(),
            Some("pop2"),
            "pop is a filter, not unknown"
        );
        let r = ListRequest::parse(&q(&[("prefix", "2001:db8::1")]), &Caller::Admin).unwrap();
        assert_eq!(r.filter.prefix, Some("2001:db8::1/128".parse().unwrap()));
        for (k, v) in [
            ("limit", "0"),
            ("limit", "10001"),
            ("after", "x"),
            ("kind", "sit"),
            ("state", "asleep"),
            ("endpoint", "host"),
            ("prefix", "10.0.0.0/8"),
            ("counters", "1"),
            ("pop", "two words"),
            ("colour", "red"),
        ] {
            let e = ListRequest::parse(&q(&[(k, v)]), &Caller::Admin).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(k), "{k}={v}");
        }
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        let next = next_query(
            &q(&[("kind", "proto41"), ("after", "3"), ("limit", "2")]),
            9,
        );
        assert_eq!(next, "after=9&kind=proto41&limit=2");
    }
}
