//! The throwaway PostgreSQL clusters the multi-PoP tests stand on (`broker_tests::postgres`):
//! one starts as an unprivileged user, answers only with its password, and leaves no
//! process and no directory behind, also when the test using it panics.
use broker_tests::{postgres::Cluster, require_root};

/// Whether a process with this PID runs (a zombie, dead and not yet reaped, does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name's closing parenthesis.
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    !matches!(state, Some(Some('Z' | 'X')))
}

#[test]
fn a_cluster_serves_sql_as_an_unprivileged_user_and_cleans_up() {
    require_root();
    let c = Cluster::start().expect("starting a cluster");
    let pid = c.pid().expect("a running server");
    let dir = c.socket_dir().to_path_buf();

    c.create_database("broker_test").unwrap();
    c.psql(
        "broker_test",
        "CREATE TABLE t (n BIGINT); INSERT INTO t VALUES (41), (1)",
    )
    .unwrap();
    assert_eq!(c.psql("broker_test", "SELECT sum(n) FROM t").unwrap(), "42");
    let owner = c
        .psql(
            "broker_test",
            "SELECT pg_catalog.current_setting('data_directory')",
        )
        .unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&owner).unwrap());
    assert_ne!(uid, 0, "the data directory {owner} belongs to root");

    // Password authentication is real: a wrong one is refused.
    let wrong = std::process::Command::new(broker_tests::postgres::bin_dir().unwrap().join("psql"))
        .args(["-X", "-c", "SELECT 1"])
        .arg(c.conninfo("postgres"))
        .env("PGPASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    drop(c);
    assert!(!alive(pid), "postgres {pid} still runs");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn a_panicking_test_leaves_no_server_behind() {
    require_root();
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(|| {
        let c = Cluster::start().expect("starting a cluster");
        *seen.lock().unwrap() = Some((c.pid().unwrap(), c.socket_dir().to_path_buf()));
        panic!("a test failing with its cluster up");
    });
    assert!(r.is_err());
    let (pid, dir) = seen.lock().unwrap().clone().unwrap();
    assert!(!alive(pid), "postgres {pid} still runs");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn the_server_dies_with_the_thread_that_started_it() {
    require_root();
    /// What the forgotten cluster leaves to clean up, also when the test fails.
    struct Leftover(u32, std::path::PathBuf);
    impl Drop for Leftover {
        fn drop(&mut self) {
            if alive(self.0) {
                // SAFETY: the server this test started, by PID.
                unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    // A cluster whose owner vanishes without dropping it (as when a test process is
    // killed): the kernel sends the server SIGQUIT.
    let left = std::thread::spawn(|| {
        let c = Cluster::start().expect("starting a cluster");
        let left = Leftover(c.pid().unwrap(), c.socket_dir().to_path_buf());
        std::mem::forget(c);
        left
    })
    .join()
    .unwrap();
    broker_tests::eventually(10, "postgres ends with its thread", || !alive(left.0));
}
