//! The embedded store: one SQLite file (WAL journal, so a killed process loses nothing it
//! committed). Every trait method is one transaction.
use std::path::Path;

use rusqlite::Connection;

use super::{
    engine::Engine, pops, query, schema, sql::Sql, Home, Result, StoreError, TunnelRecord,
};

pub struct SqliteStore {
    /// Seen by the store's tests, which read SQLite's query plans.
    pub(super) conn: Connection,
    home: Home,
}

impl SqliteStore {
    /// Opens (creating it and its directory if needed) and migrates the store at `path`,
    /// for PoP `home` (a SQLite store is one PoP's: every tunnel in it is its own).
    pub fn open(path: &Path, home: impl Into<Home>) -> Result<Self> {
        super::files::prepare(path).map_err(|e| StoreError::Files {
            path: path.display().to_string(),
            source: e,
        })?;
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::init(conn, home.into())
    }

    /// Reads the tunnels `what` names and the generation they belong to, in one read
    /// transaction on a read-only connection of its own, on a thread of its own (a start,
    /// while the data plane loads; [`super::Preloaded`]).
    pub fn preload(
        &self,
        path: &Path,
        what: super::Ahead,
    ) -> std::thread::JoinHandle<Result<super::Preloaded>> {
        let path = path.to_path_buf();
        let pop = self.home.pop.clone();
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
            let generation = query::generation(&*tx, &pop)?;
            let tunnels = match what {
                super::Ahead::All => all_in_two(&path, &tx, &pop, generation)?,
                super::Ahead::Watched => query::watched(&*tx, &pop)?,
            };
            Ok(super::Preloaded {
                what,
                generation,
                tunnels,
            })
        })
    }

    /// A store that lives in memory (tests).
    pub fn in_memory(home: impl Into<Home>) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, home.into())
    }

    fn init(mut conn: Connection, home: Home) -> Result<Self> {
        conn.pragma_update(None, "foreign_keys", false)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Deleted and overwritten content is zeroed, not left in free pages (secrets).
        conn.pragma_update(None, "secure_delete", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of the hot paths stays prepared ([`exec`]).
        conn.set_prepared_statement_cache_capacity(128);
        schema::migrate(&mut conn)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let mut store = Self { conn, home };
        store.write(|db, home| pops::register(db, home, true))?;
        Ok(store)
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
    pop: &str,
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
        return query::all(&**tx, pop);
    }
    let mid = lo + (hi - lo) / 2;
    let path = path.to_path_buf();
    let lower_pop = pop.to_string();
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
        Ok((
            query::generation(&*tx, &lower_pop)?,
            query::ids(&*tx, &lower_pop, 0, mid)?,
        ))
    });
    let mut upper = query::ids(&**tx, pop, mid + 1, u32::MAX)?;
    match lower.join() {
        Ok(Ok((g, mut tunnels))) if g == generation => {
            tunnels.append(&mut upper);
            Ok(tunnels)
        }
        // Written in between, or failed: the one transaction's view.
        _ => query::all(&**tx, pop),
    }
}

/// Reads run on the connection as it is; writes in a transaction of their own.
impl Engine for SqliteStore {
    fn read<T: Send>(&self, f: impl FnOnce(&dyn Sql) -> Result<T> + Send) -> Result<T> {
        f(&self.conn)
    }

    fn write<T: Send>(&mut self, f: impl FnOnce(&dyn Sql, &Home) -> Result<T> + Send) -> Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&*tx, &self.home)?;
        tx.commit()?;
        Ok(out)
    }

    fn home(&self) -> &Home {
        &self.home
    }

    /// The WAL is written back and emptied; deleted content was zeroed as it went
    /// (`secure_delete`).
    fn scrub(&mut self) -> Result<()> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

mod adapter;

#[cfg(test)]
mod tests;
