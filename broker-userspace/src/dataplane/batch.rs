//! Reading whole maps many entries per system call: `BPF_MAP_LOOKUP_BATCH` (Linux 5.6).
//!
//! Reading a map through aya costs a `bpf()` call per entry (and a second one per key of a
//! hash map, to find the next key). At a million tunnels that is seconds for every pass over
//! `TUNNELS` or an endpoint map. A batch call copies up to [`CHUNK`] entries
//! at once; the reads here go a chunk at a time, so memory stays bounded whatever the map's
//! size, and hand each entry to a visitor.
//!
//! What the kernel copies (`kernel/bpf/syscall.c` `generic_map_lookup_batch` for arrays,
//! `kernel/bpf/hashtab.c` `__htab_map_lookup_and_delete_batch` for hash maps):
//! - keys and values packed, `key_size` and `value_size` bytes each; a per-CPU map's value
//!   is one `round_up(value_size, 8)` stride per possible CPU;
//! - `count` in, the number of entries filled out; `in_batch` (none: from the start) and
//!   `out_batch` are a position: for an array the last key copied, for a hash map a bucket;
//! - `ENOENT`: no entry after these (the last chunk, maybe with entries in it);
//! - `ENOSPC` (hash maps): the next bucket alone holds more than `count`; nothing copied.
//!
//! A kernel without batch operations refuses the first call (`EINVAL` for an unknown
//! command, `ENOTSUPP` for a map type without them): then these reads fall back to one
//! lookup per entry through aya, the way the controller always read, and say so once.
use std::{
    borrow::Borrow,
    io,
    ops::Range,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray},
    sys::SyscallError,
    Pod,
};

use super::DataplaneError;

/// How the controller reads many entries of a map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MapReads {
    /// Many entries per system call (`BPF_MAP_LOOKUP_BATCH`), and one lookup per entry
    /// when only a few of many are wanted. Falls back to [`MapReads::PerElement`] when the
    /// kernel refuses batch operations.
    #[default]
    Batch,
    /// One aya lookup per entry, as the controller read before batch reads: slow with many
    /// tunnels; what the tests compare the batch reads with.
    PerElement,
}

/// Entries per batch call, at most. A chunk of `TUNNELS` values (184 bytes each) is
/// 1.5 MB.
const CHUNK: u32 = 8192;

/// Bytes of values a chunk holds at most: a per-CPU value is copied once per possible CPU
/// (a 48-byte value on 128 CPUs: 6 KB a key), so its chunks have fewer keys.
const CHUNK_BYTES: usize = 4 << 20;

/// Keys per batch call for values of `value_size` bytes (all CPUs' for a per-CPU map):
/// [`CHUNK`], or fewer to keep a chunk's values within [`CHUNK_BYTES`], but never none.
fn chunk_for(value_size: usize) -> u32 {
    (CHUNK_BYTES / value_size.max(1)).clamp(1, CHUNK as usize) as u32
}

/// Fewer wanted slots than this are read one by one, however close together.
const FEW_SLOTS: usize = 16;

/// A batch read covers the whole span between the lowest and the highest wanted slot; one
/// lookup per wanted slot costs about as much as this many slots of a batch read (measured
/// with `benches/batch.rs` on the per-CPU `TUNNEL_STATS` of map layout 4, 2 CPUs at 100,000
/// tunnels, summed: 1.5 µs a lookup, 0.33 µs a slot of a batch read).
const SPAN_PER_SLOT: u64 = 4;

/// Set once the kernel refused a batch call: every later read goes entry by entry.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether the kernel refused `BPF_MAP_LOOKUP_BATCH` (logged once when it happened): the
/// maps are then read one entry per system call.
pub fn batch_reads_refused() -> bool {
    REFUSED.load(Ordering::Relaxed)
}

fn use_batch(reads: MapReads) -> bool {
    reads == MapReads::Batch && !batch_reads_refused()
}

fn refuse(name: &'static str, errno: i32) {
    if !REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            map = name,
            error = %io::Error::from_raw_os_error(errno),
            "the kernel refuses BPF_MAP_LOOKUP_BATCH: reading maps one entry per system call \
             from now on (slow with many tunnels)"
        );
    }
}

/// Whether `n` wanted slots spread over `span` slots are cheaper read in one batch pass
/// over the span than one lookup each.
fn prefer_batch(n: usize, span: u64) -> bool {
    n >= FEW_SLOTS && span <= (n as u64).saturating_mul(SPAN_PER_SLOT)
}

/// The bytes per entry of a per-CPU value of `size` bytes, for each possible CPU.
const fn per_cpu_stride(size: usize) -> usize {
    size.next_multiple_of(8)
}

