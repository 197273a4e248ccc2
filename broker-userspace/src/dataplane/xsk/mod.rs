//! The AF_XDP engine of AYIYA (`ayiya.engine: af_xdp`): XDP hands AYIYA forward packets to
//! these sockets with their tunnel's key in the frame's metadata (`broker-ebpf/src/xsk.rs`);
//! a thread per socket verifies and decapsulates, or signs, each frame and transmits it on
//! the egress interface's socket. It hashes what it takes off its ring at once, sixteen
//! frames per pass of AVX-512 (`sha1x16`), or one by one with the `sha1` crate (SHA
//! extensions) when the batch is small or the CPU lacks AVX-512. One socket per receive
//! queue of every data-plane interface, copy mode; frames move between sockets by copy.
//!
//! When the worker stops (or the process dies) its sockets close and leave `XSKS`, and XDP
//! hashes in the kernel again: forwarding never waits for this process.
//!
//! The worker counts what it verified and what it found forged per tunnel in a pinned map
//! (`shared::Verdicts`; XDP does not count those packets as the client's), and a tunnel
//! with forged packets is verified in XDP for a while (`shared::Suspects`): one tunnel's
//! forged flood then no longer fills the ring the tunnels of a receive queue share.
pub mod frame;
pub mod shared;
pub mod socket;

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use broker_common::{
    consts::DEFAULT_XSK_SUSPECT_MS,
    maps::{XskMeta, XSK_MAX_QUEUES},
};

use crate::sha1x16;
use frame::Outcome;
use shared::{Tally, WorkerMaps};
use socket::{RxRings, TxRings, Xsk, FRAME_SIZE};

/// Frames taken from the RX ring at a time: four passes of `sha1x16`'s lanes.
const BATCH: u32 = 64;
/// A pass that finds at least this many frames waiting makes the worker poll its ring for
/// up to [`SPIN`] before it sleeps: at such rates the next frames are microseconds away,
/// and a sleep costs a wakeup on both sides (the kernel's, on the CPU that runs XDP) and
/// the wait for a CPU, while the ring fills. Lighter traffic sleeps at once.
const BUSY_PASS: u32 = 8;
const SPIN: Duration = Duration::from_micros(50);
/// Passes between two looks at the kernel's drop counters while the worker never sleeps
/// (it also looks before every sleep); [`RingDrops`] reads them at most once a second.
const DROPS_EVERY: u32 = 1024;

/// What the worker did, for `broker_ayiya_worker_total{outcome}`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Received packets whose signature was right, sent on decapsulated.
    pub verified: AtomicU64,
    /// Received packets whose signature was wrong: dropped.
    pub bad_signature: AtomicU64,
    /// Outgoing packets signed and sent.
    pub signed: AtomicU64,
    /// Frames without valid metadata: dropped.
    pub malformed: AtomicU64,
    /// No free TX frame on the egress socket: dropped.
    pub tx_full: AtomicU64,
    /// The egress interface has no socket of the worker: dropped.
    pub no_egress: AtomicU64,
    /// Frames XDP handed over that the kernel could not put in the worker's RX ring (full,
    /// or no free frame): lost (XDP counted them as redirected, no more). Read from the
    /// sockets about once a second.
    pub ring_dropped: AtomicU64,
    /// Not a packet count: times a tunnel's packets went back to XDP's own SHA-1 for
    /// [`WorkerOptions::suspect`] because the worker found a forged one among them.
    pub suspected: AtomicU64,
}

impl WorkerStats {
    /// (outcome label, count), for the metrics.
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("verified", l(&self.verified)),
            ("bad_signature", l(&self.bad_signature)),
            ("signed", l(&self.signed)),
            ("malformed", l(&self.malformed)),
            ("tx_full", l(&self.tx_full)),
            ("no_egress", l(&self.no_egress)),
            ("ring_dropped", l(&self.ring_dropped)),
        ]
    }
}

