//! `broker run`: open the store, take over (or load) the data plane, make maps and routes
//! match the store, attach, serve the API, and keep everything in step until told to stop.
//!
//! Stopping (SIGTERM, SIGINT) or dying (SIGKILL, panic) leaves the data plane forwarding:
//! program, links and maps are pinned. The next start adopts them and reconciles; only
//! `broker dataplane detach` takes the data plane down.
use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{info, warn};

use crate::{
    api,
    broker::{Broker, NoRoutes, RouteOps},
    config::Config,
    dataplane::{self, Dataplane},
    heartbeat,
    liveness::{Liveness, Observed},
    metrics::Metrics,
    model::{Kind, TunnelSpec},
    netlink::{self, Netlink},
    routes::{RouteSettings, Routes},
    store::{self, AnyStore, PoolSet, Store},
    sysctl, tic, tsp,
};

/// The routes the broker writes: the kernel's, or none (`routes.enabled: false`).
pub enum RouteBackend {
    Kernel(Routes),
    Disabled(NoRoutes),
}

impl RouteOps for RouteBackend {
    async fn add(&self, p: &ipnet::Ipv6Net) -> Result<(), String> {
        match self {
            RouteBackend::Kernel(r) => RouteOps::add(r, p).await,
            RouteBackend::Disabled(r) => r.add(p).await,
        }
    }

    async fn del(&self, p: &ipnet::Ipv6Net) -> Result<(), String> {
        match self {
            RouteBackend::Kernel(r) => RouteOps::del(r, p).await,
            RouteBackend::Disabled(r) => r.del(p).await,
        }
    }

    async fn reconcile(
        &self,
        wanted: &std::collections::BTreeSet<ipnet::Ipv6Net>,
    ) -> Result<(usize, usize), String> {
        match self {
            RouteBackend::Kernel(r) => RouteOps::reconcile(r, wanted).await,
            RouteBackend::Disabled(r) => r.reconcile(wanted).await,
        }
    }

    fn reconcile_apart(
        &self,
        wanted: &std::collections::BTreeSet<ipnet::Ipv6Net>,
    ) -> Option<crate::broker::RoutesAnswer> {
        match self {
            RouteBackend::Kernel(r) => RouteOps::reconcile_apart(r, wanted),
            RouteBackend::Disabled(r) => r.reconcile_apart(wanted),
        }
    }

    async fn list(&self) -> Result<std::collections::BTreeSet<ipnet::Ipv6Net>, String> {
        match self {
            RouteBackend::Kernel(r) => RouteOps::list(r).await,
            RouteBackend::Disabled(r) => r.list().await,
        }
    }

    fn identity(&self) -> String {
        match self {
            RouteBackend::Kernel(r) => RouteOps::identity(r),
            RouteBackend::Disabled(r) => r.identity(),
        }
    }
}

/// The broker core as `broker run` assembles it.
pub type Running = Broker<store::Remembered<AnyStore>, Dataplane, RouteBackend>;

/// The PoP the store is opened for: its name and pools.
fn home(config: &Config) -> store::Home {
    store::Home {
        pop: config.pop_name(),
        pools: PoolSet {
            link: config.pools.link.iter().map(|p| p.0).collect(),
            routed: config.pools.routed.iter().map(|p| p.0).collect(),
            routed_lengths: config.pools.routed_lengths.clone(),
            quarantine_secs: config.pools.quarantine_secs,
            v4v6: config.pools.v4v6.map(|p| p.0),
        },
    }
}

fn static_specs(config: &Config) -> Vec<TunnelSpec> {
    config.tunnels.iter().map(TunnelSpec::from).collect()
}

async fn route_backend(config: &Config) -> anyhow::Result<RouteBackend> {
    if !config.routes.enabled {
        return Ok(RouteBackend::Disabled(NoRoutes));
    }
    let device = match &config.routes.device {
        Some(name) => Some(
            Netlink::connect()?
                .ifindex(name)
                .await
                .with_context(|| format!("routes.device {name}"))?,
        ),
        None => None,
    };
    Ok(RouteBackend::Kernel(Routes::connect(RouteSettings {
        table: config.routes.table,
        protocol: config.routes.protocol,
        device,
    })?))
}

