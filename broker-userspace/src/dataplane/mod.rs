//! The only module that touches aya: loads the XDP object, attaches it, pins its maps,
//! writes tunnels into the maps and reads the counters back.
//!
//! The maps are a projection of the tunnels the caller hands in ([`Dataplane::upsert`],
//! [`Dataplane::remove`]); this module keeps only the slot each tunnel occupies.

mod adopt;
mod batch;
mod batch_write;
mod bpffs;
mod bulk;
mod counters;
pub mod ebpf_log;
mod mapped;
mod mmap;
mod prefixes;
mod program_pin;
mod slots;
mod testing;
mod ticks;

pub mod aux;
pub mod xsk;

use std::path::PathBuf;

use aya::{
    maps::{Array, HashMap, XskMap},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, Xdp, XdpMode,
    },
    util::nr_cpus,
    Ebpf, EbpfLoader, Pod,
};
use broker_common::{
    consts::{map_names as names, program_names},
    maps::{
        Endpoint4, Endpoint6, Nexthop, Prefix64, PrefixKey, RateLimit, Settings, Tunnel,
        TunnelKind, TunnelState, TunnelStats, TunnelStatsLine, UdpEndpoint4, MAX_PREFIX_LENS,
        MAX_ROUTED, XSK_MAX_QUEUES, XSK_MAX_SOCKETS,
    },
};
use ipnet::Ipv6Net;
use tracing::{debug, info};

use crate::{
    config::AttachMode,
    model::{Endpoint, Kind, Pop, State, TunnelSpec},
};

pub use adopt::Reconciled;
pub use batch::{batch_reads_refused, MapReads};
pub use bpffs::{detach_instance, ensure_bpffs, has_maps, links_dir, maps_dir, pin_dir};
pub use counters::{GlobalCounters, PinnedCounters, StatsReader, TunnelCounters};
pub use ebpf_log::{XdpLog, XdpRecord};

/// How full a map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUsage {
    pub map: &'static str,
    pub used: u64,
    pub capacity: u64,
}
use slots::{EndpointKey, Installed, SlotTable};
pub use testing::TestRunOutput;
pub use xsk::{AyiyaWorker, WorkerOptions, WorkerStats};

/// One entry of a lookup map (endpoints, `V4_ROUTES`, `PREFIXES`), as
/// [`Dataplane::lookup_entries`] lists them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LookupEntry {
    pub map: &'static str,
    /// The key's bytes, as the map holds them.
    pub key: Vec<u8>,
    pub slot: u32,
}

/// The data plane object, built by build.rs from `broker-ebpf`.
static BROKER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/broker"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP to {iface} in {mode:?} mode failed")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    #[error("the XDP link on {iface}")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("bpffs at {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pinned map {name} holds values of {pinned} bytes, this build's of {built}: it was \
         pinned by an incompatible build; `broker dataplane detach` and a restart make it anew \
         (not hitless)"
    )]
    Incompatible {
        name: &'static str,
        pinned: u32,
        built: u32,
    },
    #[error("tunnel {id}: all {max} {kind} endpoints are in use (dataplane.max_endpoints.{kind})")]
    EndpointsFull {
        id: u32,
        kind: &'static str,
        max: u32,
    },
    #[error("all {max} tunnel slots are in use (dataplane.max_tunnels)")]
    Full { max: u32 },
    #[error("tunnel {id} has {count} routed prefixes; at most {MAX_ROUTED} are supported")]
    TooManyRouted { id: u32, count: usize },
    #[error("routed prefix {prefix} of tunnel {id} is longer than /64")]
    PrefixTooLong { id: u32, prefix: Ipv6Net },
    #[error("tunnel {id} would bring the distinct prefix lengths in use above {MAX_PREFIX_LENS}")]
    TooManyLengths { id: u32 },
    #[error("tunnel {id}: {what}")]
    Unsupported { id: u32, what: String },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The capacities of the endpoint maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndpointCaps {
    pub p41: u32,
    pub udp: u32,
    pub v6: u32,
    pub ayiya: u32,
}

/// The maps' capacities: as configured, or as an earlier controller pinned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub tunnels: u32,
    pub prefixes: u32,
    pub endpoints: EndpointCaps,
}

impl Sizes {
    fn configured(opts: &Options) -> Self {
        let e = &opts.max_endpoints;
        let or_all = |n: Option<u32>| n.unwrap_or(opts.max_tunnels);
        Self {
            tunnels: opts.max_tunnels,
            prefixes: opts.max_prefixes,
            endpoints: EndpointCaps {
                p41: or_all(e.proto41),
                udp: or_all(e.v6udpv4),
                v6: or_all(e.v4v6),
                ayiya: or_all(e.ayiya),
            },
        }
    }
}

/// How to load the data plane.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names the pin directory `/sys/fs/bpf/broker/<instance>/`.
    pub instance: String,
    pub max_tunnels: u32,
    pub max_prefixes: u32,
    /// Each kind's endpoint map (`None`: `max_tunnels`).
    pub max_endpoints: crate::config::MaxEndpoints,
    /// Pin the maps so `broker stats` can read them from another process. Tests that only
    /// use `BPF_PROG_TEST_RUN` leave this off.
    pub pin: bool,
    /// Cache FIB results in the data plane (see `broker-ebpf/src/forward.rs`).
    pub nexthop_cache: bool,
    /// Longest a cached next hop is used without a lookup.
    pub nexthop_max_age_ms: u32,
    /// ICMP messages the data plane generates, PoP-wide (`Settings.icmp`).
    pub icmp_limit: RateLimit,
    /// Decapsulated packets passed to the kernel to resolve a neighbour, PoP-wide
    /// (`Settings.neighbour`).
    pub neighbour_limit: RateLimit,
    /// Load the debug object instead of the embedded one ([`ebpf_log`]).
    pub ebpf_log: Option<crate::config::EbpfLog>,
    /// How whole maps are read (taking over pinned maps, reconciling, the global counters;
    /// the tunnels' counters are read from a mapping).
    pub map_reads: MapReads,
}

impl Options {
    /// Defaults for everything but the instance name.
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_string(),
            max_tunnels: broker_common::consts::DEFAULT_MAX_TUNNELS,
            max_prefixes: broker_common::consts::DEFAULT_MAX_PREFIXES,
            max_endpoints: crate::config::MaxEndpoints::default(),
            pin: false,
            nexthop_cache: true,
            nexthop_max_age_ms: broker_common::consts::DEFAULT_NEXTHOP_MAX_AGE_MS,
            icmp_limit: RateLimit::ICMP_DEFAULT,
            neighbour_limit: RateLimit::NEIGHBOUR_DEFAULT,
            ebpf_log: None,
            map_reads: MapReads::default(),
        }
    }
}