/// How the worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// The fewest bytes an AYIYA packet hashes (header and inner packet) for XDP to hand it
    /// over (`Settings.xsk_min_payload`); XDP hashes smaller ones itself.
    pub min_payload: u16,
    /// How long XDP verifies a tunnel's packets itself after the worker found a forged one
    /// among them (zero: never).
    pub suspect: Duration,
}

impl WorkerOptions {
    /// `min_payload`, and the default suspect period (`DEFAULT_XSK_SUSPECT_MS`).
    pub fn new(min_payload: u16) -> Self {
        Self {
            min_payload,
            suspect: Duration::from_millis(DEFAULT_XSK_SUSPECT_MS.into()),
        }
    }
}

/// One socket, shared: its receiving side belongs to its thread, its transmitting side to
/// whoever holds the lock.
struct Port {
    xsk: Xsk,
    tx: Mutex<TxRings>,
}

/// A socket the worker opened, and where `XSKS` must point at it.
pub(super) struct Opened {
    pub xsk_index: u32,
    pub fd: std::os::fd::RawFd,
}

/// The running worker: its threads stop and its sockets close when it is dropped.
pub struct AyiyaWorker {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ports: Arc<Vec<Arc<Port>>>,
    stats: Arc<WorkerStats>,
}

impl AyiyaWorker {
    /// Opens a socket on every receive queue of each interface (`(ifindex, first XSKS
    /// index)`), in the calling thread's network namespace, and starts their threads, which
    /// count into `maps` and mark suspect tunnels for `suspect`.
    pub(super) fn start(
        ifaces: &[(u32, u32)],
        maps: Arc<WorkerMaps>,
        suspect: Duration,
    ) -> io::Result<(Self, Vec<Opened>)> {
        let mut ports = Vec::new();
        let mut rxs = Vec::new();
        let mut opened = Vec::new();
        for &(ifindex, base) in ifaces {
            for queue in 0..XSK_MAX_QUEUES {
                match open_when_free(ifindex, queue) {
                    Ok((xsk, rx, tx)) => {
                        opened.push(Opened {
                            xsk_index: base + queue,
                            fd: xsk.fd(),
                        });
                        ports.push(Arc::new(Port {
                            xsk,
                            tx: Mutex::new(tx),
                        }));
                        rxs.push(rx);
                    }
                    // Past the interface's last queue.
                    Err(e) if queue > 0 && e.raw_os_error() == Some(libc::EINVAL) => break,
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("AF_XDP socket on ifindex {ifindex} queue {queue}: {e}"),
                        ))
                    }
                }
            }
        }
        let ports = Arc::new(ports);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WorkerStats::default());
        let mut threads = Vec::new();
        for (i, rx) in rxs.into_iter().enumerate() {
            let (ports, stop, stats) = (ports.clone(), stop.clone(), stats.clone());
            let shared = Shared {
                stats,
                maps: maps.clone(),
                suspect,
            };
            let name = format!("ayiya-xsk{i}");
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || run(i, rx, &ports, &stop, &shared))?;
            threads.push(t);
        }
        Ok((
            Self {
                stop,
                threads,
                ports,
                stats,
            },
            opened,
        ))
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// CPU time the worker's threads have used (user and system, so the kernel's work in
    /// their system calls, sending included).
    pub fn cpu_time(&self) -> Duration {
        use std::os::unix::thread::JoinHandleExt;
        let mut total = Duration::ZERO;
        for t in &self.threads {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: a live thread of this process (joined only in drop).
            if unsafe { libc::pthread_getcpuclockid(t.as_pthread_t(), &mut clock) } != 0 {
                continue;
            }
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid clock and a timespec to fill.
            if unsafe { libc::clock_gettime(clock, &mut ts) } == 0 {
                total += Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
            }
        }
        total
    }

    /// Frames the kernel could not hand to the worker (RX ring full, no fill frames),
    /// summed over its sockets.
    pub fn kernel_rx_dropped(&self) -> u64 {
        self.ports.iter().filter_map(|p| p.xsk.rx_lost().ok()).sum()
    }

    /// Sockets (interface, queue) the worker serves.
    pub fn sockets(&self) -> Vec<(u32, u32)> {
        self.ports
            .iter()
            .map(|p| (p.xsk.ifindex, p.xsk.queue))
            .collect()
    }
}

