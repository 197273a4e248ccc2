//! A minimal AF_XDP socket in copy mode: a UMEM, its fill and completion rings, the RX and
//! TX rings, bound to one queue of one interface. Only libc: the ABI is
//! `linux/if_xdp.h`, and the rings are single-producer single-consumer queues of
//! descriptors shared with the kernel (producer and consumer indices, acquire/release).
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::dataplane::mmap::Mmap;

/// Bytes per UMEM frame: the kernel's 256 bytes of headroom, the metadata and a 1514-byte
/// frame fit.
pub const FRAME_SIZE: u32 = 2048;
/// Entries of the RX and fill rings, and receive frames: 4 ms of a queue at 1 Mpps, so
/// that the time a sleeping worker takes to wake (the kernel's wakeup, a VM's vCPU
/// rescheduled) does not overflow them. 8 MiB of UMEM per socket.
pub const RX_RING_SIZE: u32 = 4096;
/// Entries of the TX and completion rings, and transmit frames: the worker sends at most
/// a batch before it makes the kernel send, and takes completions back every batch.
pub const TX_RING_SIZE: u32 = 1024;
/// Frames of the UMEM: the first `RX_RING_SIZE` receive (they live in the fill ring, the
/// RX ring or with the worker), the others transmit.
pub const FRAMES: u32 = RX_RING_SIZE + TX_RING_SIZE;

/// One ring. The producer side (fill, TX) writes descriptors and publishes them with
/// [`Ring::submit`]; the consumer side (RX, completion) reads them and hands the slots back
/// with [`Ring::release`].
pub struct Ring<T> {
    _map: Mmap,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut T,
    mask: u32,
    size: u32,
    /// Our copies of the two indices; ours is always current, the kernel's is refreshed
    /// when it runs out.
    prod: u32,
    cons: u32,
}

// SAFETY: the ring is used by one thread at a time (its owner, or under the TX mutex).
unsafe impl<T> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, pgoff: u64, size: u32) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * size_of::<T>();
        let map = Mmap::new(len, Some(fd), pgoff)?;
        let base = map.as_ptr();
        // SAFETY: offsets the kernel gave for this mapping.
        let (producer, consumer, flags, desc) = unsafe {
            (
                base.add(off.producer as usize) as *const AtomicU32,
                base.add(off.consumer as usize) as *const AtomicU32,
                base.add(off.flags as usize) as *const AtomicU32,
                base.add(off.desc as usize) as *mut T,
            )
        };
        // SAFETY: as above.
        let (prod, cons) = unsafe {
            (
                (*producer).load(Ordering::Relaxed),
                (*consumer).load(Ordering::Relaxed),
            )
        };
        Ok(Self {
            _map: map,
            producer,
            consumer,
            flags,
            desc,
            mask: size - 1,
            size,
            prod,
            cons,
        })
    }

    /// Producer: slots free for [`Ring::push`]; the kernel's index is read again when
    /// fewer than `want` are known to be.
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.prod.wrapping_sub(self.cons);
        if free >= want {
            return free;
        }
        // SAFETY: the mapping lives as long as self.
        self.cons = unsafe { (*self.consumer).load(Ordering::Acquire) };
        self.size - self.prod.wrapping_sub(self.cons)
    }

    /// Producer: writes a descriptor into a free slot (check [`Ring::free`] first).
    pub fn push(&mut self, v: T) {
        debug_assert!(self.size - self.prod.wrapping_sub(self.cons) > 0);
        // SAFETY: within the ring; the slot is ours until submitted.
        unsafe { self.desc.add((self.prod & self.mask) as usize).write(v) };
        self.prod = self.prod.wrapping_add(1);
    }

    /// Producer: publishes what was pushed.
    pub fn submit(&mut self) {
        // SAFETY: the mapping lives as long as self.
        unsafe { (*self.producer).store(self.prod, Ordering::Release) };
    }

    /// Producer: whether the kernel has consumed everything submitted.
    pub fn drained(&mut self) -> bool {
        // SAFETY: the mapping lives as long as self.
        self.cons = unsafe { (*self.consumer).load(Ordering::Acquire) };
        self.cons == self.prod
    }

    /// Consumer: descriptors ready for [`Ring::pop`].
    pub fn available(&mut self) -> u32 {
        let n = self.prod.wrapping_sub(self.cons);
        if n > 0 {
            return n;
        }
        // SAFETY: the mapping lives as long as self.
        self.prod = unsafe { (*self.producer).load(Ordering::Acquire) };
        self.prod.wrapping_sub(self.cons)
    }

    /// Consumer: reads the next descriptor (check [`Ring::available`] first).
    pub fn pop(&mut self) -> T {
        debug_assert!(self.prod.wrapping_sub(self.cons) > 0);
        // SAFETY: within the ring; the kernel published the slot.
        let v = unsafe { self.desc.add((self.cons & self.mask) as usize).read() };
        self.cons = self.cons.wrapping_add(1);
        v
    }

    /// Consumer: hands the popped slots back to the kernel.
    pub fn release(&mut self) {
        // SAFETY: the mapping lives as long as self.
        unsafe { (*self.consumer).store(self.cons, Ordering::Release) };
    }

    /// Whether the kernel asks for a wakeup (`XDP_USE_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: the mapping lives as long as self.
        unsafe { (*self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0 }
    }
}

