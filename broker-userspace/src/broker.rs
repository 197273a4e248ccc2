//! The one place that changes a tunnel. Every change goes store, then maps, then routes,
//! and is undone when a later step fails; a controller killed between steps leaves a
//! store that [`Broker::reconcile`] makes the maps and routes match at the next start.
use std::{collections::BTreeSet, net::SocketAddrV4};

use ipnet::Ipv6Net;
use tracing::{error, info, warn};

use broker_common::maps::TunnelStats;

use crate::{
    dataplane::{Dataplane, GlobalCounters, MapUsage, Reconciled},
    endpoints,
    failpoint::failpoint,
    model::{Endpoint, Kind, Pop, State, TunnelSpec},
    routes::Routes,
    store::{
        self, NewTunnel, Origin, StaticSync, Store, StoreError, TunnelChange, TunnelRecord,
        UserRecord,
    },
};

/// The data plane as the broker core drives it.
pub trait Projection: Send {
    /// Installs or updates a tunnel (the PoP's side is what the last reconcile set).
    fn install(&mut self, spec: &TunnelSpec) -> Result<(), String>;
    fn uninstall(&mut self, id: u32) -> Result<(), String>;
    /// The prefixes an installed tunnel holds; `None` when it is not installed.
    fn installed_prefixes(&self, id: u32) -> Option<Vec<Ipv6Net>>;
    fn reconcile(&mut self, specs: &[TunnelSpec], pop: &Pop) -> Result<Reconciled, String>;
    /// One tunnel's counters, if it is installed.
    fn counters(&self, id: u32) -> Option<TunnelStats>;
    /// Every installed tunnel's counters, in id order.
    fn all_counters(&self) -> Result<Vec<(u32, TunnelStats)>, String>;
    fn global_counters(&self) -> Result<GlobalCounters, String>;
    /// Entries used and capacity per map.
    fn map_usage(&self) -> Vec<MapUsage>;
    /// Where the data plane last heard each AYIYA client (it follows them as they roam).
    fn learnt_endpoints(&self) -> Result<Vec<(u32, SocketAddrV4)>, String> {
        Ok(Vec::new())
    }
    /// Keeps the data plane's wall clock (AYIYA epochs) in step with the kernel's.
    fn refresh_clock(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The mark that the maps hold the store as of a generation ([`stamp`]), if any.
    fn stamp(&self) -> Option<u64> {
        None
    }
    fn set_stamp(&mut self, _stamp: u64) -> Result<(), String> {
        Ok(())
    }
    /// The tunnels the maps held as down when taken over from an earlier controller
    /// (once; empty afterwards).
    fn take_adopted_down(&mut self) -> Vec<u32> {
        Vec::new()
    }
}

impl Projection for Dataplane {
    fn install(&mut self, spec: &TunnelSpec) -> Result<(), String> {
        self.upsert(spec).map_err(|e| error_chain(&e))
    }

    fn uninstall(&mut self, id: u32) -> Result<(), String> {
        self.remove(id).map_err(|e| error_chain(&e))
    }

    fn installed_prefixes(&self, id: u32) -> Option<Vec<Ipv6Net>> {
        Dataplane::installed_prefixes(self, id)
    }

    fn reconcile(&mut self, specs: &[TunnelSpec], pop: &Pop) -> Result<Reconciled, String> {
        Dataplane::reconcile(self, specs, pop).map_err(|e| error_chain(&e))
    }

    fn counters(&self, id: u32) -> Option<TunnelStats> {
        self.tunnel_counters(id).ok().flatten()
    }

    fn all_counters(&self) -> Result<Vec<(u32, TunnelStats)>, String> {
        self.all_tunnel_counters().map_err(|e| error_chain(&e))
    }

    fn global_counters(&self) -> Result<GlobalCounters, String> {
        Dataplane::global_counters(self).map_err(|e| error_chain(&e))
    }

    fn map_usage(&self) -> Vec<MapUsage> {
        Dataplane::map_usage(self)
    }

    fn learnt_endpoints(&self) -> Result<Vec<(u32, SocketAddrV4)>, String> {
        Dataplane::learnt_endpoints(self).map_err(|e| error_chain(&e))
    }

    fn refresh_clock(&mut self) -> Result<(), String> {
        Dataplane::refresh_clock(self).map_err(|e| error_chain(&e))
    }

    fn stamp(&self) -> Option<u64> {
        Dataplane::stamp(self)
    }

    fn set_stamp(&mut self, stamp: u64) -> Result<(), String> {
        Dataplane::set_stamp(self, stamp).map_err(|e| error_chain(&e))
    }