/// Runs until SIGINT or SIGTERM; SIGHUP re-reads the config and applies tunnel changes.
pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    // Before anything else: a stop asked for while starting waits for the start to end,
    // then stops cleanly (stamped), instead of killing the process half-way.
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let config = Config::load(&config_path)?;
    // The first line of every start: how long a start takes is read from here.
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.display(),
        "starting"
    );
    // The TCP services' connection caps (API, TIC, TSP) sum to about 6000, plus pins,
    // sockets and the store.
    crate::conns::raise_file_limit(8192);
    // The API's sockets first: they answer (503 `starting`) while the broker starts, and a
    // port already taken fails the start before anything else is touched.
    let bind = |at: std::net::SocketAddr| {
        std::net::TcpListener::bind(at).with_context(|| format!("binding the API to {at}"))
    };
    let api_socket = bind(config.api.listen)?;
    let public_socket = config.api.public_listen.map(bind).transpose()?;
    let portal_socket = config
        .portal
        .listen
        .filter(|_| config.portal.enabled)
        .map(bind)
        .transpose()?;
    let tls = match &config.api.tls {
        Some(t) => Some(crate::tls::load(&t.certificate, &t.key).context("loading api.tls")?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new(config.metrics.per_tunnel));
    let sockets: Vec<&std::net::TcpListener> = std::iter::once(&api_socket)
        .chain(public_socket.as_ref())
        .chain(portal_socket.as_ref())
        .collect();
    let starting = api::starting::answer(&sockets, tls.clone(), metrics.clone())
        .context("answering the API while starting")?;
    // The label is for the log: the file, or the URL (which holds no password:
    // `store.url` refuses one).
    let (store, store_path, store_label) = match config.store_location() {
        crate::config::StoreLocation::Sqlite(path) => (
            AnyStore::sqlite(&path, home(&config))
                .with_context(|| format!("opening the store {}", path.display()))?,
            Some(path.clone()),
            path.display().to_string(),
        ),
        crate::config::StoreLocation::Postgres {
            url,
            password_file,
            tls_ca_file,
        } => (
            AnyStore::postgres(
                &url,
                password_file.as_deref(),
                tls_ca_file.as_deref(),
                home(&config),
            )
            .context("connecting to the store (store.url)")?,
            None,
            url,
        ),
    };
    let opts = dataplane::Options {
        max_tunnels: config.dataplane.max_tunnels,
        max_prefixes: config.dataplane.max_prefixes,
        max_endpoints: config.dataplane.max_endpoints,
        pin: true,
        nexthop_cache: config.dataplane.nexthop_cache,
        nexthop_max_age_ms: config.dataplane.nexthop_max_age_ms,
        icmp_limit: config.dataplane.icmp_limit(),
        neighbour_limit: config.dataplane.neighbour_limit(),
        ebpf_log: config.dataplane.ebpf_log.clone(),
        ..dataplane::Options::new(&config.instance)
    };
    // What the start will read of the store, read on another thread while the data plane
    // loads: every tunnel for a cold start, the watched ones for a restart (which will
    // likely find the maps stamped).
    let ahead = if dataplane::has_maps(&config.instance) {
        crate::store::Ahead::Watched
    } else {
        crate::store::Ahead::All
    };
    let preload = store.preload(store_path.as_deref(), ahead);
    let mut dp = Dataplane::load(&opts).context("loading the data plane")?;
    // The debug object's records, forwarded for as long as this process runs.
    if let Some(log) = dp.take_xdp_log()? {
        info!(
            level = ?opts.ebpf_log.as_ref().map(|l| l.level),
            "the debug object is loaded: the data plane's records go to this log (target xdp; RUST_LOG decides which are shown)"
        );
        tokio::spawn(log.run());
    }
    let adopted = dp.adopted();
    // On a shared store, listening starts before the first read of the generation, so
    // that every change after that read is either notified or seen by the catch-up that
    // follows the listener's start (`broker::follow`).
    let heard = store.listen();
    // A shared store may go away: the PoP keeps what it last knew of it to serve its
    // own clients meanwhile (store::Remembered).
    let store = store::Remembered::new(store, heard.is_some());
    let mut broker = Broker::new(store, dp, route_backend(&config).await?, config.pop());
    broker.set_following(heard.is_some());
    let waiting = std::time::Instant::now();
    match preload.map(|p| p.join()) {
        None => {}
        Some(Ok(Ok(p))) => {
            // What a start at a million tunnels waits for once the maps exist.
            info!(
                what = ?p.what,
                tunnels = p.tunnels.len(),
                waited_ms = waiting.elapsed().as_millis() as u64,
                "tunnels read ahead"
            );
            broker.preload(p)
        }
        Some(Ok(Err(e))) => {
            warn!(error = %e, "reading the tunnels ahead failed: reading them again")
        }
        Some(Err(_)) => warn!("reading the tunnels ahead panicked: reading them again"),
    }
    endpoint_policy(&mut broker, &config).await;
    let (users, keys) = broker
        .upgrade_secrets()
        .context("upgrading the secrets kept in clear")?;
    if users + keys > 0 {
        info!(
            users,
            update_keys = keys,
            "kept in clear by an older version: now only what the protocols need"
        );
    }
    if adopted {
        let n = broker.store.bump("adoptions")?;
        info!(adoptions = n, "took over the running data plane");
    }
    let sync = broker
        .sync_static(&static_specs(&config))
        .await
        .context("reconciling the store, maps and routes")?;
    if sync != Default::default() {
        info!(?sync, "static tunnels reconciled into the store");
    }
    let ifaces: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
    for iface in &config.interfaces {
        prepare_interface(&iface.name);
        broker.maps.attach(&iface.name, iface.mode)?;
    }
    broker.maps.prune(&ifaces)?;
    // Lives as long as this function: its sockets close (and XDP hashes AYIYA itself
    // again) when the process stops.
    let ayiya_worker = match &config.ayiya {
        Some(a) if a.engine == crate::config::AyiyaEngine::AfXdp => Some(
            broker
                .maps
                .start_ayiya_worker(&ifaces, a.af_xdp_min_bytes)
                .context("starting the AYIYA AF_XDP worker (ayiya.engine: af_xdp)")?,
        ),
        _ => None,
    };
    let tunnels: u64 = broker.store.census()?.iter().map(|(_, _, n)| n).sum();
    info!(
        instance = %config.instance,
        program_id = broker.maps.program_id()?,
        tunnels,
        store = %store_label,
        pins = %broker.maps.pin_path().map(|p| p.display().to_string()).unwrap_or_default(),
        "broker running"
    );

    let broker = Arc::new(Mutex::new(broker));
    if let Some(heard) = heard {
        tokio::spawn(crate::pop::follow(
            broker.clone(),
            heard,
            config.reconcile_interval(),
        ));
    }
    tokio::spawn(crate::pop::report(broker.clone(), pop_report(&config)));
    if let Some(table) = config.routes.announce_table {
        let pools = config
            .pools
            .link
            .iter()
            .chain(&config.pools.routed)
            .map(|p| p.0)
            .collect();
        let announcer = crate::announce::Announcer::new(table, config.routes.protocol, pools)
            .context("routes.announce_table")?;
        tokio::spawn(crate::announce::run(
            announcer,
            broker.clone(),
            ifaces.clone(),
        ));
    }
    if let Some(w) = &ayiya_worker {
        metrics.set_ayiya_worker(w.stats());
    }
    let state = api::AppState::new(
        broker.clone(),
        config.api.admin_token.as_deref().map(Arc::from),
        metrics.clone(),
    );
    if let Some(tsp_config) = &config.tsp {
        let mut addrs = vec![std::net::IpAddr::V4(config.pop.ipv4.0)];
        addrs.extend(config.pop.ipv6.map(|a| std::net::IpAddr::V6(a.0)));
        let shared = Arc::new(tsp::server::Shared::new(
            broker.clone(),
            tsp_config.clone(),
            metrics.clone(),
        ));
        tsp::server::serve(shared, &addrs)
            .await
            .context("starting the TSP server")?;
    }
    if let Some(tic_config) = &config.tic {
        let pop = tic::session::PopFacts {
            pop_id: config.tic_pop_id(),
            ipv4: config.pop.ipv4.0,
            ipv6: config.pop.ipv6.map(|a| a.0),
            heartbeat_interval: config.heartbeat_interval(),
            heartbeat: config.heartbeat.is_some(),
        };
        let shared =
            tic::server::Shared::new(broker.clone(), tic_config.clone(), pop, metrics.clone())
                .context("loading the TIC certificate")?;
        tic::server::serve(Arc::new(shared), std::net::IpAddr::V4(config.pop.ipv4.0))
            .await
            .context("starting the TIC server")?;
    }
    if let Some(hb) = &config.heartbeat {
        heartbeat::server::serve(
            broker.clone(),
            hb.clone(),
            metrics.clone(),
            config.pop.ipv4.0,
        )
        .await
        .context("starting the heartbeat server")?;
    }
    if broker.lock().await.take_routes_unchecked() {
        let lister = route_backend(&config).await?;
        let broker = broker.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::broker::check_routes(&broker, &lister).await {
                warn!(error = %crate::broker::error_chain(&e), "checking the routes against the store failed");
            }
        });
    }
    let watcher = tokio::spawn(watch_tunnels(
        broker.clone(),
        config.heartbeat.is_some(),
        config.heartbeat_interval(),
    ));
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Ready: the API takes its sockets over from the answers of the start.
    starting.stop();
    let take = |socket: std::net::TcpListener| {
        socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(socket))
            .context("taking the API's socket over")
    };
    if let Some(public) = public_socket {
        tokio::spawn(api::serve(
            take(public)?,
            api::public_router(state.clone()),
            tls.clone(),
            metrics.clone(),
            stopped(api_stopped.clone()),
        ));
    }
    // The portal: beside the API, or on a listener of its own (docs/PORTAL.md).
    if config.portal.enabled {
        let b = broker.lock().await;
        for name in &config.portal.operators {
            if matches!(b.store.user(name), Ok(None)) {
                // Sign-up refuses the name, so nobody else can take it meanwhile.
                warn!(user = %name, "portal.operators names a user without an account: make it (broker user add)");
            }
        }
    }
    let portal = config.portal.enabled.then(|| {
        let history = Arc::new(std::sync::Mutex::new(crate::history::History::new(
            config.portal.history_hours,
        )));
        tokio::spawn(crate::history::run(broker.clone(), history.clone()));
        crate::portal::Portal::new(
            state.clone(),
            config.portal.clone(),
            tls.is_some() || config.portal.secure_cookies,
            history,
            config.pools.routed_lengths.clone(),
        )
    });
    let beside = match (portal, portal_socket) {
        (Some(portal), Some(socket)) => {
            tokio::spawn(api::serve(
                take(socket)?,
                crate::portal::own_router(portal),
                tls.clone(),
                metrics.clone(),
                stopped(api_stopped.clone()),
            ));
            None
        }
        (portal, _) => portal.map(crate::portal::routes),
    };
    let mut api_task = tokio::spawn(api::serve(
        take(api_socket)?,
        api::router_with(state, beside),
        tls,
        metrics.clone(),
        stopped(api_stopped.clone()),
    ));

    // The data plane caches FIB results; any route, neighbour or link change invalidates
    // them (the cache's maximum age covers the time this process is not running).
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel(1);
    let _watch = netlink::watch_changes(std::time::Duration::from_millis(20), changed_tx)?;
    let mut config = config;
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                broker.lock().await.maps.invalidate_nexthops()?;
                tracing::debug!("network changed: cached next hops invalidated");
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match Config::load(&config_path) {
                Ok(new) => {
                    if new.interfaces != config.interfaces
                        || new.instance != config.instance
                        || new.store != config.store
                        || new.api != config.api
                        || new.portal != config.portal
                        || new.pools != config.pools
                        || new.routes != config.routes
                        || new.tsp != config.tsp
                        || new.tic != config.tic
                        || new.heartbeat != config.heartbeat
                        || new.pop.ipv6 != config.pop.ipv6
                        // TIC and heartbeat listen on it (and TIC hands it out).
                        || ((new.tic.is_some() || new.heartbeat.is_some())
                            && new.pop.ipv4 != config.pop.ipv4)
                    {
                        warn!("only static tunnels and the PoP's IPv4 are reloaded; other changes need a restart");
                    }
                    let mut b = broker.lock().await;
                    endpoint_policy(&mut b, &new).await;
                    if let Err(e) = b.maps.set_rate_limits(
                        new.dataplane.icmp_limit(),
                        new.dataplane.neighbour_limit(),
                    ) {
                        warn!(error = %e, "setting the data plane's rate limits failed");
                    }
                    match b.reload_static(&static_specs(&new), new.pop()).await {
                        Ok(sync) => info!(?sync, "config reloaded"),
                        Err(e) => warn!(error = %crate::broker::error_chain(&e), "config reload failed"),
                    }
                    config = new;
                }
                Err(e) => warn!(error = %e, "config reload rejected; keeping the running config"),
            },
            r = &mut api_task => {
                let why = match r {
                    Ok(Ok(())) => "stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("the API server on {}: {why}", config.api.listen);
            }
        }
    }
    let _ = stop_api.send(true);
    // Held to the end: no change is half done while it is held (each takes the broker for
    // its whole course), and none starts after the stamp.
    let mut b = broker.lock().await;
    watcher.abort();
    if let Err(e) = b.stamp() {
        warn!(error = %crate::broker::error_chain(&e), "stamping the maps failed");
    }
    info!("stopping; the data plane keeps forwarding (`broker dataplane detach` removes it)");
    Ok(())
}

