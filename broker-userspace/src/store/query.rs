//! Reading tunnels: one, all, a filtered page, the lapsed, a user's, and the census. Every
//! query but [`all`] is served by an index, so its cost does not grow with the store.
use std::collections::BTreeMap;

use ipnet::Ipv6Net;

use super::{
    alloc,
    records::{parse, parse_kind, parse_state, record, row, TunnelRow, TUNNEL_COLUMNS},
    sql::{params, Sql, Value},
    OwnerFilter, Result, TunnelFilter, TunnelRecord,
};
use crate::model::{Kind, State};

/// Every tunnel of PoP `pop`: two scans, the routed prefixes joined in memory.
pub(super) fn all(db: &dyn Sql, pop: &str) -> Result<Vec<TunnelRecord>> {
    ids(db, pop, 0, u32::MAX)
}

/// The tunnels of PoP `pop` with ids `from..=to`, in id order.
pub(super) fn ids(db: &dyn Sql, pop: &str, from: u32, to: u32) -> Result<Vec<TunnelRecord>> {
    let mut routed = routed_by_tunnel(
        db,
        "SELECT tunnel_id, prefix FROM routed WHERE tunnel_id IN \
         (SELECT id FROM tunnels WHERE pop = ?3 AND id BETWEEN ?1 AND ?2) ORDER BY rowid",
        params![from, to, pop],
    )?;
    let mut out = Vec::new();
    db.each_row(
        &format!(
            "SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE pop = ?3 AND id BETWEEN ?1 AND ?2 \
             ORDER BY id"
        ),
        params![from, to, pop],
        &mut |r| {
            let r = row(r)?;
            let p = routed.remove(&r.id).unwrap_or_default();
            out.push(record(r, p)?);
            Ok(())
        },
    )?;
    Ok(out)
}

pub(super) fn one(db: &dyn Sql, id: u32) -> Result<Option<TunnelRecord>> {
    Ok(select(db, "id = ?", vec![Value::from(id)], "")?.pop())
}