/// A loaded data plane.
pub struct Dataplane {
    ebpf: Ebpf,
    /// The program pinned by an earlier controller of this build, standing in for the
    /// one in `ebpf`, which then stays unloaded ([`program_pin`]).
    reused: Option<Xdp>,
    /// With it, its own instances of the unpinned maps the controller writes, standing in
    /// for those of `ebpf` ([`program_pin::Reused`]).
    reused_maps: Vec<(&'static str, aya::maps::Map)>,
    /// The instance's pins, when pinned.
    instance: Option<String>,
    /// Links this process owns (unpinned data planes only: tests, benchmark).
    links: Vec<(String, XdpLinkId)>,
    slots: SlotTable,
    /// What `SETTINGS[0]` holds; written whole on every change.
    settings: Settings,
    lengths: prefixes::Lengths,
    space: prefixes::Space,
    /// The maps were pinned by an earlier controller and taken over.
    adopted: bool,
    max_tunnels: u32,
    max_prefixes: u32,
    /// The endpoint maps' capacities (`V4_ROUTES` has v4v6's).
    endpoint_caps: EndpointCaps,
    /// `XSK_VERDICTS` and `XSK_SUSPECT`, mapped: the AYIYA worker writes them, the counters
    /// read them.
    worker_maps: std::sync::Arc<xsk::shared::WorkerMaps>,
    /// How whole maps are read.
    reads: MapReads,
    /// `TUNNEL_STATS`, mapped, for readers on other threads.
    stats: StatsReader,
    /// Ids the adopted maps held as down (taken once by [`Dataplane::take_adopted_down`]).
    adopted_down: Vec<u32>,
    /// The maps were created by this process and every change to them succeeded: they
    /// hold exactly what the slot table says, and slots never handed out are zero. A
    /// reconcile need not sweep them, nor an install zero a new slot's counters.
    pristine: bool,
}

impl Dataplane {
    /// Loads the program. Pinned, it takes over the maps an earlier controller pinned
    /// (their contents, counters included, stay) or creates and pins them. Nothing is
    /// attached yet.
    pub fn load(opts: &Options) -> Result<Self> {
        let started = std::time::Instant::now();
        let maps = if opts.pin {
            ensure_bpffs()?;
            let dir = maps_dir(&opts.instance);
            bpffs::create_dir(&dir)?;
            bpffs::create_dir(&links_dir(&opts.instance))?;
            Some(dir)
        } else {
            None
        };
        let pinned = match &maps {
            Some(dir) => adopt::pinned_sizes(dir, opts)?,
            None => None,
        };
        let adopted = pinned.is_some();
        let Sizes {
            tunnels: max_tunnels,
            prefixes: max_prefixes,
            endpoints: endpoint_caps,
        } = pinned.unwrap_or_else(|| Sizes::configured(opts));
        let cpus = possible_cpus()?;
        let slot_cpu_len = slot_cpu_len(max_tunnels, cpus)?;

        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::TUNNELS, max_tunnels)
            .map_max_entries(names::P41_ENDPOINTS, endpoint_caps.p41)
            .map_max_entries(names::UDP_ENDPOINTS, endpoint_caps.udp)
            .map_max_entries(names::V6_ENDPOINTS, endpoint_caps.v6)
            .map_max_entries(names::V4_ROUTES, endpoint_caps.v6)
            .map_max_entries(names::AYIYA_IDS, endpoint_caps.ayiya)
            .map_max_entries(names::TUNNEL_STATS, slot_cpu_len)
            .map_max_entries(names::NEXTHOP_CLIENT, slot_cpu_len)
            // A slot each, and the totals after the last.
            .map_max_entries(names::XSK_VERDICTS, max_tunnels + 1)
            .map_max_entries(names::XSK_SUSPECT, max_tunnels)
            .map_max_entries(names::PREFIXES, max_prefixes);
        let paths: Vec<(&str, PathBuf)> = match &maps {
            Some(dir) => names::ALL.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let object = ebpf_log::object(opts)?;
        ebpf_log::set_level(&mut loader, opts);
        let mut ebpf = loader.load(object.bytes()).map_err(DataplaneError::Load)?;
        let maps_ms = started.elapsed().as_millis() as u64;
        // Only the embedded object is pinned and reused (program_pin.rs says why).
        let identity = match (&maps, &object) {
            (Some(_), ebpf_log::Object::Embedded) => Some(embedded_identity()),
            _ => None,
        };
        let reused = match (&maps, identity) {
            (Some(dir), Some(identity)) if adopted => {
                program_pin::open(&opts.instance, identity, dir)
            }
            _ => None,
        };
        let (reused, reused_maps) = match reused {
            Some(r) => (Some(r.program), r.maps),
            None => (None, Vec::new()),
        };

        // Taking over: the pinned tunnels are read on another thread while the verifier
        // checks the program (each takes about half a second at a million tunnels).
        let scan = std::thread::scope(|s| {
            let scan = maps
                .as_deref()
                .filter(|_| adopted)
                .map(|dir| s.spawn(|| adopt::scan_pinned(dir, opts.map_reads)));
            if reused.is_none() {
                let prog = xdp_program(&mut ebpf, program_names::BROKER)?;
                load_xdp(prog, program_names::BROKER)?;
                if let Some(identity) = identity {
                    program_pin::pin(&opts.instance, identity, prog)?;
                }
            }
            scan.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .transpose()
        })?;
        let worker_maps = std::sync::Arc::new(xsk::shared::WorkerMaps::open(&ebpf)?);
        let stats = StatsReader::open(&ebpf, cpus, worker_maps.clone())?;
        let mut dp = Self {
            ebpf,
            reused,
            reused_maps,
            instance: opts.pin.then(|| opts.instance.clone()),
            links: Vec::new(),
            slots: SlotTable::new(max_tunnels),
            settings: Settings {
                nexthop_gen: u32::from(opts.nexthop_cache),
                nexthop_max_age_ticks: ticks::from_ms(opts.nexthop_max_age_ms, ticks::length()),
                cpus,
                icmp: opts.icmp_limit,
                neighbour: opts.neighbour_limit,
                ..Settings::EMPTY
            },
            lengths: prefixes::Lengths::default(),
            space: prefixes::Space::default(),
            adopted,
            max_tunnels,
            max_prefixes,
            endpoint_caps,
            worker_maps,
            reads: opts.map_reads,
            stats,
            adopted_down: Vec::new(),
            pristine: !adopted,
        };
        let program_ms = started.elapsed().as_millis() as u64 - maps_ms;
        if let Some(scan) = scan {
            dp.adopt(opts, scan)?;
        }
        dp.write_settings()?;
        info!(
            program = program_names::BROKER,
            program_reused = dp.reused.is_some(),
            debug_object = opts.ebpf_log.is_some(),
            max_tunnels,
            max_prefixes,
            adopted,
            tunnels = dp.slots.usage().tunnels,
            // Maps created or opened; the program verified (or opened) with the pinned
            // tunnels read beside it; the rest is indexing them.
            maps_ms,
            program_ms,
            load_ms = started.elapsed().as_millis() as u64,
            "data plane loaded"
        );
        Ok(dp)
    }

