//! Versioned schema migrations (`PRAGMA user_version`): each entry brings the schema from
//! its index to the next version. Append only.
use rusqlite::Connection;

use super::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 1: users, tunnels, routed prefixes, allocations, counters.
    "
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE tunnels (
        id INTEGER PRIMARY KEY,
        owner TEXT REFERENCES users(name),
        origin TEXT NOT NULL CHECK (origin IN ('static', 'api')),
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        remote_v4 TEXT NOT NULL,
        link_prefix TEXT NOT NULL UNIQUE,
        mtu INTEGER NOT NULL,
        password TEXT NOT NULL,
        update_key TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- proto-41 tells tunnels apart by the client's address.
    CREATE UNIQUE INDEX tunnels_p41_endpoint ON tunnels(remote_v4) WHERE kind = 'proto41';
    CREATE TABLE routed (
        tunnel_id INTEGER NOT NULL REFERENCES tunnels(id) ON DELETE CASCADE,
        prefix TEXT NOT NULL UNIQUE
    );
    -- Pool allocations as ranges of /64s (upper 64 bits, order-preserving signed form).
    -- They never overlap; a freed one (tunnel_id NULL) stays until its quarantine ends.
    CREATE TABLE allocations (
        start INTEGER PRIMARY KEY,
        end INTEGER NOT NULL,
        len INTEGER NOT NULL,
        pool TEXT NOT NULL,
        tunnel_id INTEGER,
        freed_at INTEGER
    );
    CREATE INDEX allocations_tunnel ON allocations(tunnel_id);
    -- Where the next search for a prefix of a given length starts, per pool.
    CREATE TABLE cursors (
        pool TEXT NOT NULL,
        len INTEGER NOT NULL,
        next INTEGER NOT NULL,
        PRIMARY KEY (pool, len)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    ",
];

/// Brings a database to the current schema.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}
