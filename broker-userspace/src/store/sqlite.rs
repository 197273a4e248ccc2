//! The embedded store: one SQLite file (WAL journal, so a killed process loses nothing it
//! committed). Every trait method is one transaction.
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use ipnet::Ipv6Net;
use rusqlite::{params, Connection, OptionalExtension};

use super::{
    alloc::{self, PoolSet},
    random_token, schema, NewTunnel, Origin, Result, StaticSync, Store, StoreError, TunnelChange,
    TunnelFilter, TunnelRecord, UserRecord,
};
use crate::{
    model::{Endpoint, Kind, State, TunnelSpec},
    secret::UserSecrets,
};

/// Runs `sql` through the connection's statement cache: the hot paths (a creation, an
/// update) run the same few statements for every tunnel, and parsing them each time was
/// most of what a creation cost.
fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(p)
}

/// [`exec`] for a query of one row.
fn one_row<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(p, f)
}

/// Update keys an older version kept in clear (index `tunnels_key_in_clear`).
const KEYS_IN_CLEAR: &str =
    "SELECT id, update_key FROM tunnels WHERE update_key_hash IS NULL ORDER BY id";

/// Length of generated passwords and update keys.
const TOKEN_LEN: usize = 16;

pub struct SqliteStore {
    conn: Connection,
    pools: PoolSet,
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) and migrates the store at `path`.
    pub fn open(path: &Path, pools: PoolSet) -> Result<Self> {
        super::files::prepare(path).map_err(|e| StoreError::Files {
            path: path.display().to_string(),
            source: e,
        })?;
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::init(conn, pools)
    }

    /// Reads the tunnels `what` names and the generation they belong to, in one read
    /// transaction on a read-only connection of its own, on a thread of its own (a start,
    /// while the data plane loads; [`super::Preloaded`]).
    pub fn preload(
        path: &Path,
        what: super::Ahead,
    ) -> std::thread::JoinHandle<Result<super::Preloaded>> {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let conn = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
            let tx = conn.unchecked_transaction()?;
            let generation = query::generation(&tx)?;
            let tunnels = match what {
                super::Ahead::All => all_in_two(&path, &tx, generation)?,
                super::Ahead::Watched => query::watched(&tx)?,
            };
            Ok(super::Preloaded {
                what,
                generation,
                tunnels,
            })
        })
    }

    /// A store that lives in memory (tests).
    pub fn in_memory(pools: PoolSet) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, pools)
    }

    fn init(mut conn: Connection, pools: PoolSet) -> Result<Self> {
        conn.pragma_update(None, "foreign_keys", false)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Deleted and overwritten content is zeroed, not left in free pages (secrets).
        conn.pragma_update(None, "secure_delete", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of the hot paths stays prepared ([`exec`]).
        conn.set_prepared_statement_cache_capacity(128);
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(Self { conn, pools })
    }
}

/// Ids spanning fewer than this are read on one connection: a second one costs more than
/// it saves.
const SPLIT_FROM: u32 = 10_000;

/// Every tunnel, the lower half of the ids read on a second connection and thread: at a
/// million tunnels a cold start waits for this read once the maps are created. Both
/// halves must come from the same generation (`generation`, that of `tx`), or `tx`
/// reads them all.
fn all_in_two(
    path: &Path,
    tx: &rusqlite::Transaction,
    generation: (i64, u64),
) -> Result<Vec<TunnelRecord>> {
    let (lo, hi): (Option<u32>, Option<u32>) =
        tx.query_row("SELECT MIN(id), MAX(id) FROM tunnels", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(Vec::new());
    };
    if hi - lo < SPLIT_FROM {
        return query::all(tx);
    }
    let mid = lo + (hi - lo) / 2;
    let path = path.to_path_buf();
    let lower = std::thread::spawn(move || -> Result<_> {
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let tx = conn.unchecked_transaction()?;
        Ok((query::generation(&tx)?, query::ids(&tx, 0, mid)?))
    });
    let mut upper = query::ids(tx, mid + 1, u32::MAX)?;
    match lower.join() {
        Ok(Ok((g, mut tunnels))) if g == generation => {
            tunnels.append(&mut upper);
            Ok(tunnels)
        }
        // Written in between, or failed: the one transaction's view.
        _ => query::all(tx),
    }
}

