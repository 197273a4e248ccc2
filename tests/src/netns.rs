//! Named network namespaces (`ip netns`), commands run inside them, and threads that enter
//! them.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};

/// A named network namespace, deleted on drop unless [`NetNs::keep`] was called.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    keep: bool,
}

impl NetNs {
    /// Creates the namespace and brings its loopback up. An existing one of the same name
    /// (left by a killed run) is replaced.
    pub fn create(name: &str) -> Result<Self> {
        if exists(name) {
            delete(name)?;
        }
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle to an existing namespace that is not deleted on drop.
    pub fn existing(name: &str) -> Result<Self> {
        if !exists(name) {
            bail!("network namespace {name} does not exist");
        }
        Ok(Self {
            name: name.to_string(),
            keep: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Leaves the namespace in place when this value drops (`cargo xtask lab up`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// A command that runs inside the namespace. `nsenter --net` switches only the network
    /// namespace, so /sys/fs/bpf (pins) stays the host's, unlike `ip netns exec`.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs a program inside the namespace and returns its stdout; fails on non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run(self.cmd(program).args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Starts `f` on a new thread that has entered this namespace.
    pub fn spawn_within<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path).expect("entering the network namespace");
            f()
        })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result
    /// (a panic in `f` is re-raised here).
    pub fn within<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path();
        let handle = std::thread::spawn(move || {
            enter(&path).expect("entering the network namespace");
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = delete(&self.name) {
                eprintln!("warning: deleting netns {}: {e:#}", self.name);
            }
        }
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace fd we own; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Runs `f` with the calling thread inside the namespace at `path`, then moves the thread
/// back to where it was (also when `f` panics). For values that cannot cross threads.
pub fn in_ns<R>(path: &str, f: impl FnOnce() -> R) -> Result<R> {
    let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
    enter(path)?;
    struct Back(File);
    impl Drop for Back {
        fn drop(&mut self) {
            // SAFETY: setns back to the namespace fd we opened.
            unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
        }
    }
    let _back = Back(home);
    Ok(f())
}

/// Moves the calling thread into a new, anonymous network namespace that disappears with
/// the thread. For tests that need interfaces but no processes.
pub fn unshare_thread() -> Result<()> {
    // SAFETY: unshare of the network namespace affects only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    Ok(())
}

pub fn exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

pub fn delete(name: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "del", name])).map(|_| ())
}

/// Names of existing namespaces starting with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Runs a command, returning stdout; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
