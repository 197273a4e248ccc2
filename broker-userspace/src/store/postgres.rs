//! The shared store of several PoPs: PostgreSQL (docs/MULTI-POP.md). The same logic as
//! SQLite's ([`super::engine`]), through the synchronous `postgres` client.
//!
//! - Writers are serialised, as SQLite serialises them: every write transaction first
//!   takes one advisory lock, so that two PoPs allocating at once cannot pick the same
//!   prefix.
//! - Reads run in a read-only transaction each, so that a record and its prefixes are read
//!   from one snapshot.
//! - The client drives a Tokio runtime of its own, which must not run inside the
//!   controller's: called from there, a call runs on a scoped thread of its own
//!   ([`off_runtime`]).
//! - The database may go away: what needs it is [`StoreError::Unavailable`] at once, and a
//!   thread of its own connects again meanwhile (libpq's several hosts with
//!   `target_session_attrs=read-write` find the primary after a failover); no caller waits
//!   for a connection.
use std::{
    cell::RefCell,
    sync::{mpsc, Arc, Weak},
    time::Duration,
};

use postgres::{Client, Config, IsolationLevel};

use super::{
    engine::Engine, pops, query, sql::Sql, Ahead, Heard, Home, Preloaded, Result, StoreError,
};

mod adapter;
mod schema;
mod tls;

pub use tls::Tls;

use adapter::{PgSql, Prepared};

/// The advisory lock every write transaction holds (`pg_advisory_xact_lock`).
const WRITE_LOCK: i64 = 0x6272_6f6b_6572_0002;
/// How long connecting may take, and a statement, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT_MS: u32 = 5000;
/// How often the reconnection thread tries while the database is away.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

pub struct PgStore {
    config: Config,
    tls: Tls,
    /// `None` once the connection was found lost, until the reconnector hands a new one.
    client: RefCell<Option<Client>>,
    /// Statements prepared on the current connection.
    prepared: RefCell<Prepared>,
    /// From the thread that connects again after a loss ([`reconnect`]), while it runs.
    reconnected: RefCell<Option<mpsc::Receiver<Client>>>,
    /// While this lives, the reconnection thread keeps trying; it gives up once the store
    /// is dropped.
    alive: Arc<()>,
    home: Home,
}

impl PgStore {
    /// Connects with a libpq connection string or URL (`host=… dbname=…`,
    /// `postgresql://…`) and `password` (from a file or the environment: never the
    /// configuration), migrates the schema and registers PoP `home` (refused if its pools
    /// overlap another PoP's).
    pub fn connect(conninfo: &str, password: Option<&str>, home: impl Into<Home>) -> Result<Self> {
        Self::connect_with(conninfo, password, Tls::Off, home)
    }

    /// [`PgStore::connect`], over TLS when `tls` is on.
    pub fn connect_with(
        conninfo: &str,
        password: Option<&str>,
        tls: Tls,
        home: impl Into<Home>,
    ) -> Result<Self> {
        let mut config = settings(conninfo, password)?;
        tls.require(&mut config);
        let client = off_runtime(|| -> Result<Client> {
            let mut client = tls.connect(&config).map_err(unavailable)?;
            schema::migrate(&mut client)?;
            Ok(client)
        })?;
        let mut store = Self {
            config,
            tls,
            client: RefCell::new(Some(client)),
            prepared: RefCell::new(Prepared::default()),
            reconnected: RefCell::new(None),
            alive: Arc::new(()),
            home: home.into(),
        };
        store.write(|db, home| pops::register(db, home, false))?;
        Ok(store)
    }