fn parse_kind(s: &str) -> Result<Kind> {
    Kind::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: format!("unknown tunnel kind {s:?}"),
    })
}

fn parse_state(s: &str) -> Result<State> {
    State::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: format!("unknown tunnel state {s:?}"),
    })
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what: format!("{what} {s:?}"),
    })
}

const TUNNEL_COLUMNS: &str = "id, owner, origin, kind, state, remote_v4, remote_port, remote_v6, \
                              link_prefix, client_v4, mtu, keepalive, expires_at, password, \
                              update_key_hash, created_at, updated_at";

/// The columns of `tunnels` as read, before the routed prefixes are joined in.
struct Row {
    id: u32,
    owner: Option<String>,
    origin: String,
    kind: String,
    state: String,
    remote_v4: Option<String>,
    remote_port: Option<u16>,
    remote_v6: Option<String>,
    link_prefix: Option<String>,
    client_v4: Option<String>,
    mtu: u16,
    keepalive: Option<u32>,
    expires_at: Option<u64>,
    password: String,
    update_key_hash: Option<String>,
    created_at: u64,
    updated_at: u64,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        owner: r.get(1)?,
        origin: r.get(2)?,
        kind: r.get(3)?,
        state: r.get(4)?,
        remote_v4: r.get(5)?,
        remote_port: r.get(6)?,
        remote_v6: r.get(7)?,
        link_prefix: r.get(8)?,
        client_v4: r.get(9)?,
        mtu: r.get(10)?,
        keepalive: r.get(11)?,
        expires_at: r.get(12)?,
        password: r.get(13)?,
        update_key_hash: r.get(14)?,
        created_at: r.get(15)?,
        updated_at: r.get(16)?,
    })
}

fn required<'a>(v: &'a Option<String>, what: &str, id: u32) -> Result<&'a str> {
    v.as_deref().ok_or_else(|| StoreError::Corrupt {
        what: format!("tunnel {id} has no {what}"),
    })
}

