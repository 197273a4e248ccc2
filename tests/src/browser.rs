//! A real browser for the portal's tests: Debian's `chromium`, driven by its
//! `chromedriver` over WebDriver, both inside a lab namespace (so the browser reaches the
//! PoP as a client on the lab's internet would).
//!
//! The WebDriver client runs in the test's own namespace: a [`Relay`] on the root
//! namespace's loopback carries its connections to chromedriver's port inside the lab
//! namespace. Only WebDriver commands cross; the browser's traffic stays in the lab.
//!
//! chromedriver runs in a process group of its own, and the browsers it starts with it:
//! dropping [`WebDriver`] ends the whole group, also when a test fails half way.
use std::{
    net::{Ipv4Addr, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns::NetNs, process::Proc, relay::Relay};

/// chromedriver's port inside the namespace.
const DRIVER_PORT: u16 = 9515;

pub struct WebDriver {
    driver: Option<Proc>,
    /// The relay's address in the root namespace: what the WebDriver client connects to.
    pub url: String,
    _relay: Relay,
    profile: PathBuf,
    /// Sessions started: each browser gets a profile of its own.
    sessions: std::sync::atomic::AtomicUsize,
}

/// The programs, or what to install.
fn programs() -> Result<(&'static str, &'static str)> {
    for p in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(p).exists() {
            bail!(
                "{p} is missing: run `cargo xtask setup` (Debian's chromium and chromium-driver)"
            );
        }
    }
    Ok(("/usr/bin/chromium", "/usr/bin/chromedriver"))
}

impl WebDriver {
    /// Starts chromedriver in `ns`, with its log and the browser's profile under `dir`.
    pub fn start(ns: &NetNs, dir: &Path) -> Result<Self> {
        programs()?;
        std::fs::create_dir_all(dir)?;
        let mut cmd = ns.cmd("/usr/bin/chromedriver");
        cmd.arg(format!("--port={DRIVER_PORT}"))
            .arg("--allowed-ips=127.0.0.1")
            .process_group(0);
        let driver = Proc::spawn("chromedriver", cmd, &dir.join("chromedriver.log"))?;
        let relay = Relay::start(
            (Ipv4Addr::LOCALHOST, 0).into(),
            ns,
            (Ipv4Addr::LOCALHOST, DRIVER_PORT).into(),
        )?;
        let mut wd = Self {
            driver: Some(driver),
            url: format!("http://{}", relay.at),
            _relay: relay,
            profile: dir.join("profile"),
            sessions: Default::default(),
        };
        wd.wait_ready(ns)?;
        Ok(wd)
    }

    fn wait_ready(&mut self, ns: &NetNs) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let up = ns.within(|| TcpStream::connect((Ipv4Addr::LOCALHOST, DRIVER_PORT)).is_ok());
            if up {
                return Ok(());
            }
            let d = self.driver.as_mut().expect("started");
            if !d.running() {
                bail!("chromedriver exited; its log:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("chromedriver did not listen within 20 s")
    }

    /// chromedriver's log so far (with the browser's output), for failure messages.
    pub fn log(&self) -> String {
        self.driver.as_ref().map(Proc::log).unwrap_or_default()
    }

    /// The capabilities of a headless chromium as root in a container: no sandbox (root),
    /// no GPU, a profile of its own in the test's directory (two browsers cannot share
    /// one), a fixed window.
    pub fn capabilities(&self) -> serde_json::Map<String, serde_json::Value> {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}{n}", self.profile.display()),
                ]
            }
        });
        caps.as_object().cloned().unwrap_or_default()
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if let Some(mut d) = self.driver.take() {
            // The group: chromedriver and the browsers it started (its PID is the group's).
            let group = d.pid().map(|p| -(p as i32));
            if let Some(g) = group {
                // SAFETY: signalling the process group this harness made for chromedriver.
                unsafe { libc::kill(g, libc::SIGTERM) };
            }
            d.stop(Duration::from_secs(5));
            if let Some(g) = group {
                // Browsers that outlived chromedriver.
                // SAFETY: as above.
                unsafe { libc::kill(g, libc::SIGKILL) };
            }
        }
    }
}

/// Where screenshots go: `$BROKER_PORTAL_SCREENSHOTS` (docs/portal when refreshing the
/// documentation's), else under the test's directory.
pub fn screenshot_dir(test_dir: &Path) -> Result<PathBuf> {
    let dir = std::env::var_os("BROKER_PORTAL_SCREENSHOTS")
        .map_or_else(|| test_dir.join("screenshots"), PathBuf::from);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
