//! An mmap'ed region, unmapped on drop: the AF_XDP sockets' UMEM and rings
//! (`xsk::socket`), and the mmapable BPF arrays (`mapped`).
use std::{io, os::fd::RawFd, ptr::NonNull};

/// An mmap'ed region, unmapped on drop.
pub(in crate::dataplane) struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain memory; who may touch which part is the users' contract (see `Xsk`,
// `MappedArray`).
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

impl Mmap {
    /// `len` bytes read-write, populated: of `fd` from `offset` (shared; an AF_XDP ring),
    /// or anonymous and private (a UMEM) without one.
    pub(in crate::dataplane) fn new(
        len: usize,
        fd: Option<RawFd>,
        offset: u64,
    ) -> io::Result<Self> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        Self::map(len, flags, libc::PROT_READ | libc::PROT_WRITE, fd, offset)
    }

    /// `len` bytes of `fd` from its start, shared with whoever else maps it (a BPF map's
    /// values), read-only unless `writable`.
    pub(in crate::dataplane) fn shared(len: usize, fd: RawFd, writable: bool) -> io::Result<Self> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        Self::map(len, libc::MAP_SHARED, prot, fd, 0)
    }

    /// The first byte.
    pub(in crate::dataplane) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes mapped.
    pub(in crate::dataplane) fn len(&self) -> usize {
        self.len
    }

    fn map(
        len: usize,
        flags: libc::c_int,
        prot: libc::c_int,
        fd: RawFd,
        offset: u64,
    ) -> io::Result<Self> {
        // SAFETY: a fresh mapping; the arguments are checked by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap returned a non-null address"),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
