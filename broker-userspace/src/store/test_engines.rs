//! For the store's tests: each engine-neutral test runs once per engine
//! ([`on_every_engine`]), on an empty store. SQLite's is in memory; PostgreSQL's is a new
//! database in one throwaway cluster per test binary (`broker_tests::postgres`, started as
//! `nobody`, which needs root).
use std::sync::{
    atomic::{AtomicU32, Ordering},
    mpsc, OnceLock,
};

use super::{alloc::PoolSet, Home, PgStore, SqliteStore, Store};

/// Opens an empty store of the engine under test with these pools.
pub(crate) type Open = &'static dyn Fn(PoolSet) -> Box<dyn Store>;

pub(crate) fn sqlite(p: PoolSet) -> Box<dyn Store> {
    Box::new(SqliteStore::in_memory(p).unwrap())
}

pub(crate) fn postgres(p: PoolSet) -> Box<dyn Store> {
    Box::new(fresh(p))
}

/// Runs each named test, a `fn(Open)`, on SQLite and on PostgreSQL.
macro_rules! on_every_engine {
    ($($test:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test] fn $test() { super::$test(&$crate::store::test_engines::sqlite) })*
        }
        mod on_postgres {
            $(#[test] fn $test() { super::$test(&$crate::store::test_engines::postgres) })*
        }
    };
}
pub(crate) use on_every_engine;

/// What connecting to the binary's cluster takes.
struct Cluster {
    socket_dir: String,
    port: u16,
    password: String,
}

/// The binary's cluster, started on first use by a thread that then lives as long as the
/// process (the server is tied to it); at exit the server is stopped and its directory
/// removed (`Cluster::keep_until_exit`), and should the process be killed, the server ends
/// with it and the next cluster started removes the directory.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the store's PostgreSQL tests start a cluster as `nobody`, which needs root: run them through `cargo xtask test`"
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let info = match broker_tests::postgres::Cluster::start() {
                Ok(c) => {
                    let info = Cluster {
                        socket_dir: c.socket_dir().display().to_string(),
                        port: c.port(),
                        password: c.password().to_string(),
                    };
                    c.keep_until_exit();
                    Ok(info)
                }
                Err(e) => Err(format!("{e:#}")),
            };
            let _ = tx.send(info);
            // The server is tied to this thread: it lives as long as the process.
            loop {
                std::thread::park();
            }
        });
        rx.recv()
            .expect("the cluster's thread")
            .unwrap_or_else(|e| panic!("starting PostgreSQL for the store's tests: {e}"))
    })
}

/// What the store keeps of some password: for tests that need an account, not a login.
pub(crate) fn secrets() -> crate::secret::UserSecrets {
    crate::secret::UserSecrets {
        password_hash: "$argon2id$x".into(),
        tic_md5: "x".into(),
        digest_realm: "broker".into(),
        digest_ha1: "x".into(),
    }
}

/// A store on a new, empty database.
pub(crate) fn fresh(pools: PoolSet) -> PgStore {
    shared([Home::from(pools)]).pop().expect("one store")
}

/// Stores of several PoPs on one new, empty database, in the order of `homes` (each
/// registers in turn).
pub(crate) fn shared<const N: usize>(homes: [Home; N]) -> Vec<PgStore> {
    let (conninfo, password) = fresh_database();
    homes
        .into_iter()
        .map(|h| PgStore::connect(&conninfo, Some(&password), h).expect("opening the test store"))
        .collect()
}

/// A new, empty database: its conninfo and password.
pub(crate) fn fresh_database() -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let c = cluster();
    let db = format!("store_test_{}", N.fetch_add(1, Ordering::Relaxed));
    let conninfo = |db: &str| {
        format!(
            "host={} port={} user={} dbname={db}",
            c.socket_dir,
            c.port,
            broker_tests::postgres::USER
        )
    };
    let mut config: postgres::Config = conninfo("postgres").parse().expect("a conninfo");
    let mut admin = config
        .password(&c.password)
        .connect(postgres::NoTls)
        .expect("connecting to the test cluster");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("creating a test database");
    (conninfo(&db), c.password.clone())
}