pub(super) fn page(
    db: &dyn Sql,
    f: &TunnelFilter,
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<TunnelRecord>> {
    let mut cond = vec!["id > ?".to_string()];
    let mut args = vec![Value::from(after.unwrap_or(0))];
    if let Some(pop) = &f.pop {
        cond.push("pop = ?".into());
        args.push(Value::from(pop.clone()));
    }
    match &f.owner {
        None => {}
        Some(OwnerFilter::Nobody) => cond.push("owner IS NULL".into()),
        Some(OwnerFilter::User(name)) => {
            cond.push("owner = ?".into());
            args.push(Value::from(name.clone()));
        }
    }
    for (column, value) in [
        ("origin", f.origin.map(|o| o.as_str())),
        ("kind", f.kind.map(|k| k.as_str())),
        ("state", f.state.map(|s| s.as_str())),
    ] {
        if let Some(v) = value {
            cond.push(format!("{column} = ?"));
            args.push(Value::from(v.to_string()));
        }
    }
    match f.address {
        None => {}
        Some(std::net::IpAddr::V4(a)) => {
            cond.push("remote_v4 = ?".into());
            args.push(Value::from(a.to_string()));
        }
        Some(std::net::IpAddr::V6(a)) => {
            cond.push("remote_v6 = ?".into());
            args.push(Value::from(a.to_string()));
        }
    }
    if let Some(p) = f.prefix {
        // Pool allocations never overlap one another: those starting inside the range,
        // and the one starting closest below it if it reaches in. Prefixes of static
        // tunnels are not allocations: they match by their exact text (the link /64 of
        // an address included).
        let wide = Ipv6Net::new(p.network(), p.prefix_len().min(64))
            .expect("at most 64")
            .trunc();
        let (lo, hi) = (
            alloc::to_sql(alloc::start(&wide)),
            alloc::to_sql(alloc::end(&wide)),
        );
        cond.push(
            "(id IN (SELECT tunnel_id FROM allocations WHERE start BETWEEN ? AND ? \
                     AND tunnel_id IS NOT NULL) \
              OR id IN (SELECT tunnel_id FROM (SELECT tunnel_id, \"end\" FROM allocations \
                        WHERE start < ? ORDER BY start DESC LIMIT 1) AS below \
                        WHERE \"end\" >= ?) \
              OR link_prefix = ? OR link_prefix = ? \
              OR id IN (SELECT tunnel_id FROM routed WHERE prefix = ?))"
                .into(),
        );
        let link = Ipv6Net::new(p.network(), 64).expect("64").trunc();
        args.extend([
            Value::from(lo),
            Value::from(hi),
            Value::from(lo),
            Value::from(lo),
            Value::from(p.trunc().to_string()),
            Value::from(link.to_string()),
            Value::from(p.trunc().to_string()),
        ]);
    }
    // A parameter, not text: one statement whatever the page size.
    args.push(Value::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
    select(db, &cond.join(" AND "), args, "ORDER BY id LIMIT ?")
}

pub(super) fn expired(db: &dyn Sql, pop: &str, now: u64) -> Result<Vec<TunnelRecord>> {
    select(
        db,
        "pop = ? AND expires_at IS NOT NULL AND expires_at <= ?",
        vec![Value::from(pop), Value::from(now)],
        "ORDER BY id",
    )
}

/// The condition of the partial index `tunnels_watched`, word for word (SQLite uses such
/// an index only for a query that states its condition).
pub(super) const WATCHED: &str =
    "state = 'up' AND (keepalive IS NOT NULL OR kind IN ('ayiya', 'heartbeat'))";

pub(super) fn watched(db: &dyn Sql, pop: &str) -> Result<Vec<TunnelRecord>> {
    select(
        db,
        &format!("pop = ? AND {WATCHED}"),
        vec![Value::from(pop)],
        "ORDER BY id",
    )
}

/// The store's identity and PoP `pop`'s generation.
pub(super) fn generation(db: &dyn Sql, pop: &str) -> Result<(i64, u64)> {
    db.first(
        "SELECT store_id, (SELECT generation FROM pops WHERE name = ?1) FROM generation",
        params![pop],
        |r| Ok((r.get(0)?, r.get::<Option<u64>>(1)?)),
    )?
    .and_then(|(id, n)| Some((id, n?)))
    .ok_or_else(|| super::StoreError::Corrupt {
        what: format!("no generation row, or no PoP {pop:?}"),
    })
}

pub(super) fn census(db: &dyn Sql, pop: &str) -> Result<Vec<(Kind, State, u64)>> {
    db.rows(
        "SELECT kind, state, n FROM census WHERE pop = ?1 AND n > 0",
        params![pop],
        |r| {
            Ok((
                parse_kind(&r.get::<String>(0)?)?,
                parse_state(&r.get::<String>(1)?)?,
                r.get(2)?,
            ))
        },
    )
}

/// The TSP tunnel of `owner` of the family asked for (v4v6, or one carrying IPv6).
pub(super) fn tsp_tunnel(db: &dyn Sql, owner: &str, v4v6: bool) -> Result<Option<TunnelRecord>> {
    let family = if v4v6 {
        "kind = 'v4v6'"
    } else {
        "kind <> 'v4v6'"
    };
    let id: Option<u32> = db.first(
        &format!(
            "SELECT id FROM tunnels WHERE owner = ?1 AND origin = 'tsp' AND {family} \
             ORDER BY id LIMIT 1"
        ),
        params![owner],
        |r| r.get(0),
    )?;
    match id {
        Some(id) => one(db, id),
        None => Ok(None),
    }
}

/// A user's tunnels: a handful, so one indexed query for the ids, then each.
pub(super) fn of_owner(db: &dyn Sql, owner: &str) -> Result<Vec<TunnelRecord>> {
    let ids: Vec<u32> = db.rows(
        "SELECT id FROM tunnels WHERE owner = ?1 ORDER BY id",
        params![owner],
        |r| r.get(0),
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(one(db, id)?);
    }
    Ok(out)
}

/// The tunnel whose link /64 is `link` (`link_prefix` is UNIQUE, so indexed, and written
/// with the same Display).
pub(super) fn by_link(db: &dyn Sql, link: &Ipv6Net) -> Result<Option<TunnelRecord>> {
    let id: Option<u32> = db.first(
        "SELECT id FROM tunnels WHERE link_prefix = ?1",
        params![link.trunc().to_string()],
        |r| r.get(0),
    )?;
    match id {
        Some(id) => one(db, id),
        None => Ok(None),
    }
}

/// The routed prefixes a query of `(tunnel_id, prefix)` rows gives, by tunnel, each
/// tunnel's in the order of its rows: `ORDER BY rowid`, the order they were written in
/// (SQLite's implicit column, a sequence of that name in PostgreSQL).
fn routed_by_tunnel(
    db: &dyn Sql,
    sql: &str,
    params: &[Value],
) -> Result<BTreeMap<u32, Vec<Ipv6Net>>> {
    let mut routed: BTreeMap<u32, Vec<Ipv6Net>> = BTreeMap::new();
    db.each_row(sql, params, &mut |r| {
        let p: String = r.get(1)?;
        routed
            .entry(r.get(0)?)
            .or_default()
            .push(parse(&p, "prefix")?);
        Ok(())
    })?;
    Ok(routed)
}

/// The tunnels `WHERE cond` (with `args`), each with its routed prefixes (indexed): one
/// query for the tunnels and one for the prefixes of them all, whatever their number (on
/// PostgreSQL each query is a round trip).
fn select(db: &dyn Sql, cond: &str, args: Vec<Value>, tail: &str) -> Result<Vec<TunnelRecord>> {
    let rows: Vec<TunnelRow> = db.rows(
        &format!("SELECT {TUNNEL_COLUMNS} FROM tunnels WHERE {cond} {tail}"),
        &args,
        row,
    )?;
    let mut routed = match rows.as_slice() {
        [] => BTreeMap::new(),
        [one] => routed_by_tunnel(
            db,
            "SELECT tunnel_id, prefix FROM routed WHERE tunnel_id = ?1 ORDER BY rowid",
            params![one.id],
        )?,
        _ => routed_by_tunnel(
            db,
            &format!(
                "SELECT tunnel_id, prefix FROM routed WHERE tunnel_id IN \
                 (SELECT id FROM tunnels WHERE {cond} {tail}) ORDER BY rowid"
            ),
            &args,
        )?,
    };
    rows.into_iter()
        .map(|r| {
            let prefixes = routed.remove(&r.id).unwrap_or_default();
            record(r, prefixes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr, SocketAddrV4},
    };

    use proptest::prelude::*;

    use crate::{
        model::{Endpoint, Kind, State},
        store::{
            test_engines::{self, on_every_engine, secrets, Open},
            NewTunnel, Origin, OwnerFilter, PoolSet, SqliteStore, Store, TunnelChange,
            TunnelFilter, TunnelRecord,
        },
    };

    fn store(open: Open) -> Box<dyn Store> {
        let mut s = open(PoolSet {
            link: vec!["2001:db8:10::/48".parse().unwrap()],
            routed: vec!["2001:db8:1000::/40".parse().unwrap()],
            routed_lengths: vec![48, 56],
            quarantine_secs: 100,
            v4v6: Some("203.0.113.0/28".parse().unwrap()),
        });
        for u in ["ann", "bob"] {
            s.create_user(u, &secrets(), 0).unwrap();
        }
        s
    }

    type Census = BTreeMap<(&'static str, &'static str), u64>;

    /// A tunnel of kind `k % 3` at an address made from `n`, owned by nobody, ann or bob.
    fn create(s: &mut dyn Store, n: u32, owner: u8, kind: u8, routed: bool) -> TunnelRecord {
        let v4 = Ipv4Addr::from(0xc612_0000 + n);
        let (kind, endpoint) = match kind % 3 {
            0 => (Kind::Proto41, Endpoint::Ipv4(v4)),
            1 => (Kind::V6Udp4, Endpoint::Udp4(SocketAddrV4::new(v4, 3653))),
            _ => (Kind::Heartbeat, Endpoint::Ipv4(v4)),
        };
        let mut req = NewTunnel::api(
            [None, Some("ann"), Some("bob")][owner as usize % 3],
            kind,
            endpoint,
        );
        req.routed_length = routed.then_some(56);
        s.create_tunnel(&req, 1).unwrap()
    }

    fn census_by_counting(s: &dyn Store) -> Census {
        let mut m = BTreeMap::new();
        for t in s.tunnels().unwrap() {
            *m.entry((t.spec.kind.as_str(), t.spec.state.as_str()))
                .or_insert(0) += 1;
        }
        m
    }

    fn census(s: &dyn Store) -> Census {
        s.census()
            .unwrap()
            .into_iter()
            .map(|(k, st, n)| ((k.as_str(), st.as_str()), n))
            .collect()
    }

    fn matches(t: &TunnelRecord, f: &TunnelFilter) -> bool {
        let owner_ok = match &f.owner {
            None => true,
            Some(OwnerFilter::Nobody) => t.owner.is_none(),
            Some(OwnerFilter::User(u)) => t.owner.as_deref() == Some(u),
        };
        owner_ok
            && f.origin.is_none_or(|o| o == t.origin)
            && f.kind.is_none_or(|k| k == t.spec.kind)
            && f.state.is_none_or(|s| s == t.spec.state)
            && f.address.is_none_or(|a| a == t.spec.endpoint.address())
            && f.prefix.is_none_or(|p| {
                t.spec
                    .prefixes()
                    .any(|q| q.contains(&p.network()) || p.contains(&q.network()))
            })
    }

    /// Every page of `f`, `size` at a time.
    fn pages(s: &dyn Store, f: &TunnelFilter, size: usize) -> Vec<TunnelRecord> {
        let mut out: Vec<TunnelRecord> = Vec::new();
        loop {
            let page = s
                .tunnel_page(f, out.last().map(|t| t.spec.id), size)
                .unwrap();
            assert!(page.len() <= size);
            let done = page.len() < size;
            out.extend(page);
            if done {
                return out;
            }
        }
    }

    fn the_census_follows_creations_changes_and_deletions(open: Open) {
        let mut s = store(open);
        assert!(s.census().unwrap().is_empty());
        let a = create(&mut *s, 1, 0, 0, false);
        create(&mut *s, 2, 0, 0, false);
        let c = create(&mut *s, 3, 1, 1, true);
        let down = TunnelChange {
            state: Some(State::Down),
            ..Default::default()
        };
        s.update_tunnel(a.spec.id, &down, 2).unwrap();
        s.delete_tunnel(c.spec.id, 3).unwrap();
        let want = BTreeMap::from([(("proto41", "up"), 1), (("proto41", "down"), 1)]);
        assert_eq!(census(&*s), want);
        assert_eq!(census_by_counting(&*s), want);
    }

    fn filters_by_owner_address_prefix_and_lapsed_lifetimes(open: Open) {
        let mut s = store(open);
        let a = create(&mut *s, 1, 1, 0, true);
        let b = create(&mut *s, 2, 2, 1, false);
        let user = |u: &str| TunnelFilter {
            owner: Some(OwnerFilter::User(u.into())),
            ..Default::default()
        };
        assert_eq!(
            s.tunnel_page(&user("ann"), None, 10).unwrap(),
            vec![a.clone()]
        );
        let at = TunnelFilter {
            address: Some(IpAddr::V4(Ipv4Addr::from(0xc612_0002))),
            ..Default::default()
        };
        assert_eq!(s.tunnel_page(&at, None, 10).unwrap(), vec![b.clone()]);
        // An address inside a's routed /56, and a's link /64 itself.
        let routed = a.spec.routed_prefixes[0];
        let inside = TunnelFilter {
            prefix: Some(ipnet::Ipv6Net::new(routed.network(), 128).unwrap()),
            ..Default::default()
        };
        assert_eq!(s.tunnel_page(&inside, None, 10).unwrap(), vec![a.clone()]);
        let link = TunnelFilter {
            prefix: a.spec.link_prefix,
            ..Default::default()
        };
        assert_eq!(s.tunnel_page(&link, None, 10).unwrap(), vec![a.clone()]);
        // Lifetimes: only what lapsed by then.
        let lapse = |at| TunnelChange {
            expires_at: Some(Some(at)),
            ..Default::default()
        };
        s.update_tunnel(a.spec.id, &lapse(50), 2).unwrap();
        s.update_tunnel(b.spec.id, &lapse(90), 2).unwrap();
        let ids = |v: Vec<TunnelRecord>| v.iter().map(|t| t.spec.id).collect::<Vec<_>>();
        assert_eq!(ids(s.expired(49).unwrap()), Vec::<u32>::new());
        assert_eq!(ids(s.expired(60).unwrap()), vec![a.spec.id]);
        assert_eq!(ids(s.expired(90).unwrap()), vec![a.spec.id, b.spec.id]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create { owner: u8, kind: u8, routed: bool },
        Delete { pick: usize },
        Down { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..3, 0u8..3, any::<bool>())
                .prop_map(|(owner, kind, routed)| Op::Create { owner, kind, routed }),
            1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Down { pick }),
        ]
    }

    fn filter() -> impl Strategy<Value = TunnelFilter> {
        (
            prop::option::of(prop_oneof![
                Just(OwnerFilter::Nobody),
                Just(OwnerFilter::User("ann".into())),
                Just(OwnerFilter::User("bob".into())),
            ]),
            prop::option::of(prop::sample::select(vec![
                Kind::Proto41,
                Kind::V6Udp4,
                Kind::Heartbeat,
            ])),
            prop::option::of(prop::sample::select(vec![State::Up, State::Down])),
            prop::option::of(0u32..40),
            prop::option::of(prop::sample::select(vec![
                "2001:db8:10::/48",
                "2001:db8:10:3::/64",
                "2001:db8:1000::/44",
                "2001:db8:1000:200::1/128",
            ])),
        )
            .prop_map(|(owner, kind, state, address, prefix)| TunnelFilter {
                pop: None,
                owner,
                origin: Some(Origin::Api).filter(|_| kind == Some(Kind::Heartbeat)),
                kind,
                state,
                address: address.map(|n| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n))),
                prefix: prefix.map(|p| p.parse().unwrap()),
            })
    }

    /// Every start asks for secrets kept in clear: an index answers, whatever N.
    #[test]
    fn secrets_kept_in_clear_are_found_by_index() {
        let s = SqliteStore::in_memory(PoolSet::default()).unwrap();
        for (sql, index) in [
            (super::super::tunnels::KEYS_IN_CLEAR, "tunnels_key_in_clear"),
            (super::super::users::IN_CLEAR, "users_in_clear"),
        ] {
            let plan: String = s
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(plan.contains(index), "{sql}: {plan}");
        }
    }

    fn the_generation_moves_with_every_change_and_watched_ones_are_found(open: Open) {
        let mut s = store(open);
        let (id0, g0) = s.generation().unwrap();
        let mut seen = vec![g0];
        let mut moved = |s: &dyn Store, what: &str| {
            let (id, g) = s.generation().unwrap();
            assert_eq!(id, id0, "the store's identity stays");
            assert!(!seen.contains(&g), "{what}: generation {g} again");
            seen.push(g);
        };
        let a = create(&mut *s, 1, 0, 0, false);
        moved(&*s, "created");
        let b = create(&mut *s, 2, 1, 2, true);
        moved(&*s, "created with a routed prefix");
        let change = TunnelChange {
            keepalive: Some(Some(30)),
            ..Default::default()
        };
        s.update_tunnel(a.spec.id, &change, 2).unwrap();
        moved(&*s, "updated");
        let routed = TunnelChange {
            add_routed_length: Some(48),
            ..Default::default()
        };
        s.update_tunnel(a.spec.id, &routed, 3).unwrap();
        moved(&*s, "a routed prefix added");
        s.delete_tunnel(b.spec.id, 4).unwrap();
        moved(&*s, "deleted");
        let before = s.generation().unwrap();
        s.census().unwrap();
        s.tunnels().unwrap();
        assert_eq!(s.generation().unwrap(), before, "reads change nothing");

        // Watched: up, and a keepalive, AYIYA or heartbeat.
        create(&mut *s, 3, 0, 2, false);
        let down = create(&mut *s, 4, 0, 2, false);
        let change = TunnelChange {
            state: Some(State::Down),
            ..Default::default()
        };
        s.update_tunnel(down.spec.id, &change, 5).unwrap();
        create(&mut *s, 5, 0, 0, false);
        let want: Vec<u32> = s
            .tunnels()
            .unwrap()
            .iter()
            .filter(|t| crate::broker::watch::watch_of(t).is_some())
            .map(|t| t.spec.id)
            .collect();
        let got: Vec<u32> = s.watched().unwrap().iter().map(|t| t.spec.id).collect();
        assert_eq!(got, want);
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn watched_tunnels_are_read_by_index_on_sqlite() {
        let s = SqliteStore::in_memory(PoolSet::default()).unwrap();
        let plan: String = s
            .conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT id FROM tunnels WHERE {}",
                super::WATCHED
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(plan.contains("tunnels_watched"), "{plan}");
    }

    /// The census always equals a count, and paging through a filter in any page size
    /// gives exactly the tunnels the filter matches, in id order.
    fn census_and_pages_agree_with_a_full_scan(
        open: Open,
        ops: Vec<Op>,
        filters: Vec<TunnelFilter>,
        size: usize,
    ) -> Result<(), TestCaseError> {
        let mut s = store(open);
        let mut n = 0;
        for op in ops {
            let all = s.tunnels().unwrap();
            match op {
                Op::Create {
                    owner,
                    kind,
                    routed,
                } => {
                    n += 1;
                    create(&mut *s, n, owner, kind, routed);
                }
                Op::Delete { pick } if !all.is_empty() => {
                    s.delete_tunnel(all[pick % all.len()].spec.id, 2).unwrap();
                }
                Op::Down { pick } if !all.is_empty() => {
                    let down = TunnelChange {
                        state: Some(State::Down),
                        ..Default::default()
                    };
                    s.update_tunnel(all[pick % all.len()].spec.id, &down, 2)
                        .unwrap();
                }
                _ => {}
            }
            prop_assert_eq!(census(&*s), census_by_counting(&*s));
        }
        let all = s.tunnels().unwrap();
        for f in &filters {
            let want: Vec<TunnelRecord> = all.iter().filter(|t| matches(t, f)).cloned().collect();
            prop_assert_eq!(pages(&*s, f, size), want, "filter {:?}", f);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn census_and_pages_agree_with_a_full_scan_on_sqlite(
            ops in prop::collection::vec(op(), 1..60),
            filters in prop::collection::vec(filter(), 4),
            size in 1usize..7,
        ) {
            census_and_pages_agree_with_a_full_scan(&test_engines::sqlite, ops, filters, size)?;
        }
    }

    proptest! {
        // A database per case: fewer cases; the logic is SQLite's, the engine what varies.
        #![proptest_config(ProptestConfig::with_cases(12))]

        #[test]
        fn census_and_pages_agree_with_a_full_scan_on_postgres(
            ops in prop::collection::vec(op(), 1..60),
            filters in prop::collection::vec(filter(), 4),
            size in 1usize..7,
        ) {
            census_and_pages_agree_with_a_full_scan(&test_engines::postgres, ops, filters, size)?;
        }
    }

    on_every_engine!(
        the_census_follows_creations_changes_and_deletions,
        filters_by_owner_address_prefix_and_lapsed_lifetimes,
        the_generation_moves_with_every_change_and_watched_ones_are_found,
    );
}