    /// Whether the maps were taken over from an earlier controller.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Whether the program is the one an earlier controller verified and pinned.
    pub fn program_reused(&self) -> bool {
        self.reused.is_some()
    }

    /// Attaches the program to `iface`. Pinned, an existing link on the interface gets the
    /// new program atomically (`BPF_LINK_UPDATE`: no packet sees no program); otherwise a
    /// new link is made and pinned, and stays after this process exits.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let xdp_mode = match mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        let err = |source| DataplaneError::Attach {
            iface: iface.to_string(),
            mode,
            source,
        };
        let pin = self.instance.as_ref().map(|i| links_dir(i).join(iface));
        let prog = self.program_mut()?;
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let pinned = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Io {
                what: format!("opening the pinned link {}", pin.display()),
                source: std::io::Error::other(e.to_string()),
            })?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|source| DataplaneError::Link {
                    iface: iface.to_string(),
                    source,
                })?;
            prog.attach_to_link(link).map_err(err)?;
            info!(iface, "XDP program replaced on the pinned link");
            return Ok(());
        }
        let id = prog.attach(iface, xdp_mode).map_err(err)?;
        match pin {
            Some(pin) => {
                let link = prog.take_link(id).map_err(err)?;
                let fd = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
                    iface: iface.to_string(),
                    source,
                })?;
                fd.pin(&pin).map_err(|e| DataplaneError::Io {
                    what: format!("pinning the link at {}", pin.display()),
                    source: std::io::Error::other(e.to_string()),
                })?;
                info!(iface, ?mode, pin = %pin.display(), "XDP attached and pinned");
            }
            None => {
                info!(iface, ?mode, "XDP attached");
                self.links.push((iface.to_string(), id));
            }
        }
        Ok(())
    }

    /// Whether the program is attached to every interface of `ifaces`: their pinned links
    /// exist (`broker dataplane detach` removes them), or, unpinned, this process holds
    /// its links.
    pub fn attached_to(&self, ifaces: &[String]) -> bool {
        match &self.instance {
            Some(i) => ifaces.iter().all(|f| links_dir(i).join(f).exists()),
            None => ifaces
                .iter()
                .all(|f| self.links.iter().any(|(name, _)| name == f)),
        }
    }

    /// Detaches the pinned links of interfaces not in `keep` (removed from the config) and
    /// the map pins of other layouts (left by an older build, now unused).
    pub fn prune(&mut self, keep: &[String]) -> Result<()> {
        let Some(instance) = self.instance.clone() else {
            return Ok(());
        };
        if let Ok(entries) = std::fs::read_dir(links_dir(&instance)) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                if let Ok(link) = PinnedLink::from_pin(e.path()) {
                    let _ = link.unpin();
                    info!(
                        iface = name,
                        "XDP detached from an interface no longer configured"
                    );
                }
            }
        }
        for dir in bpffs::other_map_dirs(&instance) {
            info!(dir = %dir.display(), "removing the maps of another layout");
            bpffs::remove_pins(&dir)?;
        }
        Ok(())
    }

    /// Starts the AF_XDP engine of AYIYA on these interfaces (names, in the calling
    /// thread's network namespace): a socket per receive queue, a thread per socket, the
    /// sockets in `XSKS` and the engine's bit in the settings. XDP hands AYIYA forward
    /// packets to the worker from then on, as long as the returned value lives (its
    /// sockets leave `XSKS` when it is dropped, and XDP hashes them itself again).
    ///
    /// Packets hashing fewer than `min_payload` bytes (AYIYA header and inner packet) stay
    /// in XDP, where a few SHA-1 blocks cost less than the trip to userspace.
    pub fn start_ayiya_worker(
        &mut self,
        ifaces: &[String],
        min_payload: u16,
    ) -> Result<AyiyaWorker> {
        self.start_ayiya_worker_with(ifaces, WorkerOptions::new(min_payload))
    }

    /// [`Dataplane::start_ayiya_worker`] with every option: also how long XDP verifies a
    /// tunnel's packets itself once the worker found a forged one among them.
    pub fn start_ayiya_worker_with(
        &mut self,
        ifaces: &[String],
        opts: WorkerOptions,
    ) -> Result<AyiyaWorker> {
        let min_payload = opts.min_payload;
        if ifaces.len() as u32 * XSK_MAX_QUEUES > XSK_MAX_SOCKETS {
            return Err(DataplaneError::Io {
                what: format!("the AF_XDP worker on {} interfaces", ifaces.len()),
                source: std::io::Error::other(format!(
                    "at most {} interfaces",
                    XSK_MAX_SOCKETS / XSK_MAX_QUEUES
                )),
            });
        }
        let mut bases = Vec::new();
        for (i, name) in ifaces.iter().enumerate() {
            bases.push((if_index(name)?, i as u32 * XSK_MAX_QUEUES));
        }
        let maps = self.worker_maps.clone();
        let (worker, opened) =
            AyiyaWorker::start(&bases, maps, opts.suspect).map_err(|source| {
                DataplaneError::Io {
                    what: "starting the AF_XDP AYIYA worker".into(),
                    source,
                }
            })?;
        {
            let name = names::XSKS;
            let mut xsks: XskMap<_> = self.map_mut(name)?;
            for o in &opened {
                xsks.set(o.xsk_index, o.fd, 0)
                    .map_err(|source| DataplaneError::Map { name, source })?;
            }
        }
        {
            let name = names::XSK_IFACES;
            let mut m: HashMap<_, u32, u32> = self.map_mut(name)?;
            for (ifindex, base) in &bases {
                m.insert(ifindex, base, 0)
                    .map_err(|source| DataplaneError::Map { name, source })?;
            }
        }
        self.settings.flags |= Settings::AYIYA_AF_XDP;
        self.settings.xsk_min_payload = min_payload;
        self.write_settings()?;
        info!(sockets = ?worker.sockets(), "AYIYA AF_XDP worker started");
        Ok(worker)
    }

    /// Stops the AF_XDP engine: XDP hashes AYIYA itself again.
    pub fn stop_ayiya_worker(&mut self, worker: AyiyaWorker) -> Result<()> {
        self.settings.flags &= !Settings::AYIYA_AF_XDP;
        let r = self.write_settings();
        drop(worker);
        info!("AYIYA AF_XDP worker stopped");
        r
    }

    /// Detaches the links this process owns (unpinned data planes; also done on drop).
    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        if let Ok(prog) = self.program_mut() {
            for (iface, link) in links {
                match prog.detach(link) {
                    Ok(()) => info!(iface, "XDP detached"),
                    Err(e) => tracing::warn!(iface, error = %e, "XDP detach failed"),
                }
            }
        }
    }

    /// The kernel's id of the loaded program (as `bpftool prog` shows it).
    pub fn program_id(&mut self) -> Result<u32> {
        Ok(self.program_info()?.id())
    }

    /// Accumulated run time and run count of the data plane program (kept by the kernel
    /// while [`enable_run_stats`] is held).
    pub fn run_stats(&self) -> Result<(std::time::Duration, u64)> {
        let info = self.program_info()?;
        Ok((info.run_time(), info.run_count()))
    }

    /// The maps and, when pinned, where.
    pub fn map_names(&self) -> Vec<(String, Option<PathBuf>)> {
        names::ALL
            .iter()
            .map(|n| {
                let pin = self.instance.as_ref().map(|i| maps_dir(i).join(n));
                (n.to_string(), pin)
            })
            .collect()
    }

    /// The instance's pin directory, when pinned.
    pub fn pin_path(&self) -> Option<PathBuf> {
        self.instance.as_deref().map(pin_dir)
    }

    /// Sets the PoP's side of the tunnels: its addresses, the TSP port, the v4v6 pool.
    pub fn set_pop(&mut self, pop: &Pop) -> Result<()> {
        let s = &mut self.settings;
        s.pop_v4 = pop.ipv4.octets();
        s.pop_v6 = pop.ipv6.map_or([0; 16], |a| a.octets());
        s.tsp_port = pop.tsp_port.unwrap_or(0).to_be_bytes();
        s.ayiya_port = pop.ayiya_port.unwrap_or(0).to_be_bytes();
        s.utc_minus_tai_s = utc_minus_tai()?;
        let (gateway, net, mask) = match pop.v4v6_pool {
            Some(p) => (
                pop.v4v6_gateway().map_or([0; 4], |g| g.octets()),
                u32::from_ne_bytes(p.network().octets()),
                u32::from_ne_bytes(p.netmask().octets()),
            ),
            None => ([0; 4], 0, 0),
        };
        s.v4_gateway = gateway;
        s.v4_net = net;
        s.v4_mask = mask;
        // In the same write: tunnels installed for the old PoP no longer agree.
        s.stamp = [0; 8];
        self.write_settings()
    }

    /// The PoP as the settings hold it (what [`Dataplane::set_pop`] wrote).
    fn pop(&self) -> Pop {
        let s = &self.settings;
        let v4v6_pool = (s.v4_mask != 0).then(|| {
            let mask = std::net::Ipv4Addr::from(s.v4_mask.to_ne_bytes());
            let len = u32::from(mask).leading_ones() as u8;
            ipnet::Ipv4Net::new(s.v4_net.to_ne_bytes().into(), len).expect("a prefix length")
        });
        Pop {
            ipv4: s.pop_v4.into(),
            ipv6: (s.pop_v6 != [0; 16]).then(|| s.pop_v6.into()),
            tsp_port: (s.tsp_port != [0; 2]).then(|| u16::from_be_bytes(s.tsp_port)),
            ayiya_port: (s.ayiya_port != [0; 2]).then(|| u16::from_be_bytes(s.ayiya_port)),
            v4v6_pool,
        }
    }

    /// Rewrites the data plane's UTC offset when the kernel's TAI offset changed (a leap
    /// second, or NTP setting it for the first time). Cheap; called periodically.
    pub fn refresh_clock(&mut self) -> Result<()> {
        let offset = utc_minus_tai()?;
        if offset != self.settings.utc_minus_tai_s {
            self.settings.utc_minus_tai_s = offset;
            self.write_settings()?;
        }
        Ok(())
    }

    /// Where the data plane has seen each AYIYA client last (it follows them as they
    /// roam); tunnels not heard from yet are left out.
    pub fn learnt_endpoints(&self) -> Result<Vec<(u32, std::net::SocketAddrV4)>> {
        // In id order already (the slot table keeps the AYIYA tunnels apart).
        let ayiya: Vec<(u32, u32)> = self.slots.ayiya().map(|(id, i)| (id, i.slot)).collect();
        let slots: Vec<u32> = ayiya.iter().map(|(_, slot)| *slot).collect();
        let tunnels: Array<_, Tunnel> = self.map(names::TUNNELS)?;
        let mut out = Vec::new();
        batch::array_slots(&tunnels, names::TUNNELS, self.reads, &slots, |i, t| {
            let id = ayiya[i].0;
            if t.id == id && t.remote_v4 != [0; 4] {
                let at = std::net::SocketAddrV4::new(
                    t.remote_v4.into(),
                    u16::from_be_bytes(t.remote_port),
                );
                out.push((id, at));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Marks every cached next hop stale: the next packet of each flow asks the FIB again.
    /// Called when routes, neighbours or links change. A no-op when caching is off.
    pub fn invalidate_nexthops(&mut self) -> Result<()> {
        if self.settings.nexthop_gen == 0 {
            return Ok(());
        }
        self.settings.nexthop_gen = self.settings.nexthop_gen.wrapping_add(1).max(1);
        self.write_settings()
    }

    /// Sets the PoP-wide rate limits on generated ICMP messages and on `no_neighbour`
    /// passes of decapsulated packets; they apply from the next packet (a lower burst at
    /// once, a fuller bucket as it refills).
    pub fn set_rate_limits(&mut self, icmp: RateLimit, neighbour: RateLimit) -> Result<()> {
        if self.settings.icmp == icmp && self.settings.neighbour == neighbour {
            return Ok(());
        }
        self.settings.icmp = icmp;
        self.settings.neighbour = neighbour;
        self.write_settings()
    }

    /// The covering aggregates of all tunnel prefixes, as the data plane checks them.
    pub fn tunnel_space(&self) -> Vec<Ipv6Net> {
        self.space.aggregates().to_vec()
    }

    /// The controller's mark in the settings ([`Settings::stamp`]); `None` when unmarked.
    pub fn stamp(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.settings.stamp)).filter(|s| *s != 0)
    }

    /// Marks the maps as holding the store as of `stamp` (0: not known to).
    pub fn set_stamp(&mut self, stamp: u64) -> Result<()> {
        if self.settings.stamp != stamp.to_ne_bytes() {
            self.settings.stamp = stamp.to_ne_bytes();
            self.write_settings()?;
        }
        Ok(())
    }

    /// Clears the mark before a change: a controller killed in the middle of it must not
    /// leave maps marked as agreeing with a store they no longer agree with.
    fn unstamp(&mut self) -> Result<()> {
        self.set_stamp(0)
    }

    /// Ids of the tunnels the adopted maps held as down (asleep, or down in the store);
    /// empty after the first call.
    pub fn take_adopted_down(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.adopted_down)
    }

    fn write_settings(&mut self) -> Result<()> {
        let value = self.settings;
        let mut settings: Array<_, Settings> = self.map_mut(names::SETTINGS)?;
        settings
            .set(0, value, 0)
            .map_err(|source| DataplaneError::Map {
                name: names::SETTINGS,
                source,
            })
    }

    /// Installs or updates a tunnel. The order keeps every lookup valid while it runs:
    /// the tunnel entry first, then prefixes and endpoint that point at it, then what the
    /// previous version had and this one does not. The PoP's side comes from
    /// [`Dataplane::set_pop`].
    pub fn upsert(&mut self, spec: &TunnelSpec) -> Result<()> {
        let r = self.write_upsert(spec);
        self.noted(r)
    }

    /// A change that failed may have left the maps half written: they are no longer
    /// known to match the slot table.
    fn noted<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.pristine = false;
        }
        r
    }

    fn write_upsert(&mut self, spec: &TunnelSpec) -> Result<()> {
        let pop = self.pop();
        let prefixes: Vec<Ipv6Net> = spec.prefixes().map(|p| p.trunc()).collect();
        self.check(spec, &prefixes, &pop)?;
        self.unstamp()?;
        let (slot, previous) = match self.slots.get(spec.id) {
            Some(i) => (i.slot, Some(i.clone())),
            None => (self.slots.allocate()?, None),
        };
        let endpoint = endpoint_key(spec, &pop);
        let v4 = spec.client_v4.map(|a| a.octets());

        if previous.is_none() {
            self.zero_slot_cpu::<TunnelStatsLine>(names::TUNNEL_STATS, &[slot])?;
            self.worker_maps.verdicts.reset(slot);
            self.worker_maps.suspects.clear(slot);
        }
        let mut value = to_map_value(spec, &pop);
        if previous.is_some() {
            self.keep_roamed(slot, &mut value)?;
        }
        // The cached next hop was for the previous endpoint or tunnel of this slot.
        self.zero_slot_cpu::<Nexthop>(names::NEXTHOP_CLIENT, &[slot])?;
        self.write_tunnel(slot, &value)?;

        let old: &[Ipv6Net] = previous.as_ref().map_or(&[], |p| &p.prefixes);
        let mut space_changed = false;
        for p in prefixes.iter().filter(|p| !old.contains(p)) {
            space_changed |= self.space.cover(*p);
            self.lengths.add(p.prefix_len());
        }
        for p in old.iter().filter(|p| !prefixes.contains(p)) {
            self.lengths.remove(p.prefix_len());
        }
        // Lengths and space must cover the new prefixes before they can be found.
        self.publish_prefix_tables(space_changed)?;
        {
            let mut map: HashMap<_, PrefixKey, u32> = self.map_mut(names::PREFIXES)?;
            for p in &prefixes {
                map.insert(prefixes::key(p), slot, 0)
                    .map_err(|source| DataplaneError::Map {
                        name: names::PREFIXES,
                        source,
                    })?;
            }
        }
        if let Some(v4) = v4 {
            self.insert_lookup(names::V4_ROUTES, v4, slot)?;
        }
        // The previous endpoint normally goes after the new one is in place. A full map
        // has no room for the new key beside the old one: then the old goes first
        // (packets from it are refused a moment early; a controller killed in between
        // leaves an entry the next reconcile writes again).
        let old_endpoint = previous
            .as_ref()
            .map(|p| p.endpoint)
            .filter(|e| *e != endpoint);
        let old_first = old_endpoint.is_some_and(|e| {
            self.endpoint_map_full(&e)
                && std::mem::discriminant(&e) == std::mem::discriminant(&endpoint)
        });
        if let Some(e) = old_endpoint.filter(|_| old_first) {
            self.remove_endpoint(&e)?;
        }
        self.insert_endpoint(&endpoint, slot)?;
        if let Some(e) = old_endpoint.filter(|_| !old_first) {
            self.remove_endpoint(&e)?;
        }
        if let Some(prev) = previous {
            if let Some(old) = prev.v4.filter(|o| Some(*o) != v4) {
                self.remove_v4_route(old)?;
            }
            for p in prev.prefixes.iter().filter(|p| !prefixes.contains(p)) {
                self.remove_prefix(p)?;
            }
        }
        self.slots.insert(
            spec.id,
            Installed {
                slot,
                endpoint,
                prefixes,
                v4,
            },
        );
        debug!(id = spec.id, slot, "tunnel installed");
        Ok(())
    }

    /// An AYIYA tunnel's endpoint is the data plane's own finding (the last address a
    /// verified packet came from), newer than anything the store holds: an update keeps it.
    fn keep_roamed(&self, slot: u32, value: &mut Tunnel) -> Result<()> {
        if value.kind != TunnelKind::Ayiya as u8 {
            return Ok(());
        }
        let tunnels: Array<_, Tunnel> = self.map(names::TUNNELS)?;
        let current = tunnels
            .get(&slot, 0)
            .map_err(|source| DataplaneError::Map {
                name: names::TUNNELS,
                source,
            })?;
        if current.id == value.id && current.kind == value.kind && current.remote_v4 != [0; 4] {
            value.remote_v4 = current.remote_v4;
            value.remote_port = current.remote_port;
        }
        Ok(())
    }

    fn insert_endpoint(&mut self, endpoint: &EndpointKey, slot: u32) -> Result<()> {
        match *endpoint {
            EndpointKey::P41(k) => self.insert_lookup(names::P41_ENDPOINTS, k, slot),
            EndpointKey::Udp(k) => self.insert_lookup(names::UDP_ENDPOINTS, k, slot),
            EndpointKey::V6(k) => self.insert_lookup(names::V6_ENDPOINTS, k, slot),
            EndpointKey::Ayiya(k) => self.insert_lookup(names::AYIYA_IDS, k, slot),
            EndpointKey::None => Ok(()),
        }
    }

    /// Writes every lookup entry of an installed tunnel (again): its prefixes, its v4v6
    /// route and its endpoint. The lengths and space already cover its prefixes.
    fn insert_lookups(&mut self, installed: &Installed) -> Result<()> {
        for p in &installed.prefixes {
            self.insert_lookup(names::PREFIXES, prefixes::key(p), installed.slot)?;
        }
        if let Some(v4) = installed.v4 {
            self.insert_lookup(names::V4_ROUTES, v4, installed.slot)?;
        }
        self.insert_endpoint(&installed.endpoint, installed.slot)
    }

    fn insert_lookup<K: Pod>(&mut self, name: &'static str, key: K, slot: u32) -> Result<()> {
        let mut map: HashMap<_, K, u32> = self.map_mut(name)?;
        map.insert(key, slot, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// What the data plane cannot represent, refused before anything is written.
    fn check(&self, spec: &TunnelSpec, prefixes: &[Ipv6Net], pop: &Pop) -> Result<()> {
        let unsupported = |what: &str| DataplaneError::Unsupported {
            id: spec.id,
            what: what.to_string(),
        };
        if !spec.endpoint.fits(spec.kind) {
            return Err(unsupported("its endpoint does not suit its kind"));
        }
        match spec.kind {
            Kind::V6Udp4 if pop.tsp_port.is_none() => {
                return Err(unsupported("v6udpv4 needs the TSP port (tsp.port)"))
            }
            Kind::V4In6 if pop.ipv6.is_none() || pop.v4v6_pool.is_none() => {
                return Err(unsupported("v4v6 needs pop.ipv6 and pools.v4v6"))
            }
            Kind::V4In6 if spec.client_v4.is_none() => {
                return Err(unsupported("v4v6 needs the client's inner IPv4"))
            }
            Kind::Ayiya if pop.ayiya_port.is_none() => {
                return Err(unsupported("ayiya needs the AYIYA port (ayiya.port)"))
            }
            Kind::Ayiya if spec.ayiya_key.is_none() => {
                return Err(unsupported("ayiya needs its signing key"))
            }
            _ => {}
        }
        if spec.kind.carries_ipv6() && spec.link_prefix.is_none() {
            return Err(unsupported("no link prefix"));
        }
        if spec.routed_prefixes.len() > MAX_ROUTED {
            return Err(DataplaneError::TooManyRouted {
                id: spec.id,
                count: spec.routed_prefixes.len(),
            });
        }
        if let Some(p) = prefixes.iter().find(|p| p.prefix_len() > 64) {
            return Err(DataplaneError::PrefixTooLong {
                id: spec.id,
                prefix: *p,
            });
        }
        if !self.lengths.fits(prefixes.iter().map(|p| p.prefix_len())) {
            return Err(DataplaneError::TooManyLengths { id: spec.id });
        }
        self.check_endpoint_room(spec, pop)
    }

    /// The endpoint map `key` belongs in: its kind's name, entries used, capacity.
    fn endpoint_map(&self, key: &EndpointKey) -> Option<(&'static str, u64, u32)> {
        let (u, c) = (self.slots.usage(), self.endpoint_caps);
        Some(match key {
            EndpointKey::P41(_) => ("proto41", u.p41, c.p41),
            EndpointKey::Udp(_) => ("v6udpv4", u.udp, c.udp),
            EndpointKey::V6(_) => ("v4v6", u.v6, c.v6),
            EndpointKey::Ayiya(_) => ("ayiya", u.ayiya, c.ayiya),
            EndpointKey::None => return None,
        })
    }

    fn endpoint_map_full(&self, key: &EndpointKey) -> bool {
        self.endpoint_map(key)
            .is_some_and(|(_, used, max)| used >= u64::from(max))
    }

    /// Whether the endpoint map of the tunnel's kind has room for it (the map itself
    /// would refuse, less clearly); a tunnel keeping its kind of endpoint needs none.
    fn check_endpoint_room(&self, spec: &TunnelSpec, pop: &Pop) -> Result<()> {
        let key = endpoint_key(spec, pop);
        let same_kind = self
            .slots
            .get(spec.id)
            .is_some_and(|i| std::mem::discriminant(&i.endpoint) == std::mem::discriminant(&key));
        let Some((kind, used, max)) = self.endpoint_map(&key).filter(|_| !same_kind) else {
            return Ok(());
        };
        if used >= u64::from(max) {
            return Err(DataplaneError::EndpointsFull {
                id: spec.id,
                kind,
                max,
            });
        }
        Ok(())
    }

    /// Writes the probe lengths (and the space, when it changed) into the settings.
    fn publish_prefix_tables(&mut self, space_changed: bool) -> Result<()> {
        let (lens, n_lens) = self.lengths.table();
        let mut changed = space_changed;
        if lens != self.settings.lens || n_lens != self.settings.n_lens {
            self.settings.lens = lens;
            self.settings.n_lens = n_lens;
            changed = true;
        }
        if space_changed {
            let (space, n_space) = self.space.table();
            self.settings.space = space;
            self.settings.n_space = n_space;
        }
        if changed {
            self.write_settings()?;
        }
        Ok(())
    }

    /// Removes a tunnel: lookups first, the slot last. Unknown ids are a no-op.
    pub fn remove(&mut self, id: u32) -> Result<()> {
        let r = self.write_removal(id);
        self.noted(r)
    }

    fn write_removal(&mut self, id: u32) -> Result<()> {
        let Some(installed) = self.slots.get(id).cloned() else {
            return Ok(());
        };
        self.unstamp()?;
        self.remove_endpoint(&installed.endpoint)?;
        if let Some(v4) = installed.v4 {
            self.remove_v4_route(v4)?;
        }
        for p in &installed.prefixes {
            self.remove_prefix(p)?;
            self.lengths.remove(p.prefix_len());
        }
        self.publish_prefix_tables(false)?;
        self.write_tunnel(installed.slot, &Tunnel::EMPTY)?;
        self.slots.release(id);
        debug!(id, slot = installed.slot, "tunnel removed");
        Ok(())
    }

    /// How full the tunnel, endpoint and prefix maps are (kept by the slot table).
    pub fn map_usage(&self) -> Vec<MapUsage> {
        let u = self.slots.usage();
        let tunnels_cap = u64::from(self.max_tunnels);
        let c = self.endpoint_caps;
        let usage = |map, used: u64, capacity| MapUsage {
            map,
            used,
            capacity,
        };
        vec![
            usage(names::TUNNELS, u.tunnels, tunnels_cap),
            usage(names::P41_ENDPOINTS, u.p41, c.p41.into()),
            usage(names::UDP_ENDPOINTS, u.udp, c.udp.into()),
            usage(names::V6_ENDPOINTS, u.v6, c.v6.into()),
            usage(names::V4_ROUTES, u.v4_routes, c.v6.into()),
            usage(names::AYIYA_IDS, u.ayiya, c.ayiya.into()),
            usage(names::PREFIXES, u.prefixes, u64::from(self.max_prefixes)),
        ]
    }

    /// The prefixes installed tunnel `id` holds, `None` if it is not installed.
    pub fn installed_prefixes(&self, id: u32) -> Option<Vec<Ipv6Net>> {
        self.slots.get(id).map(|i| i.prefixes.clone())
    }

    /// Ids of the installed tunnels.
    pub fn tunnel_ids(&self) -> Vec<u32> {
        self.slots.ids()
    }

    /// The slot tunnel `id` occupies in the maps, for [`StatsReader::read`].
    pub fn slot_of(&self, id: u32) -> Option<u32> {
        self.slots.get(id).map(|i| i.slot)
    }

    /// Reads tunnels' counters by slot without this value, from any thread.
    pub fn stats_reader(&self) -> StatsReader {
        self.stats.clone()
    }

    /// How whole maps are read from now on (taking over pinned maps reads as
    /// [`Options::map_reads`] said).
    pub fn set_map_reads(&mut self, reads: MapReads) {
        self.reads = reads;
    }

    /// The counters of one tunnel, summed over CPUs, with the AYIYA worker's verdicts.
    pub fn tunnel_counters(&self, id: u32) -> Result<Option<TunnelStats>> {
        let Some(installed) = self.slots.get(id) else {
            return Ok(None);
        };
        Ok(self.stats.read(&[installed.slot])?.pop())
    }

    /// Every installed tunnel's counters by id (in id order), as
    /// [`Dataplane::tunnel_counters`] gives them, read a chunk of slots per system call.
    pub fn all_tunnel_counters(&self) -> Result<Vec<(u32, TunnelStats)>> {
        let (ids, slots): (Vec<u32>, Vec<u32>) = self.slots.slots_by_id().into_iter().unzip();
        let stats = self.stats.read(&slots)?;
        Ok(ids.into_iter().zip(stats).collect())
    }

    /// The global counters, summed over CPUs, with the AYIYA worker's verdicts.
    pub fn global_counters(&self) -> Result<GlobalCounters> {
        let mut g = counters::read_global(&self.map(names::GLOBAL_STATS)?, self.reads)?;
        g.add_worker(&self.worker_maps.verdicts.totals());
        Ok(g)
    }

    /// Every entry of the lookup maps (endpoints, `V4_ROUTES`, `PREFIXES`), sorted: what
    /// points at which slot. For tests and diagnosis.
    pub fn lookup_entries(&self) -> Result<Vec<LookupEntry>> {
        let mut out = Vec::new();
        self.collect_lookups::<Endpoint4>(names::P41_ENDPOINTS, &mut out)?;
        self.collect_lookups::<UdpEndpoint4>(names::UDP_ENDPOINTS, &mut out)?;
        self.collect_lookups::<Endpoint6>(names::V6_ENDPOINTS, &mut out)?;
        self.collect_lookups::<[u8; 16]>(names::AYIYA_IDS, &mut out)?;
        self.collect_lookups::<[u8; 4]>(names::V4_ROUTES, &mut out)?;
        self.collect_lookups::<PrefixKey>(names::PREFIXES, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn collect_lookups<K: Pod>(
        &self,
        name: &'static str,
        out: &mut Vec<LookupEntry>,
    ) -> Result<()> {
        let map: HashMap<_, K, u32> = self.map(name)?;
        batch::hash_entries(&map, name, self.reads, |key, slot| {
            out.push(LookupEntry {
                map: name,
                key: batch::bytes_of(&key),
                slot,
            });
            Ok(())
        })
    }

    /// How long XDP still verifies AYIYA tunnel `id`'s packets itself, because the AF_XDP
    /// worker found a forged one among them; `None` when it hands them over (or `id` is
    /// no tunnel).
    pub fn ayiya_suspect(&self, id: u32) -> Option<std::time::Duration> {
        let slot = self.slots.get(id)?.slot;
        self.worker_maps
            .suspects
            .left(slot, xsk::shared::coarse_now_ns())
    }

    fn write_tunnel(&mut self, slot: u32, value: &Tunnel) -> Result<()> {
        let mut tunnels: Array<_, Tunnel> = self.map_mut(names::TUNNELS)?;
        tunnels
            .set(slot, *value, 0)
            .map_err(|source| DataplaneError::Map {
                name: names::TUNNELS,
                source,
            })
    }

    /// Zeroes `slot` of a per-CPU array on every CPU.
    fn remove_endpoint(&mut self, endpoint: &EndpointKey) -> Result<()> {
        match endpoint {
            EndpointKey::P41(k) => self.remove_lookup(names::P41_ENDPOINTS, k),
            EndpointKey::Udp(k) => self.remove_lookup(names::UDP_ENDPOINTS, k),
            EndpointKey::V6(k) => self.remove_lookup(names::V6_ENDPOINTS, k),
            EndpointKey::Ayiya(k) => self.remove_lookup(names::AYIYA_IDS, k),
            EndpointKey::None => Ok(()),
        }
    }

    fn remove_v4_route(&mut self, addr: [u8; 4]) -> Result<()> {
        self.remove_lookup(names::V4_ROUTES, &addr)
    }

    fn remove_lookup<K: Pod>(&mut self, name: &'static str, key: &K) -> Result<()> {
        let mut map: HashMap<_, K, u32> = self.map_mut(name)?;
        ignore_missing(map.remove(key), name)
    }

    fn remove_prefix(&mut self, prefix: &Ipv6Net) -> Result<()> {
        let mut map: HashMap<_, PrefixKey, u32> = self.map_mut(names::PREFIXES)?;
        ignore_missing(map.remove(&prefixes::key(prefix)), names::PREFIXES)
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let reused = self.reused_maps.iter().find(|(n, _)| *n == name);
        let map = match reused {
            Some((_, m)) => m,
            None => self
                .ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap { name })?,
        };
        T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let reused = self.reused_maps.iter_mut().find(|(n, _)| *n == name);
        let map = match reused {
            Some((_, m)) => m,
            None => self
                .ebpf
                .map_mut(name)
                .ok_or(DataplaneError::MissingMap { name })?,
        };
        T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
    }

    fn program(&self) -> Result<&Xdp> {
        if let Some(p) = &self.reused {
            return Ok(p);
        }
        let name = program_names::BROKER;
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram { name })?;
        prog.try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    fn program_mut(&mut self) -> Result<&mut Xdp> {
        match &mut self.reused {
            Some(p) => Ok(p),
            None => xdp_program(&mut self.ebpf, program_names::BROKER),
        }
    }

    /// What the kernel says of the loaded program (id, run statistics, BTF).
    fn program_info(&self) -> Result<aya::programs::ProgramInfo> {
        self.program()?
            .info()
            .map_err(|source| DataplaneError::Program {
                name: program_names::BROKER,
                source,
            })
    }
}

impl Drop for Dataplane {
    /// Unpinned links go with this value; pinned ones stay (that is what pins are for).
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The possible CPUs (`bpf_get_smp_processor_id` is below this), as `Settings::cpus`.
fn possible_cpus() -> Result<u16> {
    let n = nr_cpus().map_err(|(what, source)| DataplaneError::Io {
        what: what.to_string(),
        source,
    })?;
    u16::try_from(n).map_err(|_| DataplaneError::Io {
        what: format!("{n} possible CPUs (at most {} supported)", u16::MAX),
        source: std::io::ErrorKind::Unsupported.into(),
    })
}

/// Entries of the slot × CPU arrays (`TUNNEL_STATS`, `NEXTHOP_CLIENT`): one per slot and CPU.
fn slot_cpu_len(max_tunnels: u32, cpus: u16) -> Result<u32> {
    max_tunnels
        .checked_mul(u32::from(cpus))
        .ok_or_else(|| DataplaneError::Io {
            what: format!(
                "counters and next hops for {max_tunnels} tunnels on {cpus} CPUs \
                 (dataplane.max_tunnels too large for this machine)"
            ),
            source: std::io::ErrorKind::InvalidInput.into(),
        })
}

/// Makes the kernel keep per-program run time and count (`BPF_ENABLE_STATS`) for as long
/// as the returned descriptor is open. For benchmarks: it costs every BPF program a little.
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| DataplaneError::Io {
        what: "BPF_ENABLE_STATS".into(),
        source: e.io_error,
    })
}

/// [`program_pin::identity`] of the embedded object, hashed once.
fn embedded_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| program_pin::identity(BROKER_OBJ))
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?;
    prog.try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// Loads (verifies) an XDP program. The verifier gives up with `EAGAIN` when a signal
