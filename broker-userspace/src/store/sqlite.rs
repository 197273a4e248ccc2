//! The embedded store: one SQLite file (WAL journal, so a killed process loses nothing it
//! committed). Every trait method is one transaction.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use ipnet::Ipv6Net;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    alloc::{self, PoolSet},
    random_token, schema, NewTunnel, Origin, Result, StaticSync, Store, StoreError, TunnelChange,
    TunnelRecord, UserRecord,
};
use crate::model::{Kind, State, TunnelSpec};

/// Length of generated passwords and update keys.
const TOKEN_LEN: usize = 16;

pub struct SqliteStore {
    conn: Connection,
    pools: PoolSet,
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) and migrates the store at `path`.
    pub fn open(path: &Path, pools: PoolSet) -> Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::init(conn, pools)
    }

    /// A store that lives in memory (tests).
    pub fn in_memory(pools: PoolSet) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, pools)
    }

    fn init(mut conn: Connection, pools: PoolSet) -> Result<Self> {
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        Ok(Self { conn, pools })
    }
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Proto41 => "proto41",
    }
}

fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "proto41" => Ok(Kind::Proto41),
        other => Err(StoreError::Corrupt {
            what: format!("unknown tunnel kind {other:?}"),
        }),
    }
}

fn state_str(s: State) -> &'static str {
    match s {
        State::Up => "up",
        State::Down => "down",
        State::Disabled => "disabled",
    }
}

fn parse_state(s: &str) -> Result<State> {
    match s {
        "up" => Ok(State::Up),
        "down" => Ok(State::Down),
        "disabled" => Ok(State::Disabled),
        other => Err(StoreError::Corrupt {
            what: format!("unknown tunnel state {other:?}"),
        }),
    }
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|_| StoreError::Corrupt {
        what: format!("{what} {s:?}"),
    })
}

const TUNNEL_COLUMNS: &str = "id, owner, origin, kind, state, remote_v4, link_prefix, mtu, \
                              password, update_key, created_at, updated_at";

/// The columns of `tunnels` as read, before the routed prefixes are joined in.
struct Row {
    id: u32,
    owner: Option<String>,
    origin: String,
    kind: String,
    state: String,
    remote_v4: String,
    link_prefix: String,
    mtu: u16,
    password: String,
    update_key: String,
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
        link_prefix: r.get(6)?,
        mtu: r.get(7)?,
        password: r.get(8)?,
        update_key: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

fn record(r: Row, routed: Vec<Ipv6Net>) -> Result<TunnelRecord> {
    Ok(TunnelRecord {
        spec: TunnelSpec {
            id: r.id,
            kind: parse_kind(&r.kind)?,
            state: parse_state(&r.state)?,
            remote_v4: parse(&r.remote_v4, "IPv4 address")?,
            link_prefix: parse(&r.link_prefix, "prefix")?,
            routed_prefixes: routed,
            mtu: r.mtu,
        },
        owner: r.owner,
        origin: if r.origin == "static" {
            Origin::Static
        } else {
            Origin::Api
        },
        password: r.password,
        update_key: r.update_key,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

fn load_tunnels(conn: &Connection, id: Option<u32>) -> Result<Vec<TunnelRecord>> {
    let mut routed: BTreeMap<u32, Vec<Ipv6Net>> = BTreeMap::new();
    {
        let mut q = conn.prepare(
            "SELECT tunnel_id, prefix FROM routed WHERE ?1 IS NULL OR tunnel_id = ?1 ORDER BY rowid",
        )?;
        let rows = q.query_map([id], |r| Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?)))?;
        for x in rows {
            let (t, p) = x?;
            routed.entry(t).or_default().push(parse(&p, "prefix")?);
        }
    }
    let mut q = conn.prepare(&format!(
        "SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE ?1 IS NULL OR id = ?1 ORDER BY id"
    ))?;
    let rows = q.query_map([id], row)?;
    let mut out = Vec::new();
    for r in rows {
        let r = r?;
        let p = routed.remove(&r.id).unwrap_or_default();
        out.push(record(r, p)?);
    }
    Ok(out)
}

fn endpoint_owner(
    tx: &Transaction<'_>,
    remote: Ipv4Addr,
    except: Option<u32>,
) -> Result<Option<u32>> {
    Ok(tx
        .query_row(
            "SELECT id FROM tunnels WHERE kind = 'proto41' AND remote_v4 = ?1 AND id IS NOT ?2",
            params![remote.to_string(), except],
            |r| r.get(0),
        )
        .optional()?)
}

/// The next tunnel id: ids only grow, so a deleted tunnel's id is never handed out again.
fn next_id(tx: &Transaction<'_>) -> Result<u32> {
    let counter = get_counter(tx, "next_tunnel_id")?;
    let max: Option<u32> = tx.query_row("SELECT MAX(id) FROM tunnels", [], |r| r.get(0))?;
    let id = counter.max(u64::from(max.unwrap_or(0)) + 1).max(1);
    set_counter(tx, "next_tunnel_id", id + 1)?;
    u32::try_from(id).map_err(|_| StoreError::Corrupt {
        what: "tunnel ids exhausted".into(),
    })
}

fn get_counter(conn: &Connection, name: &str) -> Result<u64> {
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0) as u64)
}

