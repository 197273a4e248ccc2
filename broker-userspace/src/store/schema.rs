//! Versioned schema migrations (`PRAGMA user_version`): each entry brings the schema from
//! its index to the next version. Append only.
use rusqlite::{Connection, OptionalExtension};

use super::{Result, StoreError};

pub(super) const MIGRATIONS: &[&str] = &[
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
    // 2: TSP: tunnel kinds with other endpoints (v6udpv4: address and port; v4v6: IPv6
    // outside, IPv4 inside, no link /64), keepalive and expiry; v4v6 address allocations.
    "
    CREATE TABLE tunnels_v2 (
        id INTEGER PRIMARY KEY,
        owner TEXT REFERENCES users(name),
        origin TEXT NOT NULL CHECK (origin IN ('static', 'api', 'tsp')),
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        remote_v4 TEXT,
        remote_port INTEGER,
        remote_v6 TEXT,
        link_prefix TEXT UNIQUE,
        client_v4 TEXT UNIQUE,
        mtu INTEGER NOT NULL,
        keepalive INTEGER,
        expires_at INTEGER,
        password TEXT NOT NULL,
        update_key TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    INSERT INTO tunnels_v2 (id, owner, origin, kind, state, remote_v4, link_prefix, mtu,
                            password, update_key, created_at, updated_at)
        SELECT id, owner, origin, kind, state, remote_v4, link_prefix, mtu,
               password, update_key, created_at, updated_at FROM tunnels;
    DROP TABLE tunnels;
    ALTER TABLE tunnels_v2 RENAME TO tunnels;
    CREATE UNIQUE INDEX tunnels_p41_endpoint ON tunnels(remote_v4) WHERE kind = 'proto41';
    CREATE UNIQUE INDEX tunnels_udp_endpoint ON tunnels(remote_v4, remote_port)
        WHERE kind = 'v6udpv4';
    CREATE UNIQUE INDEX tunnels_v4v6_endpoint ON tunnels(remote_v6) WHERE kind = 'v4v6';
    CREATE INDEX tunnels_owner ON tunnels(owner);
    -- v4v6 inner addresses (u32) held by a tunnel or, freed, in quarantine.
    CREATE TABLE v4_allocations (
        addr INTEGER PRIMARY KEY,
        tunnel_id INTEGER,
        freed_at INTEGER
    );
    ",
    // 3: secrets at rest (crate::secret): an account password is kept as what each
    // protocol needs to check it; `password` holds a password in clear only from a store
    // of before, until the controller derives the rest at start and clears it. Update
    // keys are kept as SHA-256 (`update_key` is '' once hashed).
    "
    CREATE TABLE users_v3 (
        name TEXT PRIMARY KEY,
        password TEXT,
        password_hash TEXT,
        tic_md5 TEXT,
        digest_realm TEXT,
        digest_ha1 TEXT,
        created_at INTEGER NOT NULL
    );
    INSERT INTO users_v3 (name, password, created_at)
        SELECT name, password, created_at FROM users;
    DROP TABLE users;
    ALTER TABLE users_v3 RENAME TO users;
    ALTER TABLE tunnels ADD COLUMN update_key_hash TEXT;
    ",
    // 4: a million tunnels (issue 12): every lookup by endpoint, owner's prefixes,
    // expiry or filter is served by an index, and the census (tunnels per kind and
    // state, for /metrics) is kept by triggers instead of counted per scrape.
    "
    CREATE INDEX tunnels_remote_v4 ON tunnels(remote_v4, remote_port);
    CREATE INDEX tunnels_remote_v6 ON tunnels(remote_v6);
    CREATE INDEX tunnels_kind_state ON tunnels(kind, state);
    CREATE INDEX tunnels_origin ON tunnels(origin);
    CREATE INDEX tunnels_expiry ON tunnels(expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX routed_tunnel ON routed(tunnel_id);
    CREATE INDEX v4_allocations_tunnel ON v4_allocations(tunnel_id);
    CREATE TABLE census (
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (kind, state)
    );
    INSERT INTO census (kind, state, n) SELECT kind, state, COUNT(*) FROM tunnels GROUP BY kind, state;
    CREATE TRIGGER census_insert AFTER INSERT ON tunnels BEGIN
        INSERT INTO census (kind, state, n) VALUES (NEW.kind, NEW.state, 1)
            ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER census_delete AFTER DELETE ON tunnels BEGIN
        UPDATE census SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
    END;
    CREATE TRIGGER census_update AFTER UPDATE OF kind, state ON tunnels
        WHEN OLD.kind IS NOT NEW.kind OR OLD.state IS NOT NEW.state BEGIN
        UPDATE census SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
        INSERT INTO census (kind, state, n) VALUES (NEW.kind, NEW.state, 1)
            ON CONFLICT (kind, state) DO UPDATE SET n = n + 1;
    END;
    ",
    // 5: restarting without reconciling (issue 12). `generation` counts every change to a
    // tunnel or its routed prefixes, whoever makes it (triggers); with the store's random
    // identity it is what the controller marks the maps with once they agree. The watched
    // tunnels (watch::watch_of) are read by index.
    "
    CREATE TABLE generation (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        store_id INTEGER NOT NULL,
        n INTEGER NOT NULL
    );
    INSERT INTO generation (one, store_id, n) VALUES (1, random(), 1);
    CREATE TRIGGER generation_tunnel_insert AFTER INSERT ON tunnels BEGIN
        UPDATE generation SET n = n + 1;
    END;
    CREATE TRIGGER generation_tunnel_update AFTER UPDATE ON tunnels BEGIN
        UPDATE generation SET n = n + 1;
    END;
    CREATE TRIGGER generation_tunnel_delete AFTER DELETE ON tunnels BEGIN
        UPDATE generation SET n = n + 1;
    END;
    CREATE TRIGGER generation_routed_insert AFTER INSERT ON routed BEGIN
        UPDATE generation SET n = n + 1;
    END;
    CREATE TRIGGER generation_routed_update AFTER UPDATE ON routed BEGIN
        UPDATE generation SET n = n + 1;
    END;
    CREATE TRIGGER generation_routed_delete AFTER DELETE ON routed BEGIN
        UPDATE generation SET n = n + 1;
    END;
    CREATE INDEX tunnels_watched ON tunnels(id)
        WHERE state = 'up' AND (keepalive IS NOT NULL OR kind IN ('ayiya', 'heartbeat'));
    ",
    // 6: every start asks for secrets an older version kept in clear (normally none); these
    // indexes answer without reading every tunnel and user (150 ms at a million tunnels).
    "
    CREATE INDEX tunnels_key_in_clear ON tunnels(id) WHERE update_key_hash IS NULL;
    CREATE INDEX users_in_clear ON users(name) WHERE password IS NOT NULL;
    ",
    // 7: PoPs (docs/MULTI-POP.md). Every tunnel belongs to one PoP (`pop`; NULL only in a
    // store of before, until the PoP that opens it claims them); each PoP has a row with
    // what the others need of it (addresses, pools) and its own generation, which counts
    // the changes to its tunnels only. Census and allocation cursors are per PoP.
    "
    CREATE TABLE pops (
        name TEXT PRIMARY KEY,
        generation INTEGER NOT NULL DEFAULT 1,
        ipv4 TEXT,
        ipv6 TEXT,
        tsp TEXT,
        link_pools TEXT NOT NULL DEFAULT '',
        routed_pools TEXT NOT NULL DEFAULT '',
        routed_lengths TEXT NOT NULL DEFAULT '',
        v4v6_pool TEXT,
        quarantine_secs INTEGER NOT NULL DEFAULT 0,
        version TEXT,
        attached INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER,
        last_seen INTEGER
    );
    ALTER TABLE tunnels ADD COLUMN pop TEXT;
    CREATE INDEX tunnels_pop ON tunnels(pop, id);
    DROP INDEX tunnels_watched;
    CREATE INDEX tunnels_watched ON tunnels(pop, id)
        WHERE state = 'up' AND (keepalive IS NOT NULL OR kind IN ('ayiya', 'heartbeat'));
    CREATE INDEX tunnels_pop_expiry ON tunnels(pop, expires_at) WHERE expires_at IS NOT NULL;
    DROP TABLE cursors;
    CREATE TABLE cursors (
        pop TEXT NOT NULL,
        pool TEXT NOT NULL,
        len INTEGER NOT NULL,
        next INTEGER NOT NULL,
        PRIMARY KEY (pop, pool, len)
    );
    DROP TRIGGER census_insert;
    DROP TRIGGER census_delete;
    DROP TRIGGER census_update;
    DROP TABLE census;
    CREATE TABLE census (
        pop TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (pop, kind, state)
    );
    INSERT INTO census (pop, kind, state, n)
        SELECT IFNULL(pop, ''), kind, state, COUNT(*) FROM tunnels GROUP BY 1, 2, 3;
    CREATE TRIGGER census_insert AFTER INSERT ON tunnels BEGIN
        INSERT INTO census (pop, kind, state, n) VALUES (IFNULL(NEW.pop, ''), NEW.kind, NEW.state, 1)
            ON CONFLICT (pop, kind, state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER census_delete AFTER DELETE ON tunnels BEGIN
        UPDATE census SET n = n - 1
            WHERE pop = IFNULL(OLD.pop, '') AND kind = OLD.kind AND state = OLD.state;
    END;
    CREATE TRIGGER census_update AFTER UPDATE OF kind, state, pop ON tunnels
        WHEN OLD.kind IS NOT NEW.kind OR OLD.state IS NOT NEW.state OR OLD.pop IS NOT NEW.pop
    BEGIN
        UPDATE census SET n = n - 1
            WHERE pop = IFNULL(OLD.pop, '') AND kind = OLD.kind AND state = OLD.state;
        INSERT INTO census (pop, kind, state, n) VALUES (IFNULL(NEW.pop, ''), NEW.kind, NEW.state, 1)
            ON CONFLICT (pop, kind, state) DO UPDATE SET n = n + 1;
    END;
    DROP TRIGGER generation_tunnel_insert;
    DROP TRIGGER generation_tunnel_update;
    DROP TRIGGER generation_tunnel_delete;
    DROP TRIGGER generation_routed_insert;
    DROP TRIGGER generation_routed_update;
    DROP TRIGGER generation_routed_delete;
    CREATE TRIGGER generation_tunnel_insert AFTER INSERT ON tunnels BEGIN
        UPDATE pops SET generation = generation + 1 WHERE name = NEW.pop;
    END;
    CREATE TRIGGER generation_tunnel_update AFTER UPDATE ON tunnels BEGIN
        UPDATE pops SET generation = generation + 1 WHERE name IN (OLD.pop, NEW.pop);
    END;
    CREATE TRIGGER generation_tunnel_delete AFTER DELETE ON tunnels BEGIN
        UPDATE pops SET generation = generation + 1 WHERE name = OLD.pop;
    END;
    CREATE TRIGGER generation_routed_insert AFTER INSERT ON routed BEGIN
        UPDATE pops SET generation = generation + 1
            WHERE name = (SELECT pop FROM tunnels WHERE id = NEW.tunnel_id);
    END;
    CREATE TRIGGER generation_routed_update AFTER UPDATE ON routed BEGIN
        UPDATE pops SET generation = generation + 1
            WHERE name IN (SELECT pop FROM tunnels WHERE id IN (OLD.tunnel_id, NEW.tunnel_id));
    END;
    CREATE TRIGGER generation_routed_delete AFTER DELETE ON routed BEGIN
        UPDATE pops SET generation = generation + 1
            WHERE name = (SELECT pop FROM tunnels WHERE id = OLD.tunnel_id);
    END;
    ",
];

/// Brings a database to the current schema. Foreign keys must be off (SQLite's procedure
/// for rebuilding a table): the caller turns them on afterwards.
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
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(StoreError::Corrupt {
                what: format!("migration {} left dangling references in {table}", i + 1),
            });
        }
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store schema migrated");
    }
    Ok(())
}