    fn take_adopted_down(&mut self) -> Vec<u32> {
        Dataplane::take_adopted_down(self)
    }
}

/// What a routes reconcile on another thread answers: (added, removed).
pub type RoutesAnswer = tokio::sync::oneshot::Receiver<Result<(usize, usize), String>>;

/// The kernel's routes as the broker core drives them.
pub trait RouteOps: Send + Sync {
    fn add(&self, p: &Ipv6Net) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn del(&self, p: &Ipv6Net) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn reconcile(
        &self,
        wanted: &BTreeSet<Ipv6Net>,
    ) -> impl std::future::Future<Output = Result<(usize, usize), String>> + Send;
    /// Starts [`RouteOps::reconcile`] on a thread of its own and answers on the channel,
    /// so that the caller can write the maps meanwhile; `None`: not possible here, the
    /// caller reconciles in line.
    fn reconcile_apart(&self, _wanted: &BTreeSet<Ipv6Net>) -> Option<RoutesAnswer> {
        None
    }
    /// The broker's routes now in the kernel.
    fn list(&self) -> impl std::future::Future<Output = Result<BTreeSet<Ipv6Net>, String>> + Send;
    /// What the routes depend on besides the prefixes (table, protocol, device): part of
    /// the maps' stamp, so that a change of it is reconciled.
    fn identity(&self) -> String {
        String::new()
    }
}

impl RouteOps for Routes {
    async fn add(&self, p: &Ipv6Net) -> Result<(), String> {
        Routes::add(self, p).await.map_err(|e| error_chain(&e))
    }

    async fn del(&self, p: &Ipv6Net) -> Result<(), String> {
        Routes::del(self, p).await.map_err(|e| error_chain(&e))
    }

    async fn reconcile(&self, wanted: &BTreeSet<Ipv6Net>) -> Result<(usize, usize), String> {
        Routes::reconcile(self, wanted)
            .await
            .map_err(|e| error_chain(&e))
    }

    fn reconcile_apart(&self, wanted: &BTreeSet<Ipv6Net>) -> Option<RoutesAnswer> {
        match Routes::reconcile_apart(self, wanted.clone()) {
            Ok(rx) => Some(rx),
            Err(e) => {
                warn!(error = %e, "no thread for the routes: reconciling them after the maps");
                None
            }
        }
    }

    async fn list(&self) -> Result<BTreeSet<Ipv6Net>, String> {
        Routes::list(self).await.map_err(|e| error_chain(&e))
    }

    fn identity(&self) -> String {
        Routes::identity(self)
    }
}

/// `routes.enabled: false`.
pub struct NoRoutes;

impl RouteOps for NoRoutes {
    async fn add(&self, _: &Ipv6Net) -> Result<(), String> {
        Ok(())
    }

    async fn del(&self, _: &Ipv6Net) -> Result<(), String> {
        Ok(())
    }

    async fn reconcile(&self, _: &BTreeSet<Ipv6Net>) -> Result<(usize, usize), String> {
        Ok((0, 0))
    }

    async fn list(&self) -> Result<BTreeSet<Ipv6Net>, String> {
        Ok(BTreeSet::new())
    }

    fn identity(&self) -> String {
        "no routes".into()
    }
}

/// An error with its causes, for messages that cross a process boundary.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request field fails a rule the store does not know (addresses, ranges).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("writing the data plane failed (the change was undone): {0}")]
    Maps(String),
    #[error("writing the routes failed (the change was undone): {0}")]
    Routes(String),
    /// A user would hold more than `quotas` allow (`routed`: routed prefixes, else
    /// tunnels).
    #[error("quota: {message}")]
    Quota { routed: bool, message: String },
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// A user name: 1-64 of a-z, A-Z, 0-9, `-`, `_`, `.`, `@`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn checked_password(p: &str) -> Result<&str> {
    if p.len() < 8 {
        return Err(BrokerError::Invalid {
            field: "password",
            message: "shorter than 8 characters".into(),
        });
    }
    Ok(p)
}

