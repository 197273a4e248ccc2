//! The verified program, pinned so that a restart need not verify it again.
//!
//! Verifying the data plane costs about a second of every start. A restart of the same
//! build over the maps it already uses would get an identical program back, so the
//! program is pinned next to the maps under a name that is its identity (a hash of the
//! object), and the next start that takes over the maps opens it instead of loading it:
//!
//! ```text
//! /sys/fs/bpf/broker/<instance>/program/<sha1 of the object, 16 bytes hex>
//! ```
//!
//! A pinned program is reused only when all of these hold; otherwise the program is
//! verified as before and the pin replaced:
//! - its name is this build's embedded object's identity (another build, the debug
//!   object, never match: the debug object is always verified, since its log ring is not
//!   pinned and a reused program would write into the previous process's);
//! - the maps were taken over, not created (a fresh map set needs a fresh program);
//! - the kernel says the program uses every one of those maps (by id): a program pinned
//!   against other maps, however it got there, is not trusted.
//!
//! A reused program keeps the unpinned maps it was loaded with. Those the controller writes
//! (`XSKS`, `XSK_IFACES`: the AYIYA worker's sockets) are opened by id from the program, so
//! that the new worker's sockets go where the program looks for them.
use std::path::{Path, PathBuf};

use aya::{
    maps::{Map, MapData, MapInfo},
    programs::Xdp,
};
use aya_obj::programs::XdpAttachType;
use broker_common::consts::map_names as names;
use sha1::{Digest, Sha1};
use tracing::{info, warn};

use super::{bpffs, DataplaneError, Result};

/// `/sys/fs/bpf/broker/<instance>/program`.
fn dir(instance: &str) -> PathBuf {
    bpffs::pin_dir(instance).join("program")
}

/// The identity of an object: the first 16 bytes of its SHA-1, in hex.
pub(super) fn identity(object: &[u8]) -> String {
    let digest = Sha1::digest(object);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the program of `identity` is pinned.
fn path(instance: &str, identity: &str) -> PathBuf {
    dir(instance).join(identity)
}

/// Whether a program that uses the maps `uses` may stand for one loaded over `ours`.
fn uses_all(uses: &[u32], ours: &[u32]) -> bool {
    !ours.is_empty() && ours.iter().all(|id| uses.contains(id))
}

/// A program pinned by an earlier controller, with the maps of its own the controller
/// writes.
pub(super) struct Reused {
    pub(super) program: Xdp,
    /// The program's instances of the unpinned maps the controller writes (`XSKS`,
    /// `XSK_IFACES`): the ones in this process's `Ebpf` are new, and the program never
    /// reads them.
    pub(super) maps: Vec<(&'static str, Map)>,
}

/// The unpinned maps of the program that the controller writes ([`Reused::maps`]).
const OWN: [&str; 2] = [names::XSKS, names::XSK_IFACES];

/// The pinned maps the program uses: all but `XSK_VERDICTS`, the worker's and the
/// counters'.
fn pinned_used() -> impl Iterator<Item = &'static str> {
    names::ALL.into_iter().filter(|n| *n != names::XSK_VERDICTS)
}

/// The program pinned under `identity`, if there is one, it uses every map it should of
/// those pinned in `maps`, and it has its own [`OWN`] (unpinned, opened by id). Anything
/// short of that is logged and answered with `None`: the caller verifies the program
/// anew.
pub(super) fn open(instance: &str, identity: &str, maps: &Path) -> Option<Reused> {
    let path = path(instance, identity);
    if !path.exists() {
        return None;
    }
    let refuse = |why: String| {
        warn!(pin = %path.display(), why, "not reusing the pinned program: verifying it again");
        None
    };
    let prog = match Xdp::from_pin(&path, XdpAttachType::Interface) {
        Ok(p) => p,
        Err(e) => return refuse(format!("opening it: {e}")),
    };
    let uses = match prog.info().map(|i| i.map_ids()) {
        Ok(Ok(Some(ids))) => ids,
        Ok(Ok(None)) => return refuse("the kernel does not say which maps it uses".into()),
        Ok(Err(e)) | Err(e) => return refuse(format!("reading its maps: {e}")),
    };
    let mut ours = Vec::new();
    for name in pinned_used() {
        match MapInfo::from_pin(maps.join(name)) {
            Ok(info) => ours.push(info.id()),
            Err(e) => return refuse(format!("reading the pinned map {name}: {e}")),
        }
    }
    if !uses_all(&uses, &ours) {
        return refuse("it was loaded over other maps".into());
    }
    let mut found = Vec::new();
    for id in &uses {
        let Ok(info) = MapInfo::from_id(*id) else {
            continue;
        };
        let Some(name) = OWN.iter().find(|n| info.name_as_str() == Some(**n)) else {
            continue;
        };
        match MapData::from_id(*id).and_then(Map::from_map_data) {
            Ok(map) => found.push((*name, map)),
            Err(e) => return refuse(format!("opening its map {name}: {e}")),
        }
    }
    if found.len() != OWN.len() {
        return refuse(format!("it lacks one of the maps {OWN:?}"));
    }
    Some(Reused {
        program: prog,
        maps: found,
    })
}

/// Pins a freshly verified program under `identity`, replacing whatever the directory
/// held (programs of other builds stay loaded only while a link still runs them).
pub(super) fn pin(instance: &str, identity: &str, prog: &mut Xdp) -> Result<()> {
    let dir = dir(instance);
    bpffs::remove_pins(&dir)?;
    bpffs::create_dir(&dir)?;
    let path = path(instance, identity);
    prog.pin(&path).map_err(|e| DataplaneError::Io {
        what: format!("pinning the program at {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    info!(pin = %path.display(), "program pinned for the next start");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_stands_in_only_when_it_uses_every_one_of_our_maps() {
        assert!(uses_all(&[7, 3, 9, 12], &[3, 9]));
        assert!(uses_all(&[3, 9], &[9, 3]));
        assert!(
            !uses_all(&[3, 9], &[3, 9, 4]),
            "one map of ours it does not use"
        );
        assert!(
            !uses_all(&[3, 9], &[]),
            "no maps of ours: nothing to check against"
        );
    }

    #[test]
    fn identities_differ_with_the_object_and_are_file_names() {
        let a = identity(b"object one");
        assert_eq!(a, identity(b"object one"));
        assert_ne!(a, identity(b"object two"));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
