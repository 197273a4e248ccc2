//! `build-ebpf` and `build-and-load`.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::util::{build_broker, ebpf_cargo, exec, root};

#[derive(Args)]
pub struct EbpfOptions {
    /// Build the debug object instead: broker-ebpf's feature `log`, an aya-log record of
    /// every packet's verdict, for `dataplane.ebpf_log` (docs/OPERATIONS.md). It goes to
    /// target/ebpf-log/, never over the default objects.
    #[arg(long)]
    pub log: bool,
}

/// Same flags as broker-userspace/build.rs, so the default object is the one the daemon
/// embeds.
fn rustflags() -> String {
    [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
        "-Ctarget-feature=+allows-misaligned-mem-access".into(),
    ]
    .join("\x1f")
}

/// Builds the XDP objects exactly as broker-userspace's build.rs does.
pub fn ebpf() -> Result<()> {
    exec(ebpf_cargo("build").env("CARGO_ENCODED_RUSTFLAGS", rustflags()))?;
    let dir = root().join("target/bpfel-unknown-none/release");
    for obj in ["broker", "broker-aux"] {
        println!("{}", dir.join(obj).display());
    }
    Ok(())
}

/// Where [`ebpf_log`] leaves the debug object (`broker_tests::ebpf_log_object` looks
/// there too).
pub fn ebpf_log_path() -> PathBuf {
    root().join("target/ebpf-log/broker")
}

/// Builds the debug object: the same flags, the feature `log`, a target directory of its
/// own (so the default objects and their build stay as they are); returns its path.
pub fn ebpf_log() -> Result<PathBuf> {
    let target = root().join("target/ebpf-log");
    exec(
        ebpf_cargo("build")
            .args(["--features", "log", "--target-dir"])
            .arg(&target)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags()),
    )?;
    let built = target.join("bpfel-unknown-none/release/broker");
    let out = ebpf_log_path();
    std::fs::copy(&built, &out)
        .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    Ok(out)
}

#[derive(Args)]
pub struct LoadOptions {
    /// Interface to attach to.
    #[arg(long)]
    iface: String,
    #[arg(long, value_enum, default_value_t = Mode::Driver)]
    mode: Mode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Driver,
    Skb,
}

pub fn build_and_load(o: LoadOptions) -> Result<()> {
    let broker = build_broker()?;
    let mode = match o.mode {
        Mode::Driver => "driver",
        Mode::Skb => "skb",
    };
    exec(Command::new(broker).args(["dataplane", "load", "--iface", &o.iface, "--mode", mode]))
}
