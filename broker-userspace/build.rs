//! Builds the XDP programs (`broker-ebpf`: nightly, `bpfel-unknown-none`, bpf-linker) and
//! leaves the objects in OUT_DIR, where `dataplane` embeds them. `cargo xtask setup`
//! installs what this needs (nightly with rust-src, bpf-linker).
//!
//! This does what `aya_build::build_ebpf` does, plus code-generation flags it cannot pass:
//! - `allows-misaligned-mem-access` (LLVM 22): packet headers start at odd offsets, and
//!   without it every multi-byte field is read and written a byte at a time. The kernel
//!   verifier accepts misaligned packet access on architectures that handle it;
//! - `target-cpu=v3`: 32-bit ALU and jump instructions (kernel 5.1+).
use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

const PACKAGE: &str = "broker-ebpf";
const OBJECTS: [&str; 2] = ["broker", "broker-aux"];
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    for dir in ["broker-ebpf", "broker-common"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");

    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
        "-Ctarget-feature=+allows-misaligned-mem-access".into(),
    ];
    let output = Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "--package", PACKAGE, "--bins"])
        .args(["--release", "--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&root)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        // The outer (stable) build's compiler must not leak into the nightly one.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("running `rustup run nightly cargo build` (is rustup installed? run `cargo xtask setup`)");
    if !output.status.success() {
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            println!("cargo:warning={line}");
        }
        panic!(
            "building {PACKAGE} for {TARGET} failed ({}); see the warnings above. `cargo xtask setup` installs nightly rust-src and bpf-linker",
            output.status
        );
    }
    let built = target_dir.join(TARGET).join("release");
    for obj in OBJECTS {
        std::fs::copy(built.join(obj), out.join(obj))
            .unwrap_or_else(|e| panic!("copying {obj} to OUT_DIR: {e}"));
    }
}
