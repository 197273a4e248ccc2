//! The tunnels whose clients are watched for silence (keepalives, AYIYA and heartbeat
//! beats): a projection of the store kept beside the maps, changed with them, so that
//! the watchers read the counters of these tunnels and never the whole store.
use std::collections::BTreeMap;

use super::{Broker, Projection, RouteOps};
use crate::{
    model::{Kind, State},
    store::{Store, TunnelRecord},
};

/// What a watcher needs of a watched tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    pub kind: Kind,
    /// The tunnel's own keepalive interval (TSP), if it has one.
    pub keepalive: Option<u32>,
}

/// Whether a tunnel needs watching: up in the store, and its client expected to be
/// heard regularly.
pub fn watch_of(t: &TunnelRecord) -> Option<Watched> {
    let s = &t.spec;
    let heard = s.keepalive.is_some() || matches!(s.kind, Kind::Ayiya | Kind::Heartbeat);
    (s.state == State::Up && heard).then_some(Watched {
        kind: s.kind,
        keepalive: s.keepalive,
    })
}

#[derive(Debug, Default)]
pub(super) struct WatchList(BTreeMap<u32, Watched>);

impl WatchList {
    pub(super) fn track(&mut self, t: &TunnelRecord) {
        match watch_of(t) {
            Some(w) => self.0.insert(t.spec.id, w),
            None => self.0.remove(&t.spec.id),
        };
    }

    pub(super) fn untrack(&mut self, id: u32) {
        self.0.remove(&id);
    }

    pub(super) fn rebuild(&mut self, all: &[TunnelRecord]) {
        self.0 = all
            .iter()
            .filter_map(|t| Some((t.spec.id, watch_of(t)?)))
            .collect();
    }
}

impl<S: Store, P: Projection, R: RouteOps> Broker<S, P, R> {
    /// The watched tunnels in id order.
    pub fn watched(&self) -> impl Iterator<Item = (u32, Watched)> + '_ {
        self.watch.0.iter().map(|(id, w)| (*id, *w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Endpoint, TunnelSpec},
        store::Origin,
    };

    fn record(id: u32, kind: Kind, state: State, keepalive: Option<u32>) -> TunnelRecord {
        TunnelRecord {
            spec: TunnelSpec {
                id,
                kind,
                state,
                endpoint: Endpoint::Ipv4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
                link_prefix: None,
                routed_prefixes: vec![],
                client_v4: None,
                mtu: 1280,
                keepalive,
                ayiya_key: None,
            },
            pop: crate::store::DEFAULT_POP.into(),
            owner: None,
            origin: Origin::Api,
            password: String::new(),
            update_key: None,
            update_key_hash: String::new(),
            created_at: 0,
            updated_at: 0,
            expires_at: None,
        }
    }

    /// The broker keeps its watch list in step with every change, as a full reload of
    /// the store would make it.
    #[tokio::test]
    async fn the_broker_keeps_the_list_as_the_store_says() {
        let mut b = crate::broker::tests::broker();
        let at = |n| Endpoint::Ipv4(std::net::Ipv4Addr::new(198, 51, 100, n));
        let mut req = crate::store::NewTunnel::api(None, Kind::Proto41, at(1));
        req.keepalive = Some(30);
        let a = b.create_tunnel(&req).await.unwrap().spec.id;
        let plain = crate::store::NewTunnel::api(None, Kind::Proto41, at(2));
        let p = b.create_tunnel(&plain).await.unwrap().spec.id;
        let ids = |b: &crate::broker::tests::TestBroker| {
            b.watched().map(|(id, _)| id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&b), vec![a]);
        let down = crate::store::TunnelChange {
            state: Some(State::Down),
            ..Default::default()
        };
        b.update_tunnel(a, &down).await.unwrap();
        assert!(ids(&b).is_empty());
        let keep = crate::store::TunnelChange {
            keepalive: Some(Some(10)),
            ..Default::default()
        };
        b.update_tunnel(p, &keep).await.unwrap();
        assert_eq!(ids(&b), vec![p]);
        b.delete_tunnel(p).await.unwrap();
        assert!(ids(&b).is_empty());
        let mut rebuilt = WatchList::default();
        rebuilt.rebuild(&b.store.tunnels().unwrap());
        assert_eq!(rebuilt.0, b.watch.0);
    }

    #[test]
    fn only_up_tunnels_whose_clients_are_heard_regularly() {
        let mut w = WatchList::default();
        w.rebuild(&[
            record(1, Kind::Proto41, State::Up, None),
            record(2, Kind::Proto41, State::Up, Some(30)),
            record(3, Kind::Ayiya, State::Up, None),
            record(4, Kind::Heartbeat, State::Disabled, None),
            record(5, Kind::Heartbeat, State::Up, None),
        ]);
        assert_eq!(w.0.keys().copied().collect::<Vec<_>>(), vec![2, 3, 5]);
        // Going down stops the watch; coming back up resumes it; deletion forgets.
        w.track(&record(2, Kind::Proto41, State::Down, Some(30)));
        w.track(&record(4, Kind::Heartbeat, State::Up, None));
        w.untrack(3);
        assert_eq!(w.0.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
    }
}
