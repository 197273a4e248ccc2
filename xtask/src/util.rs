//! Running commands and finding the workspace.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command with inherited output, in the workspace root; fails on non-zero exit.
pub fn exec(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("spawning {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs a command quietly; true when it exits 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Output of a command that must succeed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("spawning {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            show(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Builds the `broker` binary (debug) and returns its path.
pub fn build_broker() -> Result<PathBuf> {
    exec(Command::new("cargo").args([
        "build",
        "--locked",
        "-p",
        "broker-userspace",
        "--bin",
        "broker",
    ]))?;
    Ok(root().join("target/debug/broker"))
}

/// Builds the optimised `broker` (for measurements) and returns its path.
pub fn build_broker_release() -> Result<PathBuf> {
    exec(Command::new("cargo").args([
        "build",
        "--locked",
        "--release",
        "-p",
        "broker-userspace",
        "--bin",
        "broker",
    ]))?;
    Ok(root().join("target/release/broker"))
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo <subcommand>` for the eBPF crate: nightly, the BPF target, `build-std=core`.
pub fn ebpf_cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        subcommand,
        "--package",
        "broker-ebpf",
        "--bins",
    ])
    .args([
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ]);
    cmd
}
