//! The PoPs of a store (docs/MULTI-POP.md): each has a row with what the others need of it
//! (its addresses and pools, so that any PoP can create a tunnel for it) and what an
//! operator reads (version, data plane attached, when last seen), refreshed by the PoP.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    alloc::PoolSet,
    records::{parse, parse_kind, parse_state},
    sql::{params, Sql},
    Home, Result, StoreError,
};
use crate::model::{Kind, State};

/// What a PoP says of itself every few seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopReport {
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// Where its TSP server listens, if it runs one (redirections name it).
    pub tsp: Option<SocketAddr>,
    pub version: String,
    /// Whether its XDP program is attached: a PoP that is not does not forward.
    pub attached: bool,
    pub started_at: u64,
}

/// A PoP as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopRecord {
    pub name: String,
    pub pools: PoolSet,
    /// `None` until the PoP first reported.
    pub report: Option<PopReport>,
    pub last_seen: Option<u64>,
    /// Its tunnels by kind and state (kept by triggers, not counted).
    pub tunnels: Vec<(Kind, State, u64)>,
}

impl PopRecord {
    pub fn tunnel_count(&self) -> u64 {
        self.tunnels.iter().map(|(_, _, n)| n).sum()
    }

    /// Heard from within `within` seconds of `now`, with its data plane attached: what
    /// placement and operators call healthy.
    pub fn healthy(&self, now: u64, within: u64) -> bool {
        self.report.as_ref().is_some_and(|r| r.attached)
            && self
                .last_seen
                .is_some_and(|t| now.saturating_sub(t) <= within)
    }
}

/// A PoP name: one word of letters, digits, '.', '_' and '-' (TIC's `POP Id` is one word,
/// and the name is the first word of a notification).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn split<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split_whitespace().map(|x| parse(x, what)).collect()
}

/// Every tunnel not `?1`'s becomes `?1`'s. Ranges rather than `<>`, which no index serves:
/// a start over a million tunnels that are all this PoP's already finds none at once.
pub(super) const CLAIM_ALL: &str =
    "UPDATE tunnels SET pop = ?1 WHERE pop IS NULL OR pop < ?1 OR pop > ?1";

/// Puts `home` in the PoPs, with its pools, refusing pools that overlap another PoP's
/// (a prefix would be reachable at two PoPs, and announced by both). Tunnels of a store
/// from before PoPs (`pop` NULL) become its own; with `claim_all` (SQLite: the store of one
/// PoP) every tunnel does, so that renaming the PoP keeps them.
pub(super) fn register(db: &dyn Sql, home: &Home, claim_all: bool) -> Result<()> {
    if claim_all {
        // One PoP's store: a row under another name is this PoP's before a rename.
        db.exec("DELETE FROM pops WHERE name <> ?1", params![&home.pop])?;
    }
    for other in rows(db)?.into_iter().filter(|p| p.name != home.pop) {
        let o = &other.pools;
        let overlap = |a: &[Ipv6Net], b: &[Ipv6Net]| {
            a.iter()
                .find(|x| b.iter().any(|y| x.contains(y) || y.contains(*x)))
                .copied()
        };
        let v6 = overlap(&home.pools.link, &o.link)
            .or(overlap(&home.pools.routed, &o.routed))
            .or(overlap(&home.pools.link, &o.routed))
            .or(overlap(&home.pools.routed, &o.link));
        let v4 = match (home.pools.v4v6, o.v4v6) {
            (Some(a), Some(b)) if a.contains(&b.network()) || b.contains(&a.network()) => {
                Some(a.to_string())
            }
            _ => None,
        };
        if let Some(p) = v6.map(|p| p.to_string()).or(v4) {
            return Err(StoreError::Invalid {
                what: format!(
                    "pools: {p} overlaps the pools of PoP {:?}, which shares this store",
                    other.name
                ),
            });
        }
    }
    let p = &home.pools;
    db.exec(
        "INSERT INTO pops (name, link_pools, routed_pools, routed_lengths, v4v6_pool, \
         quarantine_secs) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (name) DO UPDATE SET link_pools = excluded.link_pools, \
         routed_pools = excluded.routed_pools, routed_lengths = excluded.routed_lengths, \
         v4v6_pool = excluded.v4v6_pool, quarantine_secs = excluded.quarantine_secs",
        params![
            &home.pop,
            join(&p.link),
            join(&p.routed),
            join(&p.routed_lengths),
            p.v4v6.map(|n| n.to_string()),
            p.quarantine_secs
        ],
    )?;
    let claimed = if claim_all {
        db.exec(CLAIM_ALL, params![&home.pop])?
    } else {
        db.exec(
            "UPDATE tunnels SET pop = ?1 WHERE pop IS NULL",
            params![&home.pop],
        )?
    };
    if claimed > 0 {
        tracing::info!(pop = %home.pop, tunnels = claimed, "tunnels claimed by this PoP");
    }
    Ok(())
}

