//! `cargo xtask <command>`: the project's own automation. One module per command; every
//! command but `setup` runs `setup` first, so a fresh machine needs nothing by hand.
mod bench;
mod build;
mod fuzz;
mod lab;
mod run;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (nightly rust-src, bpf-linker 0.10.0, Debian packages).
    Setup,
    /// Build the XDP objects (broker-ebpf) and print where they are; with `--log`, the
    /// debug object instead (aya-log records of every packet's verdict).
    BuildEbpf(build::EbpfOptions),
    /// Build, load and attach the data plane onto an interface; print the program id and
    /// maps; detach on Ctrl-C.
    BuildAndLoad(build::LoadOptions),
    /// Bring the lab of network namespaces up or down.
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// The main job: with no config, a lab with two tunnels forwarding pings; with
    /// `--config FILE`, `broker run` on real interfaces.
    Run(run::Options),
    /// Every test: formatting, clippy, unit tests, kernel-program and end-to-end tests.
    Test(test::Options),
    /// Benchmarks; writes docs/BENCHMARKS.md.
    Bench(bench::Options),
    /// The fuzz targets (fuzz/), each for a while from the committed corpus.
    Fuzz(fuzz::Options),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Setup) {
        setup::run(setup::Verbosity::Quiet)?;
    }
    match cli.command {
        Command::Setup => setup::run(setup::Verbosity::Report),
        Command::BuildEbpf(o) if o.log => build::ebpf_log().map(|p| println!("{}", p.display())),
        Command::BuildEbpf(_) => build::ebpf(),
        Command::BuildAndLoad(o) => build::build_and_load(o),
        Command::Lab { command } => lab::run(command),
        Command::Run(o) => run::run(o),
        Command::Test(o) => test::run(o),
        Command::Bench(o) => bench::run(o),
        Command::Fuzz(o) => fuzz::run(o),
    }
}
