//! The few kernel settings the broker needs, written through /proc/sys.
use std::path::PathBuf;

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Writes `value` to sysctl `key` (dotted form; interface names may not contain dots).
pub fn set(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path(key), value)
}

pub fn get(key: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path(key))?.trim().to_string())
}
