//! `cargo xtask test`: everything, in the order that fails fastest.
use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;

use crate::util::{build_broker, ebpf_cargo, exec, is_root};

#[derive(Args)]
pub struct Options {
    /// Only run tests whose name contains this (formatting and clippy still run).
    filter: Option<String>,
}

pub fn run(o: Options) -> Result<()> {
    exec(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    exec(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel crate only builds for the BPF target, with nightly.
    exec(ebpf_cargo("clippy").args(["--", "-D", "warnings"]))?;
    let broker = build_broker()?;
    if !is_root() {
        bail!(
            "the kernel-program and end-to-end tests need root (namespaces, veth, BPF); run `sudo -E cargo xtask test`"
        );
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--workspace", "--locked"])
        .env("BROKER_BIN", &broker)
        .env("RUST_BACKTRACE", "1");
    if let Some(f) = &o.filter {
        cmd.arg("--").arg(f);
    }
    exec(&mut cmd)?;
    // Every parser reachable from the network or the config, a few seconds each from the
    // committed corpus (`cargo xtask fuzz` runs longer).
    if o.filter.as_deref().is_none_or(|f| "fuzz".contains(f)) {
        crate::fuzz::targets(None, FUZZ_SECS)?;
    }
    Ok(())
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECS: u64 = 10;
