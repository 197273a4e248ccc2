//! The pools' bookkeeping: prefixes (link /64s, routed prefixes) and v4v6 inner
//! addresses found free, claimed by name, assigned to a tunnel, and forgotten once their
//! quarantine is over. Ranges never overlap (`alloc` has the arithmetic).
use std::{collections::HashSet, net::Ipv4Addr};

use ipnet::Ipv6Net;

use super::{
    alloc::{self, PoolSet},
    sql::{params, Sql},
    Result, StoreError,
};

/// Hands out a free v4v6 inner address for tunnel `id`: the lowest one neither held nor
/// in quarantine.
pub(super) fn allocate_v4(db: &dyn Sql, pools: &PoolSet, id: u32) -> Result<Ipv4Addr> {
    let pool = pools.v4v6.ok_or(StoreError::NoPool { pool: "v4v6" })?;
    let taken: HashSet<u32> = db
        .rows("SELECT addr FROM v4_allocations", params![], |r| r.get(0))?
        .into_iter()
        .collect();
    let addr =
        alloc::v4_hosts(&pool)
            .find(|a| !taken.contains(a))
            .ok_or(StoreError::PoolExhausted {
                pool: "v4v6",
                len: 32,
            })?;
    db.exec(
        "INSERT INTO v4_allocations (addr, tunnel_id) VALUES (?1, ?2)",
        params![addr, id],
    )?;
    Ok(addr.into())
}

/// Finds and records a free prefix of length `len` in `pools` (PoP `pop`'s), starting where
/// the PoP's previous search of this length stopped and wrapping around once. Allocations never overlap: the
/// one allocation that could overlap a candidate is the one starting closest below its end.
pub(super) fn allocate(
    db: &dyn Sql,
    pop: &str,
    kind: &'static str,
    pools: &[Ipv6Net],
    len: u8,
) -> Result<Ipv6Net> {
    let block = alloc::block(len);
    let cursor: Option<i64> = db.first(
        "SELECT next FROM cursors WHERE pop = ?3 AND pool = ?1 AND len = ?2",
        params![kind, len, pop],
        |r| r.get(0),
    )?;
    let cursor = cursor.map(alloc::from_sql);
    for pool in pools.iter().filter(|p| p.prefix_len() <= len) {
        let (first, last) = (alloc::start(pool), alloc::end(pool));
        let from = cursor
            .filter(|c| (first..=last).contains(c))
            .unwrap_or(first);
        let mut cand = alloc::align_up(from, len);
        let mut wrapped = from == first;
        loop {
            let fits = cand
                .and_then(|c| c.checked_add(block.wrapping_sub(1)))
                .filter(|e| *e <= last);
            let (Some(c), Some(c_end)) = (cand, fits) else {
                if wrapped {
                    break;
                }
                wrapped = true;
                cand = Some(first);
                continue;
            };
            if wrapped && c >= from && from != first {
                break;
            }
            let below: Option<i64> = db.first(
                "SELECT \"end\" FROM allocations WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
                params![alloc::to_sql(c_end)],
                |r| r.get(0),
            )?;
            match below.map(alloc::from_sql) {
                Some(e) if e >= c => cand = e.checked_add(1).and_then(|x| alloc::align_up(x, len)),
                _ => {
                    db.exec("INSERT INTO allocations (start, \"end\", len, pool) VALUES (?1, ?2, ?3, ?4)",
                        params![alloc::to_sql(c), alloc::to_sql(c_end), len, kind],
                    )?;
                    let next = c_end.wrapping_add(1);
                    db.exec(
                        "INSERT INTO cursors (pop, pool, len, next) VALUES (?4, ?1, ?2, ?3) \
                         ON CONFLICT(pop, pool, len) DO UPDATE SET next = excluded.next",
                        params![kind, len, alloc::to_sql(next), pop],
                    )?;
                    return Ok(alloc::prefix(c, len));
                }
            }
        }
    }
    Err(StoreError::PoolExhausted { pool: kind, len })
}

/// Records a prefix the request named: it must lie in one of `pools` and overlap nothing
/// allocated or in quarantine.
pub(super) fn claim(
    db: &dyn Sql,
    kind: &'static str,
    pools: &[Ipv6Net],
    prefix: Ipv6Net,
) -> Result<Ipv6Net> {
    let prefix = prefix.trunc();
    if !pools.iter().any(|p| p.contains(&prefix)) {
        return Err(StoreError::OutsidePool { pool: kind, prefix });
    }
    let (c, c_end) = (alloc::start(&prefix), alloc::end(&prefix));
    let below: Option<i64> = db.first(
        "SELECT \"end\" FROM allocations WHERE start <= ?1 ORDER BY start DESC LIMIT 1",
        params![alloc::to_sql(c_end)],
        |r| r.get(0),
    )?;
    if below.is_some_and(|e| alloc::from_sql(e) >= c) {
        return Err(StoreError::PrefixInUse { prefix });
    }
    db.exec(
        "INSERT INTO allocations (start, \"end\", len, pool) VALUES (?1, ?2, ?3, ?4)",
        params![
            alloc::to_sql(c),
            alloc::to_sql(c_end),
            prefix.prefix_len(),
            kind
        ],
    )?;
    Ok(prefix)
}

pub(super) fn assign(db: &dyn Sql, prefix: &Ipv6Net, id: u32) -> Result<()> {
    db.exec(
        "UPDATE allocations SET tunnel_id = ?1, freed_at = NULL WHERE start = ?2",
        params![id, alloc::to_sql(alloc::start(prefix))],
    )?;
    Ok(())
}

/// Forgets freed allocations whose quarantine is over.
pub(super) fn end_quarantine(db: &dyn Sql, pools: &PoolSet, now: u64) -> Result<()> {
    if let Some(expired) = now.checked_sub(pools.quarantine_secs) {
        db.exec(
            "DELETE FROM allocations WHERE tunnel_id IS NULL AND freed_at <= ?1",
            params![expired],
        )?;
        db.exec(
            "DELETE FROM v4_allocations WHERE tunnel_id IS NULL AND freed_at <= ?1",
            params![expired],
        )?;
    }
    Ok(())
}