/// A `T` from the first `size_of::<T>()` bytes of `bytes` (no alignment needed).
///
/// # Panics
/// When `bytes` is shorter than a `T`.
fn pod<T: Pod>(bytes: &[u8]) -> T {
    assert!(
        bytes.len() >= size_of::<T>(),
        "{} bytes for a {}-byte value",
        bytes.len(),
        size_of::<T>()
    );
    // SAFETY: long enough (checked above); `Pod` types are valid for any bytes.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// The bytes of a `Pod` value.
pub(super) fn bytes_of<T: Pod>(v: &T) -> Vec<u8> {
    // SAFETY: `Pod` types are plain data without padding, readable as bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// Decodes one key's per-CPU values (`cpus` strides of [`per_cpu_stride`]) into `out`.
fn per_cpu_values<V: Pod>(bytes: &[u8], cpus: usize, out: &mut Vec<V>) {
    let stride = per_cpu_stride(size_of::<V>());
    out.clear();
    out.extend((0..cpus).map(|cpu| pod::<V>(&bytes[cpu * stride..])));
}

/// What one batch call says about how to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `n` entries; more may follow from `out_batch`.
    More(u32),
    /// `n` entries, and nothing after them.
    Last(u32),
    /// The next hash bucket does not fit in `count`: ask again with more room.
    Grow,
    /// Nothing copied; the same call again.
    Again,
    /// The kernel has no batch lookups (for this map type): read entry by entry.
    Refused(i32),
    Failed(i32),
}

/// Classifies a call's result: the entries it filled and its error. `first`: no call of
/// this read succeeded yet (a refusal is only believed then).
fn classify(filled: u32, errno: Option<i32>, first: bool) -> Step {
    match errno {
        None if filled > 0 => Step::More(filled),
        // Progress is guaranteed when `count > 0`; anything else would loop.
        None => Step::Failed(libc::EIO),
        Some(libc::ENOENT) => Step::Last(filled),
        Some(libc::ENOSPC) if filled == 0 => Step::Grow,
        Some(libc::ENOSPC) => Step::More(filled),
        // Arrays: an entry vanished under the read too often; the position is kept.
        Some(libc::EINTR) if filled > 0 => Step::More(filled),
        Some(libc::EINTR) => Step::Again,
        Some(e) if first && refusal(e) => Step::Refused(e),
        Some(e) => Step::Failed(e),
    }
}

/// What a kernel without batch operations (for this map type) answers the first one.
pub(super) fn refusal(errno: i32) -> bool {
    /// The kernel's own "operation not supported" (not in libc).
    const ENOTSUPP: i32 = 524;
    matches!(
        errno,
        libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP | libc::ENOSYS
    )
}

/// One `bpf()` system call with an attribute of type `A`; its errno if it failed.
pub(super) fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> Option<i32> {
    // SAFETY: the callers pass a `bpf_attr` prefix for `cmd` whose pointers are to
    // buffers live for the call and as large as the command reads or writes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            size_of::<A>() as libc::c_uint,
        )
    };
    (rc < 0).then(|| {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    })
}

/// `BPF_MAP_LOOKUP_BATCH` on one map: the kernel's, or a model of it in the tests.
trait Batches {
    fn key_size(&self) -> usize;
    /// Bytes the kernel copies per value (all CPUs' for a per-CPU map).
    fn value_size(&self) -> usize;
    /// One call: the entries filled, and the error (errno) if it failed. `keys` and
    /// `values` hold at least `count` entries; `out_batch` at least [`token_len`] bytes.
    fn lookup_batch(
        &self,
        in_batch: Option<&[u8]>,
        out_batch: &mut [u8],
        keys: &mut [u8],
        values: &mut [u8],
        count: u32,
    ) -> (u32, Option<i32>);
}

/// Bytes of a position (`in_batch`, `out_batch`): a key for arrays, a `u32` bucket for hash
/// maps.
fn token_len(key_size: usize) -> usize {
    key_size.max(8)
}

/// `union bpf_attr` as the batch commands read it.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub(super) in_batch: u64,
    pub(super) out_batch: u64,
    pub(super) keys: u64,
    pub(super) values: u64,
    pub(super) count: u32,
    pub(super) map_fd: u32,
    pub(super) elem_flags: u64,
    pub(super) flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// A map's descriptor with its entry sizes.
struct Kernel<'a> {
    fd: BorrowedFd<'a>,
    key_size: usize,
    value_size: usize,
}

