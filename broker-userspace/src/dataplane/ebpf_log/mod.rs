//! The debug object (`cargo xtask build-ebpf --log`, config `dataplane.ebpf_log`): loaded
//! instead of the embedded data plane, it writes an aya-log record of every packet's
//! verdict (`broker-ebpf/src/fate.rs`), which [`XdpLog`] reads and forwards to the
//! broker's log (target `xdp`).
//!
//! The embedded object is untouched by all of this: it has no log code and no `AYA_LOGS`
//! map. The debug object is read from its file at every load, checked against the
//! embedded one (same maps, so pinned maps taken over stay readable by both), and its BTF
//! made acceptable to the kernel ([`btf::fix_names`]; docs/TOOLCHAIN.md).
pub mod btf;

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use aya::EbpfLoader;
use aya_log::EbpfLogger;
use broker_common::{
    consts::{map_names as names, program_names},
    stats::{DropReason, PassReason, ACTIONS, DROP_BASE, PASS_BASE},
};
use tracing::{info, warn, Level};

use super::{Dataplane, DataplaneError, Options, BROKER_OBJ};
use crate::config::EbpfLogLevel;

/// The ring buffer aya-log-ebpf writes its records into.
pub const LOG_MAP: &str = "AYA_LOGS";

/// The embedded data plane object (what `broker run` loads unless told otherwise).
pub fn embedded() -> &'static [u8] {
    BROKER_OBJ
}

/// Whether an object carries aya-log (its `AYA_LOGS` map). The embedded one must not.
pub fn has_log(object: &[u8]) -> Result<bool, DataplaneError> {
    Ok(parse(object)?.maps.contains_key(LOG_MAP))
}

/// The object bytes [`Dataplane::load`] hands to aya.
pub(super) enum Object {
    Embedded,
    /// The debug object, in 8-byte aligned memory (the ELF parser reads headers in
    /// place), and its length.
    Log(Vec<u64>, usize),
}

impl Object {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Embedded => BROKER_OBJ,
            Self::Log(words, len) => {
                // SAFETY: `words` holds at least `len` initialised bytes; u8 has no
                // alignment requirement.
                unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), *len) }
            }
        }
    }
}

