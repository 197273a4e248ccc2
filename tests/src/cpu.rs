//! Where the benchmarks' work runs: this machine has two CPUs, and a veth does its
//! receiver's work in the sender's context unless told otherwise.
use std::process::Command;

use anyhow::{Context, Result};

/// Pins the calling thread to `cpu`.
pub fn pin_this_thread(cpu: usize) -> Result<()> {
    pin(0, cpu).context("pinning this thread")
}

/// Pins thread or process `pid` (0: the calling thread) to `cpu`.
pub fn pin(pid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning {pid} to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The NAPI threads of `devs` (`napi/<dev>-<id>`, see [`threaded_napi`]): (pid, name).
pub fn napi_threads(devs: &[&str]) -> Result<Vec<(libc::pid_t, String)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("/proc")? {
        let path = entry?.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if !devs.iter().any(|d| comm.starts_with(&format!("napi/{d}-"))) {
            continue;
        }
        if let Some(pid) = path.file_name().and_then(|n| n.to_str()?.parse().ok()) {
            found.push((pid, comm.to_string()));
        }
    }
    Ok(found)
}

/// Makes `devs` (in the calling thread's namespace) poll from NAPI threads of their own
/// (`on`), or in the softirq of whoever sent to them. A veth delivers into its peer in the
/// sender's context otherwise, where a NIC would charge its sender nothing. (sysfs shows
/// a namespace's devices only when mounted from it.)
pub fn threaded_napi(devs: &[&str], on: bool) -> Result<()> {
    let script: Vec<String> = devs
        .iter()
        .map(|d| format!("echo {} > /sys/class/net/{d}/threaded", u8::from(on)))
        .collect();
    crate::netns::run(Command::new("unshare").args([
        "-m",
        "sh",
        "-c",
        &format!("mount -t sysfs sysfs /sys && {}", script.join(" && ")),
    ]))
    .map(drop)
}