fn record(r: Row, routed: Vec<Ipv6Net>) -> Result<TunnelRecord> {
    let kind = parse_kind(&r.kind)?;
    let endpoint = match kind {
        Kind::Proto41 | Kind::Heartbeat => Endpoint::Ipv4(parse(
            required(&r.remote_v4, "remote_v4", r.id)?,
            "IPv4 address",
        )?),
        Kind::V6Udp4 | Kind::Ayiya => Endpoint::Udp4(SocketAddrV4::new(
            parse(required(&r.remote_v4, "remote_v4", r.id)?, "IPv4 address")?,
            r.remote_port.ok_or_else(|| StoreError::Corrupt {
                what: format!("tunnel {} has no remote_port", r.id),
            })?,
        )),
        Kind::V4In6 => Endpoint::Ipv6(parse(
            required(&r.remote_v6, "remote_v6", r.id)?,
            "IPv6 address",
        )?),
    };
    Ok(TunnelRecord {
        spec: TunnelSpec {
            id: r.id,
            kind,
            state: parse_state(&r.state)?,
            endpoint,
            link_prefix: r
                .link_prefix
                .as_deref()
                .map(|p| parse(p, "prefix"))
                .transpose()?,
            routed_prefixes: routed,
            client_v4: r
                .client_v4
                .as_deref()
                .map(|a| parse(a, "IPv4 address"))
                .transpose()?,
            mtu: r.mtu,
            keepalive: r.keepalive,
            ayiya_key: None,
        },
        owner: r.owner,
        origin: Origin::parse(&r.origin).ok_or_else(|| StoreError::Corrupt {
            what: format!("unknown origin {:?}", r.origin),
        })?,
        password: r.password,
        update_key: None,
        // Empty only for a store of before version 3 not yet upgraded: nothing matches.
        update_key_hash: r.update_key_hash.unwrap_or_default(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        expires_at: r.expires_at,
    })
}

/// The endpoint columns (`remote_v4`, `remote_port`, `remote_v6`) of an endpoint.
fn endpoint_columns(e: &Endpoint) -> (Option<String>, Option<u16>, Option<String>) {
    let (v4, port, v6) = e.parts();
    (v4.map(|a| a.to_string()), port, v6.map(|a| a.to_string()))
}

/// The tunnel (other than `except`) that already has `endpoint`.
fn endpoint_owner(
    tx: &Connection,
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
    Ok(one_row(
        tx,
        &format!("SELECT id FROM tunnels WHERE kind IN {kinds} AND {sql} AND id IS NOT ?4"),
        params![v4, port, v6, except],
        |r| r.get(0),
    )
    .optional()?)
}

/// Hands out a free v4v6 inner address for tunnel `id`: the lowest one neither held nor
/// in quarantine.
fn allocate_v4(tx: &Connection, pools: &PoolSet, id: u32) -> Result<Ipv4Addr> {
    let pool = pools.v4v6.ok_or(StoreError::NoPool { pool: "v4v6" })?;
    let taken: HashSet<u32> = {
        let mut q = tx.prepare("SELECT addr FROM v4_allocations")?;
        let rows = q.query_map([], |r| r.get::<_, u32>(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let addr =
        alloc::v4_hosts(&pool)
            .find(|a| !taken.contains(a))
            .ok_or(StoreError::PoolExhausted {
                pool: "v4v6",
                len: 32,
            })?;
    exec(
        tx,
        "INSERT INTO v4_allocations (addr, tunnel_id) VALUES (?1, ?2)",
        params![addr, id],
    )?;
    Ok(addr.into())
}

/// The next tunnel id: ids only grow, so a deleted tunnel's id is never handed out again.
fn next_id(tx: &Connection) -> Result<u32> {
    let counter = get_counter(tx, "next_tunnel_id")?;
    let max: Option<u32> = one_row(tx, "SELECT MAX(id) FROM tunnels", [], |r| r.get(0))?;
    let id = counter.max(u64::from(max.unwrap_or(0)) + 1).max(1);
    set_counter(tx, "next_tunnel_id", id + 1)?;
    u32::try_from(id).map_err(|_| StoreError::Corrupt {
        what: "tunnel ids exhausted".into(),
    })
}

fn get_counter(conn: &Connection, name: &str) -> Result<u64> {
    Ok(one_row(
        conn,
        "SELECT value FROM counters WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}

fn set_counter(conn: &Connection, name: &str, value: u64) -> Result<()> {
    exec(
        conn,
        "INSERT INTO counters (name, value) VALUES (?1, ?2) \
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value as i64],
    )?;
    Ok(())
}

/// Finds and records a free prefix of length `len` in `pools`, starting where the previous
/// search of this length stopped and wrapping around once. Allocations never overlap: the
/// one allocation that could overlap a candidate is the one starting closest below its end.
fn allocate(tx: &Connection, kind: &'static str, pools: &[Ipv6Net], len: u8) -> Result<Ipv6Net> {
    let block = alloc::block(len);
    let cursor: Option<i64> = one_row(
        tx,
        "SELECT next FROM cursors WHERE pool = ?1 AND len = ?2",
        params![kind, len],
        |r| r.get(0),
    )
    .optional()?;
    let cursor = cursor.map(alloc::from_sql);
    for pool in pools.iter().filter(|p| p.prefix_len() <= len) {
        let (first, last) = (alloc::start(pool), alloc::end(pool));
        let from = cursor
            .filter(|c| (first..=last).contains(c))
            .unwrap_or(first);
        let mut cand = alloc::align_up(from, len);
        let mut wrapped = from == first;
        loop {
            let fits = cand
                .and_then(|c| c.checked_add(block.wrapping_sub(1)))
                .filter(|e| *e <= last);
            let (Some(c), Some(c_end)) = (cand, fits) else {
                if wrapped {
                    break;
                }
                wrapped = true;
                cand = Some(first);
                continue;
            };
            if wrapped && c >= from && from != first {
                break;
            }
            let below: Option<(i64, i64)> = one_row(
                tx,
                "SELECT start, end FROM allocations WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
                [alloc::to_sql(c_end)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
            match below.map(|(_, e)| alloc::from_sql(e)) {
                Some(e) if e >= c => cand = e.checked_add(1).and_then(|x| alloc::align_up(x, len)),
                _ => {
                    exec(
                        tx,
                        "INSERT INTO allocations (start, end, len, pool) VALUES (?1, ?2, ?3, ?4)",
                        params![alloc::to_sql(c), alloc::to_sql(c_end), len, kind],
                    )?;
                    let next = c_end.wrapping_add(1);
                    exec(
                        tx,
                        "INSERT INTO cursors (pool, len, next) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(pool, len) DO UPDATE SET next = excluded.next",
                        params![kind, len, alloc::to_sql(next)],
                    )?;
                    return Ok(alloc::prefix(c, len));
                }
            }
        }
    }
    Err(StoreError::PoolExhausted { pool: kind, len })
}

/// Records a prefix the request named: it must lie in one of `pools` and overlap nothing
/// allocated or in quarantine.
fn claim(
    tx: &Connection,
    kind: &'static str,
    pools: &[Ipv6Net],
    prefix: Ipv6Net,
) -> Result<Ipv6Net> {
    let prefix = prefix.trunc();
    if !pools.iter().any(|p| p.contains(&prefix)) {
        return Err(StoreError::OutsidePool { pool: kind, prefix });
    }
    let (c, c_end) = (alloc::start(&prefix), alloc::end(&prefix));
    let below: Option<i64> = one_row(
        tx,
        "SELECT end FROM allocations WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
        [alloc::to_sql(c_end)],
        |r| r.get(0),
    )
    .optional()?;
    if below.is_some_and(|e| alloc::from_sql(e) >= c) {
        return Err(StoreError::PrefixInUse { prefix });
    }
    exec(
        tx,
        "INSERT INTO allocations (start, end, len, pool) VALUES (?1, ?2, ?3, ?4)",
        params![
            alloc::to_sql(c),
            alloc::to_sql(c_end),
            prefix.prefix_len(),
            kind
        ],
    )?;
    Ok(prefix)
}

fn assign(tx: &Connection, prefix: &Ipv6Net, id: u32) -> Result<()> {
    exec(
        tx,
        "UPDATE allocations SET tunnel_id = ?1, freed_at = NULL WHERE start = ?2",
        params![id, alloc::to_sql(alloc::start(prefix))],
    )?;
    Ok(())
}

fn insert_tunnel(tx: &Connection, r: &TunnelRecord) -> Result<()> {
    let s = &r.spec;
    let (v4, port, v6) = endpoint_columns(&s.endpoint);
    exec(
        tx,
        &format!(
            "INSERT INTO tunnels ({TUNNEL_COLUMNS}, update_key) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, '')"
        ),
        params![
            s.id,
            r.owner,
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
            r.password,
            r.update_key_hash,
            r.created_at,
            r.updated_at
        ],
    )?;
    for p in &s.routed_prefixes {
        exec(
            tx,
            "INSERT INTO routed (tunnel_id, prefix) VALUES (?1, ?2)",
            params![s.id, p.to_string()],
        )?;
    }
    Ok(())
}

/// Removes a tunnel's rows; its prefixes and inner address go into quarantine.
fn remove_tunnel(tx: &Connection, id: u32, now: u64) -> Result<()> {
    exec(tx, "DELETE FROM routed WHERE tunnel_id = ?1", [id])?;
    exec(tx, "DELETE FROM tunnels WHERE id = ?1", [id])?;
    exec(
        tx,
        "UPDATE allocations SET tunnel_id = NULL, freed_at = ?1 WHERE tunnel_id = ?2",
        params![now as i64, id],
    )?;
    exec(
        tx,
        "UPDATE v4_allocations SET tunnel_id = NULL, freed_at = ?1 WHERE tunnel_id = ?2",
        params![now as i64, id],
    )?;
    Ok(())
}

/// Forgets freed allocations whose quarantine is over.
fn end_quarantine(tx: &Connection, pools: &PoolSet, now: u64) -> Result<()> {
    if let Some(expired) = now.checked_sub(pools.quarantine_secs) {
        exec(
            tx,
            "DELETE FROM allocations WHERE tunnel_id IS NULL AND freed_at <= ?1",
            [expired as i64],
        )?;
        exec(
            tx,
            "DELETE FROM v4_allocations WHERE tunnel_id IS NULL AND freed_at <= ?1",
            [expired as i64],
        )?;
    }
    Ok(())
}

/// Creates one tunnel inside the caller's transaction or savepoint.
fn create_in(tx: &Connection, pools: &PoolSet, req: &NewTunnel, now: u64) -> Result<TunnelRecord> {
    if let Some(owner) = &req.owner {
        let exists: Option<String> =
            one_row(tx, "SELECT name FROM users WHERE name = ?1", [owner], |r| {
                r.get(0)
            })
            .optional()?;
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
    if let Some(id) = endpoint_owner(tx, &req.endpoint, None)? {
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
    end_quarantine(tx, pools, now)?;
    let id = next_id(tx)?;
    let link = match req.link_prefix {
        _ if !ipv6 => None,
        Some(p) if p.prefix_len() == 64 => Some(claim(tx, "link", &pools.link, p)?),
        Some(p) => {
            return Err(StoreError::OutsidePool {
                pool: "link",
                prefix: p,
            })
        }
        None => Some(allocate(tx, "link", &pools.link, 64)?),
    };
    let routed = match (req.routed_prefix, req.routed_length) {
        (Some(p), _) => vec![claim(tx, "routed", &pools.routed, p)?],
        (None, Some(len)) => vec![allocate(tx, "routed", &pools.routed, len)?],
        (None, None) => Vec::new(),
    };
    let client_v4 = if ipv6 {
        None
    } else {
        Some(allocate_v4(tx, pools, id)?)
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
        owner: req.owner.clone(),
        origin: req.origin,
        password: random_token(TOKEN_LEN),
        update_key: Some(update_key.clone()),
        update_key_hash: crate::secret::hash_key(&update_key),
        created_at: now,
        updated_at: now,
        expires_at: req.expires_at,
    };
    insert_tunnel(tx, &record)?;
    for p in record.spec.prefixes() {
        assign(tx, &p, id)?;
    }
    Ok(record)
}

/// Refuses a static tunnel being added or changed that would take what a run-time tunnel
/// has: its id, its endpoint, or a prefix overlapping one of its prefixes.
fn check_static(tx: &Connection, w: &TunnelSpec, is_static: bool) -> Result<()> {
    let runtime = |id: u32| -> Result<bool> {
        Ok(query::one(tx, id)?.is_some_and(|r| r.origin != Origin::Static))
    };
    if !is_static && runtime(w.id)? {
        return Err(StoreError::IdTaken { id: w.id });
    }
    if let Some(other) = endpoint_owner(tx, &w.endpoint, Some(w.id))? {
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
        let overlapping = query::page(tx, &filter, None, 64)?;
        if let Some(other) = overlapping.iter().find(|r| {
            r.origin != Origin::Static
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

impl Store for SqliteStore {
    fn tunnels(&self) -> Result<Vec<TunnelRecord>> {
        query::all(&self.conn)
    }

    fn tunnel(&self, id: u32) -> Result<Option<TunnelRecord>> {
        query::one(&self.conn, id)
    }

    fn tunnel_page(
        &self,
        filter: &TunnelFilter,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<TunnelRecord>> {
        query::page(&self.conn, filter, after, limit)
    }

    fn census(&self) -> Result<Vec<(Kind, State, u64)>> {
        query::census(&self.conn)
    }

    fn expired(&self, now: u64) -> Result<Vec<TunnelRecord>> {
        query::expired(&self.conn, now)
    }

    fn watched(&self) -> Result<Vec<TunnelRecord>> {
        query::watched(&self.conn)
    }

    fn generation(&self) -> Result<(i64, u64)> {
        query::generation(&self.conn)
    }

    fn create_tunnel(&mut self, req: &NewTunnel, now: u64) -> Result<TunnelRecord> {
        let tx = self.conn.transaction()?;
        let record = create_in(&tx, &self.pools, req, now)?;
        tx.commit()?;
        Ok(record)
    }

    fn create_tunnels(
        &mut self,
        reqs: &[NewTunnel],
        now: u64,
    ) -> Result<Vec<Result<TunnelRecord>>> {
        let mut tx = self.conn.transaction()?;
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            // One savepoint each: a refused request leaves nothing, the others stay.
            let sp = tx.savepoint()?;
            let r = create_in(&sp, &self.pools, req, now);
            if r.is_ok() {
                sp.commit()?;
            }
            out.push(r);
        }
        tx.commit()?;
        Ok(out)
    }

    fn update_tunnel(&mut self, id: u32, change: &TunnelChange, now: u64) -> Result<TunnelRecord> {
        let pools = self.pools.clone();
        let tx = self.conn.transaction()?;
        let Some(mut record) = query::one(&tx, id)? else {
            return Err(StoreError::NoSuchTunnel { id });
        };
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
        if let Some(other) = endpoint_owner(&tx, &spec.endpoint, Some(id))? {
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
                end_quarantine(&tx, &pools, now)?;
                let p = allocate(&tx, "routed", &pools.routed, len)?;
                assign(&tx, &p, id)?;
                exec(
                    &tx,
                    "INSERT INTO routed (tunnel_id, prefix) VALUES (?1, ?2)",
                    params![id, p.to_string()],
                )?;
                spec.routed_prefixes.push(p);
            }
        }
        record.updated_at = now;
        let spec = &record.spec;
        let (v4, port, v6) = endpoint_columns(&spec.endpoint);
        exec(
            &tx,
            "UPDATE tunnels SET kind = ?1, remote_v4 = ?2, remote_port = ?3, remote_v6 = ?4, \
             state = ?5, mtu = ?6, keepalive = ?7, expires_at = ?8, updated_at = ?9 WHERE id = ?10",
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
                id
            ],
        )?;
        tx.commit()?;
        Ok(record)
    }

    fn delete_tunnel(&mut self, id: u32, now: u64) -> Result<TunnelRecord> {
        let tx = self.conn.transaction()?;
        let Some(record) = query::one(&tx, id)? else {
            return Err(StoreError::NoSuchTunnel { id });
        };
        remove_tunnel(&tx, id, now)?;
        tx.commit()?;
        Ok(record)
    }

    fn discard_tunnel(&mut self, id: u32) -> Result<()> {
        let tx = self.conn.transaction()?;
        exec(&tx, "DELETE FROM routed WHERE tunnel_id = ?1", [id])?;
        if exec(&tx, "DELETE FROM tunnels WHERE id = ?1", [id])? == 0 {
            return Err(StoreError::NoSuchTunnel { id });
        }
        exec(&tx, "DELETE FROM allocations WHERE tunnel_id = ?1", [id])?;
        exec(&tx, "DELETE FROM v4_allocations WHERE tunnel_id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    fn restore_tunnel(&mut self, record: &TunnelRecord) -> Result<()> {
        let tx = self.conn.transaction()?;
        insert_tunnel(&tx, record)?;
        for p in record.spec.prefixes() {
            assign(&tx, &p, record.spec.id)?;
        }
        if let Some(a) = record.spec.client_v4 {
            exec(
                &tx,
                "INSERT INTO v4_allocations (addr, tunnel_id) VALUES (?1, ?2) \
                 ON CONFLICT(addr) DO UPDATE SET tunnel_id = excluded.tunnel_id, freed_at = NULL",
                params![u32::from(a), record.spec.id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn sync_static(&mut self, wanted: &[TunnelSpec], now: u64) -> Result<StaticSync> {
        let tx = self.conn.transaction()?;
        let existing: HashMap<u32, TunnelRecord> = query::page(
            &tx,
            &TunnelFilter {
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
            check_static(&tx, w, current.is_some())?;
            match current {
                Some(c) => {
                    let record = TunnelRecord {
                        spec: w.clone(),
                        updated_at: now,
                        ..c.clone()
                    };
                    exec(&tx, "DELETE FROM routed WHERE tunnel_id = ?1", [w.id])?;
                    exec(&tx, "DELETE FROM tunnels WHERE id = ?1", [w.id])?;
                    insert_tunnel(&tx, &record)?;
                    report.changed.push(w.id);
                }
                None => {
                    insert_tunnel(
                        &tx,
                        &TunnelRecord {
                            spec: w.clone(),
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
            exec(&tx, "DELETE FROM routed WHERE tunnel_id = ?1", [id])?;
            exec(&tx, "DELETE FROM tunnels WHERE id = ?1", [id])?;
            report.removed.push(id);
        }
        if let Some(max) = wanted.iter().map(|w| u64::from(w.id)).max() {
            if get_counter(&tx, "next_tunnel_id")? <= max {
                set_counter(&tx, "next_tunnel_id", max + 1)?;
            }
        }
        tx.commit()?;
        Ok(report)
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        users::all(&self.conn)
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        users::one(&self.conn, name)
    }

    fn create_user(&mut self, name: &str, secrets: &UserSecrets, now: u64) -> Result<UserRecord> {
        users::create(&mut self.conn, name, secrets, now)
    }

    fn set_user_secrets(&mut self, name: &str, secrets: &UserSecrets) -> Result<()> {
        users::set_secrets(&self.conn, name, secrets)
    }

    fn users_in_clear(&self) -> Result<Vec<(String, String)>> {
        users::in_clear(&self.conn)
    }

    fn update_keys_in_clear(&self) -> Result<Vec<(u32, String)>> {
        let mut q = self.conn.prepare(KEYS_IN_CLEAR)?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn scrub(&mut self) -> Result<()> {
        one_row(
            &self.conn,
            "PRAGMA wal_checkpoint(TRUNCATE)",
            [],
            |_| Ok(()),
        )?;
        Ok(())
    }

    fn set_update_key_hash(&mut self, id: u32, hash: &str) -> Result<()> {
        let n = exec(
            &self.conn,
            "UPDATE tunnels SET update_key_hash = ?2, update_key = '' WHERE id = ?1",
            params![id, hash],
        )?;
        if n == 0 {
            return Err(StoreError::NoSuchTunnel { id });
        }
        Ok(())
    }

    fn delete_user(&mut self, name: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let tunnels: Vec<u32> = {
            let mut q = tx.prepare("SELECT id FROM tunnels WHERE owner = ?1 ORDER BY id")?;
            let ids = q.query_map([name], |r| r.get(0))?;
            ids.collect::<rusqlite::Result<_>>()?
        };
        if !tunnels.is_empty() {
            return Err(StoreError::UserHasTunnels {
                name: name.into(),
                tunnels,
            });
        }
        if exec(&tx, "DELETE FROM users WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NoSuchUser { name: name.into() });
        }
        tx.commit()?;
        Ok(())
    }

    fn tsp_tunnel(&self, owner: &str, v4v6: bool) -> Result<Option<TunnelRecord>> {
        let id: Option<u32> = one_row(
            &self.conn,
            "SELECT id FROM tunnels WHERE owner = ?1 AND origin = 'tsp' \
                 AND (kind = 'v4v6') = ?2 ORDER BY id LIMIT 1",
            params![owner, v4v6],
            |r| r.get(0),
        )
        .optional()?;
        match id {
            Some(id) => self.tunnel(id),
            None => Ok(None),
        }
    }

    fn tunnels_of(&self, owner: &str) -> Result<Vec<TunnelRecord>> {
        // A user has a handful of tunnels: one indexed query for the ids, then each.
        let ids: Vec<u32> = self
            .conn
            .prepare("SELECT id FROM tunnels WHERE owner = ?1 ORDER BY id")?
            .query_map([owner], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.tunnel(id)?);
        }
        Ok(out)
    }

    fn tunnel_by_link(&self, link: &Ipv6Net) -> Result<Option<TunnelRecord>> {
        // `link_prefix` is UNIQUE (so indexed) and written with the same Display.
        let id: Option<u32> = one_row(
            &self.conn,
            "SELECT id FROM tunnels WHERE link_prefix = ?1",
            [link.trunc().to_string()],
            |r| r.get(0),
        )
        .optional()?;
        match id {
            Some(id) => self.tunnel(id),
            None => Ok(None),
        }
    }

    fn bump(&mut self, counter: &str) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let v = get_counter(&tx, counter)? + 1;
        set_counter(&tx, counter, v)?;
        tx.commit()?;
        Ok(v)
    }

    fn counter(&self, counter: &str) -> Result<u64> {
        get_counter(&self.conn, counter)
    }
}

mod query;
mod users;

#[cfg(test)]
mod tests;