/// What this PoP says of itself in the store, every few seconds ([`crate::pop::report`]).
fn pop_report(config: &Config) -> impl Fn(&Running) -> store::PopReport + Send {
    let ifaces: Vec<String> = config.interfaces.iter().map(|i| i.name.clone()).collect();
    let ipv4 = config.pop.ipv4.0;
    let ipv6 = config.pop.ipv6.map(|a| a.0);
    let tsp = config
        .tsp
        .as_ref()
        .map(|t| std::net::SocketAddr::from((ipv4, t.port)));
    let started_at = store::now();
    move |b: &Running| store::PopReport {
        ipv4,
        ipv6,
        tsp,
        version: env!("CARGO_PKG_VERSION").to_string(),
        attached: b.maps.attached_to(&ifaces),
        started_at,
    }
}

/// What the broker needs to refuse endpoints ([`crate::endpoints`]) and hold users to
/// their quotas: the PoP's IPv4 subnets, read from the kernel at start and on SIGHUP,
/// `pop.private_endpoints` and `quotas`.
async fn endpoint_policy<S, P, R>(b: &mut Broker<S, P, R>, config: &Config)
where
    S: crate::store::Store,
    P: crate::broker::Projection,
    R: crate::broker::RouteOps,
{
    b.private_endpoints = config.pop.private_endpoints;
    b.quotas = config.quotas;
    b.realm = config
        .tsp
        .as_ref()
        .map_or(crate::config::DEFAULT_REALM.to_string(), |t| {
            t.realm.clone()
        });
    let subnets = match Netlink::connect() {
        Ok(nl) => nl.ipv4_subnets().await,
        Err(e) => Err(e),
    };
    match subnets {
        Ok(s) => b.subnets = s,
        Err(e) => warn!(error = %e, "reading the PoP's subnets failed; keeping the last known"),
    }
}