/// Refreshes what `pop` says of itself.
pub(super) fn report(db: &dyn Sql, pop: &str, r: &PopReport, now: u64) -> Result<()> {
    db.exec(
        "UPDATE pops SET ipv4 = ?2, ipv6 = ?3, tsp = ?4, version = ?5, attached = ?6, \
         started_at = ?7, last_seen = ?8 WHERE name = ?1",
        params![
            pop,
            r.ipv4.to_string(),
            r.ipv6.map(|a| a.to_string()),
            r.tsp.map(|a| a.to_string()),
            &r.version,
            u8::from(r.attached),
            r.started_at,
            now
        ],
    )?;
    Ok(())
}

/// Every PoP, by name, with its tunnel counts.
pub(super) fn all(db: &dyn Sql) -> Result<Vec<PopRecord>> {
    let mut pops = rows(db)?;
    for (pop, kind, state, n) in census(db)? {
        if let Some(p) = pops.iter_mut().find(|p| p.name == pop) {
            p.tunnels.push((kind, state, n));
        }
    }
    Ok(pops)
}

/// Every PoP, by name, without its tunnel counts.
fn rows(db: &dyn Sql) -> Result<Vec<PopRecord>> {
    db.rows(
        "SELECT name, link_pools, routed_pools, routed_lengths, v4v6_pool, quarantine_secs, \
         ipv4, ipv6, tsp, version, attached, started_at, last_seen FROM pops ORDER BY name",
        params![],
        |r| {
            let pools = PoolSet {
                link: split(&r.get::<String>(1)?, "prefix")?,
                routed: split(&r.get::<String>(2)?, "prefix")?,
                routed_lengths: split(&r.get::<String>(3)?, "length")?,
                v4v6: r
                    .get::<Option<String>>(4)?
                    .map(|n| parse::<Ipv4Net>(&n, "prefix"))
                    .transpose()?,
                quarantine_secs: r.get(5)?,
            };
            let report = match r.get::<Option<String>>(6)? {
                None => None,
                Some(ipv4) => Some(PopReport {
                    ipv4: parse(&ipv4, "IPv4 address")?,
                    ipv6: r
                        .get::<Option<String>>(7)?
                        .map(|a| parse(&a, "IPv6 address"))
                        .transpose()?,
                    tsp: r
                        .get::<Option<String>>(8)?
                        .map(|a| parse(&a, "address"))
                        .transpose()?,
                    version: r.get::<Option<String>>(9)?.unwrap_or_default(),
                    attached: r.get::<u8>(10)? != 0,
                    started_at: r.get::<Option<u64>>(11)?.unwrap_or_default(),
                }),
            };
            Ok(PopRecord {
                name: r.get(0)?,
                pools,
                report,
                last_seen: r.get(12)?,
                tunnels: Vec::new(),
            })
        },
    )
}

/// The pools of PoP `name` (the home's own, or as the PoP registered them).
pub(super) fn pools_of(db: &dyn Sql, home: &Home, name: &str) -> Result<PoolSet> {
    if name == home.pop {
        return Ok(home.pools.clone());
    }
    rows(db)?
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| p.pools)
        .ok_or_else(|| StoreError::NoSuchPop {
            name: name.to_string(),
        })
}

/// Tunnels per PoP, kind and state.
pub(super) fn census(db: &dyn Sql) -> Result<Vec<(String, Kind, State, u64)>> {
    db.rows(
        "SELECT pop, kind, state, n FROM census WHERE n > 0 ORDER BY pop, kind, state",
        params![],
        |r| {
            Ok((
                r.get(0)?,
                parse_kind(&r.get::<String>(1)?)?,
                parse_state(&r.get::<String>(2)?)?,
                r.get(3)?,
            ))
        },
    )
}
