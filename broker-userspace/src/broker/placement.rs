//! Which PoP a new tunnel lives on when the request names none, and what a tunnel's PoP
//! looks like from here (docs/MULTI-POP.md, "The PoP a tunnel lives on").
use std::net::Ipv4Addr;

use super::{Broker, Projection, Result, RouteOps};
use crate::{
    model::Pop,
    store::{PopRecord, Store, TunnelRecord},
};

/// A PoP is healthy when it reported within this many seconds with its data plane
/// attached (it reports every [`crate::daemon::POP_REPORT_EVERY`]).
pub const HEALTHY_WITHIN_SECS: u64 = 30;

/// The healthy PoP with the fewest tunnels; ties go to `here` (the PoP that answered the
/// request), then to the first by name. With no PoP healthy (nothing reported yet, a
/// single PoP in tests), `here`: the PoP that answers is up.
pub fn choose(pops: &[PopRecord], here: &str, now: u64) -> String {
    pops.iter()
        .filter(|p| p.healthy(now, HEALTHY_WITHIN_SECS))
        .min_by_key(|p| (p.tunnel_count(), p.name != here, p.name.clone()))
        .map_or_else(|| here.to_string(), |p| p.name.clone())
}

/// The PoP's side of its tunnels, as the API and TIC show it, from what it reported.
pub fn side_of(p: &PopRecord) -> Pop {
    let report = p.report.as_ref();
    Pop {
        ipv4: report.map_or(Ipv4Addr::UNSPECIFIED, |r| r.ipv4),
        ipv6: report.and_then(|r| r.ipv6),
        tsp_port: report.and_then(|r| r.tsp).map(|a| a.port()),
        ayiya_port: None,
        v4v6_pool: p.pools.v4v6,
    }
}

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    /// Where a tunnel goes that names no PoP ([`choose`]).
    pub fn place(&self) -> Result<String> {
        Ok(choose(
            &self.store.pops()?,
            self.store.pop(),
            crate::store::now(),
        ))
    }

    /// The PoP side of `t`: this PoP's own, or another's as it reported.
    pub fn side(&self, t: &TunnelRecord) -> Result<Pop> {
        Ok(self.sides([t])?.of(t))
    }

    /// The PoP sides of `tunnels`, the store read only if one is another PoP's.
    pub fn sides<'a>(&self, tunnels: impl IntoIterator<Item = &'a TunnelRecord>) -> Result<Sides> {
        let mut sides = Sides(vec![(self.store.pop().to_string(), self.pop)]);
        if tunnels.into_iter().any(|t| !self.mine(t)) {
            sides.0.extend(
                self.store
                    .pops()?
                    .iter()
                    .filter(|p| p.name != self.store.pop())
                    .map(|p| (p.name.clone(), side_of(p))),
            );
        }
        Ok(sides)
    }
}

/// PoP sides by PoP name ([`Broker::sides`]).
pub struct Sides(Vec<(String, Pop)>);

impl Sides {
    /// The side of `t`'s PoP; unspecified addresses for a PoP that never reported.
    pub fn of(&self, t: &TunnelRecord) -> Pop {
        self.0
            .iter()
            .find(|(name, _)| *name == t.pop)
            .map_or_else(|| Pop::ipv4_only(Ipv4Addr::UNSPECIFIED), |(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Kind, State},
        store::{PoolSet, PopReport},
    };

    fn pop(name: &str, tunnels: u64, seen: u64, attached: bool) -> PopRecord {
        PopRecord {
            name: name.into(),
            pools: PoolSet::default(),
            report: Some(PopReport {
                ipv4: Ipv4Addr::new(192, 0, 2, 1),
                ipv6: None,
                tsp: None,
                version: "0".into(),
                attached,
                started_at: 0,
            }),
            last_seen: Some(seen),
            tunnels: vec![(Kind::Proto41, State::Up, tunnels)],
        }
    }

    #[test]
    fn the_least_loaded_healthy_pop_wins_and_ties_stay_here() {
        let now = 1000;
        let pops = [
            pop("a", 5, now, true),
            pop("b", 3, now - 5, true),
            pop("c", 1, now - 31, true),
            pop("d", 0, now, false),
        ];
        // c is stale, d detached: b has the fewest of the healthy.
        assert_eq!(choose(&pops, "a", now), "b");
        let tied = [pop("a", 3, now, true), pop("b", 3, now, true)];
        assert_eq!(choose(&tied, "b", now), "b");
        assert_eq!(choose(&tied, "z", now), "a");
        // Nobody healthy: the PoP that answers.
        assert_eq!(choose(&pops[2..], "a", now), "a");
        assert_eq!(choose(&[], "a", now), "a");
    }
}
