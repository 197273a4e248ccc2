//! `build-ebpf` and `build-and-load`.
use std::process::Command;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::util::{build_broker, ebpf_cargo, exec, root};

/// Builds the XDP objects exactly as broker-userspace's build.rs does.
pub fn ebpf() -> Result<()> {
    // Same flags as broker-userspace/build.rs, so this object is the one the daemon embeds.
    let flags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
        "-Ctarget-feature=+allows-misaligned-mem-access".into(),
    ];
    exec(ebpf_cargo("build").env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f")))?;
    let dir = root().join("target/bpfel-unknown-none/release");
    for obj in ["broker", "broker-aux"] {
        println!("{}", dir.join(obj).display());
    }
    Ok(())
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