impl Drop for AyiyaWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens the socket of a queue, waiting up to a second while the queue is still bound:
/// the kernel releases a closed socket's hold on its queue from a work queue, after the
/// close returns (a worker restarted at once, or a controller restarted while the old
/// one's sockets are going, meets `EBUSY`).
fn open_when_free(ifindex: u32, queue: u32) -> io::Result<(Xsk, RxRings, TxRings)> {
    let mut tries = 0;
    loop {
        match Xsk::open(ifindex, queue) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Adds what the kernel dropped on one socket since the last look to `ring_dropped`, at
/// most once a second (a system call).
#[derive(Default)]
struct RingDrops {
    seen: u64,
    at: Option<Instant>,
}

impl RingDrops {
    fn poll(&mut self, xsk: &Xsk, stats: &WorkerStats) {
        let now = Instant::now();
        if self
            .at
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.at = Some(now);
        if let Ok(total) = xsk.rx_lost() {
            stats
                .ring_dropped
                .fetch_add(total.saturating_sub(self.seen), Ordering::Relaxed);
            self.seen = total;
        }
    }
}

/// Whether to poll the ring rather than sleep: after a busy pass (at least
/// [`BUSY_PASS`] frames), for up to [`SPIN`] of empty polls.
#[derive(Default)]
struct Spin {
    busy: bool,
    until: Option<Instant>,
    polls: u32,
}

impl Spin {
    /// A pass found `n` frames.
    fn pass(&mut self, n: u32) {
        if n >= BUSY_PASS {
            self.busy = true;
            self.until = None;
        }
    }

    /// The ring was empty: whether to look again at once (true) or sleep.
    fn again(&mut self) -> bool {
        if !self.busy {
            return false;
        }
        let until = *self.until.get_or_insert_with(|| Instant::now() + SPIN);
        self.polls = self.polls.wrapping_add(1);
        // The clock every 64 polls: a poll is one load.
        if !self.polls.is_multiple_of(64) || Instant::now() < until {
            std::hint::spin_loop();
            return true;
        }
        self.busy = false;
        self.until = None;
        false
    }
}

/// A pass's verdicts, added to [`WorkerStats`] once per pass rather than per frame.
#[derive(Default)]
struct Counts {
    verified: u64,
    bad_signature: u64,
    signed: u64,
    malformed: u64,
    no_egress: u64,
}

impl Counts {
    fn flush(&mut self, stats: &WorkerStats) {
        for (n, to) in [
            (self.verified, &stats.verified),
            (self.bad_signature, &stats.bad_signature),
            (self.signed, &stats.signed),
            (self.malformed, &stats.malformed),
            (self.no_egress, &stats.no_egress),
        ] {
            if n > 0 {
                to.fetch_add(n, Ordering::Relaxed);
            }
        }
        *self = Self::default();
    }
}

/// A frame to send: where it is in the receiving socket's UMEM, and out of which socket.
struct Out {
    port: usize,
    addr: u64,
    len: usize,
}

/// What every thread counts into.
struct Shared {
    stats: Arc<WorkerStats>,
    maps: Arc<WorkerMaps>,
    suspect: Duration,
}

/// The thread of socket `me`: receive a batch, handle its frames together (one SHA-1
/// pass for the batch, see `frame::handle_batch`), count the verdicts per tunnel and mark
/// tunnels with forged packets (`Tally`: once per batch and tunnel, before anything is
/// sent), copy the ones to send into their egress socket's TX frames, give the receive
/// frames back.
fn run(me: usize, mut rx: RxRings, ports: &[Arc<Port>], stop: &AtomicBool, shared: &Shared) {
    let stats = &*shared.stats;
    let port = &ports[me];
    // Every frame taken off the RX ring in this batch, to give back to the fill ring.
    let mut fill = Vec::with_capacity(BATCH as usize);
    // (frame address, length, metadata) of those with metadata, handled as a batch.
    let mut taken: Vec<(u64, usize, XskMeta)> = Vec::with_capacity(BATCH as usize);
    let mut outcomes = Vec::with_capacity(BATCH as usize);
    let mut hasher = sha1x16::Hasher::default();
    let mut out: Vec<Out> = Vec::with_capacity(BATCH as usize);
    let mut ring_dropped = RingDrops::default();
    let mut tally = Tally::default();
    let mut spin = Spin::default();
    let mut counts = Counts::default();
    let mut passes = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let n = rx.rx.available().min(BATCH);
        if n == 0 {
            if !spin.again() {
                ring_dropped.poll(&port.xsk, stats);
                port.xsk.wait_rx(100);
            }
            continue;
        }
        spin.pass(n);
        passes = passes.wrapping_add(1);
        if passes.is_multiple_of(DROPS_EVERY) {
            ring_dropped.poll(&port.xsk, stats);
        }
        fill.clear();
        taken.clear();
        out.clear();
        for _ in 0..n {
            let d = rx.rx.pop();
            fill.push(d.addr);
            let within = (d.addr % u64::from(FRAME_SIZE)) as usize;
            if within < XskMeta::LEN {
                counts.malformed += 1;
                continue;
            }
            // SAFETY: the metadata in front of a receive frame the kernel handed to this
            // thread.
            let meta = unsafe { port.xsk.bytes(d.addr - XskMeta::LEN as u64, XskMeta::LEN) };
            let meta = XskMeta::from_bytes((&*meta).try_into().expect("32 bytes"));
            taken.push((d.addr, d.len as usize, meta));
        }
        rx.rx.release();
        let mut frames: Vec<(XskMeta, &mut [u8])> = taken
            .iter()
            // SAFETY: receive frames the kernel handed to this thread, each its own.
            .map(|&(addr, len, meta)| (meta, unsafe { port.xsk.bytes(addr, len) }))
            .collect();
        frame::handle_batch(&mut hasher, &mut frames, &mut outcomes);
        drop(frames);
        for (&(addr, _, meta), outcome) in taken.iter().zip(&outcomes) {
            let (egress, start, end) = match *outcome {
                Outcome::Verified {
                    egress_ifindex,
                    start,
                    end,
                } => {
                    counts.verified += 1;
                    tally.verified(meta.slot, outcome.inner_len());
                    (egress_ifindex, start, end)
                }
                Outcome::Signed {
                    egress_ifindex,
                    end,
                } => {
                    counts.signed += 1;
                    (egress_ifindex, 0, end)
                }
                Outcome::BadSignature { inner_len } => {
                    counts.bad_signature += 1;
                    tally.forged(meta.slot, inner_len);
                    continue;
                }
                Outcome::Malformed => {
                    counts.malformed += 1;
                    continue;
                }
            };
            match egress_port(ports, egress, port.xsk.queue) {
                Some(p) => out.push(Out {
                    port: p,
                    addr: addr + start as u64,
                    len: end - start,
                }),
                None => counts.no_egress += 1,
            }
        }
        counts.flush(stats);
        tally.flush(&shared.maps, shared.suspect, stats);
        send(port, ports, &out, stats);
        // Every receive frame goes back to the fill ring, which has room for all of them:
        // the kernel took them from it.
        let room = rx.fill.free(fill.len() as u32);
        debug_assert!(room as usize >= fill.len());
        for addr in &fill {
            rx.fill.push(addr - addr % u64::from(FRAME_SIZE));
        }
        rx.fill.submit();
    }
}

/// The socket to send out of `ifindex` on: the one of the same queue number, else the
/// interface's first.
fn egress_port(ports: &[Arc<Port>], ifindex: u32, queue: u32) -> Option<usize> {
    let mut first = None;
    for (i, p) in ports.iter().enumerate() {
        if p.xsk.ifindex == ifindex {
            if p.xsk.queue == queue {
                return Some(i);
            }
            first.get_or_insert(i);
        }
    }
    first
}

/// Copies the frames in `out` (in `from`'s UMEM) into TX frames of their sockets and
/// makes the kernel send them; one lock per socket and batch.
fn send(from: &Port, ports: &[Arc<Port>], out: &[Out], stats: &WorkerStats) {
    for (i, first) in out.iter().enumerate() {
        let target = first.port;
        if out[..i].iter().any(|o| o.port == target) {
            continue;
        }
        let p = &ports[target];
        let mut tx = p.tx.lock().unwrap_or_else(|e| e.into_inner());
        reap(&mut tx);
        let mut pushed = false;
        for o in out[i..].iter().filter(|o| o.port == target) {
            let Some(frame) = (tx.tx.free(1) > 0).then(|| tx.free.pop()).flatten() else {
                stats.tx_full.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // SAFETY: a receive frame of this thread, and a TX frame taken from the free
            // list under the lock; different UMEMs, or different halves of one.
            unsafe {
                let src = from.xsk.bytes(o.addr, o.len);
                p.xsk.bytes(frame, o.len).copy_from_slice(src);
            }
            tx.tx.push(libc::xdp_desc {
                addr: frame,
                len: o.len as u32,
                options: 0,
            });
            pushed = true;
        }
        if pushed {
            tx.tx.submit();
            // Copy mode sends from the system call, a bounded number per call.
            for _ in 0..4 {
                p.xsk.kick_tx();
                if tx.tx.drained() {
                    break;
                }
            }
            reap(&mut tx);
        }
    }
}

/// Takes sent frames back from the completion ring.
fn reap(tx: &mut TxRings) {
    let n = tx.comp.available();
    for _ in 0..n {
        let a = tx.comp.pop();
        tx.free.push(a - a % u64::from(FRAME_SIZE));
    }
    if n > 0 {
        tx.comp.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_light_pass_sleeps_at_once() {
        let mut s = Spin::default();
        assert!(!s.again(), "nothing received yet");
        s.pass(BUSY_PASS - 1);
        assert!(!s.again(), "fewer than BUSY_PASS frames");
    }

    #[test]
    fn a_busy_pass_polls_for_a_while_then_sleeps() {
        let mut s = Spin::default();
        s.pass(BUSY_PASS);
        // Before the first poll, which opens the window.
        let start = Instant::now();
        assert!(s.again(), "polls right after a busy pass");
        // Bounded: the window is SPIN; a second is far past it however slow the machine.
        while s.again() {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "never stopped polling"
            );
        }
        assert!(start.elapsed() >= SPIN, "stopped before its window ended");
        assert!(!s.again(), "sleeps until the next busy pass");
        // A busy pass in the window opens a new one.
        s.pass(BUSY_PASS);
        assert!(s.again());
    }

    #[test]
    fn counts_are_added_once_and_reset() {
        let stats = WorkerStats::default();
        let mut c = Counts {
            verified: 3,
            signed: 2,
            no_egress: 1,
            ..Counts::default()
        };
        c.flush(&stats);
        c.flush(&stats);
        c.malformed = 4;
        c.flush(&stats);
        let snap: std::collections::HashMap<_, _> = stats.snapshot().into_iter().collect();
        assert_eq!(snap["verified"], 3);
        assert_eq!(snap["signed"], 2);
        assert_eq!(snap["no_egress"], 1);
        assert_eq!(snap["malformed"], 4);
        assert_eq!(snap["bad_signature"], 0);
    }
}
