//! Changing tunnels: creation (its prefixes from `allocations`), removal into quarantine,
//! the static tunnels' reconciliation, and the checks that keep endpoints and prefixes
//! unique. Written
//! once over the store's SQL interface ([`super::sql`]) for every engine.
use std::collections::{HashMap, HashSet};

use super::{
    allocations::{allocate, allocate_v4, assign, claim, end_quarantine},
    pops, query, random_token,
    records::{endpoint_columns, TUNNEL_COLUMNS},
    sql::{params, Sql},
    Home, NewTunnel, Origin, Result, StaticSync, StoreError, TunnelChange, TunnelFilter,
    TunnelRecord,
};
use crate::model::{Endpoint, TunnelSpec};

/// Length of generated passwords and update keys.
const TOKEN_LEN: usize = 16;

/// The tunnel (other than `except`) that already has `endpoint`.
pub(super) fn endpoint_owner(
    db: &dyn Sql,
    endpoint: &Endpoint,
    except: Option<u32>,
) -> Result<Option<u32>> {
    let (v4, port, v6) = endpoint_columns(endpoint);
    // Dynamic endpoints not heard from yet are shared by every such tunnel; AYIYA tunnels
    // are told apart by identity, never by endpoint. proto-41 and heartbeat tunnels share
    // one endpoint map.
    if endpoint.is_unspecified() {
        return Ok(None);
    }
    let (sql, kinds) = match endpoint {
        Endpoint::Ipv4(_) => ("remote_v4 = ?1", "('proto41', 'heartbeat')"),
        Endpoint::Udp4(_) => ("remote_v4 = ?1 AND remote_port = ?2", "('v6udpv4')"),
        Endpoint::Ipv6(_) => ("remote_v6 = ?3", "('v4v6')"),
    };
    db.first(
        &format!(
            "SELECT id FROM tunnels WHERE kind IN {kinds} AND {sql} AND (CAST(?4 AS BIGINT) IS NULL OR id <> ?4)"
        ),
        params![v4, port, v6, except],
        |r| r.get(0),
    )
}

/// The next tunnel id: ids only grow, so a deleted tunnel's id is never handed out again.
fn next_id(db: &dyn Sql) -> Result<u32> {
    let counter = get_counter(db, "next_tunnel_id")?;
    let max: Option<u32> = db
        .first("SELECT MAX(id) FROM tunnels", params![], |r| r.get(0))?
        .flatten();
    let id = counter.max(u64::from(max.unwrap_or(0)) + 1).max(1);
    set_counter(db, "next_tunnel_id", id + 1)?;
    u32::try_from(id).map_err(|_| StoreError::Corrupt {
        what: "tunnel ids exhausted".into(),
    })
}

pub(super) fn get_counter(db: &dyn Sql, name: &str) -> Result<u64> {
    Ok(db
        .first(
            "SELECT value FROM counters WHERE name = ?1",
            params![name],
            |r| r.get::<u64>(0),
        )?
        .unwrap_or(0))
}