/// The broker core: store, data plane projection and routes, changed together.
pub struct Broker<S, P, R> {
    pub store: S,
    pub maps: P,
    pub routes: R,
    pub pop: Pop,
    /// Tunnels whose client fell silent (liveness, not the operator's state): installed
    /// as down, woken by their client's traffic or next session. Not durable: after a
    /// restart every tunnel starts awake and is watched again.
    asleep: BTreeSet<u32>,
    /// The PoP's IPv4 subnets and whether named endpoints may be private
    /// (`pop.private_endpoints`): see [`crate::endpoints`].
    pub subnets: Vec<ipnet::Ipv4Net>,
    pub private_endpoints: bool,
    /// What one user may hold (`quotas`), checked by [`Self::check_quota`].
    pub quotas: crate::config::Quotas,
    /// The TSP realm (`tsp.realm`) DIGEST-MD5 secrets are made for.
    pub realm: String,
    /// Tunnels whose client has not been heard yet ([`unproven`]).
    unproven: std::collections::BTreeMap<u32, unproven::Unproven>,
    /// Tunnels whose clients are watched for silence ([`watch`]).
    watch: watch::WatchList,
    /// Set when a write to maps or routes failed, or undoing a change did: they may differ
    /// from the store until the next full reconcile, so they are not stamped ([`stamp`]).
    unsure: bool,
    /// A start skipped reconciling: the routes are still to be checked ([`check_routes`]).
    routes_unchecked: bool,
    /// Tunnels read ahead while the data plane loaded ([`Broker::preload`]).
    preloaded: Option<store::Preloaded>,
    /// The store notifies changes made elsewhere ([`follow`]); `applied` is the
    /// generation maps and routes hold, `suspect` one seen but not yet applied.
    following: bool,
    applied: Option<(i64, u64)>,
    suspect: Option<(i64, u64)>,
}

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    pub fn new(store: S, maps: P, routes: R, pop: Pop) -> Self {
        Self {
            store,
            maps,
            routes,
            pop,
            asleep: BTreeSet::new(),
            subnets: Vec::new(),
            private_endpoints: false,
            quotas: crate::config::Quotas::default(),
            realm: crate::config::DEFAULT_REALM.to_string(),
            unproven: std::collections::BTreeMap::new(),
            watch: watch::WatchList::default(),
            unsure: false,
            routes_unchecked: false,
            preloaded: None,
            following: false,
            applied: None,
            suspect: None,
        }
    }

    /// Hands the start tunnels read ahead; they are used only if the store is still at
    /// their generation, and read again otherwise.
    pub fn preload(&mut self, p: store::Preloaded) {
        self.preloaded = Some(p);
    }

    /// The tunnels read ahead, if they are the `what` wanted and the store has not
    /// changed since (once: later calls find none), with their generation.
    fn read_ahead(
        &mut self,
        what: store::Ahead,
    ) -> Result<Option<(store::Generation, Vec<TunnelRecord>)>> {
        let Some(p) = self.preloaded.take().filter(|p| p.what == what) else {
            return Ok(None);
        };
        if p.generation != self.store.generation()? {
            info!("the store changed since the tunnels were read ahead: reading them again");
            return Ok(None);
        }
        Ok(Some((p.generation, p.tunnels)))
    }

    /// This PoP's tunnels, read ahead or now, and a generation they hold every change up
    /// to (read first: a change after it may or may not be in them, and moves it).
    fn all_tunnels(&mut self) -> Result<(store::Generation, Vec<TunnelRecord>)> {
        match self.read_ahead(store::Ahead::All)? {
            Some(t) => Ok(t),
            None => {
                let generation = self.store.generation()?;
                Ok((generation, self.store.tunnels()?))
            }
        }
    }

    fn distrust(&mut self) {
        self.unsure = true;
    }

    /// A failed write to maps or routes is noticed: they may differ from the store.
    fn noted(&mut self, r: Result<(), String>) -> Result<(), String> {
        if r.is_err() {
            self.distrust();
        }
        r
    }

    // Every write to maps and routes goes through these.
    fn install(&mut self, spec: &TunnelSpec) -> Result<(), String> {
        let r = self.maps.install(spec);
        self.noted(r)
    }

    fn uninstall(&mut self, id: u32) -> Result<(), String> {
        let r = self.maps.uninstall(id);
        self.noted(r)
    }

    async fn route_add(&mut self, p: &Ipv6Net) -> Result<(), String> {
        let r = self.routes.add(p).await;
        self.noted(r)
    }

    async fn route_del(&mut self, p: &Ipv6Net) -> Result<(), String> {
        let r = self.routes.del(p).await;
        self.noted(r)
    }

    /// What the data plane gets for a stored tunnel: down while it sleeps, and woken
    /// by its client's packets only then (a tunnel down in the store, by the operator or
    /// because its lifetime ended, stays down both ways).
    /// AYIYA tunnels also get their signing key, derived from the stored password.
    fn projected(&self, t: &TunnelRecord) -> TunnelSpec {
        let mut p = t.spec.clone();
        if p.kind == Kind::Ayiya {
            p.ayiya_key = Some(crate::ayiya::key(&t.password));
        }
        if p.state == State::Up && self.asleep.contains(&p.id) {
            p.state = State::Down;
        } else if p.state != State::Up {
            p.keepalive = None;
        }
        p
    }

    pub fn is_asleep(&self, id: u32) -> bool {
        self.asleep.contains(&id)
    }

    /// Puts a tunnel to sleep or wakes it (liveness); reinstalls it when that changes
    /// what the data plane holds. Returns whether anything changed.
    pub fn set_asleep(&mut self, id: u32, asleep: bool) -> Result<bool> {
        let changed = if asleep {
            self.asleep.insert(id)
        } else {
            self.asleep.remove(&id)
        };
        if !changed {
            return Ok(false);
        }
        match self.store.tunnel(id)? {
            Some(t) if t.spec.state == State::Up => {
                let spec = self.projected(&t);
                self.install(&spec).map_err(BrokerError::Maps)?;
                info!(id, asleep, "tunnel liveness changed");
                Ok(true)
            }
            Some(_) => Ok(false),
            None => {
                self.asleep.remove(&id);
                Ok(false)
            }
        }
    }

    /// Writes the endpoints the data plane learnt from AYIYA clients (NAT roaming) into
    /// the store, so that they survive the maps. Returns the tunnels that moved.
    pub async fn learn_endpoints(&mut self) -> Result<Vec<u32>> {
        let learnt = self.maps.learnt_endpoints().map_err(BrokerError::Maps)?;
        let mut moved = Vec::new();
        for (id, at) in learnt {
            let Some(t) = self.store.tunnel(id)?.filter(|t| self.mine(t)) else {
                continue;
            };
            let endpoint = Endpoint::Udp4(at);
            if t.spec.kind != Kind::Ayiya || t.spec.endpoint == endpoint {
                continue;
            }
            let change = TunnelChange {
                endpoint: Some(endpoint),
                ..Default::default()
            };
            self.update_tunnel_learnt(id, &change).await?;
            info!(id, remote = %at, "AYIYA client moved");
            moved.push(id);
        }
        Ok(moved)
    }

    /// Ends what lapsed by `now` (TSP lifetimes): anonymous tunnels are deleted, users'
    /// tunnels go down (keeping their addresses) until the user's next session.
    pub async fn expire(&mut self, now: u64) -> Result<(Vec<u32>, Vec<u32>)> {
        let lapsed = self.store.expired(now)?;
        let (mut deleted, mut downed) = (Vec::new(), Vec::new());
        for t in lapsed {
            let id = t.spec.id;
            if t.owner.is_none() {
                self.delete_tunnel(id).await?;
                deleted.push(id);
            } else {
                let change = TunnelChange {
                    state: Some(State::Down),
                    expires_at: Some(None),
                    ..Default::default()
                };
                self.update_tunnel(id, &change).await?;
                downed.push(id);
            }
        }
        if !(deleted.is_empty() && downed.is_empty()) {
            info!(?deleted, ?downed, "tunnel lifetimes ended");
        }
        Ok((deleted, downed))
    }

    /// Makes maps and routes match the store (at start, after a reload).
    pub async fn reconcile(&mut self) -> Result<Reconciled> {
        // Until it ends, maps and routes may differ from the store.
        self.unsure = true;
        // How long each part took, in the log: a start's time is mostly these three.
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
        let t = std::time::Instant::now();
        let (generation, tunnels) = self.all_tunnels()?;
        self.watch.rebuild(&tunnels);
        let specs: Vec<TunnelSpec> = tunnels.iter().map(|t| self.projected(t)).collect();
        let wanted: BTreeSet<Ipv6Net> = specs.iter().flat_map(|s| s.prefixes()).collect();
        let store_ms = ms(t);
        // Maps and routes are independent projections: the routes are written on another
        // thread while the maps are (routes_ms counts from the same moment as maps_ms).
        let t = std::time::Instant::now();
        let apart = self.routes.reconcile_apart(&wanted);
        let maps = self.maps.reconcile(&specs, &self.pop);
        let maps_ms = ms(t);
        let routes = match apart {
            Some(answer) => answer
                .await
                .unwrap_or_else(|_| Err("the routes thread ended without an answer".into())),
            None => self.routes.reconcile(&wanted).await,
        };
        let r = maps.map_err(BrokerError::Maps)?;
        let (added, removed) = routes.map_err(BrokerError::Routes)?;
        if added + removed > 0 {
            info!(added, removed, "routes reconciled with the store");
        }
        info!(
            tunnels = tunnels.len(),
            store_ms,
            maps_ms,
            routes_ms = ms(t),
            "reconciled"
        );
        self.unsure = false;
        self.applied = Some(generation);
        self.stamp()?;
        Ok(r)
    }

    /// Reconciles the static tunnels of the config into the store, then the projections.
    pub async fn sync_static(&mut self, wanted: &[TunnelSpec]) -> Result<StaticSync> {
        let report = self.store.sync_static(wanted, store::now())?;
        self.resume().await?;
        Ok(report)
    }

    /// A reload (SIGHUP): the PoP's side and the static tunnels of the new config. Maps
    /// and routes are reconciled only if either changed, so that a reload with nothing
    /// new costs one pass over the static tunnels, not over every tunnel.
    pub async fn reload_static(&mut self, wanted: &[TunnelSpec], pop: Pop) -> Result<StaticSync> {
        let pop_changed = pop != self.pop;
        self.pop = pop;
        let report = self.store.sync_static(wanted, store::now())?;
        if pop_changed || report != StaticSync::default() {
            self.reconcile().await?;
        }
        Ok(report)
    }

    /// Refuses an endpoint that is the PoP itself.
    /// Refuses endpoints no tunnel may have ([`crate::endpoints`]); only a tunnel that
    /// learns its endpoint (AYIYA, heartbeat) may have the unspecified one: "not heard
    /// yet".
    fn check_endpoint(
        &self,
        endpoint: &Endpoint,
        kind: Kind,
        origin: endpoints::Origin,
    ) -> Result<()> {
        if endpoint.is_unspecified() && kind.dynamic_endpoint() {
            return Ok(());
        }
        let local = endpoints::Local {
            ipv4: Some(self.pop.ipv4),
            ipv6: self.pop.ipv6,
            subnets: self.subnets.clone(),
            private_allowed: self.private_endpoints,
        };
        match endpoints::problem(endpoint.address(), &local, origin) {
            None => Ok(()),
            Some(message) => Err(BrokerError::Invalid {
                field: if matches!(endpoint, Endpoint::Ipv6(_)) {
                    "remote_ipv6"
                } else {
                    "remote_ipv4"
                },
                message,
            }),
        }
    }

    /// Whether `owner` may get `tunnels` more tunnels and `routed` more routed prefixes.
    /// The callers that act for a user ask (the API for a user, TSP); the operator is
    /// not held to quotas.
    pub fn check_quota(&self, owner: &str, tunnels: u32, routed: u32) -> Result<()> {
        let mine = self.store.tunnels_of(owner)?;
        let q = self.quotas;
        if tunnels > 0 && mine.len() as u32 + tunnels > q.tunnels_per_user {
            return Err(BrokerError::Quota {
                routed: false,
                message: format!(
                    "{owner} has {} tunnels, the most a user may have (quotas.tunnels_per_user)",
                    mine.len()
                ),
            });
        }
        let held: u32 = mine
            .iter()
            .map(|t| t.spec.routed_prefixes.len() as u32)
            .sum();
        if routed > 0 && held + routed > q.routed_prefixes_per_user {
            return Err(BrokerError::Quota {
                routed: true,
                message: format!(
                    "{owner}'s tunnels carry {held} routed prefixes, the most a user may have \
                     (quotas.routed_prefixes_per_user)"
                ),
            });
        }
        Ok(())
    }

    pub async fn create_tunnel(&mut self, req: &NewTunnel) -> Result<TunnelRecord> {
        let origin = match req.origin {
            // A TSP session's endpoint is where its packets come from.
            Origin::Tsp => endpoints::Origin::Learnt,
            Origin::Api | Origin::Static => endpoints::Origin::Named,
        };
        self.check_endpoint(&req.endpoint, req.kind, origin)?;
        let record = self.store.create_tunnel(req, store::now())?;
        self.project_created(record, false).await
    }

    /// Creates many tunnels for the operator (a bulk import): one store transaction for
    /// all, then maps and routes for each as [`Self::create_tunnel`] does. Each request
    /// succeeds or fails on its own; the outer error is the store's failing as a whole.
    pub async fn import(&mut self, reqs: &[NewTunnel]) -> Result<Vec<Result<TunnelRecord>>> {
        let mut out: Vec<Option<Result<TunnelRecord>>> = Vec::with_capacity(reqs.len());
        let mut valid = Vec::with_capacity(reqs.len());
        for r in reqs {
            match self.check_endpoint(&r.endpoint, r.kind, endpoints::Origin::Named) {
                Ok(()) => {
                    out.push(None);
                    valid.push(r.clone());
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut created = self.store.create_tunnels(&valid, store::now())?.into_iter();
        let mut results = Vec::with_capacity(reqs.len());
        for slot in out {
            let r = match slot {
                Some(refused) => refused,
                None => match created.next() {
                    Some(Ok(record)) => self.project_created(record, true).await,
                    Some(Err(e)) => Err(e.into()),
                    None => unreachable!("one answer per valid request"),
                },
            };
            results.push(r);
        }
        let created = results.iter().filter(|r| r.is_ok()).count();
        info!(
            created,
            refused = results.len() - created,
            "tunnels imported"
        );
        Ok(results)
    }

    /// Whether a tunnel lives on this PoP: only this PoP's tunnels are in its maps and
    /// routes; another PoP's are that PoP's to project (docs/MULTI-POP.md).
    pub fn mine(&self, t: &TunnelRecord) -> bool {
        t.pop == self.store.pop()
    }

    /// Maps and routes for a tunnel just written to the store; undone, store included,
    /// when either fails. `bulk`: logged at debug level (an import logs once). Another
    /// PoP's tunnel is that PoP's to project: it learns of it from the store.
    async fn project_created(&mut self, record: TunnelRecord, bulk: bool) -> Result<TunnelRecord> {
        let id = record.spec.id;
        if !self.mine(&record) {
            info!(id, pop = %record.pop, kind = record.spec.kind.as_str(), "tunnel created for another PoP");
            return Ok(record);
        }
        failpoint("create:after_store");
        if let Err(e) = self.install(&self.projected(&record)) {
            self.undo_create(id, false, &[]).await;
            return Err(BrokerError::Maps(e));
        }
        failpoint("create:after_maps");
        let mut added = Vec::new();
        for p in record.spec.prefixes() {
            if let Err(e) = self.route_add(&p).await {
                self.undo_create(id, true, &added).await;
                return Err(BrokerError::Routes(e));
            }
            added.push(p);
        }
        failpoint("create:after_routes");
        self.watch.track(&record);
        if bulk {
            tracing::debug!(id, kind = record.spec.kind.as_str(), remote = %record.spec.endpoint, link = ?record.spec.link_prefix, "tunnel created");
        } else {
            info!(id, kind = record.spec.kind.as_str(), remote = %record.spec.endpoint, link = ?record.spec.link_prefix, "tunnel created");
        }
        Ok(record)
    }

    async fn undo_create(&mut self, id: u32, installed: bool, routes: &[Ipv6Net]) {
        for p in routes {
            if let Err(e) = self.route_del(p).await {
                error!(id, prefix = %p, error = e, "undo: removing the route failed");
            }
        }
        if installed {
            if let Err(e) = self.uninstall(id) {
                error!(
                    id,
                    error = e,
                    "undo: removing the tunnel from the maps failed"
                );
            }
        }
        // Never used: its prefixes go back to the pool at once. Quarantining them let
        // failed creations (maps full) burn the pool.
        if let Err(e) = self.store.discard_tunnel(id) {
            error!(id, error = %e, "undo: removing the tunnel from the store failed");
            self.distrust();
        }
    }

    /// Changes kind (within a family), endpoint, state, MTU, keepalive or expiry, and can
    /// add a routed prefix; a new prefix gets its route after the maps. A new endpoint is
    /// one someone named (API, `/nic/update`); see [`Self::update_tunnel_learnt`].
    pub async fn update_tunnel(&mut self, id: u32, change: &TunnelChange) -> Result<TunnelRecord> {
        self.update_tunnel_from(id, change, endpoints::Origin::Named)
            .await
    }

    /// [`Self::update_tunnel`] for an endpoint learnt from packets (a TSP session, a
    /// heartbeat, AYIYA roaming).
    pub async fn update_tunnel_learnt(
        &mut self,
        id: u32,
        change: &TunnelChange,
    ) -> Result<TunnelRecord> {
        self.update_tunnel_from(id, change, endpoints::Origin::Learnt)
            .await
    }

    async fn update_tunnel_from(
        &mut self,
        id: u32,
        change: &TunnelChange,
        origin: endpoints::Origin,
    ) -> Result<TunnelRecord> {
        let before = self
            .store
            .tunnel(id)?
            .ok_or(StoreError::NoSuchTunnel { id })?;
        if let Some(e) = &change.endpoint {
            self.check_endpoint(e, change.kind.unwrap_or(before.spec.kind), origin)?;
        }
        let record = match self.store.update_tunnel(id, change, store::now()) {
            Ok(r) => r,
            // A client's packets moved its tunnel while the store is away: the maps follow
            // now, the store when it returns (docs/MULTI-POP.md).
            Err(StoreError::Unavailable { what })
                if origin == endpoints::Origin::Learnt
                    && *change
                        == (TunnelChange {
                            endpoint: change.endpoint,
                            ..Default::default()
                        }) =>
            {
                let endpoint = change.endpoint.ok_or(StoreError::Unavailable { what })?;
                let r = self.store.defer_endpoint(id, endpoint, store::now())?;
                info!(id, remote = %endpoint, "the store is away: the new endpoint waits for it");
                r
            }
            Err(e) => return Err(e.into()),
        };
        match (self.mine(&before), self.mine(&record)) {
            (true, true) => {}
            (false, false) => {
                info!(id, pop = %record.pop, "tunnel of another PoP changed");
                return Ok(record);
            }
            // A move (renumbered from the new PoP's pools): this PoP takes the tunnel up
            // or lets it go now; the other learns of it from the store.
            (false, true) | (true, false) => {
                self.follow(id).await?;
                info!(id, from = %before.pop, to = %record.pop, "tunnel moved");
                return Ok(record);
            }
        }
        failpoint("update:after_store");
        let undo = |store: &mut S| -> bool {
            // Only a routed prefix can have been added; a new one cannot be taken away by
            // an update, so it stays with the tunnel (and in the store) either way.
            let back = TunnelChange {
                kind: Some(before.spec.kind),
                endpoint: Some(before.spec.endpoint),
                state: Some(before.spec.state),
                mtu: Some(before.spec.mtu),
                keepalive: Some(before.spec.keepalive),
                expires_at: Some(before.expires_at),
                add_routed_length: None,
                pop: None,
                password: Some(before.password.clone()),
            };
            if let Err(u) = store.update_tunnel(id, &back, before.updated_at) {
                error!(id, error = %u, "undo: restoring the tunnel in the store failed");
                return false;
            }
            true
        };
        if let Err(e) = self.install(&self.projected(&record)) {
            if !undo(&mut self.store) {
                self.distrust();
            }
            return Err(BrokerError::Maps(e));
        }
        // Store and maps hold the change now, whatever happens to its routes.
        self.watch.track(&record);
        let old: Vec<Ipv6Net> = before.spec.prefixes().collect();
        for p in record.spec.prefixes().filter(|p| !old.contains(p)) {
            if let Err(e) = self.route_add(&p).await {
                // The prefix is the tunnel's now; the next reconcile adds the route.
                error!(id, prefix = %p, error = e, "adding the route failed");
                return Err(BrokerError::Routes(e));
            }
        }
        info!(id, kind = record.spec.kind.as_str(), remote = %record.spec.endpoint, state = ?record.spec.state, mtu = record.spec.mtu, "tunnel changed");
        Ok(record)
    }

    pub async fn delete_tunnel(&mut self, id: u32) -> Result<TunnelRecord> {
        let record = self.store.delete_tunnel(id, store::now())?;
        if !self.mine(&record) {
            info!(id, pop = %record.pop, "tunnel of another PoP deleted");
            return Ok(record);
        }
        failpoint("delete:after_store");
        if let Err(e) = self.uninstall(id) {
            self.undo_delete(&record, false).await;
            return Err(BrokerError::Maps(e));
        }
        failpoint("delete:after_maps");
        for p in record.spec.prefixes() {
            if let Err(e) = self.route_del(&p).await {
                self.undo_delete(&record, true).await;
                return Err(BrokerError::Routes(e));
            }
        }
        failpoint("delete:after_routes");
        self.asleep.remove(&id);
        self.unproven.remove(&id);
        self.watch.untrack(id);
        info!(id, "tunnel deleted");
        Ok(record)
    }

    async fn undo_delete(&mut self, record: &TunnelRecord, uninstalled: bool) {
        let id = record.spec.id;
        if let Err(e) = self.store.restore_tunnel(record) {
            error!(id, error = %e, "undo: restoring the tunnel in the store failed");
            self.distrust();
            return;
        }
        self.watch.track(record);
        if uninstalled {
            if let Err(e) = self.install(&self.projected(record)) {
                error!(id, error = e, "undo: reinstalling the tunnel failed");
            }
        }
        for p in record.spec.prefixes() {
            if let Err(e) = self.route_add(&p).await {
                error!(id, prefix = %p, error = e, "undo: restoring the route failed");
            }
        }
    }

    /// Creates a user; returns the record and the password in clear (generated when
    /// `None`), which is shown once and kept only as [`crate::secret::UserSecrets`].
    pub fn create_user(
        &mut self,
        name: &str,
        password: Option<&str>,
    ) -> Result<(UserRecord, String)> {
        if !valid_user_name(name) {
            return Err(BrokerError::Invalid {
                field: "name",
                message: format!(
                    "{name:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.', '@'"
                ),
            });
        }
        let password = match password {
            Some(p) => checked_password(p)?.to_string(),
            None => store::random_token(16),
        };
        let secrets = crate::secret::UserSecrets::derive(name, &password, &self.realm);
        let record = self.store.create_user(name, &secrets, store::now())?;
        Ok((record, password))
    }

    /// Gives a user a new password (slow: argon2). A disabled account stays disabled.
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<()> {
        let p = checked_password(password)?;
        let disabled = self
            .store
            .user(name)?
            .ok_or_else(|| StoreError::NoSuchUser { name: name.into() })?
            .secrets
            .disabled();
        let secrets =
            crate::secret::UserSecrets::derive(name, p, &self.realm).with_disabled(disabled);
        Ok(self.store.set_user_secrets(name, &secrets)?)
    }

    /// Disables an account (no login of any protocol succeeds, and every tunnel of it is
    /// disabled) or enables it again (its tunnels stay disabled until the operator
    /// enables them: docs/PORTAL.md). Returns the tunnels it disabled.
    pub async fn set_user_disabled(&mut self, name: &str, disabled: bool) -> Result<Vec<u32>> {
        let user = self
            .store
            .user(name)?
            .ok_or_else(|| StoreError::NoSuchUser { name: name.into() })?;
        if user.secrets.disabled() != disabled {
            self.store
                .set_user_secrets(name, &user.secrets.with_disabled(disabled))?;
        }
        let mut done = Vec::new();
        if disabled {
            let off = TunnelChange {
                state: Some(crate::model::State::Disabled),
                ..Default::default()
            };
            for t in self.store.tunnels_of(name)? {
                if t.spec.state != crate::model::State::Disabled {
                    self.update_tunnel(t.spec.id, &off).await?;
                    done.push(t.spec.id);
                }
            }
        }
        info!(
            user = name,
            disabled,
            tunnels = done.len(),
            "account changed"
        );
        Ok(done)
    }

    /// A new password for tunnel `id` (AYIYA's and the heartbeat's secret, handed to the
    /// client by TIC): the client must fetch its tunnel again.
    pub async fn new_tunnel_password(&mut self, id: u32) -> Result<TunnelRecord> {
        let change = TunnelChange {
            password: Some(store::random_token(16)),
            ..Default::default()
        };
        self.update_tunnel(id, &change).await
    }

    /// A new update key for tunnel `id`, returned in clear this once (only its hash is
    /// kept); the old one stops working.
    pub fn new_update_key(&mut self, id: u32) -> Result<String> {
        let key = store::random_token(16);
        self.store
            .set_update_key_hash(id, &crate::secret::hash_key(&key))?;
        Ok(key)
    }

    /// A store from before version 3 kept account passwords and update keys in clear:
    /// keeps only what the protocols need of them (crate::secret) and forgets them.
    /// Returns how many of each were upgraded.
    pub fn upgrade_secrets(&mut self) -> Result<(usize, usize)> {
        let users = self.store.users_in_clear()?;
        for (name, password) in &users {
            let secrets = crate::secret::UserSecrets::derive(name, password, &self.realm);
            self.store.set_user_secrets(name, &secrets)?;
        }
        let keys = self.store.update_keys_in_clear()?;
        for (id, key) in &keys {
            self.store
                .set_update_key_hash(*id, &crate::secret::hash_key(key))?;
        }
        if !users.is_empty() || !keys.is_empty() {
            self.store.scrub()?;
        }
        Ok((users.len(), keys.len()))
    }

    pub fn delete_user(&mut self, name: &str) -> Result<()> {
        Ok(self.store.delete_user(name)?)
    }
}

mod follow;
pub mod placement;
mod routes_check;
pub use routes_check::check_routes;
mod stamp;
mod unproven;
pub mod watch;

#[cfg(test)]
pub(crate) mod pops_tests;
#[cfg(test)]
mod scale_tests;
#[cfg(test)]
pub(crate) mod tests;