impl Batches for Kernel<'_> {
    fn key_size(&self) -> usize {
        self.key_size
    }

    fn value_size(&self) -> usize {
        self.value_size
    }

    fn lookup_batch(
        &self,
        in_batch: Option<&[u8]>,
        out_batch: &mut [u8],
        keys: &mut [u8],
        values: &mut [u8],
        count: u32,
    ) -> (u32, Option<i32>) {
        let n = count as usize;
        let token = token_len(self.key_size);
        // The kernel writes where these point: never beyond the buffers.
        assert!(
            keys.len() >= n * self.key_size
                && values.len() >= n * self.value_size
                && out_batch.len() >= token
                && in_batch.is_none_or(|b| b.len() >= token),
            "batch buffers too small"
        );
        let mut attr = BatchAttr {
            in_batch: in_batch.map_or(0, |b| b.as_ptr() as u64),
            out_batch: out_batch.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: self.fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // The buffers are large enough for `count` entries and a position (asserted
        // above); the kernel zero-fills the rest of the attribute.
        let errno = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel sets `count` to what it filled, also when it fails.
        (attr.count.min(count), errno)
    }
}

fn kernel<K: Pod>(map: &MapData, value_size: usize) -> Kernel<'_> {
    Kernel {
        fd: map.fd().as_fd(),
        key_size: size_of::<K>(),
        value_size,
    }
}

fn syscall_error(name: &'static str, errno: i32) -> DataplaneError {
    failed(name, "bpf_map_lookup_batch", errno)
}

/// The error of a `bpf()` `call` on map `name` that failed with `errno`.
pub(super) fn failed(name: &'static str, call: &'static str, errno: i32) -> DataplaneError {
    DataplaneError::Map {
        name,
        source: MapError::SyscallError(SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        }),
    }
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// How a batch read ended.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Done,
    /// The kernel refused (this errno) before anything was read: read entry by entry.
    Refused(i32),
}

/// Whether a batch read is finished; a refusal is logged (once) and the caller goes on
/// entry by entry.
fn finished(read: Read, name: &'static str) -> bool {
    match read {
        Read::Done => true,
        Read::Refused(e) => {
            refuse(name, e);
            false
        }
    }
}

/// What a raw read hands each array slot: its value's bytes.
type SlotVisit<'v> = dyn FnMut(u32, &[u8]) -> Result<(), DataplaneError> + 'v;
/// What a raw read hands each hash map entry: its key's and value's bytes.
type EntryVisit<'v> = dyn FnMut(&[u8], &[u8]) -> Result<(), DataplaneError> + 'v;

/// Times a call that copied nothing (`EINTR`) is repeated.
const AGAIN: u32 = 4;

/// Array slots `range` (within the array), `chunk` at a time: `visit(slot, value bytes)`.
fn array_batches<B: Batches>(
    map: &B,
    name: &'static str,
    range: Range<u32>,
    chunk: u32,
    visit: &mut SlotVisit<'_>,
) -> Result<Read, DataplaneError> {
    let (ks, vs) = (map.key_size(), map.value_size());
    debug_assert_eq!(ks, size_of::<u32>());
    let room = chunk.min(range.len() as u32).max(1) as usize;
    let mut keys = vec![0u8; room * ks];
    let mut values = vec![0u8; room * vs];
    let mut out = vec![0u8; token_len(ks)];
    let mut cur = range.start;
    let mut first = true;
    let mut again = 0;
    while cur < range.end {
        let count = (range.end - cur).min(room as u32);
        // An array's position is the last key read: the slot before `cur`.
        let mut token = vec![0u8; token_len(ks)];
        let in_batch = cur.checked_sub(1).map(|prev| {
            token[..4].copy_from_slice(&prev.to_ne_bytes());
            &token[..]
        });
        let (filled, errno) = map.lookup_batch(in_batch, &mut out, &mut keys, &mut values, count);
        let (n, last) = match classify(filled, errno, first) {
            Step::More(n) => (n, false),
            Step::Last(n) => (n, true),
            Step::Refused(e) => return Ok(Read::Refused(e)),
            Step::Again if again < AGAIN => {
                again += 1;
                continue;
            }
            Step::Again => return Err(syscall_error(name, libc::EINTR)),
            Step::Grow => return Err(syscall_error(name, libc::ENOSPC)),
            Step::Failed(e) => return Err(syscall_error(name, e)),
        };
        first = false;
        again = 0;
        for i in 0..n.min(count) as usize {
            let slot = pod::<u32>(&keys[i * ks..]);
            if slot != cur {
                // An array's batch is its slots in order; anything else is not understood.
                return Err(syscall_error(name, libc::EIO));
            }
            visit(slot, &values[i * vs..(i + 1) * vs])?;
            cur += 1;
        }
        if last {
            break;
        }
    }
    Ok(Read::Done)
}

