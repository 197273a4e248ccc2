//! What a PoP last knew of the shared store, for when it is away (docs/MULTI-POP.md, "Who
//! waits for the database"). [`Remembered`] wraps a store: every read and write passes
//! through, and what it returns of this PoP's tunnels and of users is kept. While the
//! store is [`StoreError::Unavailable`], the reads the PoP's own clients need (a tunnel by
//! id or link, a user's tunnels, a user for a TIC login, the watched tunnels) are answered
//! from what was kept, so that heartbeats, AYIYA, liveness, TIC and TSP renewals go on;
//! writes still fail (HTTP 503, the protocols' own codes).
//!
//! An endpoint a client's packets moved to while the store is away (a heartbeat or AYIYA
//! client that roamed) is deferred ([`Store::defer_endpoint`]): kept here and in the maps,
//! written when the store returns ([`Store::flush_deferred`]), unless the tunnel changed in
//! the store meanwhile, in which case the store wins.
//!
//! Off (plain delegation, nothing kept) for SQLite, which does not go away; a million
//! tunnels would cost about 400 MB kept.
use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
};

use ipnet::Ipv6Net;

use super::{
    NewTunnel, PopRecord, PopReport, Result, StaticSync, Store, StoreError, TunnelChange,
    TunnelFilter, TunnelRecord, UserRecord,
};
use crate::model::{Endpoint, Kind, State, TunnelSpec};

/// What was last read or written.
#[derive(Default)]
struct Known {
    tunnels: BTreeMap<u32, TunnelRecord>,
    users: HashMap<String, UserRecord>,
    /// Endpoints learnt while the store was away: the tunnel, its endpoint, and the
    /// `updated_at` it had then (the store wins if it moved since).
    deferred: BTreeMap<u32, (Endpoint, u64)>,
}

pub struct Remembered<S> {
    inner: S,
    /// `None`: off.
    known: Option<RefCell<Known>>,
}

fn away(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable { .. })
}

