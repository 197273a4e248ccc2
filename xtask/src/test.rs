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
    // The kernel crate only builds for the BPF target, with nightly; its feature `log`
    // (the debug object) has code of its own.
    exec(ebpf_cargo("clippy").args(["--", "-D", "warnings"]))?;
    exec(ebpf_cargo("clippy").args(["--features", "log", "--", "-D", "warnings"]))?;
    let broker = build_broker()?;
    // The debug object, for the test that loads it (tests/tests/xdp_log.rs).
    let log_object = crate::build::ebpf_log()?;
    if !is_root() {
        bail!(
            "the kernel-program and end-to-end tests need root (namespaces, veth, BPF); run `sudo -E cargo xtask test`"
        );
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--workspace", "--locked"])
        .env("BROKER_BIN", &broker)
        .env("BROKER_EBPF_LOG_OBJECT", &log_object)
        .env("RUST_BACKTRACE", "1");
    if let Some(f) = &o.filter {
        cmd.arg("--").arg(f);
    }
    exec(&mut cmd)?;
    if o.filter.as_deref().is_none_or(|f| "sha1x16".contains(f)) {
        sixteen_lanes()?;
    }
    // Every parser reachable from the network or the config, a few seconds each from the
    // committed corpus (`cargo xtask fuzz` runs longer).
    if o.filter.as_deref().is_none_or(|f| "fuzz".contains(f)) {
        crate::fuzz::targets(None, FUZZ_SECS)?;
    }
    Ok(())
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECS: u64 = 10;

/// The AYIYA worker's sixteen-lane SHA-1 runs only on CPUs with AVX-512F/BW, and its tests
/// only there: they are `#[ignore]`d in the plain run and run here. Without AVX-512 the
/// worker hashes one message at a time (tested above), and this says that the lanes were
/// not exercised rather than passing quietly.
fn sixteen_lanes() -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    let lanes = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    let lanes = false;
    if !lanes {
        println!(
            "NOT RUN: the sixteen-lane SHA-1 tests (broker-userspace sha1x16, 3 tests): this CPU lacks AVX-512F/BW, so the AYIYA worker never uses that pass here"
        );
        return Ok(());
    }
    exec(Command::new("cargo").args([
        "test",
        "-p",
        "broker-userspace",
        "--lib",
        "--locked",
        "sha1x16::",
        "--",
        "--ignored",
    ]))
}
