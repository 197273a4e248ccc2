//! Versioned schema migrations of the PostgreSQL engine (table `schema_version`): each
//! entry brings the schema from its index to the next version. Append only. Version 1 is
//! the logical schema SQLite's migrations reach at their version 6 (`store::schema`), in
//! PostgreSQL's types: BIGINT for every integer, triggers as PL/pgSQL functions.
use postgres::Client;

use crate::store::{Result, StoreError};

/// Held by whoever migrates, so that PoPs starting together migrate once, in turn.
pub(super) const MIGRATION_LOCK: i64 = 0x6272_6f6b_6572_0001;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: users, tunnels and their routed prefixes, allocations, counters, the census and
    // the generation, with the indexes that keep every per-request read independent of N.
    r#"
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password TEXT,
        password_hash TEXT,
        tic_md5 TEXT,
        digest_realm TEXT,
        digest_ha1 TEXT,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX users_in_clear ON users(name) WHERE password IS NOT NULL;
    CREATE TABLE tunnels (
        id BIGINT PRIMARY KEY,
        owner TEXT REFERENCES users(name),
        origin TEXT NOT NULL CHECK (origin IN ('static', 'api', 'tsp')),
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        remote_v4 TEXT,
        remote_port BIGINT,
        remote_v6 TEXT,
        link_prefix TEXT UNIQUE,
        client_v4 TEXT UNIQUE,
        mtu BIGINT NOT NULL,
        keepalive BIGINT,
        expires_at BIGINT,
        password TEXT NOT NULL,
        update_key TEXT NOT NULL,
        update_key_hash TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX tunnels_p41_endpoint ON tunnels(remote_v4) WHERE kind = 'proto41';
    CREATE UNIQUE INDEX tunnels_udp_endpoint ON tunnels(remote_v4, remote_port)
        WHERE kind = 'v6udpv4';
    CREATE UNIQUE INDEX tunnels_v4v6_endpoint ON tunnels(remote_v6) WHERE kind = 'v4v6';
    CREATE INDEX tunnels_owner ON tunnels(owner);
    CREATE INDEX tunnels_remote_v4 ON tunnels(remote_v4, remote_port);
    CREATE INDEX tunnels_remote_v6 ON tunnels(remote_v6);
    CREATE INDEX tunnels_kind_state ON tunnels(kind, state);
    CREATE INDEX tunnels_origin ON tunnels(origin);
    CREATE INDEX tunnels_expiry ON tunnels(expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX tunnels_watched ON tunnels(id)
        WHERE state = 'up' AND (keepalive IS NOT NULL OR kind IN ('ayiya', 'heartbeat'));
    CREATE INDEX tunnels_key_in_clear ON tunnels(id) WHERE update_key_hash IS NULL;
    -- `rowid` keeps the order prefixes were written in, under the name SQLite's implicit
    -- column has, so that one statement orders both.
    CREATE TABLE routed (
        rowid BIGINT GENERATED ALWAYS AS IDENTITY,
        tunnel_id BIGINT NOT NULL REFERENCES tunnels(id) ON DELETE CASCADE,
        prefix TEXT NOT NULL UNIQUE
    );
    CREATE INDEX routed_tunnel ON routed(tunnel_id);
    CREATE TABLE allocations (
        start BIGINT PRIMARY KEY,
        "end" BIGINT NOT NULL,
        len BIGINT NOT NULL,
        pool TEXT NOT NULL,
        tunnel_id BIGINT,
        freed_at BIGINT
    );
    CREATE INDEX allocations_tunnel ON allocations(tunnel_id);
    CREATE TABLE cursors (
        pool TEXT NOT NULL,
        len BIGINT NOT NULL,
        next BIGINT NOT NULL,
        PRIMARY KEY (pool, len)
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
    CREATE TABLE v4_allocations (
        addr BIGINT PRIMARY KEY,
        tunnel_id BIGINT,
        freed_at BIGINT
    );
    CREATE INDEX v4_allocations_tunnel ON v4_allocations(tunnel_id);
    CREATE TABLE census (
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (kind, state)
    );
    CREATE FUNCTION census_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE census SET n = n - 1 WHERE kind = OLD.kind AND state = OLD.state;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            INSERT INTO census (kind, state, n) VALUES (NEW.kind, NEW.state, 1)
                ON CONFLICT (kind, state) DO UPDATE SET n = census.n + 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER census_insert_delete AFTER INSERT OR DELETE ON tunnels
        FOR EACH ROW EXECUTE FUNCTION census_count();
    CREATE TRIGGER census_update AFTER UPDATE OF kind, state ON tunnels
        FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind OR OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION census_count();
    CREATE TABLE generation (
        one BIGINT PRIMARY KEY CHECK (one = 1),
        store_id BIGINT NOT NULL,
        n BIGINT NOT NULL
    );
    INSERT INTO generation (one, store_id, n)
        VALUES (1, floor((random() - 0.5) * 9.0e18)::BIGINT, 1);
    CREATE FUNCTION generation_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE generation SET n = n + 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER generation_tunnels AFTER INSERT OR UPDATE OR DELETE ON tunnels
        FOR EACH ROW EXECUTE FUNCTION generation_bump();
    CREATE TRIGGER generation_routed AFTER INSERT OR UPDATE OR DELETE ON routed
        FOR EACH ROW EXECUTE FUNCTION generation_bump();
    "#,
    // 2: PoPs, as SQLite's version 7 (`store::schema`). Every change to a PoP's tunnels
    // also notifies it, `NOTIFY broker_tunnels, '<pop> <tunnel id> <generation>'`, sent
    // only if the transaction commits, in commit order (docs/MULTI-POP.md).
    r#"
    CREATE TABLE pops (
        name TEXT PRIMARY KEY,
        generation BIGINT NOT NULL DEFAULT 1,
        ipv4 TEXT,
        ipv6 TEXT,
        tsp TEXT,
        link_pools TEXT NOT NULL DEFAULT '',
        routed_pools TEXT NOT NULL DEFAULT '',
        routed_lengths TEXT NOT NULL DEFAULT '',
        v4v6_pool TEXT,
        quarantine_secs BIGINT NOT NULL DEFAULT 0,
        version TEXT,
        attached BIGINT NOT NULL DEFAULT 0,
        started_at BIGINT,
        last_seen BIGINT
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
        len BIGINT NOT NULL,
        next BIGINT NOT NULL,
        PRIMARY KEY (pop, pool, len)
    );
    DROP TRIGGER census_insert_delete ON tunnels;
    DROP TRIGGER census_update ON tunnels;
    DROP FUNCTION census_count();
    DROP TABLE census;
    CREATE TABLE census (
        pop TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (pop, kind, state)
    );
    INSERT INTO census (pop, kind, state, n)
        SELECT COALESCE(pop, ''), kind, state, COUNT(*) FROM tunnels GROUP BY 1, 2, 3;
    CREATE FUNCTION census_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE census SET n = n - 1
                WHERE pop = COALESCE(OLD.pop, '') AND kind = OLD.kind AND state = OLD.state;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            INSERT INTO census (pop, kind, state, n)
                VALUES (COALESCE(NEW.pop, ''), NEW.kind, NEW.state, 1)
                ON CONFLICT (pop, kind, state) DO UPDATE SET n = census.n + 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER census_insert_delete AFTER INSERT OR DELETE ON tunnels
        FOR EACH ROW EXECUTE FUNCTION census_count();
    CREATE TRIGGER census_update AFTER UPDATE OF kind, state, pop ON tunnels
        FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind OR OLD.state IS DISTINCT FROM NEW.state
                           OR OLD.pop IS DISTINCT FROM NEW.pop)
        EXECUTE FUNCTION census_count();
    DROP TRIGGER generation_tunnels ON tunnels;
    DROP TRIGGER generation_routed ON routed;
    DROP FUNCTION generation_bump();
    CREATE FUNCTION pop_touched(p TEXT, tunnel BIGINT) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE g BIGINT;
    BEGIN
        UPDATE pops SET generation = generation + 1 WHERE name = p RETURNING generation INTO g;
        IF FOUND THEN
            PERFORM pg_notify('broker_tunnels', p || ' ' || tunnel || ' ' || g);
        END IF;
    END $$;
    CREATE FUNCTION tunnels_touched() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            PERFORM pop_touched(OLD.pop, OLD.id);
        END IF;
        IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.pop IS DISTINCT FROM OLD.pop) THEN
            PERFORM pop_touched(NEW.pop, NEW.id);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER tunnels_touched AFTER INSERT OR UPDATE OR DELETE ON tunnels
        FOR EACH ROW EXECUTE FUNCTION tunnels_touched();
    CREATE FUNCTION routed_touched() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            PERFORM pop_touched((SELECT pop FROM tunnels WHERE id = OLD.tunnel_id), OLD.tunnel_id);
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') THEN
            PERFORM pop_touched((SELECT pop FROM tunnels WHERE id = NEW.tunnel_id), NEW.tunnel_id);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER routed_touched AFTER INSERT OR UPDATE OR DELETE ON routed
        FOR EACH ROW EXECUTE FUNCTION routed_touched();
    "#,
];

/// Brings the database to the current schema in one transaction (PostgreSQL's DDL is
/// transactional: all of it or nothing), under [`MIGRATION_LOCK`].
pub(super) fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    let version: i64 = match tx.query_opt("SELECT version FROM schema_version", &[])? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO schema_version (version) VALUES (0)", &[])?;
            0
        }
    };
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql)?;
        tx.execute("UPDATE schema_version SET version = $1", &[&(i as i64 + 1)])?;
        tracing::info!(version = i + 1, "store schema migrated (PostgreSQL)");
    }
    tx.commit()?;
    Ok(())
}