/// Every entry of a hash map, `chunk` at a time: `visit(key bytes, value bytes)`.
fn hash_batches<B: Batches>(
    map: &B,
    name: &'static str,
    chunk: u32,
    visit: &mut EntryVisit<'_>,
) -> Result<Read, DataplaneError> {
    /// A bucket bigger than this is not a hash table any more.
    const MAX_ROOM: u32 = 1 << 20;
    let (ks, vs) = (map.key_size(), map.value_size());
    let mut room = chunk.max(1);
    let mut keys = vec![0u8; room as usize * ks];
    let mut values = vec![0u8; room as usize * vs];
    let mut token: Option<Vec<u8>> = None;
    let mut out = vec![0u8; token_len(ks)];
    let mut first = true;
    let mut again = 0;
    loop {
        let (filled, errno) =
            map.lookup_batch(token.as_deref(), &mut out, &mut keys, &mut values, room);
        let (n, last) = match classify(filled, errno, first) {
            Step::More(n) => (n, false),
            Step::Last(n) => (n, true),
            Step::Refused(e) => return Ok(Read::Refused(e)),
            Step::Grow if room < MAX_ROOM => {
                room *= 2;
                keys.resize(room as usize * ks, 0);
                values.resize(room as usize * vs, 0);
                continue;
            }
            Step::Again if again < AGAIN => {
                again += 1;
                continue;
            }
            Step::Again => return Err(syscall_error(name, libc::EINTR)),
            Step::Grow => return Err(syscall_error(name, libc::ENOSPC)),
            Step::Failed(e) => return Err(syscall_error(name, e)),
        };
        first = false;
        again = 0;
        for i in 0..n.min(room) as usize {
            visit(&keys[i * ks..(i + 1) * ks], &values[i * vs..(i + 1) * vs])?;
        }
        if last {
            return Ok(Read::Done);
        }
        token
            .get_or_insert_with(|| vec![0u8; out.len()])
            .copy_from_slice(&out);
    }
}

/// Slots `range` of an array (clamped to its size): `visit(slot, value)` in slot order.
pub(super) fn array_range<T: Borrow<MapData>, V: Pod>(
    map: &Array<T, V>,
    name: &'static str,
    reads: MapReads,
    range: Range<u32>,
    mut visit: impl FnMut(u32, V) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    let range = range.start..range.end.min(map.len());
    if range.is_empty() {
        return Ok(());
    }
    if use_batch(reads) {
        let k = kernel::<u32>(map.map(), size_of::<V>());
        let chunk = chunk_for(k.value_size);
        let read = array_batches(&k, name, range.clone(), chunk, &mut |slot, v| {
            visit(slot, pod::<V>(v))
        })?;
        if finished(read, name) {
            return Ok(());
        }
    }
    for slot in range {
        visit(slot, map.get(&slot, 0).map_err(map_error(name))?)?;
    }
    Ok(())
}

/// Slots `range` of a per-CPU array (clamped to its size): `visit(slot, one value per
/// possible CPU)` in slot order.
pub(super) fn per_cpu_range<T: Borrow<MapData>, V: Pod>(
    map: &PerCpuArray<T, V>,
    name: &'static str,
    reads: MapReads,
    range: Range<u32>,
    mut visit: impl FnMut(u32, &[V]) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    let range = range.start..range.end.min(map.len());
    if range.is_empty() {
        return Ok(());
    }
    if use_batch(reads) {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: what.to_string(),
            source,
        })?;
        let k = kernel::<u32>(map.map(), cpus * per_cpu_stride(size_of::<V>()));
        let mut values = Vec::with_capacity(cpus);
        let chunk = chunk_for(k.value_size);
        let read = array_batches(&k, name, range.clone(), chunk, &mut |slot, v| {
            per_cpu_values(v, cpus, &mut values);
            visit(slot, &values)
        })?;
        if finished(read, name) {
            return Ok(());
        }
    }
    for slot in range {
        visit(slot, &map.get(&slot, 0).map_err(map_error(name))?)?;
    }
    Ok(())
}

