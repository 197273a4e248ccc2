//! One implementation of [`Store`] for every engine: each method is the engine-neutral
//! logic ([`query`], [`tunnels`], [`users`]) run in one of the engine's transactions.
use ipnet::Ipv6Net;

use super::{
    pops, query, sql::Sql, tunnels, users, Home, NewTunnel, PopRecord, PopReport, Result,
    StaticSync, Store, TunnelChange, TunnelFilter, TunnelRecord, UserRecord,
};
use crate::{
    model::{Kind, State, TunnelSpec},
    secret::UserSecrets,
};

/// What an engine gives the store's logic: a view to read in, a transaction to write in.
pub trait Engine: Send {
    /// Runs `f` reading the store as it is (no write is made through it).
    /// (`Send`: an engine may run it on a thread of its own.)
    fn read<T: Send>(&self, f: impl FnOnce(&dyn Sql) -> Result<T> + Send) -> Result<T>;
    /// Runs `f` in a transaction, committed when `f` succeeds and rolled back otherwise.
    fn write<T: Send>(&mut self, f: impl FnOnce(&dyn Sql, &Home) -> Result<T> + Send) -> Result<T>;
    /// The PoP the store was opened for.
    fn home(&self) -> &Home;
    /// [`Store::scrub`]: the engine's own business.
    fn scrub(&mut self) -> Result<()>;
}

impl<E: Engine> Store for E {
    fn tunnels(&self) -> Result<Vec<TunnelRecord>> {
        let pop = &self.home().pop;
        self.read(|db| query::all(db, pop))
    }

    fn tunnel(&self, id: u32) -> Result<Option<TunnelRecord>> {
        self.read(|db| query::one(db, id))
    }

    fn tunnel_page(
        &self,
        filter: &TunnelFilter,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<TunnelRecord>> {
        self.read(|db| query::page(db, filter, after, limit))
    }

    fn pop(&self) -> &str {
        &self.home().pop
    }

    fn census(&self) -> Result<Vec<(Kind, State, u64)>> {
        let pop = &self.home().pop;
        self.read(|db| query::census(db, pop))
    }

    fn pops(&self) -> Result<Vec<PopRecord>> {
        self.read(pops::all)
    }

    fn report_pop(&mut self, report: &PopReport, now: u64) -> Result<()> {
        self.write(|db, home| pops::report(db, &home.pop, report, now))
    }

    fn expired(&self, now: u64) -> Result<Vec<TunnelRecord>> {
        let pop = &self.home().pop;
        self.read(|db| query::expired(db, pop, now))
    }

    fn watched(&self) -> Result<Vec<TunnelRecord>> {
        let pop = &self.home().pop;
        self.read(|db| query::watched(db, pop))
    }

    fn generation(&self) -> Result<(i64, u64)> {
        let pop = &self.home().pop;
        self.read(|db| query::generation(db, pop))
    }

    fn create_tunnel(&mut self, req: &NewTunnel, now: u64) -> Result<TunnelRecord> {
        self.write(|db, home| tunnels::create_in(db, home, req, now))
    }

    fn create_tunnels(
        &mut self,
        reqs: &[NewTunnel],
        now: u64,
    ) -> Result<Vec<Result<TunnelRecord>>> {
        self.write(|db, home| tunnels::create_many(db, home, reqs, now))
    }

    fn update_tunnel(&mut self, id: u32, change: &TunnelChange, now: u64) -> Result<TunnelRecord> {
        self.write(|db, home| tunnels::update(db, home, id, change, now))
    }

    fn delete_tunnel(&mut self, id: u32, now: u64) -> Result<TunnelRecord> {
        self.write(|db, _| tunnels::delete(db, id, now))
    }

    fn discard_tunnel(&mut self, id: u32) -> Result<()> {
        self.write(|db, _| tunnels::discard(db, id))
    }

    fn restore_tunnel(&mut self, record: &TunnelRecord) -> Result<()> {
        self.write(|db, _| tunnels::restore(db, record))
    }

    fn sync_static(&mut self, wanted: &[TunnelSpec], now: u64) -> Result<StaticSync> {
        self.write(|db, home| tunnels::sync_static(db, home, wanted, now))
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        self.read(users::all)
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.read(|db| users::one(db, name))
    }

    fn create_user(&mut self, name: &str, secrets: &UserSecrets, now: u64) -> Result<UserRecord> {
        self.write(|db, _| users::create(db, name, secrets, now))
    }

    fn set_user_secrets(&mut self, name: &str, secrets: &UserSecrets) -> Result<()> {
        self.write(|db, _| users::set_secrets(db, name, secrets))
    }

    fn users_in_clear(&self) -> Result<Vec<(String, String)>> {
        self.read(users::in_clear)
    }

    fn update_keys_in_clear(&self) -> Result<Vec<(u32, String)>> {
        self.read(tunnels::keys_in_clear)
    }

    fn set_update_key_hash(&mut self, id: u32, hash: &str) -> Result<()> {
        self.write(|db, _| tunnels::set_update_key_hash(db, id, hash))
    }

    fn scrub(&mut self) -> Result<()> {
        Engine::scrub(self)
    }

    fn delete_user(&mut self, name: &str) -> Result<()> {
        self.write(|db, _| users::delete(db, name))
    }

    fn tsp_tunnel(&self, owner: &str, v4v6: bool) -> Result<Option<TunnelRecord>> {
        self.read(|db| query::tsp_tunnel(db, owner, v4v6))
    }

    fn tunnels_of(&self, owner: &str) -> Result<Vec<TunnelRecord>> {
        self.read(|db| query::of_owner(db, owner))
    }

    fn tunnel_by_link(&self, link: &Ipv6Net) -> Result<Option<TunnelRecord>> {
        self.read(|db| query::by_link(db, link))
    }

    fn bump(&mut self, counter: &str) -> Result<u64> {
        self.write(|db, _| tunnels::bump(db, counter))
    }

    fn counter(&self, counter: &str) -> Result<u64> {
        self.read(|db| tunnels::get_counter(db, counter))
    }
}
