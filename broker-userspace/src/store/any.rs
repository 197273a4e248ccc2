//! The store `broker run` opens: SQLite or PostgreSQL, as the configuration says.
use std::path::Path;

use super::{
    engine::Engine, sql::Sql, Ahead, Heard, Home, PgStore, Preloaded, Result, SqliteStore,
    StoreError,
};

/// Either engine, behind the one `Store` (through [`Engine`]).
pub enum AnyStore {
    /// Boxed, as is the other: the variants differ in size.
    Sqlite(Box<SqliteStore>),
    Postgres(Box<PgStore>),
}

/// The environment variable a PostgreSQL password may come from.
pub const PASSWORD_ENV: &str = "BROKER_STORE_PASSWORD";

impl AnyStore {
    pub fn sqlite(path: &Path, home: Home) -> Result<Self> {
        SqliteStore::open(path, home).map(|s| Self::Sqlite(Box::new(s)))
    }

    /// PostgreSQL at `url`, the password read from `password_file` (its first line) or
    /// else from `$BROKER_STORE_PASSWORD`.
    /// Over TLS verified against `tls_ca_file` when there is one.
    pub fn postgres(
        url: &str,
        password_file: Option<&Path>,
        tls_ca_file: Option<&Path>,
        home: Home,
    ) -> Result<Self> {
        let password = match password_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| StoreError::Invalid {
                        what: format!("store.password_file {}: {e}", f.display()),
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => std::env::var(PASSWORD_ENV).ok(),
        };
        let tls = super::postgres::Tls::from_ca_file(tls_ca_file)?;
        PgStore::connect_with(url, password.as_deref(), tls, home)
            .map(|s| Self::Postgres(Box::new(s)))
    }

    /// Reads the tunnels `what` names ahead, on a thread and a connection of its own
    /// (SQLite's file at `path` opened a second time, or a second PostgreSQL session);
    /// `None` for SQLite without its path.
    pub fn preload(
        &self,
        path: Option<&Path>,
        what: Ahead,
    ) -> Option<std::thread::JoinHandle<Result<Preloaded>>> {
        match (self, path) {
            (Self::Sqlite(s), Some(path)) => Some(s.preload(path, what)),
            (Self::Sqlite(_), None) => None,
            (Self::Postgres(s), _) => Some(s.preload(what)),
        }
    }
}

impl AnyStore {
    /// What other PoPs change ([`PgStore::listen`]); `None` for SQLite, one PoP's store.
    pub fn listen(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Heard>> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(s) => Some(s.listen()),
        }
    }
}

impl Engine for AnyStore {
    fn read<T: Send>(&self, f: impl FnOnce(&dyn Sql) -> Result<T> + Send) -> Result<T> {
        match self {
            Self::Sqlite(s) => s.read(f),
            Self::Postgres(s) => s.read(f),
        }
    }

    fn write<T: Send>(&mut self, f: impl FnOnce(&dyn Sql, &Home) -> Result<T> + Send) -> Result<T> {
        match self {
            Self::Sqlite(s) => s.write(f),
            Self::Postgres(s) => s.write(f),
        }
    }

    fn home(&self) -> &Home {
        match self {
            Self::Sqlite(s) => s.home(),
            Self::Postgres(s) => s.home(),
        }
    }

    fn scrub(&mut self) -> Result<()> {
        match self {
            Self::Sqlite(s) => s.scrub(),
            Self::Postgres(s) => s.scrub(),
        }
    }
}
