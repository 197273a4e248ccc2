//! `cargo xtask bench`: the data plane benchmark (tests/benches/dataplane.rs), which
//! writes docs/BENCHMARKS.md, then the TSP, AYIYA, control-plane scale and store-engine
//! ones (tests/benches/tsp.rs, ayiya.rs, scale.rs, stores.rs, pops.rs, portal.rs), which add to it.
use std::process::Command;

use anyhow::{bail, Result};
use clap::Args;

use crate::util::{build_broker_release, exec, is_root, root};

#[derive(Args)]
pub struct Options {
    /// Largest tunnel count to load for the per-packet timings.
    #[arg(long, default_value_t = 1_000_000)]
    max_tunnels: u32,
}

pub fn run(o: Options) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads XDP programs and builds a lab: run it as root");
    }
    let broker = build_broker_release()?;
    let report = root().join("docs/BENCHMARKS.md");
    // The data plane's writes the report anew; the others add their sections to it.
    exec(
        bench("dataplane")
            .env("BROKER_BIN", &broker)
            .env("BENCH_MAX_TUNNELS", o.max_tunnels.to_string())
            .env("BENCH_OUT", &report),
    )?;
    exec(
        bench("tsp")
            .env("BROKER_BIN", &broker)
            .env("BENCH_APPEND", &report),
    )?;
    exec(bench("ayiya").env("BENCH_APPEND", &report))?;
    exec(
        bench("scale")
            .env("BROKER_BIN", &broker)
            .env("BENCH_APPEND", &report),
    )?;
    exec(
        bench("stores")
            .env("BROKER_BIN", &broker)
            .env("BENCH_APPEND", &report),
    )?;
    exec(
        bench("pops")
            .env("BROKER_BIN", &broker)
            .env("BENCH_APPEND", &report),
    )?;
    exec(
        bench("portal")
            .env("BROKER_BIN", &broker)
            .env("BENCH_APPEND", &report),
    )
}

/// `cargo bench` of one of broker-tests' benchmarks.
fn bench(name: &str) -> Command {
    let mut c = Command::new("cargo");
    c.args(["bench", "--locked", "-p", "broker-tests", "--bench", name]);
    c
}
