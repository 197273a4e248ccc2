//! `cargo xtask fuzz [--secs N] [TARGET]`: the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, nightly with AddressSanitizer), each for N seconds from the committed seed
//! corpus. `cargo xtask test` runs each for a few seconds. New inputs go to a scratch
//! directory, not into the committed corpus; a crash leaves its input in
//! `fuzz/artifacts/<target>/` and fails the command.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::util::{exec, output};

#[derive(Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Only this target (default: all).
    target: Option<String>,
}

pub fn run(o: Options) -> Result<()> {
    targets(o.target.as_deref(), o.secs)
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.args(["+nightly", "fuzz"]).current_dir(fuzz_dir());
    c
}

/// Builds the targets once, then runs `only` (or every target) for `secs` seconds each.
pub fn targets(only: Option<&str>, secs: u64) -> Result<()> {
    exec(cargo_fuzz().args(["build", "-O"]))?;
    let list = output(cargo_fuzz().arg("list"))?;
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && only.is_none_or(|o| o == *n))
        .collect();
    if names.is_empty() {
        bail!("no fuzz target {}", only.unwrap_or("at all"));
    }
    let scratch = std::env::temp_dir().join(format!("broker-fuzz-{}", std::process::id()));
    let result = (|| -> Result<()> {
        for name in &names {
            let out = scratch.join(name);
            std::fs::create_dir_all(&out)?;
            let seeds = fuzz_dir().join("corpus").join(name);
            eprintln!("fuzz: {name} for {secs} s");
            exec(
                cargo_fuzz()
                    .args(["run", "-O", name])
                    .arg(&out)
                    .arg(&seeds)
                    .arg("--")
                    .arg(format!("-max_total_time={secs}"))
                    .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"]),
            )
            .with_context(|| {
                format!(
                    "fuzz target {name} failed: its input is in {}",
                    fuzz_dir().join("artifacts").join(name).display()
                )
            })?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
