//! `broker stats`: the counters as a table or JSON. Pure formatting.
use std::{collections::BTreeMap, fmt::Write};

use broker_common::{
    maps::StatPair,
    stats::{DropReason, Event, PassReason, ACTIONS},
};
use serde::Serialize;

use crate::dataplane::{GlobalCounters, TunnelCounters};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Pair {
    pub packets: u64,
    pub bytes: u64,
}

impl From<StatPair> for Pair {
    fn from(p: StatPair) -> Self {
        Self {
            packets: p.packets,
            bytes: p.bytes,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TunnelRow {
    pub id: u32,
    pub kind: String,
    pub state: String,
    pub from_client_packets: u64,
    pub from_client_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

/// Everything `broker stats` shows, keyed by the label values the metrics use (so
/// `jq .drops.spoofed_source.packets` works).
#[derive(Debug, Serialize)]
pub struct Report {
    pub actions: BTreeMap<String, Pair>,
    pub events: BTreeMap<String, Pair>,
    pub drops: BTreeMap<String, Pair>,
    pub passes: BTreeMap<String, Pair>,
    pub tunnels: Vec<TunnelRow>,
}

impl Report {
    pub fn new(g: &GlobalCounters, tunnels: &[TunnelCounters]) -> Self {
        Self {
            actions: ACTIONS
                .iter()
                .enumerate()
                .map(|(i, a)| (a.to_string(), g.action(i as u32).into()))
                .collect(),
            events: Event::ALL
                .iter()
                .map(|e| (e.as_str().to_string(), g.event(*e).into()))
                .collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), g.dropped(*r).into()))
                .collect(),
            passes: PassReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), g.passed(*r).into()))
                .collect(),
            tunnels: tunnels
                .iter()
                .map(|t| TunnelRow {
                    id: t.id,
                    kind: t.kind.map_or("unknown", |k| k.as_str()).to_string(),
                    state: t.state.map_or("unknown", |s| s.as_str()).to_string(),
                    from_client_packets: t.stats.from_client_packets,
                    from_client_bytes: t.stats.from_client_bytes,
                    to_client_packets: t.stats.to_client_packets,
                    to_client_bytes: t.stats.to_client_bytes,
                    drop_packets: t.stats.drop_packets,
                    drop_bytes: t.stats.drop_bytes,
                })
                .collect(),
        }
    }

    /// A plain-text table; zero rows of drops and passes are left out.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let drops: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        let passes: Vec<&str> = PassReason::ALL.iter().map(|r| r.as_str()).collect();
        let events: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
        section(&mut s, "actions", &ACTIONS, &self.actions, false);
        section(&mut s, "events", &events, &self.events, false);
        section(&mut s, "drops (non-zero)", &drops, &self.drops, true);
        section(&mut s, "passes (non-zero)", &passes, &self.passes, true);
        let _ = writeln!(
            s,
            "tunnels\n  {:>6} {:<8} {:<8} {:>12} {:>14} {:>12} {:>14} {:>10}",
            "id", "kind", "state", "from pkts", "from bytes", "to pkts", "to bytes", "drops"
        );
        for t in &self.tunnels {
            let _ = writeln!(
                s,
                "  {:>6} {:<8} {:<8} {:>12} {:>14} {:>12} {:>14} {:>10}",
                t.id,
                t.kind,
                t.state,
                t.from_client_packets,
                t.from_client_bytes,
                t.to_client_packets,
                t.to_client_bytes,
                t.drop_packets
            );
        }
        s
    }
}

/// One block of the table, rows in `order`.
fn section(
    s: &mut String,
    title: &str,
    order: &[&str],
    rows: &BTreeMap<String, Pair>,
    skip_zero: bool,
) {
    let _ = writeln!(s, "{title}");
    for name in order {
        let Some(p) = rows.get(*name) else { continue };
        if skip_zero && p.packets == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "  {name:<22} {:>14} pkts {:>16} bytes",
            p.packets, p.bytes
        );
    }
}