/// arrives while it works (a quarter of a second for the data plane); like libbpf, try
/// again a few times.
pub(super) fn load_xdp(prog: &mut Xdp, name: &'static str) -> Result<()> {
    let mut tries = 0;
    loop {
        match prog.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 4 =>
            {
                tries += 1;
            }
            r => return r.map_err(|source| DataplaneError::Program { name, source }),
        }
    }
}

/// The index of interface `name` in the calling thread's network namespace.
fn if_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| DataplaneError::Io {
        what: format!("interface name {name:?}"),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    // SAFETY: reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::Io {
            what: format!("looking up interface {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(index)
}

/// UTC minus TAI in whole seconds, from the two clocks (see `Settings::utc_minus_tai_s`).
fn utc_minus_tai() -> Result<i32> {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to fill.
        if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
            return Err(DataplaneError::Io {
                what: "clock_gettime".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
    };
    let utc = read(libc::CLOCK_REALTIME)?;
    let tai = read(libc::CLOCK_TAI)?;
    // Rounded: the two reads are nanoseconds apart, the offset is whole seconds.
    Ok(((utc - tai) as f64 / 1e9).round() as i32)
}

/// A removal of what is already gone succeeds: a controller killed halfway through a
/// removal leaves a tunnel entry whose lookups are gone, and its successor removes it.
/// aya reports a missing key as the system call's `ENOENT`, not as `KeyNotFound`.
fn ignore_missing(r: Result<(), aya::maps::MapError>, name: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(DataplaneError::Map { name, source }),
    }
}

/// A tunnel's key in the endpoint map of its kind: AYIYA tunnels are found by identity,
/// and a heartbeat tunnel not heard from yet by nothing.
fn endpoint_key(spec: &TunnelSpec, pop: &Pop) -> EndpointKey {
    if spec.kind == Kind::Ayiya {
        return EndpointKey::Ayiya(spec.client_v6().map_or([0; 16], |a| a.octets()));
    }
    if spec.endpoint.is_unspecified() {
        return EndpointKey::None;
    }
    match spec.endpoint {
        Endpoint::Ipv4(a) => EndpointKey::P41(Endpoint4 {
            remote: a.octets(),
            local: pop.ipv4.octets(),
        }),
        Endpoint::Udp4(a) => EndpointKey::Udp(UdpEndpoint4 {
            remote: a.ip().octets(),
            local: pop.ipv4.octets(),
            remote_port: a.port().to_be_bytes(),
            local_port: pop.tsp_port.unwrap_or(0).to_be_bytes(),
        }),
        Endpoint::Ipv6(a) => EndpointKey::V6(Endpoint6 {
            remote: a.octets(),
            local: pop.ipv6.map_or([0; 16], |p| p.octets()),
        }),
    }
}

/// The map value for a tunnel.
fn to_map_value(spec: &TunnelSpec, pop: &Pop) -> Tunnel {
    let mut t = Tunnel {
        id: spec.id,
        kind: spec.kind.dataplane() as u8,
        state: match spec.state {
            State::Up => TunnelState::Up,
            State::Down => TunnelState::Down,
            State::Disabled => TunnelState::Disabled,
        } as u8,
        mtu: spec.mtu,
        client_v4: spec.client_v4.map_or([0; 4], |a| a.octets()),
        pop_v6: spec.pop_v6().map_or([0; 16], |a| a.octets()),
        client_v6: spec.client_v6().map_or([0; 16], |a| a.octets()),
        n_routed: spec.routed_prefixes.len() as u8,
        // Liveness is watched for TSP tunnels (keepalive) and AYIYA ones (beats); a
        // heartbeat tunnel sleeps when its beats stop, and only a beat wakes it.
        flags: if (spec.keepalive.is_some() || spec.kind == Kind::Ayiya)
            && spec.kind != Kind::Heartbeat
        {
            Tunnel::WAKE
        } else {
            0
        },
        link64: spec.link_prefix.map_or(0, |p| prefixes::prefix64(&p).net),
        routed: std::array::from_fn(|i| {
            spec.routed_prefixes
                .get(i)
                .map_or(Prefix64::NONE, prefixes::prefix64)
        }),
        ..Tunnel::EMPTY
    };
    match spec.endpoint {
        Endpoint::Ipv4(a) => {
            t.local_v4 = pop.ipv4.octets();
            t.remote_v4 = a.octets();
        }
        Endpoint::Udp4(a) => {
            let local = if spec.kind == Kind::Ayiya {
                pop.ayiya_port
            } else {
                pop.tsp_port
            };
            t.local_v4 = pop.ipv4.octets();
            t.remote_v4 = a.ip().octets();
            t.local_port = local.unwrap_or(0).to_be_bytes();
            t.remote_port = a.port().to_be_bytes();
            t.key = spec.ayiya_key.unwrap_or([0; 20]);
        }
        Endpoint::Ipv6(a) => {
            t.local_v6 = pop.ipv6.map_or([0; 16], |p| p.octets());
            t.remote_v6 = a.octets();
        }
    }
    t
}
