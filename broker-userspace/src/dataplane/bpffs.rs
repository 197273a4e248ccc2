//! The BPF filesystem and the instance's pins:
//!
//! ```text
//! /sys/fs/bpf/broker/<instance>/maps-v<layout>/<MAP>   the maps (broker_common::consts)
//! /sys/fs/bpf/broker/<instance>/links/<interface>     the XDP link on each interface
//! /sys/fs/bpf/broker/<instance>/program/<identity>    the verified program (program_pin.rs)
//! ```
//!
//! While the pins exist the kernel keeps the program attached and the maps filled, whether
//! or not a controller runs.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::programs::links::PinnedLink;
use broker_common::consts::MAP_LAYOUT_VERSION;

use super::DataplaneError;

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `/sys/fs/bpf/broker/<instance>`.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join("broker").join(instance)
}

/// Where this build's maps are pinned.
pub fn maps_dir(instance: &str) -> PathBuf {
    pin_dir(instance).join(format!("maps-v{MAP_LAYOUT_VERSION}"))
}

/// Whether this build's maps are pinned for `instance` (a start will take them over).
pub fn has_maps(instance: &str) -> bool {
    maps_dir(instance)
        .join(broker_common::consts::map_names::TUNNELS)
        .exists()
}

/// Where the XDP links are pinned, one file per interface.
pub fn links_dir(instance: &str) -> PathBuf {
    pin_dir(instance).join("links")
}

/// Mounts bpffs on /sys/fs/bpf unless it is there already (as Cilium's agent does): pins
/// need it, and a minimal host may not mount it at boot.
///
/// A mount made in a mount namespace of this process's own dies with the process, and
/// the pins in it: `ip netns exec` starts its command in such a namespace, with a fresh
/// /sys. Then the data plane goes when the controller stops and no restart is hitless;
/// this says so loudly (run it with `nsenter --net=/run/netns/NAME` instead).
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    if let Some(parent) = mount_namespace_apart_from_parent() {
        tracing::error!(
            parent_pid = parent,
            "bpffs is not mounted here and this process runs in a mount namespace of its own \
             (as `ip netns exec` makes): the bpffs mounted now, and the data plane's pins in \
             it, die with this process, so stopping or restarting the controller takes \
             forwarding down. Start it with `nsenter --net=/run/netns/NAME broker run ...` \
             (only the network namespace) or mount bpffs on /sys/fs/bpf beforehand"
        );
    }
    let err = |source| DataplaneError::Bpffs {
        path: BPFFS.into(),
        source,
    };
    std::fs::create_dir_all(BPFFS).map_err(err)?;
    let target = CString::new(BPFFS).expect("no NUL in path");
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

/// The parent's PID when this process's mount namespace differs from its parent's
/// (unknown, e.g. an unreadable parent, counts as the same).
fn mount_namespace_apart_from_parent() -> Option<i32> {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let own = std::fs::read_link("/proc/self/ns/mnt").ok()?;
    let theirs = std::fs::read_link(format!("/proc/{parent}/ns/mnt")).ok()?;
    (own != theirs).then_some(parent)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Creates a pin directory.
pub fn create_dir(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Bpffs {
        path: dir.to_path_buf(),
        source,
    })
}

/// Unpins everything in `dir` and removes it. Maps stay alive while a program or process
/// still holds them.
pub fn remove_pins(dir: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Bpffs {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Map pin directories of other layouts (left by another build).
pub fn other_map_dirs(instance: &str) -> Vec<PathBuf> {
    let current = maps_dir(instance);
    let Ok(entries) = std::fs::read_dir(pin_dir(instance)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p != &current
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("maps-v"))
        })
        .collect()
}

/// Detaches every pinned link of `instance` and removes all its pins: the data plane is
/// gone once the last process holding it exits. Returns what was removed.
pub fn detach_instance(instance: &str) -> Result<Vec<String>, DataplaneError> {
    let mut done = Vec::new();
    if let Ok(entries) = std::fs::read_dir(links_dir(instance)) {
        for e in entries.flatten() {
            let path = e.path();
            let link = PinnedLink::from_pin(&path).map_err(|e| DataplaneError::Io {
                what: format!("opening the pinned link {}", path.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
            // Unpinning drops the last reference to the link: XDP is detached.
            link.unpin().map_err(|source| DataplaneError::Bpffs {
                path: path.clone(),
                source,
            })?;
            done.push(format!("link {}", path.display()));
        }
    }
    let dir = pin_dir(instance);
    if dir.exists() {
        remove_pins(&dir)?;
        done.push(format!("pins {}", dir.display()));
    }
    Ok(done)
}
