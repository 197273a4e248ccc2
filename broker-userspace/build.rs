//! Builds the XDP programs (`broker-ebpf`, nightly, bpfel-unknown-none) and leaves the
//! objects in OUT_DIR, where `dataplane` embeds them. `cargo xtask setup` installs what this
//! needs (nightly rust-src, bpf-linker).
use aya_build::{build_ebpf, Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let common = concat!(env!("CARGO_MANIFEST_DIR"), "/../broker-common");
    println!("cargo:rerun-if-changed={common}");
    let ebpf = Package {
        name: "broker-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../broker-ebpf"),
        ..Default::default()
    };
    build_ebpf([ebpf], Toolchain::Custom("nightly"))
}