fn set_counter(conn: &Connection, name: &str, value: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) \
         ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        params![name, value as i64],
    )?;
    Ok(())
}

/// Finds and records a free prefix of length `len` in `pools`, starting where the previous
/// search of this length stopped and wrapping around once. Allocations never overlap: the
/// one allocation that could overlap a candidate is the one starting closest below its end.
fn allocate(
    tx: &Transaction<'_>,
    kind: &'static str,
    pools: &[Ipv6Net],
    len: u8,
) -> Result<Ipv6Net> {
    let block = alloc::block(len);
    let cursor: Option<i64> = tx
        .query_row(
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
            let below: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT start, end FROM allocations WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
                    [alloc::to_sql(c_end)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match below.map(|(_, e)| alloc::from_sql(e)) {
                Some(e) if e >= c => cand = e.checked_add(1).and_then(|x| alloc::align_up(x, len)),
                _ => {
                    tx.execute(
                        "INSERT INTO allocations (start, end, len, pool) VALUES (?1, ?2, ?3, ?4)",
                        params![alloc::to_sql(c), alloc::to_sql(c_end), len, kind],
                    )?;
                    let next = c_end.wrapping_add(1);
                    tx.execute(
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
    tx: &Transaction<'_>,
    kind: &'static str,
    pools: &[Ipv6Net],
    prefix: Ipv6Net,
) -> Result<Ipv6Net> {
    let prefix = prefix.trunc();
    if !pools.iter().any(|p| p.contains(&prefix)) {
        return Err(StoreError::OutsidePool { pool: kind, prefix });
    }
    let (c, c_end) = (alloc::start(&prefix), alloc::end(&prefix));
    let below: Option<i64> = tx
        .query_row(
            "SELECT end FROM allocations WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
            [alloc::to_sql(c_end)],
            |r| r.get(0),
        )
        .optional()?;
    if below.is_some_and(|e| alloc::from_sql(e) >= c) {
        return Err(StoreError::PrefixInUse { prefix });
    }
    tx.execute(
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

fn assign(tx: &Transaction<'_>, prefix: &Ipv6Net, id: u32) -> Result<()> {
    tx.execute(
        "UPDATE allocations SET tunnel_id = ?1, freed_at = NULL WHERE start = ?2",
        params![id, alloc::to_sql(alloc::start(prefix))],
    )?;
    Ok(())
}

fn insert_tunnel(tx: &Transaction<'_>, r: &TunnelRecord) -> Result<()> {
    let s = &r.spec;
    tx.execute(
        &format!("INSERT INTO tunnels ({TUNNEL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
            s.id,
            r.owner,
            r.origin.as_str(),
            kind_str(s.kind),
            state_str(s.state),
            s.remote_v4.to_string(),
            s.link_prefix.to_string(),
            s.mtu,
            r.password,
            r.update_key,
            r.created_at,
            r.updated_at
        ],
    )?;
    for p in &s.routed_prefixes {
        tx.execute(
            "INSERT INTO routed (tunnel_id, prefix) VALUES (?1, ?2)",
            params![s.id, p.to_string()],
        )?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn tunnels(&self) -> Result<Vec<TunnelRecord>> {
        load_tunnels(&self.conn, None)
    }

    fn tunnel(&self, id: u32) -> Result<Option<TunnelRecord>> {
        Ok(load_tunnels(&self.conn, Some(id))?.pop())
    }

    fn create_tunnel(&mut self, req: &NewTunnel, now: u64) -> Result<TunnelRecord> {
        let pools = self.pools.clone();
        let tx = self.conn.transaction()?;
        if let Some(owner) = &req.owner {
            let exists: Option<String> = tx
                .query_row("SELECT name FROM users WHERE name = ?1", [owner], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_none() {
                return Err(StoreError::NoSuchUser {
                    name: owner.clone(),
                });
            }
        }
        if let Some(id) = endpoint_owner(&tx, req.remote_v4, None)? {
            return Err(StoreError::DuplicateEndpoint {
                remote: req.remote_v4,
                id,
            });
        }
        let asked_len = req
            .routed_prefix
            .map(|p| p.prefix_len())
            .or(req.routed_length);
        if let Some(len) = asked_len {
            if !pools.routed_lengths.contains(&len) {
                return Err(StoreError::LengthNotOffered {
                    len,
                    offered: pools.routed_lengths.clone(),
                });
            }
        }
        // Quarantine over: the prefixes can be found again.
        if let Some(expired) = now.checked_sub(pools.quarantine_secs) {
            tx.execute(
                "DELETE FROM allocations WHERE tunnel_id IS NULL AND freed_at <= ?1",
                [expired as i64],
            )?;
        }
        let id = next_id(&tx)?;
        let link = match req.link_prefix {
            Some(p) if p.prefix_len() == 64 => claim(&tx, "link", &pools.link, p)?,
            Some(p) => {
                return Err(StoreError::OutsidePool {
                    pool: "link",
                    prefix: p,
                })
            }
            None => allocate(&tx, "link", &pools.link, 64)?,
        };
        let routed = match (req.routed_prefix, req.routed_length) {
            (Some(p), _) => vec![claim(&tx, "routed", &pools.routed, p)?],
            (None, Some(len)) => vec![allocate(&tx, "routed", &pools.routed, len)?],
            (None, None) => Vec::new(),
        };
        let record = TunnelRecord {
            spec: TunnelSpec {
                id,
                kind: req.kind,
                state: req.state,
                remote_v4: req.remote_v4,
                link_prefix: link,
                routed_prefixes: routed,
                mtu: req.mtu,
            },
            owner: req.owner.clone(),
            origin: Origin::Api,
            password: random_token(TOKEN_LEN),
            update_key: random_token(TOKEN_LEN),
            created_at: now,
            updated_at: now,
        };
        insert_tunnel(&tx, &record)?;
        for p in record.spec.prefixes() {
            assign(&tx, &p, id)?;
        }
        tx.commit()?;
        Ok(record)
    }

    fn update_tunnel(&mut self, id: u32, change: &TunnelChange, now: u64) -> Result<TunnelRecord> {
        let tx = self.conn.transaction()?;
        let Some(mut record) = load_tunnels(&tx, Some(id))?.pop() else {
            return Err(StoreError::NoSuchTunnel { id });
        };
        if let Some(remote) = change.remote_v4 {
            if let Some(other) = endpoint_owner(&tx, remote, Some(id))? {
                return Err(StoreError::DuplicateEndpoint { remote, id: other });
            }
            record.spec.remote_v4 = remote;
        }
        if let Some(state) = change.state {
            record.spec.state = state;
        }
        if let Some(mtu) = change.mtu {
            record.spec.mtu = mtu;
        }
        record.updated_at = now;
        tx.execute(
            "UPDATE tunnels SET remote_v4 = ?1, state = ?2, mtu = ?3, updated_at = ?4 WHERE id = ?5",
            params![
                record.spec.remote_v4.to_string(),
                state_str(record.spec.state),
                record.spec.mtu,
                now,
                id
            ],
        )?;
        tx.commit()?;
        Ok(record)
    }

    fn delete_tunnel(&mut self, id: u32, now: u64) -> Result<TunnelRecord> {
        let tx = self.conn.transaction()?;
        let Some(record) = load_tunnels(&tx, Some(id))?.pop() else {
            return Err(StoreError::NoSuchTunnel { id });
        };
        tx.execute("DELETE FROM routed WHERE tunnel_id = ?1", [id])?;
        tx.execute("DELETE FROM tunnels WHERE id = ?1", [id])?;
        tx.execute(
            "UPDATE allocations SET tunnel_id = NULL, freed_at = ?1 WHERE tunnel_id = ?2",
            params![now as i64, id],
        )?;
        tx.commit()?;
        Ok(record)
    }

    fn restore_tunnel(&mut self, record: &TunnelRecord) -> Result<()> {
        let tx = self.conn.transaction()?;
        insert_tunnel(&tx, record)?;
        for p in record.spec.prefixes() {
            assign(&tx, &p, record.spec.id)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn sync_static(&mut self, wanted: &[TunnelSpec], now: u64) -> Result<StaticSync> {
        let tx = self.conn.transaction()?;
        let existing = load_tunnels(&tx, None)?;
        let mut report = StaticSync::default();
        for w in wanted {
            let current = existing.iter().find(|r| r.spec.id == w.id);
            if let Some(c) = current.filter(|c| c.origin == Origin::Api) {
                return Err(StoreError::IdTaken { id: c.spec.id });
            }
            // Run-time tunnels keep what they have; a static one may not take it.
            for other in existing.iter().filter(|r| r.origin == Origin::Api) {
                if w.kind == Kind::Proto41 && other.spec.remote_v4 == w.remote_v4 {
                    return Err(StoreError::DuplicateEndpoint {
                        remote: w.remote_v4,
                        id: other.spec.id,
                    });
                }
                for p in w.prefixes() {
                    if other
                        .spec
                        .prefixes()
                        .any(|q| q.contains(&p) || p.contains(&q))
                    {
                        return Err(StoreError::PrefixTaken {
                            prefix: p,
                            id: w.id,
                            other: other.spec.id,
                        });
                    }
                }
            }
            match current {
                Some(c) if c.spec == *w => {}
                Some(c) => {
                    let record = TunnelRecord {
                        spec: w.clone(),
                        updated_at: now,
                        ..c.clone()
                    };
                    tx.execute("DELETE FROM routed WHERE tunnel_id = ?1", [w.id])?;
                    tx.execute("DELETE FROM tunnels WHERE id = ?1", [w.id])?;
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
                            update_key: random_token(TOKEN_LEN),
                            created_at: now,
                            updated_at: now,
                        },
                    )?;
                    report.added.push(w.id);
                }
            }
        }
        for r in existing.iter().filter(|r| r.origin == Origin::Static) {
            if !wanted.iter().any(|w| w.id == r.spec.id) {
                tx.execute("DELETE FROM routed WHERE tunnel_id = ?1", [r.spec.id])?;
                tx.execute("DELETE FROM tunnels WHERE id = ?1", [r.spec.id])?;
                report.removed.push(r.spec.id);
            }
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
        let mut q = self
            .conn
            .prepare("SELECT name, password, created_at FROM users ORDER BY name")?;
        let rows = q.query_map([], |r| {
            Ok(UserRecord {
                name: r.get(0)?,
                password: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, password, created_at FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok(UserRecord {
                        name: r.get(0)?,
                        password: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn create_user(&mut self, name: &str, password: &str, now: u64) -> Result<UserRecord> {
        let tx = self.conn.transaction()?;
        let exists: Option<String> = tx
            .query_row("SELECT name FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::UserExists { name: name.into() });
        }
        tx.execute(
            "INSERT INTO users (name, password, created_at) VALUES (?1, ?2, ?3)",
            params![name, password, now],
        )?;
        tx.commit()?;
        Ok(UserRecord {
            name: name.into(),
            password: password.into(),
            created_at: now,
        })
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
        if tx.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::NoSuchUser { name: name.into() });
        }
        tx.commit()?;
        Ok(())
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

#[cfg(test)]
mod tests;