impl<S: Store> Remembered<S> {
    /// `remember`: keep what passes (a shared store); otherwise only delegate.
    pub fn new(inner: S, remember: bool) -> Self {
        Self {
            inner,
            known: remember.then(RefCell::default),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Keeps `t` if it is this PoP's (forgets it if it left).
    fn keep(&self, t: &TunnelRecord) {
        if let Some(k) = &self.known {
            let mut k = k.borrow_mut();
            if t.pop == self.inner.pop() {
                k.tunnels.insert(t.spec.id, t.clone());
            } else {
                k.tunnels.remove(&t.spec.id);
            }
        }
    }

    /// What the store said of tunnel `id`: kept, or forgotten if it is gone.
    fn noted(&self, id: u32, t: &Option<TunnelRecord>) {
        match t {
            Some(t) => self.keep(t),
            None => self.forget(id),
        }
    }

    fn forget(&self, id: u32) {
        if let Some(k) = &self.known {
            k.borrow_mut().tunnels.remove(&id);
        }
    }

    /// `r` as it came, kept; or, if the store is away, `fallback` of what was kept.
    fn read<T>(
        &self,
        r: Result<T>,
        keep: impl FnOnce(&T),
        fallback: impl FnOnce(&Known) -> T,
    ) -> Result<T> {
        match (r, &self.known) {
            (Ok(v), _) => {
                keep(&v);
                Ok(v)
            }
            (Err(e), Some(k)) if away(&e) => {
                crate::logs::info_limited(
                    "store_away_known",
                    "the store is away: answering from what this PoP last knew",
                );
                Ok(fallback(&k.borrow()))
            }
            (Err(e), _) => Err(e),
        }
    }
}

impl<S: Store> Store for Remembered<S> {
    fn tunnels(&self) -> Result<Vec<TunnelRecord>> {
        self.read(
            self.inner.tunnels(),
            |all| {
                if let Some(k) = &self.known {
                    let mut k = k.borrow_mut();
                    k.tunnels = all.iter().map(|t| (t.spec.id, t.clone())).collect();
                }
            },
            |k| k.tunnels.values().cloned().collect(),
        )
    }

    fn tunnel(&self, id: u32) -> Result<Option<TunnelRecord>> {
        self.read(
            self.inner.tunnel(id),
            |t| self.noted(id, t),
            |k| k.tunnels.get(&id).cloned(),
        )
    }

    fn tunnel_now(&self, id: u32) -> Result<Option<TunnelRecord>> {
        let t = self.inner.tunnel(id)?;
        self.noted(id, &t);
        Ok(t)
    }

    fn tunnel_page(
        &self,
        filter: &TunnelFilter,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<TunnelRecord>> {
        self.inner.tunnel_page(filter, after, limit)
    }

    fn pop(&self) -> &str {
        self.inner.pop()
    }

    fn census(&self) -> Result<Vec<(Kind, State, u64)>> {
        self.inner.census()
    }

    fn pops(&self) -> Result<Vec<PopRecord>> {
        self.inner.pops()
    }

    fn report_pop(&mut self, report: &PopReport, now: u64) -> Result<()> {
        self.inner.report_pop(report, now)
    }

    fn expired(&self, now: u64) -> Result<Vec<TunnelRecord>> {
        self.inner.expired(now)
    }

    fn watched(&self) -> Result<Vec<TunnelRecord>> {
        self.read(
            self.inner.watched(),
            |ts| ts.iter().for_each(|t| self.keep(t)),
            |k| {
                k.tunnels
                    .values()
                    .filter(|t| {
                        t.spec.state == State::Up
                            && (t.spec.keepalive.is_some()
                                || matches!(t.spec.kind, Kind::Ayiya | Kind::Heartbeat))
                    })
                    .cloned()
                    .collect()
            },
        )
    }

    fn generation(&self) -> Result<(i64, u64)> {
        self.inner.generation()
    }

    fn create_tunnel(&mut self, req: &NewTunnel, now: u64) -> Result<TunnelRecord> {
        let t = self.inner.create_tunnel(req, now)?;
        self.keep(&t);
        Ok(t)
    }

    fn create_tunnels(
        &mut self,
        reqs: &[NewTunnel],
        now: u64,
    ) -> Result<Vec<Result<TunnelRecord>>> {
        let out = self.inner.create_tunnels(reqs, now)?;
        out.iter().flatten().for_each(|t| self.keep(t));
        Ok(out)
    }

    fn update_tunnel(&mut self, id: u32, change: &TunnelChange, now: u64) -> Result<TunnelRecord> {
        let t = self.inner.update_tunnel(id, change, now)?;
        self.keep(&t);
        Ok(t)
    }

    fn delete_tunnel(&mut self, id: u32, now: u64) -> Result<TunnelRecord> {
        let t = self.inner.delete_tunnel(id, now)?;
        self.forget(id);
        Ok(t)
    }

    fn discard_tunnel(&mut self, id: u32) -> Result<()> {
        self.inner.discard_tunnel(id)?;
        self.forget(id);
        Ok(())
    }

    fn restore_tunnel(&mut self, record: &TunnelRecord) -> Result<()> {
        self.inner.restore_tunnel(record)?;
        self.keep(record);
        Ok(())
    }

    fn sync_static(&mut self, wanted: &[TunnelSpec], now: u64) -> Result<StaticSync> {
        self.inner.sync_static(wanted, now)
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        self.inner.users()
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.read(
            self.inner.user(name),
            |u| {
                if let Some(k) = &self.known {
                    let mut k = k.borrow_mut();
                    match u {
                        Some(u) => k.users.insert(name.to_string(), u.clone()),
                        None => k.users.remove(name),
                    };
                }
            },
            |k| k.users.get(name).cloned(),
        )
    }

    fn create_user(
        &mut self,
        name: &str,
        secrets: &crate::secret::UserSecrets,
        now: u64,
    ) -> Result<UserRecord> {
        self.inner.create_user(name, secrets, now)
    }

    fn set_user_secrets(&mut self, name: &str, secrets: &crate::secret::UserSecrets) -> Result<()> {
        self.inner.set_user_secrets(name, secrets)?;
        // Read again on next use, not answered with the old secrets.
        if let Some(k) = &self.known {
            k.borrow_mut().users.remove(name);
        }
        Ok(())
    }

    fn users_in_clear(&self) -> Result<Vec<(String, String)>> {
        self.inner.users_in_clear()
    }

    fn update_keys_in_clear(&self) -> Result<Vec<(u32, String)>> {
        self.inner.update_keys_in_clear()
    }

    fn set_update_key_hash(&mut self, id: u32, hash: &str) -> Result<()> {
        self.inner.set_update_key_hash(id, hash)?;
        self.forget(id);
        Ok(())
    }

    fn scrub(&mut self) -> Result<()> {
        self.inner.scrub()
    }

    fn delete_user(&mut self, name: &str) -> Result<()> {
        self.inner.delete_user(name)?;
        if let Some(k) = &self.known {
            k.borrow_mut().users.remove(name);
        }
        Ok(())
    }

    fn tsp_tunnel(&self, owner: &str, v4v6: bool) -> Result<Option<TunnelRecord>> {
        self.read(
            self.inner.tsp_tunnel(owner, v4v6),
            |t| {
                if let Some(t) = t {
                    self.keep(t)
                }
            },
            |k| {
                k.tunnels
                    .values()
                    .find(|t| {
                        t.owner.as_deref() == Some(owner)
                            && t.origin == super::Origin::Tsp
                            && (t.spec.kind == Kind::V4In6) == v4v6
                    })
                    .cloned()
            },
        )
    }

    fn tunnels_of(&self, owner: &str) -> Result<Vec<TunnelRecord>> {
        self.read(
            self.inner.tunnels_of(owner),
            |ts| ts.iter().for_each(|t| self.keep(t)),
            |k| {
                k.tunnels
                    .values()
                    .filter(|t| t.owner.as_deref() == Some(owner))
                    .cloned()
                    .collect()
            },
        )
    }

    fn tunnel_by_link(&self, link: &Ipv6Net) -> Result<Option<TunnelRecord>> {
        self.read(
            self.inner.tunnel_by_link(link),
            |t| {
                if let Some(t) = t {
                    self.keep(t)
                }
            },
            |k| {
                k.tunnels
                    .values()
                    .find(|t| t.spec.link_prefix == Some(link.trunc()))
                    .cloned()
            },
        )
    }

    fn bump(&mut self, counter: &str) -> Result<u64> {
        self.inner.bump(counter)
    }

    fn counter(&self, counter: &str) -> Result<u64> {
        self.inner.counter(counter)
    }

    fn defer_endpoint(&mut self, id: u32, endpoint: Endpoint, now: u64) -> Result<TunnelRecord> {
        let Some(k) = &self.known else {
            return Err(StoreError::Unavailable {
                what: "the store keeps nothing to defer to".into(),
            });
        };
        let mut k = k.borrow_mut();
        let Some(t) = k.tunnels.get_mut(&id) else {
            return Err(StoreError::Unavailable {
                what: format!("tunnel {id} is not known here"),
            });
        };
        let base = t.updated_at;
        t.spec.endpoint = endpoint;
        t.updated_at = now;
        let t = t.clone();
        // The first deferral's base: what the store had before any of them.
        k.deferred
            .entry(id)
            .and_modify(|(e, _)| *e = endpoint)
            .or_insert((endpoint, base));
        Ok(t)
    }

    fn flush_deferred(&mut self, now: u64) -> Result<Vec<(u32, bool)>> {
        let Some(k) = &self.known else {
            return Ok(Vec::new());
        };
        let deferred = std::mem::take(&mut k.borrow_mut().deferred);
        let mut out = Vec::new();
        let mut left = deferred.clone();
        for (id, (endpoint, base)) in deferred {
            let current = match self.inner.tunnel(id) {
                Ok(c) => c,
                Err(e) => {
                    // Still away: keep what is left for the next try.
                    if let Some(k) = &self.known {
                        k.borrow_mut().deferred.extend(left);
                    }
                    return Err(e);
                }
            };
            left.remove(&id);
            let written = match current {
                Some(c) if c.updated_at == base && c.spec.endpoint != endpoint => {
                    let change = TunnelChange {
                        endpoint: Some(endpoint),
                        ..Default::default()
                    };
                    match self.inner.update_tunnel(id, &change, now) {
                        Ok(t) => {
                            self.keep(&t);
                            true
                        }
                        // Another tunnel took the endpoint meanwhile: the store wins.
                        Err(StoreError::DuplicateEndpoint { .. }) => false,
                        Err(e) => {
                            if let Some(k) = &self.known {
                                k.borrow_mut().deferred.insert(id, (endpoint, base));
                                k.borrow_mut().deferred.extend(left);
                            }
                            return Err(e);
                        }
                    }
                }
                // Changed (or gone) in the store meanwhile: the store wins.
                Some(c) => {
                    self.keep(&c);
                    false
                }
                None => {
                    self.forget(id);
                    false
                }
            };
            out.push((id, written));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::store::{test_engines::secrets, PgStore, PoolSet};

    fn p41(last: u8) -> Endpoint {
        Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, last))
    }

    /// The PoP's clients are served from what it knew while PostgreSQL is stopped; the
    /// endpoints they moved to are written when it is back, unless the store changed.
    #[test]
    fn a_pop_serves_what_it_knew_while_the_store_is_away_and_writes_back_after() {
        let mut pg = broker_tests::postgres::Cluster::start().expect("a PostgreSQL cluster");
        pg.create_database("b").unwrap();
        let pools = PoolSet {
            link: vec!["2001:db8:10::/48".parse().unwrap()],
            ..Default::default()
        };
        let store = PgStore::connect(&pg.conninfo("b"), Some(pg.password()), pools).unwrap();
        let mut s = Remembered::new(store, true);
        s.create_user("ann", &secrets(), 1).unwrap();
        let hb = NewTunnel::api(Some("ann"), Kind::Heartbeat, p41(1));
        let a = s.create_tunnel(&hb, 1).unwrap();
        let b = s
            .create_tunnel(&NewTunnel::api(Some("ann"), Kind::Proto41, p41(2)), 1)
            .unwrap();
        let user = s.user("ann").unwrap();
        assert!(s.tunnels().unwrap().len() == 2);

        assert!(pg.stop(), "PostgreSQL stopped");
        // Reads the PoP's clients need: answered from what it knew.
        let link = a.spec.link_prefix.unwrap();
        assert_eq!(s.tunnel_by_link(&link).unwrap(), Some(a.clone()));
        assert_eq!(s.tunnel(b.spec.id).unwrap(), Some(b.clone()));
        // Except for following a notified change: the old copy is no answer then.
        assert!(matches!(
            s.tunnel_now(b.spec.id),
            Err(StoreError::Unavailable { .. })
        ));
        assert_eq!(s.user("ann").unwrap(), user);
        assert_eq!(s.tunnels_of("ann").unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(s.watched().unwrap(), vec![a.clone()]);
        // Writes fail as unavailable; a learnt endpoint waits.
        assert!(matches!(
            s.create_tunnel(&NewTunnel::api(None, Kind::Proto41, p41(3)), 2),
            Err(StoreError::Unavailable { .. })
        ));
        let moved = s.defer_endpoint(a.spec.id, p41(11), 5).unwrap();
        assert_eq!(moved.spec.endpoint, p41(11));
        assert_eq!(s.tunnel(a.spec.id).unwrap(), Some(moved));
        s.defer_endpoint(b.spec.id, p41(12), 5).unwrap();
        assert!(s.flush_deferred(6).is_err(), "still away");

        pg.start_again().unwrap();
        // b changes in the store before the deferred endpoints are written: its stays.
        let changed = TunnelChange {
            mtu: Some(1400),
            ..Default::default()
        };
        let mut back = None;
        for _ in 0..100 {
            match s.inner.update_tunnel(b.spec.id, &changed, 7) {
                Ok(t) => {
                    back = Some(t);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        assert!(back.is_some(), "the store reconnected");
        let done = s.flush_deferred(8).unwrap();
        assert_eq!(done, vec![(a.spec.id, true), (b.spec.id, false)]);
        assert_eq!(
            s.inner.tunnel(a.spec.id).unwrap().unwrap().spec.endpoint,
            p41(11)
        );
        assert_eq!(
            s.inner.tunnel(b.spec.id).unwrap().unwrap().spec.endpoint,
            p41(2)
        );
        assert_eq!(s.tunnel(b.spec.id).unwrap().unwrap().spec.mtu, 1400);
        assert!(s.flush_deferred(9).unwrap().is_empty());
    }

    #[test]
    fn off_it_only_delegates() {
        let store = crate::store::SqliteStore::in_memory(PoolSet {
            link: vec!["2001:db8:10::/48".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        let mut s = Remembered::new(store, false);
        let t = s
            .create_tunnel(&NewTunnel::api(None, Kind::Proto41, p41(1)), 1)
            .unwrap();
        assert!(s.known.is_none());
        assert!(matches!(
            s.defer_endpoint(t.spec.id, p41(2), 2),
            Err(StoreError::Unavailable { .. })
        ));
        assert!(s.flush_deferred(3).unwrap().is_empty());
    }
}