    /// Runs `f` on the live connection. Without one, `Unavailable` at once: connecting
    /// again is a thread of its own's business ([`reconnect`]), so that no caller (who
    /// holds the broker's lock) waits for a database that is away.
    fn with_client<T: Send>(
        &self,
        f: impl FnOnce(&mut Client, &RefCell<Prepared>) -> Result<T> + Send,
    ) -> Result<T> {
        let mut slot = self.client.borrow_mut();
        let mut prepared = self.prepared.borrow_mut();
        if slot.as_ref().is_none_or(Client::is_closed) {
            close(slot.take());
            let mut reconnected = self.reconnected.borrow_mut();
            match reconnected.as_ref().map(mpsc::Receiver::try_recv) {
                Some(Ok(client)) => {
                    *reconnected = None;
                    // Statements belong to the connection they were prepared on.
                    *prepared = Prepared::default();
                    *slot = Some(client);
                    tracing::info!("connected to the store again");
                }
                Some(Err(mpsc::TryRecvError::Empty)) => {}
                // Not running (or gone): start it.
                Some(Err(mpsc::TryRecvError::Disconnected)) | None => {
                    *reconnected = Some(reconnect(
                        self.config.clone(),
                        self.tls.clone(),
                        Arc::downgrade(&self.alive),
                    ));
                }
            }
        }
        let Some(client) = slot.as_mut() else {
            return Err(StoreError::Unavailable {
                what: "connecting again".into(),
            });
        };
        let prepared = &mut *prepared;
        off_runtime(move || {
            let cell = RefCell::new(std::mem::take(prepared));
            let out = f(client, &cell);
            *prepared = cell.into_inner();
            match out {
                // The connection went while in use (the server shut down, the network
                // broke): the database is away, not the request wrong.
                Err(StoreError::Postgres(e)) if e.is_closed() || client.is_closed() => {
                    Err(unavailable(e))
                }
                out => out,
            }
        })
    }
}

impl PgStore {
    /// Reads the tunnels `what` names and the generation they belong to, in one read-only
    /// transaction on a connection of its own, on a thread of its own (a start, while the
    /// data plane loads; [`super::Preloaded`]).
    pub fn preload(&self, what: Ahead) -> std::thread::JoinHandle<Result<Preloaded>> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let pop = self.home.pop.clone();
        std::thread::spawn(move || {
            let mut client = tls.connect(&config).map_err(unavailable)?;
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let prepared = RefCell::new(Prepared::default());
            let (generation, tunnels) = {
                let db = PgSql {
                    tx: RefCell::new(&mut tx),
                    prepared: &prepared,
                };
                let tunnels = match what {
                    Ahead::All => query::all(&db, &pop)?,
                    Ahead::Watched => query::watched(&db, &pop)?,
                };
                (query::generation(&db, &pop)?, tunnels)
            };
            tx.commit()?;
            Ok(Preloaded {
                what,
                generation,
                tunnels,
            })
        })
    }
}

/// Closing a client blocks on its runtime too: off the controller's.
fn close(client: Option<Client>) {
    if client.is_some() {
        off_runtime(move || drop(client));
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        close(self.client.get_mut().take());
        // A connection made again may wait in the channel, or arrive while it closes.
        if let Some(rx) = self.reconnected.get_mut().take() {
            off_runtime(move || drop(rx));
        }
    }
}