/// Where `slots` lie: the span from the lowest to the highest, and their positions in
/// slot order (a counting sort when the span is dense, as it is for a batch read).
fn plan_slots(slots: &[u32]) -> (Range<u32>, Vec<usize>) {
    let (Some(&lo), Some(&hi)) = (slots.iter().min(), slots.iter().max()) else {
        return (0..0, Vec::new());
    };
    let span = lo..hi + 1;
    let width = span.len();
    if width as u64 > (slots.len() as u64).saturating_mul(SPAN_PER_SLOT) {
        let mut order: Vec<usize> = (0..slots.len()).collect();
        order.sort_unstable_by_key(|&i| (slots[i], i));
        return (span, order);
    }
    // Where each slot's positions start, then the positions in slot order.
    let mut start = vec![0usize; width + 1];
    for s in slots {
        start[(s - lo) as usize + 1] += 1;
    }
    for i in 1..=width {
        start[i] += start[i - 1];
    }
    let mut order = vec![0usize; slots.len()];
    for (i, s) in slots.iter().enumerate() {
        let at = &mut start[(s - lo) as usize];
        order[*at] = i;
        *at += 1;
    }
    (span, order)
}

/// Checks `slots` against the array's size, as an aya lookup would.
fn check_slots(slots: &[u32], len: u32, name: &'static str) -> Result<(), DataplaneError> {
    match slots.iter().find(|s| **s >= len) {
        Some(&index) => Err(DataplaneError::Map {
            name,
            source: MapError::OutOfBounds {
                index,
                max_entries: len,
            },
        }),
        None => Ok(()),
    }
}

/// Runs `range_read` over the span of `slots` and hands each wanted slot's value to
/// `visit(position in slots, value)`; every position is visited once.
fn visit_planned<V: ?Sized>(
    slots: &[u32],
    name: &'static str,
    range_read: impl FnOnce(
        Range<u32>,
        &mut dyn FnMut(u32, &V) -> Result<(), DataplaneError>,
    ) -> Result<(), DataplaneError>,
    visit: &mut dyn FnMut(usize, &V) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    let (span, order) = plan_slots(slots);
    let mut k = 0;
    range_read(span, &mut |slot, v| {
        while let Some(&i) = order.get(k).filter(|&&i| slots[i] == slot) {
            visit(i, v)?;
            k += 1;
        }
        Ok(())
    })?;
    if k != order.len() {
        // Checked against the size beforehand: the kernel returned fewer slots.
        return Err(syscall_error(name, libc::EIO));
    }
    Ok(())
}

/// The values of the given slots of an array (any order, repeats allowed):
/// `visit(position in slots, value)`, one lookup each or one batch pass over their span,
/// whichever is cheaper.
pub(super) fn array_slots<T: Borrow<MapData>, V: Pod>(
    map: &Array<T, V>,
    name: &'static str,
    reads: MapReads,
    slots: &[u32],
    mut visit: impl FnMut(usize, V) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    check_slots(slots, map.len(), name)?;
    let (span, _) = plan_slots(slots);
    if use_batch(reads) && prefer_batch(slots.len(), span.len() as u64) {
        return visit_planned::<V>(
            slots,
            name,
            |span, f| array_range(map, name, reads, span, |slot, v| f(slot, &v)),
            &mut |i, v| visit(i, *v),
        );
    }
    for (i, slot) in slots.iter().enumerate() {
        visit(i, map.get(slot, 0).map_err(map_error(name))?)?;
    }
    Ok(())
}

