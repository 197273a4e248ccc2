//! The store's files are secrets (passwords, update keys): only their owner reads them.
//! A new directory is made 0700 and a new database 0600; SQLite gives its `-wal` and
//! `-shm` files the database's mode. An existing store readable by others is tightened,
//! and the log says so.
use std::{
    fs::{self, OpenOptions, Permissions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Makes `path`'s directory (0700, if it is new) and the database file (0600, if it is
/// new), and takes group and other access off the files of an existing store.
pub fn prepare(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for f in companions(path) {
        tighten(&f)?;
    }
    Ok(())
}

/// The database and the files SQLite keeps beside it.
fn companions(path: &Path) -> Vec<PathBuf> {
    let name = path.as_os_str().to_os_string();
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut n = name.clone();
            n.push(suffix);
            PathBuf::from(n)
        })
        .collect()
}

fn tighten(f: &Path) -> io::Result<()> {
    let meta = match fs::metadata(f) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(f, Permissions::from_mode(mode & 0o700))?;
        tracing::warn!(
            file = %f.display(),
            was = format!("{mode:o}"),
            "the store was readable by others; access now only for its owner"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_store_is_its_owners_only_and_an_old_one_is_tightened() {
        let base = std::env::temp_dir().join(format!("broker-files-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let db = base.join("state").join("broker.db");
        // Whatever the umask lets through.
        prepare(&db).unwrap();
        assert_eq!(mode(&base.join("state")), 0o700);
        assert_eq!(mode(&db), 0o600);
        // A store made world-readable by an older version or by hand.
        for f in companions(&db).iter().take(3) {
            fs::write(f, b"x").unwrap();
            fs::set_permissions(f, Permissions::from_mode(0o644)).unwrap();
        }
        prepare(&db).unwrap();
        for f in companions(&db).iter().take(3) {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        fs::remove_dir_all(&base).unwrap();
    }
}
