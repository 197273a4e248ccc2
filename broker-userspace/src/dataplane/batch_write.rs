//! Writing many entries of a map per system call: `BPF_MAP_UPDATE_BATCH` (Linux 5.6).
//!
//! Installing a million tunnels one `bpf()` call per entry took 12 s of a cold start
//! (six calls a tunnel). The kernel's batch update (`kernel/bpf/syscall.c`
//! `generic_map_update_batch`, used by arrays, per-CPU arrays and hash maps alike) takes
//! packed keys and values (a per-CPU value is one `round_up(value_size, 8)` stride per
//! possible CPU), updates them in order, and on an error reports in `count` how many it
//! did before it. Entries go [`CHUNK`] at a time, so memory stays bounded.
//!
//! A kernel without batch operations refuses the first call (`EINVAL`, `ENOTSUPP`): then
//! the entries go one `BPF_MAP_UPDATE_ELEM` each, and that is said once.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::{maps::MapData, Pod};

use super::{
    batch::{bpf, failed, refusal, BatchAttr},
    DataplaneError,
};

/// Entries per call, at most.
const CHUNK: usize = 8192;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Set once the kernel refused a batch update: later writes go entry by entry.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// One map's updates: the kernel's, or a model of it in the tests.
trait Updates {
    /// One batch call over `count` packed entries: how many were written, and the error
    /// (errno) that stopped it.
    fn update_batch(&self, keys: &[u8], values: &[u8], count: u32) -> (u32, Option<i32>);
    /// One entry; its error (errno).
    fn update_one(&self, key: &[u8], value: &[u8]) -> Option<i32>;
}

struct Kernel<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
}

/// `union bpf_attr` as `BPF_MAP_UPDATE_ELEM` reads it.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl Updates for Kernel<'_> {
    fn update_batch(&self, keys: &[u8], values: &[u8], count: u32) -> (u32, Option<i32>) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // `keys` and `values` hold `count` entries; the kernel only reads them.
        let errno = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        // The kernel sets `count` to what it did, also when it fails.
        (attr.count.min(count), errno)
    }

    fn update_one(&self, key: &[u8], value: &[u8]) -> Option<i32> {
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
    }
}

/// Writes `n` entries, the `i`th packed by `fill(i, key, value)` into the buffers given
/// (key and value bytes, zeroed), `CHUNK` per call.
fn write<U: Updates>(
    u: &U,
    name: &'static str,
    n: usize,
    key_size: usize,
    value_size: usize,
    chunk: usize,
    mut fill: impl FnMut(usize, &mut [u8], &mut [u8]),
) -> Result<(), DataplaneError> {
    let mut keys = vec![0u8; chunk.min(n) * key_size];
    let mut values = vec![0u8; chunk.min(n) * value_size];
    let mut start = 0;
    while start < n {
        let count = chunk.min(n - start);
        for i in 0..count {
            fill(
                start + i,
                &mut keys[i * key_size..(i + 1) * key_size],
                &mut values[i * value_size..(i + 1) * value_size],
            );
        }
        let (keys, values) = (&keys[..count * key_size], &values[..count * value_size]);
        if !REFUSED.load(Ordering::Relaxed) {
            match u.update_batch(keys, values, count as u32) {
                (_, None) => {
                    start += count;
                    continue;
                }
                (0, Some(e)) if start == 0 && refusal(e) => {
                    REFUSED.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        map = name,
                        errno = e,
                        "the kernel refuses batch map updates: writing one entry per system call"
                    );
                }
                (_, Some(e)) => return Err(failed(name, "bpf_map_update_batch", e)),
            }
        }
        for i in 0..count {
            let (k, v) = (
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
            if let Some(e) = u.update_one(k, v) {
                return Err(failed(name, "bpf_map_update_elem", e));
            }
        }
        start += count;
    }
    Ok(())
}

fn copy_pod<T: Pod>(v: &T, to: &mut [u8]) {
    // SAFETY: `Pod` types are plain data without padding, readable as bytes; `to` has
    // room for one (the callers cut it to the entry's size).
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) };
    to[..bytes.len()].copy_from_slice(bytes);
}

/// Writes `entries` (key, value) into a map of `K` to `V` (an array or a hash map).
pub(super) fn update<K: Pod, V: Pod>(
    map: &MapData,
    name: &'static str,
    entries: &[(K, V)],
) -> Result<(), DataplaneError> {
    let k = Kernel {
        fd: map.fd().as_fd(),
    };
    write(
        &k,
        name,
        entries.len(),
        size_of::<K>(),
        size_of::<V>(),
        CHUNK,
        |i, key, value| {
            copy_pod(&entries[i].0, key);
            copy_pod(&entries[i].1, value);
        },
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A map of 4-byte keys and values that takes batches as the kernel does, refusing
    /// them when `batches` is false, and failing on the key `bad`.
    struct Fake {
        batches: bool,
        bad: Option<u32>,
        written: RefCell<Vec<(u32, u32)>>,
        calls: RefCell<u32>,
    }

    impl Fake {
        fn new(batches: bool, bad: Option<u32>) -> Self {
            Self {
                batches,
                bad,
                written: RefCell::default(),
                calls: RefCell::default(),
            }
        }
    }

    fn word(b: &[u8]) -> u32 {
        u32::from_ne_bytes(b.try_into().unwrap())
    }

    impl Updates for Fake {
        fn update_batch(&self, keys: &[u8], values: &[u8], count: u32) -> (u32, Option<i32>) {
            *self.calls.borrow_mut() += 1;
            if !self.batches {
                return (0, Some(libc::EINVAL));
            }
            for i in 0..count as usize {
                if let Some(e) = self.update_one(&keys[i * 4..i * 4 + 4], &values[i * 4..i * 4 + 4])
                {
                    return (i as u32, Some(e));
                }
            }
            (count, None)
        }

        fn update_one(&self, key: &[u8], value: &[u8]) -> Option<i32> {
            if Some(word(key)) == self.bad {
                return Some(libc::E2BIG);
            }
            self.written.borrow_mut().push((word(key), word(value)));
            None
        }
    }

    fn write_n(f: &Fake, n: usize, chunk: usize) -> Result<(), DataplaneError> {
        write(f, "TEST", n, 4, 4, chunk, |i, k, v| {
            k.copy_from_slice(&(i as u32).to_ne_bytes());
            v.copy_from_slice(&(i as u32 * 10).to_ne_bytes());
        })
    }

    // The refusal is process-wide; one test exercises both paths in order.
    #[test]
    fn entries_go_in_order_a_chunk_per_call_or_one_by_one_once_refused() {
        let f = Fake::new(true, None);
        write_n(&f, 10, 4).unwrap();
        let want: Vec<(u32, u32)> = (0..10).map(|i| (i, i * 10)).collect();
        assert_eq!(*f.written.borrow(), want);
        assert_eq!(*f.calls.borrow(), 3, "4 + 4 + 2");

        let f = Fake::new(true, Some(6));
        let e = write_n(&f, 10, 4).unwrap_err().to_string();
        assert!(e.contains("TEST"), "{e}");
        assert_eq!(
            f.written.borrow().len(),
            6,
            "the entries before the failing one"
        );

        let f = Fake::new(false, None);
        write_n(&f, 10, 4).unwrap();
        assert_eq!(*f.written.borrow(), want, "one by one after the refusal");
        assert_eq!(*f.calls.borrow(), 1, "the refusal is believed from then on");
        REFUSED.store(false, Ordering::Relaxed);
    }
}
