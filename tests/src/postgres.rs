//! Throwaway PostgreSQL clusters for the tests and the lab (docs/MULTI-POP.md).
//!
//! Each cluster is set up as follows:
//! - `initdb` runs into a directory of its own under the system's temporary directory;
//! - `postgres` runs as a child of this process, as an unprivileged user (PostgreSQL
//!   refuses root);
//! - the server listens only on a Unix socket in that directory, with password (SCRAM)
//!   authentication.
//!
//! It is never a system service. When the value drops, the server is stopped and the
//! directory removed. If the thread that started the server dies first, the server is sent
//! SIGQUIT, PostgreSQL's immediate shutdown, so that a killed test leaves no server behind.
//! So start a cluster on the thread that keeps it.
use std::{
    fs,
    os::unix::{
        fs::{chown, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, Once,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The cluster's superuser, which the broker connects as in the tests.
pub const USER: &str = "broker";
/// `nobody` on Debian: the unprivileged user the server runs as.
const UNPRIVILEGED: u32 = 65534;
/// The port only names the socket file (`.s.PGSQL.<port>`): nothing listens on TCP.
const PORT: u16 = 5432;
/// How long a server may take to accept connections, or to shut down.
const START: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(10);

/// A running throwaway cluster.
#[derive(Debug)]
pub struct Cluster {
    server: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
    password: String,
    /// The server ends with this process (`PR_SET_PDEATHSIG`); not for a kept lab's.
    tied: bool,
    /// Also on TCP at 127.0.0.1, with TLS ([`Cluster::start_tls`]): its port, which is
    /// then also the socket's.
    tls_port: Option<u16>,
}

impl Cluster {
    /// Initialises and starts a cluster; waits until it accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_with(true)
    }

    /// [`Cluster::start`] for a cluster that outlives this process (`cargo xtask lab up
    /// --pops`): not ended with it, stopped by [`stop_left`] (`lab down`).
    pub fn start_detached() -> Result<Self> {
        Self::start_with(false)
    }

    /// Leaves the server running past this value's end; returns its directory, for
    /// [`stop_left`].
    pub fn leave_running(mut self) -> PathBuf {
        self.server = None;
        let dir = self.dir.clone();
        std::mem::forget(self);
        dir
    }

    fn start_with(tied: bool) -> Result<Self> {
        let bin = bin_dir()?;
        sweep();
        let dir = private_dir()?;
        // From here on, dropping `cluster` removes the directory, also on error.
        let mut cluster = Self {
            server: None,
            dir,
            bin,
            password: password(),
            tied,
            tls_port: None,
        };
        cluster.init()?;
        cluster.run()?;
        Ok(cluster)
    }

    /// A cluster that also listens on 127.0.0.1 (a port of its own, [`Cluster::port`])
    /// with TLS: `certificate` and `key` (PEM) are the server's.
    pub fn start_tls(certificate: &str, key: &str) -> Result<Self> {
        let bin = bin_dir()?;
        sweep();
        let dir = private_dir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cluster = Self {
            server: None,
            dir,
            bin,
            password: password(),
            tied: true,
            tls_port: Some(port),
        };
        cluster.init()?;
        for (name, pem) in [("server.crt", certificate), ("server.key", key)] {
            let path = cluster.dir.join(name);
            fs::write(&path, pem)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            chown(&path, Some(UNPRIVILEGED), Some(UNPRIVILEGED))?;
        }
        cluster.run()?;
        Ok(cluster)
    }

    /// The directory of the server's Unix socket: the host to connect to.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.tls_port.unwrap_or(PORT)
    }

    /// The password of [`USER`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The postmaster's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// A libpq connection string for database `db`, without the password (which the broker
    /// reads from a file or the environment).
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user={USER} dbname={db}",
            self.dir.display(),
            self.port()
        )
    }

    /// Runs `sql` in database `db` through `psql` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(self.conninfo(db))
            .env("PGPASSWORD", &self.password)
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} in {db}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Creates an empty database owned by [`USER`].
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .map(drop)
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A streaming standby of this cluster, in a directory of its own: a base backup of
    /// the running server (`pg_basebackup -R`), started; it follows the primary until
    /// [`Cluster::promote`]d.
    pub fn standby(&self) -> Result<Self> {
        let mut standby = Self {
            server: None,
            dir: private_dir()?,
            bin: self.bin.clone(),
            password: self.password.clone(),
            tied: self.tied,
            // A standby of a TLS cluster is on its Unix socket only.
            tls_port: None,
        };
        let out = standby
            .as_server_user("pg_basebackup")
            .arg("-D")
            .arg(standby.dir.join("data"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port().to_string(), "-U", USER])
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .env("PGPASSWORD", &self.password)
            .output()
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        standby.run()?;
        Ok(standby)
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub fn in_recovery(&self) -> Result<bool> {
        Ok(self.psql("postgres", "SELECT pg_is_in_recovery()")? == "t")
    }

    /// Makes a standby the primary and waits until it accepts writes.
    pub fn promote(&self) -> Result<()> {
        let out = self
            .as_server_user("pg_ctl")
            .arg("promote")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "30"])
            .output()
            .context("running pg_ctl promote")?;
        if !out.status.success() {
            bail!(
                "pg_ctl promote failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server again on the same data after [`Cluster::stop`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.server.is_some() {
            bail!("the server still runs");
        }
        self.run()
    }

    /// Stops the server: a fast shutdown (SIGINT), then SIGKILL after a grace period.
    /// Returns whether it shut down by itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut server) = self.server.take() else {
            return false;
        };
        if let Ok(Some(_)) = server.try_wait() {
            return false;
        }
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + STOP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = server.kill();
        let _ = server.wait();
        false
    }

    /// Keeps the cluster for the rest of the process (one cluster for a whole test binary):
    /// at exit the server is stopped and the directory removed. The server stays tied to
    /// the thread that started it, so that thread must live as long.
    pub fn keep_until_exit(mut self) {
        static REGISTER: Once = Once::new();
        REGISTER.call_once(|| {
            // SAFETY: registers a plain function; it runs once, at exit.
            unsafe { libc::atexit(stop_kept) };
        });
        if let Some(server) = self.server.take() {
            KEPT.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((server.id(), self.dir.clone()));
        }
        // Nothing left for `drop` to do: the directory goes at exit.
        std::mem::forget(self);
    }

    /// `program` of this PostgreSQL, to run as the server's user in the cluster's directory.
    fn as_server_user(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.uid(UNPRIVILEGED)
            .gid(UNPRIVILEGED)
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        cmd
    }

    fn init(&self) -> Result<()> {
        let pwfile = self.dir.join("pwfile");
        fs::write(&pwfile, &self.password)?;
        chown(&pwfile, Some(UNPRIVILEGED), Some(UNPRIVILEGED))?;
        let out = self
            .as_server_user("initdb")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .context("running initdb")?;
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        let log = fs::File::create(self.dir.join("server.log"))?;
        chown(
            self.dir.join("server.log"),
            Some(UNPRIVILEGED),
            Some(UNPRIVILEGED),
        )?;
        let mut cmd = self.as_server_user("postgres");
        match self.tls_port {
            None => cmd.args(["-c", "listen_addresses="]),
            Some(_) => cmd
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
                .args([
                    "-c".to_string(),
                    format!("ssl_cert_file={}", self.dir.join("server.crt").display()),
                    "-c".to_string(),
                    format!("ssl_key_file={}", self.dir.join("server.key").display()),
                ]),
        };
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-p", &self.port().to_string()])
            // Throwaway: durability is not what is under test, time is short.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdout(log.try_clone()?)
            .stderr(log);
        let parent = std::process::id() as i32;
        let tied = self.tied;
        // SAFETY: async-signal-safe calls only, between fork and exec; after the uid change,
        // which would clear the setting.
        unsafe {
            cmd.pre_exec(move || {
                if tied && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent died before exec"));
                }
                Ok(())
            });
        }
        self.server = Some(cmd.spawn().context("starting postgres")?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START;
        loop {
            if let Some(server) = self.server.as_mut() {
                if let Ok(Some(status)) = server.try_wait() {
                    self.server = None;
                    bail!("postgres exited ({status}) while starting:\n{}", self.log());
                }
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &self.port().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within {START:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A libpq connection string for database `db` on `hosts`, a primary first and then its
/// standbys, asking for the read-write one (libpq's failover), without the password.
pub fn conninfo_of(hosts: &[&Cluster], db: &str) -> String {
    let sockets: Vec<String> = hosts
        .iter()
        .map(|c| c.socket_dir().display().to_string())
        .collect();
    let ports: Vec<String> = hosts.iter().map(|c| c.port().to_string()).collect();
    format!(
        "host={} port={} user={USER} dbname={db} target_session_attrs=read-write",
        sockets.join(","),
        ports.join(",")
    )
}

/// Servers and directories of clusters kept until exit ([`Cluster::keep_until_exit`]).
static KEPT: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

/// At exit: each kept server gets a fast shutdown, up to [`STOP`] to end (then SIGKILL),
/// and its directory is removed.
extern "C" fn stop_kept() {
    let kept = std::mem::take(&mut *KEPT.lock().unwrap_or_else(|e| e.into_inner()));
    for (pid, dir) in kept {
        // SAFETY: signalling and reaping our own child by PID.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let deadline = Instant::now() + STOP;
        let mut status = 0;
        // SAFETY: as above.
        while unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) } == 0 {
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                    libc::waitpid(pid as i32, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir_all(dir);
    }
}

/// The newest installed PostgreSQL's programs (Debian keeps them per major version in
/// `/usr/lib/postgresql/<version>/bin`).
pub fn bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server under {}: run `cargo xtask setup` (Debian's postgresql)",
            root.display()
        ),
    }
}

/// Stops the server of a cluster left running ([`Cluster::leave_running`]) in `dir`: a
/// fast shutdown, SIGKILL after a grace period; then removes the directory.
pub fn stop_left(dir: &Path) -> Result<()> {
    let pid = fs::read_to_string(dir.join("data/postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    if let Some(pid) = pid {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Only the postmaster of this very directory.
        if String::from_utf8_lossy(&cmdline).contains(&dir.display().to_string()) {
            // SAFETY: a PID read from the cluster's own postmaster.pid, checked above.
            unsafe { libc::kill(pid, libc::SIGINT) };
            let deadline = Instant::now() + STOP;
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Removes the directories of clusters whose test process is gone: one kept for a whole
/// test binary (a static, never dropped) ends with the process, but its directory stays.
fn sweep() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("broker-pg-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let server_gone = fs::read_to_string(e.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            .is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists());
        if !Path::new(&format!("/proc/{pid}")).exists() && server_gone {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A new directory only the server's user can enter (the socket's only protection
/// besides the password).
fn private_dir() -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "broker-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let owned = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
        .and_then(|()| chown(&dir, Some(UNPRIVILEGED), Some(UNPRIVILEGED)));
    if let Err(e) = owned {
        let _ = fs::remove_dir(&dir);
        return Err(e).with_context(|| format!("handing {} to uid {UNPRIVILEGED}", dir.display()));
    }
    Ok(dir)
}

/// A random password from the kernel.
fn password() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    assert_eq!(n, bytes.len() as isize, "getrandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
