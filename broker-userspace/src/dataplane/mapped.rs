//! BPF arrays created `BPF_F_MMAPABLE`, mapped into this process: read (and, for the
//! AYIYA worker's maps, written) without a system call. Values are `u64` words, read and
//! written whole (`AtomicU64`): the program's plain adds and stores of aligned words are
//! never seen torn.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::AtomicU64,
};

use aya::maps::MapData;
use broker_common::consts::BPF_F_MMAPABLE;

use super::{mmap::Mmap, DataplaneError};

/// A BPF array of `words` u64s per entry, mapped.
pub(in crate::dataplane) struct MappedArray {
    map: Mmap,
    entries: u32,
    words: usize,
}

impl MappedArray {
    pub(in crate::dataplane) fn open(
        data: &MapData,
        name: &'static str,
        words: usize,
        writable: bool,
    ) -> Result<Self, DataplaneError> {
        let info = data
            .info()
            .map_err(|source| DataplaneError::Map { name, source })?;
        let err = |source: std::io::Error| DataplaneError::Io {
            what: format!("mapping {name}"),
            source,
        };
        if info.value_size() as usize != 8 * words {
            return Err(err(std::io::Error::other(format!(
                "its values have {} bytes, not {}",
                info.value_size(),
                8 * words
            ))));
        }
        if info.map_flags() & BPF_F_MMAPABLE == 0 {
            return Err(err(std::io::Error::other("it was not created mmapable")));
        }
        let entries = info.max_entries();
        // SAFETY: plain query.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries as usize * 8 * words).div_ceil(page) * page;
        let map = Mmap::shared(len, data.fd().as_fd().as_raw_fd(), writable).map_err(err)?;
        Ok(Self {
            map,
            entries,
            words,
        })
    }

    /// Word `i` of entry `entry`; `None` outside the map.
    pub(in crate::dataplane) fn word(&self, entry: u32, i: usize) -> Option<&AtomicU64> {
        if entry >= self.entries || i >= self.words {
            return None;
        }
        // SAFETY: within the mapping (it holds `entries * words` u64s from a page
        // boundary); every user of this memory (the kernel's syscalls, XDP, the worker's
        // threads) reads and writes these words whole.
        Some(unsafe {
            &*self
                .map
                .as_ptr()
                .cast::<AtomicU64>()
                .add(entry as usize * self.words + i)
        })
    }

    /// Entries in the map.
    pub(in crate::dataplane) fn entries(&self) -> u32 {
        self.entries
    }

    /// Anonymous memory standing in for a map of `entries` entries (tests).
    #[cfg(test)]
    pub(in crate::dataplane) fn anonymous(entries: u32, words: usize) -> Self {
        let len = (entries as usize * 8 * words).div_ceil(4096) * 4096;
        // SAFETY: a fresh anonymous file.
        let fd = unsafe { libc::memfd_create(c"test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: our descriptor.
        assert_eq!(unsafe { libc::ftruncate(fd, len as libc::off_t) }, 0);
        let map = Mmap::shared(len, fd, true).unwrap();
        // SAFETY: the mapping keeps the memory.
        unsafe { libc::close(fd) };
        Self {
            map,
            entries,
            words,
        }
    }
}