pub(super) fn set_counter(db: &dyn Sql, name: &str, value: u64) -> Result<()> {
    db.exec(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) \
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

fn insert_tunnel(db: &dyn Sql, r: &TunnelRecord) -> Result<()> {
    let s = &r.spec;
    let (v4, port, v6) = endpoint_columns(&s.endpoint);
    db.exec(
        &format!(
            "INSERT INTO tunnels ({TUNNEL_COLUMNS}, update_key) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, '')"
        ),
        params![
            s.id,
            r.owner.as_deref(),
            r.origin.as_str(),
            s.kind.as_str(),
            s.state.as_str(),
            v4,
            port,
            v6,
            s.link_prefix.map(|p| p.to_string()),
            s.client_v4.map(|a| a.to_string()),
            s.mtu,
            s.keepalive,
            r.expires_at,
            &r.password,
            &r.update_key_hash,
            r.created_at,
            r.updated_at,
            &r.pop
        ],
    )?;
    for p in &s.routed_prefixes {
        db.exec(
            "INSERT INTO routed (tunnel_id, prefix) VALUES (?1, ?2)",
            params![s.id, p.to_string()],
        )?;
    }
    Ok(())
}

/// Removes a tunnel's rows; its prefixes and inner address go into quarantine.
fn remove_tunnel(db: &dyn Sql, id: u32, now: u64) -> Result<()> {
    db.exec("DELETE FROM routed WHERE tunnel_id = ?1", params![id])?;
    db.exec("DELETE FROM tunnels WHERE id = ?1", params![id])?;
    free(db, id, now)
}

/// Puts a tunnel's prefixes and inner address into quarantine.
fn free(db: &dyn Sql, id: u32, now: u64) -> Result<()> {
    db.exec(
        "UPDATE allocations SET tunnel_id = NULL, freed_at = ?1 WHERE tunnel_id = ?2",
        params![now, id],
    )?;
    db.exec(
        "UPDATE v4_allocations SET tunnel_id = NULL, freed_at = ?1 WHERE tunnel_id = ?2",
        params![now, id],
    )?;
    Ok(())
}

/// Creates one tunnel inside the caller's transaction or savepoint.
pub(super) fn create_in(
    db: &dyn Sql,
    home: &Home,
    req: &NewTunnel,
    now: u64,
) -> Result<TunnelRecord> {
    let pop = req.pop.as_deref().unwrap_or(&home.pop);
    let pools = &pops::pools_of(db, home, pop)?;
    if let Some(owner) = &req.owner {
        let exists: Option<String> = db.first(
            "SELECT name FROM users WHERE name = ?1",
            params![owner],
            |r| r.get(0),
        )?;
        if exists.is_none() {
            return Err(StoreError::NoSuchUser {
                name: owner.clone(),
            });
        }
    }
    if !req.endpoint.fits(req.kind) {
        return Err(StoreError::Invalid {
            what: format!(
                "a {} tunnel cannot have the endpoint {}",
                req.kind.as_str(),
                req.endpoint
            ),
        });
    }
    if let Some(id) = endpoint_owner(db, &req.endpoint, None)? {
        return Err(StoreError::DuplicateEndpoint {
            remote: req.endpoint,
            id,
        });
    }
    let ipv6 = req.kind.carries_ipv6();
    let asked_len = req
        .routed_prefix
        .map(|p| p.prefix_len())
        .or(req.routed_length);
    if !ipv6 && (asked_len.is_some() || req.link_prefix.is_some()) {
        return Err(StoreError::Invalid {
            what: "v4v6 tunnels have no IPv6 prefixes".into(),
        });
    }
    if let Some(len) = asked_len {
        if !pools.routed_lengths.contains(&len) {
            return Err(StoreError::LengthNotOffered {
                len,
                offered: pools.routed_lengths.clone(),
            });
        }
    }
    end_quarantine(db, pools, now)?;
    let id = next_id(db)?;
    let link = match req.link_prefix {
        _ if !ipv6 => None,
        Some(p) if p.prefix_len() == 64 => Some(claim(db, "link", &pools.link, p)?),
        Some(p) => {
            return Err(StoreError::OutsidePool {
                pool: "link",
                prefix: p,
            })
        }
        None => Some(allocate(db, pop, "link", &pools.link, 64)?),
    };
    let routed = match (req.routed_prefix, req.routed_length) {
        (Some(p), _) => vec![claim(db, "routed", &pools.routed, p)?],
        (None, Some(len)) => vec![allocate(db, pop, "routed", &pools.routed, len)?],
        (None, None) => Vec::new(),
    };
    let client_v4 = if ipv6 {
        None
    } else {
        Some(allocate_v4(db, pools, id)?)
    };
    let update_key = random_token(TOKEN_LEN);
    let record = TunnelRecord {
        spec: TunnelSpec {
            id,
            kind: req.kind,
            state: req.state,
            endpoint: req.endpoint,
            link_prefix: link,
            routed_prefixes: routed,
            client_v4,
            mtu: req.mtu,
            keepalive: req.keepalive,
            ayiya_key: None,
        },
        pop: pop.to_string(),
        owner: req.owner.clone(),
        origin: req.origin,
        password: random_token(TOKEN_LEN),
        update_key: Some(update_key.clone()),
        update_key_hash: crate::secret::hash_key(&update_key),
        created_at: now,
        updated_at: now,
        expires_at: req.expires_at,
    };
    insert_tunnel(db, &record)?;
    for p in record.spec.prefixes() {
        assign(db, &p, id)?;
    }
    Ok(record)
}

/// Refuses a static tunnel being added or changed that would take what a run-time tunnel
/// (or another PoP's) has: its id, its endpoint, or a prefix overlapping one of its
/// prefixes.
fn check_static(db: &dyn Sql, pop: &str, w: &TunnelSpec, is_static: bool) -> Result<()> {
    let runtime = |id: u32| -> Result<bool> {
        Ok(query::one(db, id)?.is_some_and(|r| r.origin != Origin::Static || r.pop != pop))
    };
    if !is_static && runtime(w.id)? {
        return Err(StoreError::IdTaken { id: w.id });
    }
    if let Some(other) = endpoint_owner(db, &w.endpoint, Some(w.id))? {
        // proto-41 and heartbeat tunnels share one endpoint map.
        if runtime(other)? {
            return Err(StoreError::DuplicateEndpoint {
                remote: w.endpoint,
                id: other,
            });
        }
    }
    for p in w.prefixes() {
        let filter = TunnelFilter {
            prefix: Some(p),
            ..Default::default()
        };
        let overlapping = query::page(db, &filter, None, 64)?;
        if let Some(other) = overlapping.iter().find(|r| {
            (r.origin != Origin::Static || r.pop != pop)
                && r.spec.id != w.id
                && r.spec.prefixes().any(|q| q.contains(&p) || p.contains(&q))
        }) {
            return Err(StoreError::PrefixTaken {
                prefix: p,
                id: w.id,
                other: other.spec.id,
            });
        }
    }
    Ok(())
}

/// [`Store::create_tunnels`](super::Store::create_tunnels): one savepoint per request, so
/// that a refused request leaves nothing and the others stay.
pub(super) fn create_many(
    db: &dyn Sql,
    home: &Home,
    reqs: &[NewTunnel],
    now: u64,
) -> Result<Vec<Result<TunnelRecord>>> {
    let mut out = Vec::with_capacity(reqs.len());
    for req in reqs {
        db.exec("SAVEPOINT one_tunnel", params![])?;
        let r = create_in(db, home, req, now);
        if r.is_err() {
            db.exec("ROLLBACK TO SAVEPOINT one_tunnel", params![])?;
        }
        db.exec("RELEASE SAVEPOINT one_tunnel", params![])?;
        out.push(r);
    }
    Ok(out)
}

pub(super) fn update(
    db: &dyn Sql,
    home: &Home,
    id: u32,
    change: &TunnelChange,
    now: u64,
) -> Result<TunnelRecord> {
    let Some(mut record) = query::one(db, id)? else {
        return Err(StoreError::NoSuchTunnel { id });
    };
    if let Some(to) = change.pop.as_deref().filter(|to| *to != record.pop) {
        if record.origin == Origin::Static {
            return Err(StoreError::Invalid {
                what: format!(
                    "tunnel {id} is declared in PoP {}'s configuration: it moves by \
                     moving it there",
                    record.pop
                ),
            });
        }
        renumber(db, home, &mut record, to, now)?;
    }
    let pools = &pops::pools_of(db, home, &record.pop)?;
    let spec = &mut record.spec;
    if let Some(kind) = change.kind {
        if kind.carries_ipv6() != spec.kind.carries_ipv6() {
            return Err(StoreError::Invalid {
                what: format!(
                    "tunnel {id} cannot change from {} to {}",
                    spec.kind.as_str(),
                    kind.as_str()
                ),
            });
        }
        spec.kind = kind;
    }
    if let Some(endpoint) = change.endpoint {
        spec.endpoint = endpoint;
    }
    if !spec.endpoint.fits(spec.kind) {
        return Err(StoreError::Invalid {
            what: format!(
                "a {} tunnel cannot have the endpoint {}",
                spec.kind.as_str(),
                spec.endpoint
            ),
        });
    }
    if let Some(other) = endpoint_owner(db, &spec.endpoint, Some(id))? {
        return Err(StoreError::DuplicateEndpoint {
            remote: spec.endpoint,
            id: other,
        });
    }
    if let Some(state) = change.state {
        spec.state = state;
    }
    if let Some(mtu) = change.mtu {
        spec.mtu = mtu;
    }
    if let Some(k) = change.keepalive {
        spec.keepalive = k;
    }
    if let Some(e) = change.expires_at {
        record.expires_at = e;
    }
    if let Some(p) = &change.password {
        record.password = p.clone();
    }
    if let Some(len) = change.add_routed_length {
        if spec.routed_prefixes.is_empty() {
            if !spec.kind.carries_ipv6() {
                return Err(StoreError::Invalid {
                    what: "v4v6 tunnels have no IPv6 prefixes".into(),
                });
            }
            if !pools.routed_lengths.contains(&len) {
                return Err(StoreError::LengthNotOffered {
                    len,
                    offered: pools.routed_lengths.clone(),
                });
            }
            end_quarantine(db, pools, now)?;
            let p = allocate(db, &record.pop, "routed", &pools.routed, len)?;
            assign(db, &p, id)?;
            db.exec(
                "INSERT INTO routed (tunnel_id, prefix) VALUES (?1, ?2)",
                params![id, p.to_string()],
            )?;
            spec.routed_prefixes.push(p);
        }
    }
    record.updated_at = now;
    let spec = &record.spec;
    let (v4, port, v6) = endpoint_columns(&spec.endpoint);
    db.exec(
        "UPDATE tunnels SET kind = ?1, remote_v4 = ?2, remote_port = ?3, remote_v6 = ?4, \
         state = ?5, mtu = ?6, keepalive = ?7, expires_at = ?8, updated_at = ?9, pop = ?11, \
         link_prefix = ?12, client_v4 = ?13, password = ?14 WHERE id = ?10",
        params![
            spec.kind.as_str(),
            v4,
            port,
            v6,
            spec.state.as_str(),
            spec.mtu,
            spec.keepalive,
            record.expires_at,
            now,
            id,
            &record.pop,
            spec.link_prefix.map(|p| p.to_string()),
            spec.client_v4.map(|a| a.to_string()),
            &record.password
        ],
    )?;
    Ok(record)
}

/// Moves `record` to PoP `to`: a new link /64 and routed prefixes of the same lengths (or,
/// for v4v6, a new inner IPv4) from that PoP's pools, since each PoP announces only its
/// own; the old ones go into quarantine. The caller writes the tunnel's row.
fn renumber(
    db: &dyn Sql,
    home: &Home,
    record: &mut TunnelRecord,
    to: &str,
    now: u64,
) -> Result<()> {
    let pools = pops::pools_of(db, home, to)?;
    let id = record.spec.id;
    let spec = &mut record.spec;
    for p in &spec.routed_prefixes {
        if !pools.routed_lengths.contains(&p.prefix_len()) {
            return Err(StoreError::LengthNotOffered {
                len: p.prefix_len(),
                offered: pools.routed_lengths.clone(),
            });
        }
    }
    free(db, id, now)?;
    db.exec("DELETE FROM routed WHERE tunnel_id = ?1", params![id])?;
    // The row keeps its old link /64 until the caller's update: free it now (UNIQUE).
    db.exec(
        "UPDATE tunnels SET link_prefix = NULL, client_v4 = NULL WHERE id = ?1",
        params![id],
    )?;
    end_quarantine(db, &pools, now)?;
    if spec.link_prefix.is_some() {
        let link = allocate(db, to, "link", &pools.link, 64)?;
        assign(db, &link, id)?;
        spec.link_prefix = Some(link);
    }
    let mut routed = Vec::with_capacity(spec.routed_prefixes.len());
    for old in &spec.routed_prefixes {
        let p = allocate(db, to, "routed", &pools.routed, old.prefix_len())?;
        assign(db, &p, id)?;
        db.exec(
            "INSERT INTO routed (tunnel_id, prefix) VALUES (?1, ?2)",
            params![id, p.to_string()],
        )?;
        routed.push(p);
    }
    spec.routed_prefixes = routed;
    if spec.client_v4.is_some() {
        spec.client_v4 = Some(allocate_v4(db, &pools, id)?);
    }
    record.pop = to.to_string();
    Ok(())
}

pub(super) fn delete(db: &dyn Sql, id: u32, now: u64) -> Result<TunnelRecord> {
    let Some(record) = query::one(db, id)? else {
        return Err(StoreError::NoSuchTunnel { id });
    };
    remove_tunnel(db, id, now)?;
    Ok(record)
}

pub(super) fn discard(db: &dyn Sql, id: u32) -> Result<()> {
    db.exec("DELETE FROM routed WHERE tunnel_id = ?1", params![id])?;
    if db.exec("DELETE FROM tunnels WHERE id = ?1", params![id])? == 0 {
        return Err(StoreError::NoSuchTunnel { id });
    }
    db.exec("DELETE FROM allocations WHERE tunnel_id = ?1", params![id])?;
    db.exec(
        "DELETE FROM v4_allocations WHERE tunnel_id = ?1",
        params![id],
    )?;
    Ok(())
}

pub(super) fn restore(db: &dyn Sql, record: &TunnelRecord) -> Result<()> {
    insert_tunnel(db, record)?;
    for p in record.spec.prefixes() {
        assign(db, &p, record.spec.id)?;
    }
    if let Some(a) = record.spec.client_v4 {
        db.exec(
            "INSERT INTO v4_allocations (addr, tunnel_id) VALUES (?1, ?2) \
             ON CONFLICT(addr) DO UPDATE SET tunnel_id = excluded.tunnel_id, freed_at = NULL",
            params![u32::from(a), record.spec.id],
        )?;
    }
    Ok(())
}

pub(super) fn sync_static(
    db: &dyn Sql,
    home: &Home,
    wanted: &[TunnelSpec],
    now: u64,
) -> Result<StaticSync> {
    let existing: HashMap<u32, TunnelRecord> = query::page(
        db,
        &TunnelFilter {
            pop: Some(home.pop.clone()),
            origin: Some(Origin::Static),
            ..Default::default()
        },
        None,
        usize::MAX,
    )?
    .into_iter()
    .map(|r| (r.spec.id, r))
    .collect();
    let mut report = StaticSync::default();
    for w in wanted {
        let current = existing.get(&w.id);
        if current.is_some_and(|c| c.spec == *w) {
            // Checked when it was added or last changed; run-time creations check
            // against it.
            continue;
        }
        check_static(db, &home.pop, w, current.is_some())?;
        match current {
            Some(c) => {
                let record = TunnelRecord {
                    spec: w.clone(),
                    updated_at: now,
                    ..c.clone()
                };
                db.exec("DELETE FROM routed WHERE tunnel_id = ?1", params![w.id])?;
                db.exec("DELETE FROM tunnels WHERE id = ?1", params![w.id])?;
                insert_tunnel(db, &record)?;
                report.changed.push(w.id);
            }
            None => {
                insert_tunnel(
                    db,
                    &TunnelRecord {
                        spec: w.clone(),
                        pop: home.pop.clone(),
                        owner: None,
                        origin: Origin::Static,
                        password: random_token(TOKEN_LEN),
                        update_key: None,
                        update_key_hash: crate::secret::hash_key(&random_token(TOKEN_LEN)),
                        created_at: now,
                        updated_at: now,
                        expires_at: None,
                    },
                )?;
                report.added.push(w.id);
            }
        }
    }
    let kept: HashSet<u32> = wanted.iter().map(|w| w.id).collect();
    let mut gone: Vec<u32> = existing
        .keys()
        .filter(|id| !kept.contains(id))
        .copied()
        .collect();
    gone.sort_unstable();
    for id in gone {
        db.exec("DELETE FROM routed WHERE tunnel_id = ?1", params![id])?;
        db.exec("DELETE FROM tunnels WHERE id = ?1", params![id])?;
        report.removed.push(id);
    }
    if let Some(max) = wanted.iter().map(|w| u64::from(w.id)).max() {
        if get_counter(db, "next_tunnel_id")? <= max {
            set_counter(db, "next_tunnel_id", max + 1)?;
        }
    }
    Ok(report)
}

/// Update keys an older version kept in clear (index `tunnels_key_in_clear`).
pub(super) const KEYS_IN_CLEAR: &str =
    "SELECT id, update_key FROM tunnels WHERE update_key_hash IS NULL ORDER BY id";

pub(super) fn keys_in_clear(db: &dyn Sql) -> Result<Vec<(u32, String)>> {
    db.rows(KEYS_IN_CLEAR, params![], |r| Ok((r.get(0)?, r.get(1)?)))
}

pub(super) fn set_update_key_hash(db: &dyn Sql, id: u32, hash: &str) -> Result<()> {
    let n = db.exec(
        "UPDATE tunnels SET update_key_hash = ?2, update_key = '' WHERE id = ?1",
        params![id, hash],
    )?;
    if n == 0 {
        return Err(StoreError::NoSuchTunnel { id });
    }
    Ok(())
}

/// Adds one to a named counter kept across restarts; the new value.
pub(super) fn bump(db: &dyn Sql, counter: &str) -> Result<u64> {
    let v = get_counter(db, counter)? + 1;
    set_counter(db, counter, v)?;
    Ok(v)
}