/// The socket and its UMEM. Frames `0..RX_RING_SIZE` belong to the receiving side
/// ([`RxRings`], one thread), frames `RX_RING_SIZE..FRAMES` to the transmitting side
/// ([`TxRings`], behind a lock): nobody touches a frame the kernel or the other side owns.
pub struct Xsk {
    fd: OwnedFd,
    umem: Mmap,
    pub ifindex: u32,
    pub queue: u32,
}

/// The receiving side: the RX ring and the fill ring.
pub struct RxRings {
    pub rx: Ring<libc::xdp_desc>,
    pub fill: Ring<u64>,
}

/// The transmitting side: the TX ring, the completion ring and the TX frames not in
/// flight.
pub struct TxRings {
    pub tx: Ring<libc::xdp_desc>,
    pub comp: Ring<u64>,
    pub free: Vec<u64>,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T, what: &str) -> io::Result<()> {
    // SAFETY: `v` is a valid value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

impl Xsk {
    /// Opens a socket on queue `queue` of interface `ifindex` (in the calling thread's
    /// network namespace), copy mode, with every receive frame in the fill ring.
    pub fn open(ifindex: u32, queue: u32) -> io::Result<(Self, RxRings, TxRings)> {
        // SAFETY: plain syscall.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw, "socket(AF_XDP)")?;
        // SAFETY: a descriptor we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mmap::new((FRAMES * FRAME_SIZE) as usize, None, 0)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.as_ptr() as u64,
            len: umem.len() as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(raw, libc::XDP_UMEM_REG, &reg, "XDP_UMEM_REG")?;
        for (opt, size, what) in [
            (libc::XDP_UMEM_FILL_RING, RX_RING_SIZE, "XDP_UMEM_FILL_RING"),
            (
                libc::XDP_UMEM_COMPLETION_RING,
                TX_RING_SIZE,
                "XDP_UMEM_COMPLETION_RING",
            ),
            (libc::XDP_RX_RING, RX_RING_SIZE, "XDP_RX_RING"),
            (libc::XDP_TX_RING, TX_RING_SIZE, "XDP_TX_RING"),
        ] {
            setsockopt(raw, opt, &size, what)?;
        }
        // SAFETY: all-zero is a valid value of this C struct.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` has room for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        check(rc, "XDP_MMAP_OFFSETS")?;
        let fill = Ring::map(raw, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, RX_RING_SIZE)?;
        let comp = Ring::map(
            raw,
            &off.cr,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            TX_RING_SIZE,
        )?;
        let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING as u64, RX_RING_SIZE)?;
        let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING as u64, TX_RING_SIZE)?;

        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: a valid address of the size passed.
        let rc = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            // Unwrapped: EINVAL says the queue does not exist.
            return Err(io::Error::last_os_error());
        }

        let mut rxr = RxRings { rx, fill };
        for i in 0..RX_RING_SIZE {
            rxr.fill.push(u64::from(i * FRAME_SIZE));
        }
        rxr.fill.submit();
        let txr = TxRings {
            tx,
            comp,
            free: (RX_RING_SIZE..FRAMES)
                .map(|i| u64::from(i * FRAME_SIZE))
                .collect(),
        };
        Ok((
            Self {
                fd,
                umem,
                ifindex,
                queue,
            },
            rxr,
            txr,
        ))
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `len` bytes of the UMEM at `addr`.
    ///
    /// # Safety
    /// The caller owns that part of the UMEM (see [`Xsk`]) and holds no other reference
    /// into it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes(&self, addr: u64, len: usize) -> &mut [u8] {
        assert!(addr as usize + len <= self.umem.len(), "within the UMEM");
        // SAFETY: in bounds (checked); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.umem.as_ptr().add(addr as usize), len) }
    }

    /// Makes the kernel send what the TX ring holds (copy mode sends from this call).
    pub fn kick_tx(&self) {
        // SAFETY: a zero-length send on our socket. EAGAIN/EBUSY/ENOBUFS only mean "later".
        unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
    }

    /// Waits up to `timeout_ms` for received frames.
    pub fn wait_rx(&self, timeout_ms: i32) {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) };
    }

    /// Frames the kernel could not hand to this socket: no free receive frame in the fill
    /// ring (`rx_dropped`, which also counts frames too long for one) or no room in the RX
    /// ring (`rx_ring_full`). Not `rx_fill_ring_empty_descs`: the kernel counts a frame
    /// it found no fill entry for there too, so adding it counted those drops twice.
    pub fn rx_lost(&self) -> io::Result<u64> {
        let s = self.statistics()?;
        Ok(s.rx_dropped + s.rx_ring_full)
    }

    /// The kernel's counters of this socket: (rx dropped, rx ring full, fill ring empty).
    pub fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: all-zero is a valid value of this C struct.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` has room for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        check(rc, "XDP_STATISTICS")?;
        Ok(s)
    }
}
