//! `/metrics` in the Prometheus text format (prometheus-client), built at scrape time from
//! the data plane's per-CPU counters (summed), as Cilium's metricsmap collector does: no
//! poller, no cached state, and a failed read exports nothing rather than half.
//!
//! Names start with `broker_`, counters end in `_total` (the encoder appends it), units
//! are in the names. Per-tunnel series only when `metrics.per_tunnel` is set: 100 000
//! tunnels would otherwise make 500 000 series. Per-tunnel counters are always in the API.
use std::{collections::BTreeMap, fmt::Write as _};

use broker_common::{
    maps::{TunnelKind, TunnelStats},
    stats::{DropReason, Event, PassReason, ACTIONS, MAX_KINDS},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use crate::{
    broker::{Broker, Projection, RouteOps},
    dataplane::{GlobalCounters, MapUsage},
    store::Store,
};

type Labels = Vec<(&'static str, String)>;

/// The metrics the process keeps itself (API requests, TSP sessions); everything else is
/// read at scrape.
#[derive(Debug)]
pub struct Metrics {
    per_tunnel: bool,
    api: Family<Labels, Counter>,
    tsp: Family<Labels, Counter>,
    tic: Family<Labels, Counter>,
    heartbeats: Family<Labels, Counter>,
    /// Connections, datagrams and answers the defences against abuse turned away.
    defended: Family<Labels, Counter>,
    /// The AYIYA AF_XDP worker's outcome counters, once it runs.
    ayiya_worker: std::sync::OnceLock<std::sync::Arc<crate::dataplane::WorkerStats>>,
}

impl Metrics {
    pub fn new(per_tunnel: bool) -> Self {
        Self {
            per_tunnel,
            api: Family::default(),
            tsp: Family::default(),
            tic: Family::default(),
            heartbeats: Family::default(),
            defended: Family::default(),
            ayiya_worker: std::sync::OnceLock::new(),
        }
    }

    /// Exports the AYIYA AF_XDP worker's counters as `broker_ayiya_worker_total{outcome}`.
    pub fn set_ayiya_worker(&self, stats: std::sync::Arc<crate::dataplane::WorkerStats>) {
        let _ = self.ayiya_worker.set(stats);
    }

    /// Counts one ended (or established) TSP session by transport and outcome.
    pub fn tsp_session(&self, transport: &str, outcome: &str) {
        self.tsp
            .get_or_create(&vec![
                ("transport", transport.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// Counts one ended TIC session by outcome.
    pub fn tic_session(&self, outcome: &str) {
        self.tic
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// Counts one heartbeat datagram by outcome.
    pub fn heartbeat(&self, outcome: &str) {
        self.heartbeats
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// Counts one thing a defence turned away (docs/SECURITY.md): `service` is `api`,
    /// `portal`, `tsp`, `tic` or `heartbeat`, `reason` what it ran into.
    pub fn defended(&self, service: &str, reason: &str) {
        self.defended
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// What [`Self::defended`] counted so far for `service` and `reason` (tests).
    pub fn defended_count(&self, service: &str, reason: &str) -> u64 {
        self.defended
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("reason", reason.to_string()),
            ])
            .get()
    }

    pub fn per_tunnel(&self) -> bool {
        self.per_tunnel
    }

    /// Counts one API response.
    pub fn api_request(&self, route: &str, code: u16) {
        self.api
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
    }

    /// The exposition of `snapshot` and the API counters.
    pub fn encode(&self, snapshot: Snapshot) -> Result<String, String> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        registry.register(
            "broker_api_requests",
            "HTTP API responses by route and status code",
            self.api.clone(),
        );
        registry.register(
            "broker_tsp_sessions",
            "TSP sessions by transport and outcome (established, auth_failed, refused, closed, \
             timeout, invalid, busy, redirected)",
            self.tsp.clone(),
        );
        registry.register(
            "broker_tic_sessions",
            "TIC sessions by outcome (ok: logged in and quit or closed; auth_failed, \
             timeout, invalid, closed without logging in, busy)",
            self.tic.clone(),
        );
        registry.register(
            "broker_heartbeats",
            "Heartbeat datagrams by outcome (accepted, or why one was dropped)",
            self.heartbeats.clone(),
        );
        registry.register(
            "broker_defended",
            "Connections, datagrams and answers turned away by the defences against abuse, \
             by service and reason (docs/SECURITY.md)",
            self.defended.clone(),
        );
        if let Some(w) = self.ayiya_worker.get() {
            let family = Family::<Labels, Counter>::default();
            for (outcome, n) in w.snapshot() {
                family
                    .get_or_create(&vec![("outcome", outcome.to_string())])
                    .inc_by(n);
            }
            registry.register(
                "broker_ayiya_worker",
                "AYIYA forward packets the AF_XDP worker handled, by outcome (verified, \
                 bad_signature, signed, malformed, tx_full, no_egress, ring_dropped)",
                family,
            );
            let suspected = Counter::<u64>::default();
            suspected.inc_by(w.suspected.load(std::sync::atomic::Ordering::Relaxed));
            registry.register(
                "broker_ayiya_worker_suspected",
                "Times the AF_XDP worker found a forged packet for a tunnel and XDP verified \
                 that tunnel's packets itself for a while (docs/SECURITY.md)",
                suspected,
            );
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .map_err(|e| e.to_string())?;
        Ok(to_prometheus_text(&out))
    }
}

/// Everything a scrape reports, read in one go.
#[derive(Debug)]
pub struct Snapshot {
    global: GlobalCounters,
    maps: Vec<MapUsage>,
    per_tunnel: Vec<(u32, TunnelStats)>,
    /// `None` while the store cannot be read: the data plane's series are still
    /// reported, the store's left out, and `broker_store_up` says 0.
    store: Option<FromStore>,
    now: u64,
}

/// What a scrape reads of the store.
#[derive(Debug)]
struct FromStore {
    tunnels: BTreeMap<(&'static str, &'static str), u64>,
    adoptions: u64,
    pops: Vec<crate::store::PopRecord>,
}

impl FromStore {
    fn read<S: Store>(store: &S) -> crate::store::Result<Self> {
        let mut tunnels = BTreeMap::new();
        for (kind, state, n) in store.census()? {
            *tunnels.entry((kind.as_str(), state.as_str())).or_insert(0) += n;
        }
        Ok(Self {
            tunnels,
            adoptions: store.counter("adoptions")?,
            pops: store.pops()?,
        })
    }

    /// The store's series: tunnels by kind and state, every PoP's, the adoptions.
    fn encode(&self, e: &mut DescriptorEncoder, now: u64) -> Result<(), std::fmt::Error> {
        let tunnels: Vec<(Labels, i64)> = self
            .tunnels
            .iter()
            .map(|((k, s), n)| {
                (
                    vec![("kind", k.to_string()), ("state", s.to_string())],
                    *n as i64,
                )
            })
            .collect();
        gauge(
            e,
            "broker_tunnels",
            "This PoP's tunnels in the store, by kind and state",
            &tunnels,
        )?;

        // Every PoP of the store, from whichever is scraped (docs/MULTI-POP.md).
        let pop = |p: &crate::store::PopRecord| vec![("pop", p.name.clone())];
        let up: Vec<(Labels, i64)> = self
            .pops
            .iter()
            .map(|p| {
                let healthy = p.healthy(now, crate::broker::placement::HEALTHY_WITHIN_SECS);
                (pop(p), i64::from(healthy))
            })
            .collect();
        gauge(
            e,
            "broker_pop_up",
            "1 if the PoP reported within 30 s with its data plane attached",
            &up,
        )?;
        let seen: Vec<(Labels, i64)> = self
            .pops
            .iter()
            .filter_map(|p| Some((pop(p), i64::try_from(p.last_seen?).ok()?)))
            .collect();
        gauge(
            e,
            "broker_pop_last_seen_timestamp_seconds",
            "When the PoP last reported itself, in seconds since the epoch",
            &seen,
        )?;
        let per_pop: Vec<(Labels, i64)> = self
            .pops
            .iter()
            .flat_map(|p| {
                p.tunnels.iter().map(|(kind, state, n)| {
                    let mut labels = pop(p);
                    labels.push(("kind", kind.as_str().to_string()));
                    labels.push(("state", state.as_str().to_string()));
                    (labels, *n as i64)
                })
            })
            .collect();
        gauge(
            e,
            "broker_pop_tunnels",
            "Tunnels in the store by PoP, kind and state",
            &per_pop,
        )?;
        counter(
            e,
            "broker_restarts_adopted",
            "Controller starts that took over a running data plane",
            None,
            &[(Vec::new(), self.adoptions)],
        )?;
        Ok(())
    }
}

impl Snapshot {
    pub fn take<S: Store, P: Projection, R: RouteOps>(
        b: &Broker<S, P, R>,
        per_tunnel: bool,
    ) -> Result<Self, String> {
        let store = match FromStore::read(&b.store) {
            Ok(s) => Some(s),
            Err(e) => {
                crate::logs::warn_limited(
                    "metrics_store",
                    &format!("/metrics: the store cannot be read, its series are left out: {e}"),
                );
                None
            }
        };
        Ok(Self {
            global: b.maps.global_counters()?,
            maps: b.maps.map_usage(),
            store,
            now: crate::store::now(),
            per_tunnel: if per_tunnel {
                b.maps.all_counters()?
            } else {
                Vec::new()
            },
        })
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        unit,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, v) in series {
        if labels.is_empty() {
            ConstCounter::new(*v).encode(family)?;
            break;
        }
        ConstCounter::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, v) in series {
        if labels.is_empty() {
            ConstGauge::new(*v).encode(family)?;
            break;
        }
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// The tunnel kinds that exist, with their label value.
fn kinds() -> impl Iterator<Item = (u8, &'static str)> {
    (0..MAX_KINDS as u8).filter_map(|k| TunnelKind::from_u8(k).map(|t| (k, t.as_str())))
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let g = &self.global;
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for (k, kind) in kinds() {
            for (event, direction) in [(Event::Decap, "from_client"), (Event::Encap, "to_client")] {
                let p = g.event_of(event, k);
                let labels = vec![
                    ("direction", direction.to_string()),
                    ("kind", kind.to_string()),
                ];
                packets.push((labels.clone(), p.packets));
                bytes.push((labels, p.bytes));
            }
        }
        counter(
            &mut e,
            "broker_traffic_packets",
            "Packets forwarded through tunnels, by direction and tunnel kind",
            None,
            &packets,
        )?;
        counter(
            &mut e,
            "broker_traffic",
            "Inner IPv6 bytes forwarded through tunnels, by direction and tunnel kind",
            Some(&Unit::Bytes),
            &bytes,
        )?;

        let mut events = Vec::new();
        for (k, kind) in kinds() {
            for ev in Event::ALL {
                events.push((
                    vec![
                        ("event", ev.as_str().to_string()),
                        ("kind", kind.to_string()),
                    ],
                    g.event_of(*ev, k).packets,
                ));
            }
        }
        counter(&mut e, "broker_events", "Things the data plane did: decapsulations, encapsulations, echo replies, Packet Too Big", None, &events)?;

        let actions: Vec<(Labels, u64)> = ACTIONS
            .iter()
            .enumerate()
            .map(|(i, a)| (vec![("action", a.to_string())], g.action(i as u32).packets))
            .collect();
        counter(
            &mut e,
            "broker_xdp_actions",
            "Packets by the XDP action the program returned",
            None,
            &actions,
        )?;

        let drops: Vec<(Labels, u64)> = DropReason::ALL
            .iter()
            .map(|r| {
                (
                    vec![("reason", r.as_str().to_string())],
                    g.dropped(*r).packets,
                )
            })
            .collect();
        let drop_bytes: Vec<(Labels, u64)> = DropReason::ALL
            .iter()
            .map(|r| {
                (
                    vec![("reason", r.as_str().to_string())],
                    g.dropped(*r).bytes,
                )
            })
            .collect();
        counter(
            &mut e,
            "broker_drops",
            "Packets dropped, by reason (docs/ARCHITECTURE.md)",
            None,
            &drops,
        )?;
        counter(
            &mut e,
            "broker_drop",
            "Bytes of dropped frames, by reason",
            Some(&Unit::Bytes),
            &drop_bytes,
        )?;

        let passes: Vec<(Labels, u64)> = PassReason::ALL
            .iter()
            .map(|r| {
                (
                    vec![("reason", r.as_str().to_string())],
                    g.passed(*r).packets,
                )
            })
            .collect();
        counter(
            &mut e,
            "broker_passes",
            "Packets handed to the kernel, by reason",
            None,
            &passes,
        )?;

        gauge(
            &mut e,
            "broker_store_up",
            "1 if this scrape could read the store, 0 if not (the store's series are then left out)",
            &[(Vec::new(), i64::from(self.store.is_some()))],
        )?;
        if let Some(store) = &self.store {
            store.encode(&mut e, self.now)?;
        }

        let used: Vec<(Labels, i64)> = self
            .maps
            .iter()
            .map(|m| (vec![("map", m.map.to_string())], m.used as i64))
            .collect();
        let capacity: Vec<(Labels, i64)> = self
            .maps
            .iter()
            .map(|m| (vec![("map", m.map.to_string())], m.capacity as i64))
            .collect();
        gauge(
            &mut e,
            "broker_map_entries",
            "Entries used in the data plane's maps",
            &used,
        )?;
        gauge(
            &mut e,
            "broker_map_capacity_entries",
            "Capacity of the data plane's maps",
            &capacity,
        )?;

        if !self.per_tunnel.is_empty() {
            let mut p = Vec::new();
            let mut b = Vec::new();
            let mut d = Vec::new();
            for (id, s) in &self.per_tunnel {
                let t = id.to_string();
                for (dir, pk, by) in [
                    ("from_client", s.from_client_packets, s.from_client_bytes),
                    ("to_client", s.to_client_packets, s.to_client_bytes),
                ] {
                    let labels = vec![("tunnel", t.clone()), ("direction", dir.to_string())];
                    p.push((labels.clone(), pk));
                    b.push((labels, by));
                }
                d.push((vec![("tunnel", t)], s.drop_packets));
            }
            counter(
                &mut e,
                "broker_tunnel_packets",
                "Packets through one tunnel",
                None,
                &p,
            )?;
            counter(
                &mut e,
                "broker_tunnel",
                "Inner IPv6 bytes through one tunnel",
                Some(&Unit::Bytes),
                &b,
            )?;
            counter(
                &mut e,
                "broker_tunnel_drops",
                "Packets dropped on one tunnel",
                None,
                &d,
            )?;
        }
        Ok(())
    }
}

/// The exposition as Prometheus' text format 0.0.4, which every Prometheus version and
/// `promtool check metrics` read. The encoder writes OpenMetrics: there, a counter's
/// `# HELP`/`# TYPE` name lacks the `_total` its samples carry, and `# UNIT` and `# EOF`
/// lines exist that 0.0.4 does not know.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        match meta {
            Some((what, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                let _ = writeln!(out, "# {what} {name} {tail}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scrape while the store is away still reports the data plane, says the store is
    /// down, and leaves the store's series out rather than failing (Prometheus scrapes
    /// every PoP, most of all during an outage).
    #[test]
    fn a_scrape_while_the_store_is_away_reports_the_data_plane() {
        use crate::{
            broker::tests::{FakeMaps, FakeRoutes},
            model::Pop,
            store::{PgStore, PoolSet},
        };
        let mut pg = broker_tests::postgres::Cluster::start().expect("a PostgreSQL cluster");
        pg.create_database("m").unwrap();
        let store =
            PgStore::connect(&pg.conninfo("m"), Some(pg.password()), PoolSet::default()).unwrap();
        let b = Broker::new(
            store,
            FakeMaps::default(),
            FakeRoutes::default(),
            Pop::ipv4_only(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        );
        let metrics = Metrics::new(false);
        let scrape = |b: &Broker<PgStore, FakeMaps, FakeRoutes>| {
            metrics
                .encode(Snapshot::take(b, false).expect("a snapshot"))
                .unwrap()
        };
        let up = scrape(&b);
        assert!(up.contains("\nbroker_store_up 1\n"), "{up}");
        assert!(up.contains("broker_pop_up{pop=\"pop1\"}"), "{up}");
        assert!(up.contains("broker_restarts_adopted_total 0"), "{up}");
        assert!(pg.stop(), "PostgreSQL stopped");
        let away = scrape(&b);
        assert!(away.contains("\nbroker_store_up 0\n"), "{away}");
        assert!(!away.contains("broker_pop_up{"), "{away}");
        assert!(!away.contains("broker_restarts_adopted_total"), "{away}");
        assert!(away.contains("broker_xdp_actions_total"), "{away}");
    }

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total 3\n# HELP g Gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total 3\n# HELP g Gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