/// The object `opts` asks for: the embedded one, or the debug object read, checked
/// against the embedded one and with its BTF names fixed.
pub(super) fn object(opts: &Options) -> Result<Object, DataplaneError> {
    let Some(log) = &opts.ebpf_log else {
        return Ok(Object::Embedded);
    };
    let mut bytes = std::fs::read(&log.object).map_err(|source| DataplaneError::Io {
        what: format!("reading the debug object {}", log.object.display()),
        source,
    })?;
    check(&bytes, &log.object)?;
    let renamed = btf::fix_names(&mut bytes).map_err(|e| DataplaneError::Io {
        what: format!("fixing the BTF of {}", log.object.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    for r in &renamed {
        info!(kind = r.kind, from = %r.from, to = %r.to, "debug object: BTF name fixed");
    }
    let len = bytes.len();
    let mut words = vec![0u64; len.div_ceil(8)];
    // SAFETY: `words` has room for `len` bytes; the regions do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), len) };
    Ok(Object::Log(words, len))
}

/// Sets the most detailed level the debug object records (`AYA_LOG_LEVEL`, read-only
/// data: the verifier drops the code of the levels below it).
pub(super) fn set_level(loader: &mut EbpfLoader<'_>, opts: &Options) {
    if let Some(log) = &opts.ebpf_log {
        loader.override_global(aya_log::LEVEL, level_byte(&log.level), true);
    }
}

fn level_byte(level: &EbpfLogLevel) -> &'static u8 {
    // aya_log_common::Level's discriminants.
    match level {
        EbpfLogLevel::Error => &1,
        EbpfLogLevel::Warn => &2,
        EbpfLogLevel::Info => &3,
        EbpfLogLevel::Debug => &4,
        EbpfLogLevel::Trace => &5,
    }
}

fn parse(object: &[u8]) -> Result<aya_obj::Object, DataplaneError> {
    // The ELF parser wants its input aligned.
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: `words` has room for `object.len()` bytes; the regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(object.as_ptr(), words.as_mut_ptr().cast(), object.len())
    };
    // SAFETY: as above.
    let aligned = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), object.len()) };
    aya_obj::Object::parse(aligned).map_err(|e| DataplaneError::Io {
        what: "parsing the BPF object".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// A debug object must be one (aya-log's ring buffer, the data plane program) and must
/// have the maps of the embedded object, so that it reads and writes the pinned maps as
/// this broker does. An object built from another version is refused here, before it can
/// misread them.
fn check(object: &[u8], path: &Path) -> Result<(), DataplaneError> {
    let refuse = |why: String| DataplaneError::Io {
        what: format!("loading the debug object {}", path.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let log = parse(object).map_err(|e| refuse(format!("not a BPF object: {e:#}")))?;
    if !log.maps.contains_key(LOG_MAP) {
        return Err(refuse(format!(
            "no {LOG_MAP} map: not the debug object (build it with `cargo xtask build-ebpf --log`)"
        )));
    }
    if !log.programs.contains_key(program_names::BROKER) {
        return Err(refuse(format!("no program {}", program_names::BROKER)));
    }
    let ours = parse(BROKER_OBJ)?;
    for name in names::ALL {
        let shape = |o: &aya_obj::Object| {
            o.maps.get(name).map(|m| {
                (
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                    m.map_flags(),
                )
            })
        };
        let (want, got) = (shape(&ours), shape(&log));
        if want != got {
            return Err(refuse(format!(
                "map {name} is {got:?} there and {want:?} in this broker (type, key, value, entries, flags): built from another version; rebuild it from this broker's source"
            )));
        }
    }
    Ok(())
}

/// One record of the data plane, as aya-log decoded it, the counters' names written in
/// for the slots it carries (`action=drop reason=spoofed_source ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpRecord {
    pub level: Level,
    pub message: String,
}

/// The debug object's log, read from its ring buffer.
pub struct XdpLog {
    logger: EbpfLogger<Collector>,
    records: Arc<Mutex<Vec<XdpRecord>>>,
}

/// What aya-log hands over, kept until [`XdpLog::drain`] takes it.
struct Collector(Arc<Mutex<Vec<XdpRecord>>>);

impl log::Log for Collector {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = match record.level() {
            log::Level::Error => Level::ERROR,
            log::Level::Warn => Level::WARN,
            log::Level::Info => Level::INFO,
            log::Level::Debug => Level::DEBUG,
            log::Level::Trace => Level::TRACE,
        };
        let message = with_names(&record.args().to_string());
        if let Ok(mut r) = self.0.lock() {
            r.push(XdpRecord { level, message });
        }
    }

    fn flush(&self) {}
}

impl Dataplane {
    /// The debug object's log, when this data plane is the debug object (`None` for the
    /// embedded one, and after the first call).
    pub fn take_xdp_log(&mut self) -> Result<Option<XdpLog>, DataplaneError> {
        if self.ebpf.map(LOG_MAP).is_none() {
            return Ok(None);
        }
        let records = Arc::new(Mutex::new(Vec::new()));
        let logger = EbpfLogger::init_with_logger(&mut self.ebpf, Collector(records.clone()))
            .map_err(|e| DataplaneError::Io {
                what: format!("reading {LOG_MAP}"),
                source: std::io::Error::other(e.to_string()),
            })?;
        Ok(Some(XdpLog { logger, records }))
    }
}

impl Dataplane {
    /// The id of the BTF the kernel holds for the program; `None` when it was loaded
    /// without (aya falls back to that when the kernel refuses an object's BTF).
    pub fn program_btf_id(&self) -> Result<Option<u32>, DataplaneError> {
        Ok(self.program_info()?.btf_id())
    }
}

impl XdpLog {
    /// Every record written so far, oldest first.
    pub fn drain(&mut self) -> Vec<XdpRecord> {
        self.logger.flush();
        match self.records.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        }
    }

    /// Drains the records into the broker's log (target `xdp`, each at its own level);
    /// returns how many.
    pub fn forward(&mut self) -> usize {
        let records = self.drain();
        for r in &records {
            match r.level {
                Level::ERROR => tracing::error!(target: "xdp", "{}", r.message),
                Level::WARN => tracing::warn!(target: "xdp", "{}", r.message),
                Level::INFO => tracing::info!(target: "xdp", "{}", r.message),
                Level::DEBUG => tracing::debug!(target: "xdp", "{}", r.message),
                _ => tracing::trace!(target: "xdp", "{}", r.message),
            }
        }
        records.len()
    }

    /// Forwards records as they arrive (the ring buffer's descriptor polls readable when
    /// there are some), until the runtime stops.
    pub async fn run(self) {
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: the descriptor is the ring buffer map's, owned by `self.logger`, which
        // the `AsyncFd` owns: it stays open and the same until the `AsyncFd` drops.
        let mut fd =
            match unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, interest) } {
                Ok(fd) => fd,
                Err(e) => {
                    let e = e.into_parts().1;
                    warn!(error = %e, "the data plane's log cannot be polled; it is not forwarded");
                    return;
                }
            };
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "polling the data plane's log failed; it is no longer forwarded");
                    return;
                }
            };
            guard.get_inner_mut().forward();
            guard.clear_ready();
        }
    }
}