/// How often tunnels with a keepalive are checked for silence.
const LIVENESS_TICK: std::time::Duration = std::time::Duration::from_secs(1);
/// Lifetimes are checked every this many ticks.
const EXPIRY_TICKS: u32 = 10;

/// Puts silent tunnels to sleep and wakes them when their clients are heard (from the
/// data plane's counters), and ends lapsed lifetimes. With the heartbeat server running,
/// heartbeat tunnels are its to watch (by beats, not traffic): two watchers would flap.
/// Liveness every tick; lifetimes, AYIYA endpoints learnt by the data plane and its clock
/// every `EXPIRY_TICKS`. `beat_interval` is the beat interval of AYIYA tunnels without a
/// keepalive of their own (what TIC hands out).
async fn watch_tunnels(broker: Arc<Mutex<Running>>, heartbeats: bool, beat_interval: u32) {
    let mut liveness = Liveness::default();
    let mut tick = tokio::time::interval(LIVENESS_TICK);
    // After a stall, one tick, not a burst of the missed ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reader = broker.lock().await.maps.stats_reader();
    let mut n = 0u32;
    loop {
        tick.tick().await;
        n = n.wrapping_add(1);
        // The watch list, not the store: its cost follows the tunnels that need
        // watching. Taken under the lock (memory only); their counters are read without
        // it, off the runtime's thread, so the API never waits for them.
        let watched: Vec<(Observed, u32)> = {
            let b = broker.lock().await;
            b.watched()
                .filter(|(_, w)| !(heartbeats && w.kind == Kind::Heartbeat))
                .filter_map(|(id, w)| {
                    let keepalive_secs = w
                        .keepalive
                        .or((w.kind == Kind::Ayiya).then_some(beat_interval))?;
                    let observed = Observed {
                        id,
                        from_client_packets: 0,
                        keepalive_secs,
                        asleep: b.is_asleep(id),
                    };
                    Some((observed, b.maps.slot_of(id)?))
                })
                .collect()
        };
        let r = reader.clone();
        let slots: Vec<u32> = watched.iter().map(|(_, slot)| *slot).collect();
        let counters = match tokio::task::spawn_blocking(move || r.read(&slots)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                warn!(error = %crate::broker::error_chain(&e), "liveness: reading the counters failed");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "liveness: the counter read ended abnormally");
                continue;
            }
        };
        let mut b = broker.lock().await;
        // A tunnel whose slot changed hands meanwhile was read as another: left for the
        // next tick.
        let observed: Vec<Observed> = watched
            .into_iter()
            .zip(counters)
            .filter(|((o, slot), _)| b.maps.slot_of(o.id) == Some(*slot))
            .map(|((o, _), c)| Observed {
                from_client_packets: c.from_client_packets,
                ..o
            })
            .collect();
        let changes = liveness.observe(std::time::Instant::now(), &observed);
        if let Err(e) = b.sweep_unproven(std::time::Instant::now()).await {
            warn!(error = %crate::broker::error_chain(&e), "removing unproven tunnels failed");
        }
        for (ids, asleep) in [(changes.sleep, true), (changes.wake, false)] {
            for id in ids {
                if let Err(e) = b.set_asleep(id, asleep) {
                    warn!(id, error = %crate::broker::error_chain(&e), "liveness change failed");
                }
            }
        }
        if n.is_multiple_of(EXPIRY_TICKS) {
            if let Err(e) = b.expire(store::now()).await {
                warn!(error = %crate::broker::error_chain(&e), "ending lifetimes failed");
            }
            if let Err(e) = b.learn_endpoints().await {
                warn!(error = %crate::broker::error_chain(&e), "storing AYIYA endpoints failed");
            }
            if let Err(e) = b.maps.refresh_clock() {
                warn!(error = %crate::broker::error_chain(&e), "refreshing the data plane's clock failed");
            }
        }
        // Whatever changed since the last tick is in maps and routes now: a restart from
        // here needs no reconcile.
        if let Err(e) = b.stamp() {
            warn!(error = %crate::broker::error_chain(&e), "stamping the maps failed");
        }
    }
}

/// Kernel settings the fast path relies on for an interface.
fn prepare_interface(name: &str) {
    // Encapsulated packets handed to the kernel (neighbour not yet resolved) carry the
    // PoP's own IPv4 as source; without accept_local the kernel drops them as martians.
    if let Err(e) = sysctl::set(&format!("net.ipv4.conf.{name}.accept_local"), "1") {
        warn!(iface = name, error = %e, "cannot set accept_local");
    }
    // bpf_fib_lookup only forwards from interfaces that forward.
    for key in [
        format!("net.ipv4.conf.{name}.forwarding"),
        format!("net.ipv6.conf.{name}.forwarding"),
    ] {
        if sysctl::get(&key).ok().as_deref() != Some("1") {
            warn!(
                key,
                "forwarding is off: tunnel packets will be passed to the kernel, not forwarded in XDP"
            );
        }
    }
}
