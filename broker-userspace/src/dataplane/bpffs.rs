//! The BPF filesystem: mounted if missing, and the instance's pin directory.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use super::DataplaneError;

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `/sys/fs/bpf/broker/<instance>`.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join("broker").join(instance)
}

/// Mounts bpffs on /sys/fs/bpf unless it is there already (as Cilium's agent does): pins
/// need it, and a minimal host may not mount it at boot.
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
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