/// Connects again on a thread of its own, every [`RECONNECT_EVERY`] until it succeeds
/// (or the `store` is gone), and hands the connection over. libpq's several hosts with
/// `target_session_attrs=read-write` make that the primary, after a failover the new one.
fn reconnect(config: Config, tls: Tls, store: Weak<()>) -> mpsc::Receiver<Client> {
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("store-reconnect".into())
        .spawn(move || loop {
            if store.strong_count() == 0 {
                return;
            }
            match tls.connect(&config) {
                Ok(client) => {
                    let _ = tx.send(client);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %crate::broker::error_chain(&e), "the store is still away");
                    std::thread::sleep(RECONNECT_EVERY);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the store's reconnection thread");
    }
    rx
}

impl Engine for PgStore {
    fn read<T: Send>(&self, f: impl FnOnce(&dyn Sql) -> Result<T> + Send) -> Result<T> {
        self.with_client(|client, prepared| {
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let out = f(&PgSql {
                tx: RefCell::new(&mut tx),
                prepared,
            })?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn write<T: Send>(&mut self, f: impl FnOnce(&dyn Sql, &Home) -> Result<T> + Send) -> Result<T> {
        let home = &self.home;
        self.with_client(|client, prepared| {
            let mut tx = client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])?;
            let out = f(
                &PgSql {
                    tx: RefCell::new(&mut tx),
                    prepared,
                },
                home,
            )?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn home(&self) -> &Home {
        &self.home
    }

    /// Nothing the store can do from a client: PostgreSQL's own VACUUM reclaims what
    /// overwritten rows held (docs/MULTI-POP.md).
    fn scrub(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The connection's settings: the URL's, the password, and the controller's timeouts
/// where the URL sets none.
fn settings(conninfo: &str, password: Option<&str>) -> Result<Config> {
    let mut config: Config = conninfo.parse().map_err(|e| StoreError::Invalid {
        what: format!("store.url: {e}"),
    })?;
    if let Some(p) = password {
        config.password(p);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_options().is_none() {
        config.options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
    }
    // A peer gone silent ends the connection within seconds, not TCP's minutes.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10))
        .application_name("broker");
    Ok(config)
}

/// A connection that could not be made or was lost: the database is away.
fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::Unavailable {
        what: crate::broker::error_chain(&e),
    }
}

/// Runs `f` where the `postgres` client may block on its own runtime: on this thread when
/// it runs no Tokio runtime (the tests, the CLI), else on a scoped thread.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use broker_tests::postgres::Cluster;

    use super::*;
    use crate::store::PoolSet;
    use crate::store::{test_engines::secrets, Store};

    /// `store.tls_ca_file`: the connection is TLS, verified against the CA and the host's
    /// name; another CA, or another name, is refused.
    #[test]
    fn tls_is_verified_against_the_ca_and_the_name() {
        let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let c = Cluster::start_tls(&server.cert.pem(), &server.key_pair.serialize_pem())
            .expect("a cluster with TLS");
        let dir = std::env::temp_dir().join(format!("broker-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, server.cert.pem()).unwrap();
        let other = dir.join("other.pem");
        let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(&other, stranger.cert.pem()).unwrap();
        let at = |host: &str| {
            format!(
                "host={host} port={} user={} dbname=postgres",
                c.port(),
                broker_tests::postgres::USER
            )
        };
        let tls = Tls::from_ca_file(Some(&ca)).unwrap();
        let s = PgStore::connect_with(
            &at("127.0.0.1"),
            Some(c.password()),
            tls.clone(),
            PoolSet::default(),
        )
        .expect("TLS verified against the CA");
        assert!(s.users().unwrap().is_empty());
        // The server sees this store's session encrypted (psql's own is on the socket).
        let encrypted = c
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE ssl AND application_name = 'broker'",
            )
            .unwrap();
        assert_ne!(encrypted, "0", "no TLS session of the broker");
        let refused = |conninfo: &str, tls: Tls| match PgStore::connect_with(
            conninfo,
            Some(c.password()),
            tls,
            PoolSet::default(),
        ) {
            Err(StoreError::Unavailable { what }) => what,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("connected to {conninfo}"),
        };
        let e = refused(&at("127.0.0.1"), Tls::from_ca_file(Some(&other)).unwrap());
        assert!(e.contains("certificate"), "{e}");
        let e = refused(&at("localhost"), tls);
        assert!(e.contains("certificate") || e.contains("name"), "{e}");
        assert!(Tls::from_ca_file(Some(&dir.join("missing.pem"))).is_err());
        std::fs::write(dir.join("empty.pem"), "nothing\n").unwrap();
        assert!(Tls::from_ca_file(Some(&dir.join("empty.pem"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Inside the controller's runtime, while the database goes away and comes back.
    #[test]
    fn serves_inside_a_tokio_runtime_is_unavailable_while_the_database_is_away_and_reconnects() {
        let mut c = Cluster::start().expect("a cluster (root, Debian's postgresql)");
        c.create_database("t").unwrap();
        let mut s = PgStore::connect(&c.conninfo("t"), Some(c.password()), PoolSet::default())
            .expect("connecting");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            s.create_user("ann", &secrets(), 1).unwrap();
            assert_eq!(s.user("ann").unwrap().unwrap().created_at, 1);
        });

        assert!(c.stop(), "the server shut down cleanly");
        for _ in 0..2 {
            // The connection in use, then a new one, both fail as the database's absence.
            let e = rt.block_on(async { s.user("ann") }).unwrap_err();
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        }

        // Back: a thread of the store's connects again; calls meanwhile are refused as
        // before, never answered wrongly.
        c.start_again().expect("the same cluster again");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let ann = loop {
            match rt.block_on(async { s.user("ann") }) {
                Ok(found) => break found,
                Err(StoreError::Unavailable { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("not back: {e:?}"),
            }
        };
        assert_eq!(ann.unwrap().name, "ann");
        rt.block_on(async { s.create_user("bob", &secrets(), 2).unwrap() });
        assert_eq!(s.users().unwrap().len(), 2);
    }

    #[test]
    fn prepared_statements_stay_bounded() {
        let s = crate::store::test_engines::fresh(PoolSet::default());
        let n = adapter::PREPARED_MAX + 44;
        let sum: i64 = s
            .read(|db| {
                let mut sum = 0;
                for i in 0..n {
                    let sql = format!("SELECT CAST({i} AS BIGINT)");
                    sum += db.first(&sql, &[], |r| r.get::<i64>(0))?.unwrap_or(0);
                }
                Ok(sum)
            })
            .unwrap();
        assert_eq!(sum, (0..n as i64).sum::<i64>());
        let kept = s.prepared.borrow().len();
        assert!(kept <= adapter::PREPARED_MAX, "{kept} statements kept");
        assert!(kept > 0);
    }

    #[test]
    fn a_password_is_required_and_a_wrong_one_refused() {
        let c = Cluster::start().expect("a cluster (root, Debian's postgresql)");
        for password in [None, Some("wrong")] {
            let e = PgStore::connect(&c.conninfo("postgres"), password, PoolSet::default())
                .err()
                .expect("refused");
            assert!(
                matches!(e, StoreError::Unavailable { ref what } if what.contains("password")),
                "{e:?}"
            );
        }
    }
}

impl PgStore {
    /// Listens for the changes to this PoP's tunnels (`LISTEN broker_tunnels`) on a
    /// connection and thread of its own, for as long as the receiver lives. When the
    /// connection breaks, it connects again every [`RECONNECT_EVERY`] and says
    /// [`Heard::Listening`] once it listens again.
    pub fn listen(&self) -> tokio::sync::mpsc::UnboundedReceiver<Heard> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let pop = self.home.pop.clone();
        let spawned = std::thread::Builder::new()
            .name("store-listen".into())
            .spawn(move || listen::run(&config, &tls, &pop, &tx));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the store's listener: changes made elsewhere reach this PoP at the periodic reconcile only");
        }
        rx
    }
}

mod listen;

#[cfg(test)]
impl PgStore {
    /// Where this store connects (tests open a second store beside it).
    pub(crate) fn conninfo_for_tests(&self) -> (String, String) {
        let c = &self.config;
        let host = match c.get_hosts().first() {
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            None => String::new(),
        };
        let password = String::from_utf8_lossy(c.get_password().unwrap_or_default()).to_string();
        (
            format!(
                "host={host} port={} user={} dbname={}",
                c.get_ports().first().copied().unwrap_or(5432),
                c.get_user().unwrap_or_default(),
                c.get_dbname().unwrap_or_default()
            ),
            password,
        )
    }
}
