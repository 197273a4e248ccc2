//! `build-ebpf` and `build-and-load`.
use std::process::Command;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::util::{build_broker, exec, root};

/// Builds the XDP objects exactly as broker-userspace's build.rs does.
pub fn ebpf() -> Result<()> {
    exec(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
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
            ])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            ),
    )?;
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