impl std::os::fd::AsRawFd for XdpLog {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.logger.as_raw_fd()
    }
}

/// Writes the names of the counter slots a record carries: `action=<XDP action>` and
/// `reason=<GLOBAL_STATS slot>` (0: none) become the labels of the metrics.
pub fn with_names(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let named = if let Some(n) = word.strip_prefix("action=") {
                n.parse::<usize>()
                    .ok()
                    .and_then(|n| ACTIONS.get(n))
                    .map(|a| format!("action={a}"))
            } else if let Some(n) = word.strip_prefix("reason=") {
                n.parse::<u32>().ok().and_then(reason_name)
            } else {
                None
            };
            named.unwrap_or_else(|| word.to_string())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn reason_name(slot: u32) -> Option<String> {
    if slot == 0 {
        return Some("reason=-".into());
    }
    let name = if (DROP_BASE..PASS_BASE).contains(&slot) {
        DropReason::ALL
            .iter()
            .find(|r| r.slot() == slot)
            .map(|r| r.as_str())
    } else {
        PassReason::ALL
            .iter()
            .find(|r| r.slot() == slot)
            .map(|r| r.as_str())
    };
    name.map(|n| format!("reason={n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_become_the_counters_names() {
        assert_eq!(
            with_names(&format!(
                "fate action=1 reason={} len=98 if=2 rxq=0 ipv4 198.51.100.10 > 192.0.2.1 proto 41",
                DropReason::SpoofedSource.slot()
            )),
            "fate action=drop reason=spoofed_source len=98 if=2 rxq=0 ipv4 198.51.100.10 > 192.0.2.1 proto 41"
        );
        assert_eq!(
            with_names(&format!(
                "fate action=2 reason={} len=60",
                PassReason::NotTunnel.slot()
            )),
            "fate action=pass reason=not_tunnel len=60"
        );
        assert_eq!(
            with_names("fate action=4 reason=0 len=1"),
            "fate action=redirect reason=- len=1"
        );
        // Numbers no table has stay numbers.
        assert_eq!(
            with_names("fate action=9 reason=250 x=1"),
            "fate action=9 reason=250 x=1"
        );
    }

    #[test]
    fn the_embedded_object_has_no_log() {
        assert!(!has_log(embedded()).unwrap());
    }

    #[test]
    fn the_embedded_object_needs_no_btf_fix() {
        let mut copy = embedded().to_vec();
        assert_eq!(btf::fix_names(&mut copy).unwrap(), vec![]);
        assert_eq!(copy, embedded(), "left byte for byte as it was");
    }
}
