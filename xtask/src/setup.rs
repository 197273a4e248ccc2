//! `cargo xtask setup`: idempotent installation of everything the build and the tests
//! need beyond the machine's stable Rust. Versions are those of docs/TOOLCHAIN.md.
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{exec, is_root, output, succeeds};

/// bpf-linker 0.10.0 loads the nightly toolchain's own LLVM 22; newer ones need a system
/// LLVM that Debian 12 does not have.
const BPF_LINKER_VERSION: &str = "0.10.0";

/// cargo-fuzz for the fuzz targets (`cargo xtask fuzz`, and a short run in `test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the lab and the tests run.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip: namespaces, veths, addresses, routes"),
    ("ethtool", "checksum offload off on the lab's internet host"),
    ("iputils-ping", "ping -6 through the tunnels"),
    ("util-linux", "nsenter: processes in lab namespaces"),
    ("procps", "sysctl in lab namespaces"),
    ("bpftool", "inspecting programs and maps"),
    ("prometheus", "promtool check metrics in the metrics test"),
    (
        "nftables",
        "nft: the lab's NAT (masquerade) in front of TSP clients",
    ),
    (
        "conntrack",
        "conntrack -F: a new NAT mapping in the TSP test",
    ),
    (
        "postgresql",
        "throwaway clusters for the multi-PoP store (docs/MULTI-POP.md)",
    ),
    (
        "bird2",
        "BGP: each lab PoP announces its pools to an upstream router (docs/MULTI-POP.md)",
    ),
    (
        "chromium",
        "a real browser for the portal's tests (docs/PORTAL.md)",
    ),
    (
        "chromium-driver",
        "chromedriver: the portal's tests drive chromium through WebDriver",
    ),
    (
        "fonts-dejavu-core",
        "a font for the portal's screenshots (headless chromium has none of its own)",
    ),
];

/// Tells Debian's postgresql-common not to create (and start) a system cluster when the
/// package is installed: the tests and the lab start their own, never a service.
const NO_MAIN_CLUSTER: (&str, &str) = (
    "/etc/postgresql-common/createcluster.d/broker-no-main-cluster.conf",
    "# Written by `cargo xtask setup` of broker: its tests start their own clusters.\ncreate_main_cluster = false\n",
);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Only say what is installed.
    Quiet,
    /// Also list what was already there.
    Report,
}

pub fn run(v: Verbosity) -> Result<()> {
    let say = |done: bool, what: &str| {
        if done {
            eprintln!("setup: installed {what}");
        } else if v == Verbosity::Report {
            eprintln!("setup: {what} already present");
        }
    };
    say(nightly_toolchain()?, "the nightly toolchain");
    for component in ["rust-src", "clippy"] {
        say(
            nightly_component(component)?,
            &format!("{component} for nightly"),
        );
    }
    say(bpf_linker()?, &format!("bpf-linker {BPF_LINKER_VERSION}"));
    say(cargo_fuzz()?, &format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
    let installed = packages()?;
    if installed.is_empty() {
        say(false, "Debian packages");
    } else {
        say(true, &installed.join(", "));
    }
    Ok(())
}

fn nightly_toolchain() -> Result<bool> {
    if succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        return Ok(false);
    }
    exec(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    Ok(true)
}

fn nightly_component(name: &str) -> Result<bool> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with(name)) {
        return Ok(false);
    }
    exec(Command::new("rustup").args(["component", "add", name, "--toolchain", "nightly"]))?;
    Ok(true)
}

fn bpf_linker() -> Result<bool> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(false);
    }
    exec(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))?;
    Ok(true)
}

fn cargo_fuzz() -> Result<bool> {
    let version = output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if version.contains(CARGO_FUZZ_VERSION) {
        return Ok(false);
    }
    exec(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
        "--force",
    ]))?;
    Ok(true)
}

/// Installs the missing packages; returns their names.
fn packages() -> Result<Vec<String>> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", p]))
                .is_ok_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {} and not root to install them: run `sudo apt-get install {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    if missing.contains(&"postgresql") {
        let (path, text) = NO_MAIN_CLUSTER;
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, text)?;
    }
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    // BIRD is started by the tests and the lab in their namespaces, never as a service:
    // where systemd runs, the one the package enables is switched off again.
    if missing.contains(&"bird2") && std::path::Path::new("/run/systemd/system").exists() {
        exec(Command::new("systemctl").args(["disable", "--now", "bird.service"]))?;
    }
    Ok(missing.iter().map(|s| s.to_string()).collect())
}