/// Every entry of a hash map: `visit(key, value)`. Entries added or removed meanwhile may
/// be seen or not, as with any walk of a hash map.
pub(super) fn hash_entries<T: Borrow<MapData>, K: Pod, V: Pod>(
    map: &HashMap<T, K, V>,
    name: &'static str,
    reads: MapReads,
    mut visit: impl FnMut(K, V) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    if use_batch(reads) {
        let k = kernel::<K>(map.map(), size_of::<V>());
        let chunk = chunk_for(k.value_size);
        let read = hash_batches(&k, name, chunk, &mut |key, v| {
            visit(pod::<K>(key), pod::<V>(v))
        })?;
        if finished(read, name) {
            return Ok(());
        }
    }
    for kv in map.iter() {
        let (key, value) = kv.map_err(map_error(name))?;
        visit(key, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A BPF array as `generic_map_lookup_batch` reads it (`u32` keys).
    struct FakeArray {
        values: Vec<Vec<u8>>,
        value_size: usize,
        calls: RefCell<u32>,
        /// Answer every call with this error and nothing copied.
        fail: Option<i32>,
        /// Fail with this error from the second call on.
        fail_later: Option<i32>,
    }

    impl FakeArray {
        fn new(n: u32, value_size: usize) -> Self {
            let values = (0..n)
                .map(|i| {
                    (0..value_size)
                        .map(|b| (i as usize * 7 + b) as u8)
                        .collect()
                })
                .collect();
            Self {
                values,
                value_size,
                calls: RefCell::new(0),
                fail: None,
                fail_later: None,
            }
        }
    }

    impl Batches for FakeArray {
        fn key_size(&self) -> usize {
            4
        }

        fn value_size(&self) -> usize {
            self.value_size
        }

        fn lookup_batch(
            &self,
            in_batch: Option<&[u8]>,
            out_batch: &mut [u8],
            keys: &mut [u8],
            values: &mut [u8],
            count: u32,
        ) -> (u32, Option<i32>) {
            *self.calls.borrow_mut() += 1;
            if let Some(e) = self.fail {
                return (0, Some(e));
            }
            if *self.calls.borrow() > 1 {
                if let Some(e) = self.fail_later {
                    return (0, Some(e));
                }
            }
            let max = self.values.len() as u32;
            // array_map_get_next_key: none or out of range starts at 0; the last has none.
            let next = |prev: Option<u32>| match prev {
                None => Some(0),
                Some(p) if p >= max => Some(0),
                Some(p) if p + 1 == max => None,
                Some(p) => Some(p + 1),
            };
            let mut prev = in_batch.map(pod::<u32>);
            let mut cp = 0;
            let mut err = None;
            while cp < count {
                let Some(k) = next(prev) else {
                    err = Some(libc::ENOENT);
                    break;
                };
                let (i, vs) = (cp as usize, self.value_size);
                keys[i * 4..i * 4 + 4].copy_from_slice(&k.to_ne_bytes());
                values[i * vs..(i + 1) * vs].copy_from_slice(&self.values[k as usize]);
                prev = Some(k);
                cp += 1;
            }
            if cp > 0 {
                out_batch[..4].copy_from_slice(&prev.unwrap().to_ne_bytes());
            }
            (cp, err)
        }
    }

    /// A BPF hash map as `__htab_map_lookup_and_delete_batch` reads it: buckets copied
    /// whole, `ENOSPC` when the first bucket does not fit, the bucket as the position.
    struct FakeHash {
        buckets: Vec<Vec<(u32, u32)>>,
        calls: RefCell<u32>,
    }

    impl Batches for FakeHash {
        fn key_size(&self) -> usize {
            4
        }

        fn value_size(&self) -> usize {
            4
        }

        fn lookup_batch(
            &self,
            in_batch: Option<&[u8]>,
            out_batch: &mut [u8],
            keys: &mut [u8],
            values: &mut [u8],
            count: u32,
        ) -> (u32, Option<i32>) {
            *self.calls.borrow_mut() += 1;
            let mut batch = in_batch.map_or(0, pod::<u32>) as usize;
            if batch >= self.buckets.len() {
                return (0, Some(libc::ENOENT));
            }
            let mut total = 0usize;
            let ret = loop {
                let b = &self.buckets[batch];
                if b.len() > count as usize - total {
                    break (total == 0).then_some(libc::ENOSPC);
                }
                for (k, v) in b {
                    keys[total * 4..total * 4 + 4].copy_from_slice(&k.to_ne_bytes());
                    values[total * 4..total * 4 + 4].copy_from_slice(&v.to_ne_bytes());
                    total += 1;
                }
                batch += 1;
                if batch >= self.buckets.len() {
                    break Some(libc::ENOENT);
                }
            };
            out_batch[..4].copy_from_slice(&(batch as u32).to_ne_bytes());
            (total as u32, ret)
        }
    }

    fn read_array(a: &FakeArray, range: Range<u32>, chunk: u32) -> (Read, Vec<(u32, Vec<u8>)>) {
        let mut got = Vec::new();
        let r = array_batches(a, "TEST", range, chunk, &mut |s, v| {
            got.push((s, v.to_vec()));
            Ok(())
        })
        .unwrap();
        (r, got)
    }

    #[test]
    fn array_ranges_come_whole_in_order_across_chunks() {
        let a = FakeArray::new(10, 12);
        for (range, chunk) in [(0..10, 3), (0..10, 10), (0..10, 64), (4..9, 2), (9..10, 4)] {
            let (r, got) = read_array(&a, range.clone(), chunk);
            assert_eq!(r, Read::Done);
            let want: Vec<(u32, Vec<u8>)> = range
                .clone()
                .map(|s| (s, a.values[s as usize].clone()))
                .collect();
            assert_eq!(got, want, "range {range:?}, chunk {chunk}");
        }
        // Chunks of 3, 3, 3 and 1: four calls.
        *a.calls.borrow_mut() = 0;
        read_array(&a, 0..10, 3);
        assert_eq!(*a.calls.borrow(), 4);
    }

    #[test]
    fn a_range_past_the_end_stops_at_the_end() {
        let a = FakeArray::new(5, 4);
        let (r, got) = read_array(&a, 3..9, 4);
        assert_eq!(r, Read::Done);
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn a_refusal_is_believed_on_the_first_call_only() {
        for e in [libc::EINVAL, 524, libc::EOPNOTSUPP] {
            let mut a = FakeArray::new(5, 4);
            a.fail = Some(e);
            let (r, got) = read_array(&a, 0..5, 2);
            assert_eq!(r, Read::Refused(e));
            assert!(got.is_empty());
        }
        // After a first chunk, EINVAL is an error like any other.
        let mut a = FakeArray::new(5, 4);
        a.fail_later = Some(libc::EINVAL);
        let err = array_batches(&a, "TEST", 0..5, 2, &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(errno(&err), Some(libc::EINVAL));
        let mut a = FakeArray::new(5, 4);
        a.fail = Some(libc::EPERM);
        let err = array_batches(&a, "TEST", 0..5, 2, &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(errno(&err), Some(libc::EPERM));
        assert!(
            !batch_reads_refused(),
            "the pure loop leaves the global switch alone"
        );
    }

    fn errno(e: &DataplaneError) -> Option<i32> {
        match e {
            DataplaneError::Map {
                source: MapError::SyscallError(s),
                ..
            } => s.io_error.raw_os_error(),
            _ => None,
        }
    }

    #[test]
    fn a_visitor_error_ends_the_read() {
        let a = FakeArray::new(10, 4);
        let mut seen = 0;
        let r = array_batches(&a, "TEST", 0..10, 3, &mut |s, _| {
            seen += 1;
            if s == 4 {
                Err(DataplaneError::Full { max: 4 })
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(DataplaneError::Full { max: 4 })));
        assert_eq!(seen, 5);
    }

    fn hash(sizes: &[usize]) -> FakeHash {
        let mut k = 0;
        let buckets = sizes
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        k += 1;
                        (k, k * 10)
                    })
                    .collect()
            })
            .collect();
        FakeHash {
            buckets,
            calls: RefCell::new(0),
        }
    }

    fn read_hash(h: &FakeHash, chunk: u32) -> Vec<(u32, u32)> {
        let mut got = Vec::new();
        let r = hash_batches(h, "TEST", chunk, &mut |k, v| {
            got.push((pod::<u32>(k), pod::<u32>(v)));
            Ok(())
        })
        .unwrap();
        assert_eq!(r, Read::Done);
        got
    }

    #[test]
    fn hash_maps_are_read_whole_bucket_by_bucket() {
        let sizes = [0, 2, 0, 0, 3, 1, 0, 5, 1, 0, 0];
        let h = hash(&sizes);
        let want: Vec<(u32, u32)> = (1..=12).map(|k| (k, k * 10)).collect();
        for chunk in [1, 2, 3, 4, 5, 6, 100] {
            assert_eq!(read_hash(&h, chunk), want, "chunk {chunk}");
        }
        // Chunks of 5 hold whole buckets only: 2, 3+1, 5, 1 (then ENOENT).
        *h.calls.borrow_mut() = 0;
        read_hash(&h, 5);
        assert_eq!(*h.calls.borrow(), 4);
    }

    #[test]
    fn a_bucket_larger_than_the_chunk_grows_it() {
        // ENOSPC on the first call and on a later one.
        let h = hash(&[4, 1, 9, 0]);
        let got = read_hash(&h, 2);
        assert_eq!(got, (1..=14).map(|k| (k, k * 10)).collect::<Vec<_>>());
    }

    #[test]
    fn empty_hash_maps_and_trailing_empty_buckets() {
        assert!(read_hash(&hash(&[0, 0, 0]), 4).is_empty());
        assert!(read_hash(&hash(&[]), 4).is_empty());
        assert_eq!(read_hash(&hash(&[0, 1, 0, 0]), 4), vec![(1, 10)]);
    }

    #[test]
    fn per_cpu_values_are_one_rounded_stride_per_cpu() {
        assert_eq!(per_cpu_stride(12), 16);
        assert_eq!(per_cpu_stride(48), 48);
        assert_eq!(per_cpu_stride(1), 8);
        // Three CPUs of a 12-byte value: 16-byte strides, 4 bytes of padding each.
        let mut bytes = Vec::new();
        for cpu in 0..3u32 {
            for w in 0..3u32 {
                bytes.extend_from_slice(&(cpu * 100 + w).to_ne_bytes());
            }
            bytes.extend_from_slice(&[0xee; 4]);
        }
        let mut out: Vec<[u32; 3]> = Vec::new();
        per_cpu_values(&bytes, 3, &mut out);
        assert_eq!(out, vec![[0, 1, 2], [100, 101, 102], [200, 201, 202]]);
    }

    #[test]
    fn values_decode_from_unaligned_bytes() {
        let mut bytes = vec![0u8; 1];
        bytes.extend_from_slice(&0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(pod::<u64>(&bytes[1..]), 0x0102_0304_0506_0708);
        assert_eq!(bytes_of(&0x0102_0304_0506_0708u64), bytes[1..].to_vec());
    }

    #[test]
    #[should_panic(expected = "bytes for a 8-byte value")]
    fn short_bytes_are_refused() {
        pod::<u64>(&[0; 7]);
    }

    #[test]
    fn chunks_hold_at_most_chunk_bytes_of_values() {
        assert_eq!(chunk_for(184), CHUNK);
        assert_eq!(chunk_for(4), CHUNK);
        // A 48-byte per-CPU value on 2 and on 128 possible CPUs.
        assert_eq!(chunk_for(96), CHUNK);
        assert_eq!(chunk_for(48 * 128), (CHUNK_BYTES / (48 * 128)) as u32);
        assert_eq!(chunk_for(CHUNK_BYTES * 2), 1);
        assert_eq!(chunk_for(0), CHUNK);
    }

    #[test]
    fn steps() {
        assert_eq!(classify(5, None, true), Step::More(5));
        assert_eq!(classify(0, None, false), Step::Failed(libc::EIO));
        assert_eq!(classify(3, Some(libc::ENOENT), false), Step::Last(3));
        assert_eq!(classify(0, Some(libc::ENOENT), true), Step::Last(0));
        assert_eq!(classify(0, Some(libc::ENOSPC), false), Step::Grow);
        assert_eq!(classify(2, Some(libc::EINTR), false), Step::More(2));
        assert_eq!(classify(0, Some(libc::EINTR), false), Step::Again);
        assert_eq!(
            classify(0, Some(libc::EINVAL), true),
            Step::Refused(libc::EINVAL)
        );
        assert_eq!(
            classify(0, Some(libc::EINVAL), false),
            Step::Failed(libc::EINVAL)
        );
        assert_eq!(classify(0, Some(524), true), Step::Refused(524));
        assert_eq!(
            classify(0, Some(libc::EFAULT), true),
            Step::Failed(libc::EFAULT)
        );
    }

    #[test]
    fn few_or_sparse_slots_are_read_one_by_one() {
        assert!(!prefer_batch(0, 0));
        assert!(!prefer_batch(FEW_SLOTS - 1, FEW_SLOTS as u64 - 1));
        assert!(prefer_batch(FEW_SLOTS, FEW_SLOTS as u64));
        assert!(prefer_batch(1000, 4000));
        assert!(!prefer_batch(1000, 4001));
        assert!(prefer_batch(1_000_000, 1_000_000));
    }

    #[test]
    fn planned_slots_are_visited_at_their_positions_repeats_included() {
        let slots = [7, 3, 9, 3, 5];
        let (span, order) = plan_slots(&slots);
        assert_eq!(span, 3..10);
        assert_eq!(
            order.iter().map(|&i| slots[i]).collect::<Vec<_>>(),
            vec![3, 3, 5, 7, 9]
        );
        let mut got = vec![None; slots.len()];
        visit_planned::<u32>(
            &slots,
            "TEST",
            |span, f| {
                for s in span {
                    f(s, &(s * 10))?;
                }
                Ok(())
            },
            &mut |i, v| {
                assert!(got[i].replace(*v).is_none(), "position {i} twice");
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, slots.iter().map(|s| Some(s * 10)).collect::<Vec<_>>());
        // A range that comes back short is an error, not a silent gap.
        let r = visit_planned::<u32>(&slots, "TEST", |_, _| Ok(()), &mut |_, _| Ok(()));
        assert!(r.is_err());
        assert_eq!(plan_slots(&[]).0, 0..0);
        // Sparse slots are sorted, dense ones counted: the same order either way.
        for slots in [vec![900, 5, 7, 5], vec![3, 1, 2, 1, 0, 3, 3]] {
            let (span, order) = plan_slots(&slots);
            let lo = *slots.iter().min().unwrap();
            assert_eq!(span, lo..slots.iter().max().unwrap() + 1);
            let mut sorted: Vec<(u32, usize)> = slots.iter().copied().zip(0..).collect();
            sorted.sort_unstable();
            assert_eq!(
                order.iter().map(|&i| (slots[i], i)).collect::<Vec<_>>(),
                sorted,
                "{slots:?}"
            );
        }
    }

    #[test]
    fn the_batch_attribute_has_the_kernels_layout() {
        assert_eq!(size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
        assert_eq!(std::mem::offset_of!(BatchAttr, flags), 48);
    }
}
