//! The shared store of several PoPs: PostgreSQL (docs/MULTI-POP.md). The same logic as
//! SQLite's ([`super::engine`]), through the synchronous `postgres` client.
//!
//! Writers are serialised, as SQLite serialises them: every write transaction first takes
//! one advisory lock, so that two PoPs allocating at once cannot pick the same prefix.
//! Reads run in a read-only transaction each, so that a record and its prefixes are read
//! from one snapshot.
//!
//! Not yet reachable from the configuration: the `postgres` client drives its own Tokio
//! runtime and must not be called from inside the controller's, so the daemon's use of it
//! (a thread of its own, timeouts, HTTP 503 while the database is away) is the next step
//! of docs/MULTI-POP.md. The store's test suite runs against it.
use std::cell::RefCell;

use postgres::{Client, Config, IsolationLevel, NoTls};

use super::{alloc::PoolSet, engine::Engine, sql::Sql, Result, StoreError};

mod adapter;
mod schema;

use adapter::{PgSql, Prepared};

/// The advisory lock every write transaction holds (`pg_advisory_xact_lock`).
const WRITE_LOCK: i64 = 0x6272_6f6b_6572_0002;

pub struct PgStore {
    client: RefCell<Client>,
    prepared: RefCell<Prepared>,
    pools: PoolSet,
}

impl PgStore {
    /// Connects with a libpq connection string or URL (`host=… dbname=…`,
    /// `postgresql://…`) and `password` (from a file or the environment: never the
    /// configuration), and migrates the schema.
    pub fn connect(conninfo: &str, password: Option<&str>, pools: PoolSet) -> Result<Self> {
        let mut config: Config = conninfo.parse().map_err(|e| StoreError::Invalid {
            what: format!("store.url: {e}"),
        })?;
        if let Some(p) = password {
            config.password(p);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(5));
        }
        config.application_name("broker");
        let mut client = config.connect(NoTls)?;
        schema::migrate(&mut client)?;
        Ok(Self {
            client: RefCell::new(client),
            prepared: RefCell::new(Prepared::default()),
            pools,
        })
    }
}

impl Engine for PgStore {
    fn read<T>(&self, f: impl FnOnce(&dyn Sql) -> Result<T>) -> Result<T> {
        let mut client = self.client.borrow_mut();
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let out = f(&PgSql {
            tx: RefCell::new(&mut tx),
            prepared: &self.prepared,
        })?;
        tx.commit()?;
        Ok(out)
    }

    fn write<T>(&mut self, f: impl FnOnce(&dyn Sql, &PoolSet) -> Result<T>) -> Result<T> {
        let mut client = self.client.borrow_mut();
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
        let out = f(
            &PgSql {
                tx: RefCell::new(&mut tx),
                prepared: &self.prepared,
            },
            &self.pools,
        )?;
        tx.commit()?;
        Ok(out)
    }

    /// Nothing the store can do from a client: PostgreSQL's own VACUUM reclaims what
    /// overwritten rows held (docs/MULTI-POP.md, secrets at rest).
    fn scrub(&mut self) -> Result<()> {
        Ok(())
    }
}
