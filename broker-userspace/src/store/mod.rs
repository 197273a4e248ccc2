//! The durable state: users, tunnels and prefix allocations. The store is the truth; the
//! data plane's maps and the kernel's routes are projections of it.
//!
//! [`Store`] is the narrow interface the rest of the controller uses; [`SqliteStore`] is
//! the embedded default, for one PoP; [`PgStore`] is shared by several PoPs
//! (docs/MULTI-POP.md). The store's logic is written once over a narrow SQL interface
//! ([`sql`]) and implements [`Store`] for every engine ([`engine`]).

mod alloc;
mod allocations;
mod any;
mod engine;
mod files;
pub(crate) mod pops;
mod postgres;
mod query;
mod records;
mod remembered;
mod schema;
pub(crate) mod sql;
mod tunnels;
mod users;

/// The migrations, for tests that build a store as an older version left it.
#[cfg(test)]
pub(crate) fn schema_for_tests() -> &'static [&'static str] {
    schema::MIGRATIONS
}
#[cfg(test)]
mod pops_tests;
mod sqlite;
#[cfg(test)]
pub(crate) mod test_engines;

use ipnet::Ipv6Net;

use crate::model::{Endpoint, Kind, State, TunnelSpec};

pub use alloc::PoolSet;
pub use any::{AnyStore, PASSWORD_ENV};
pub use pops::{valid_name as valid_pop_name, PopRecord, PopReport};
pub use postgres::{PgStore, Tls as PgTls};
pub use remembered::Remembered;
pub use sqlite::SqliteStore;

/// The PoP name of a store opened with pools alone (tests, tools).
pub const DEFAULT_POP: &str = "pop1";

/// The PoP a store is opened for: its name (`pop.name`) and its pools, which it publishes
/// in the store so that any PoP can create tunnels for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub pop: String,
    pub pools: PoolSet,
}

impl From<PoolSet> for Home {
    fn from(pools: PoolSet) -> Self {
        Self {
            pop: DEFAULT_POP.to_string(),
            pools,
        }
    }
}

/// How a tunnel came to be: declared in the config file (reconciled at every start),
/// created at run time through the API, or negotiated by a TSP client (both live only in
/// the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Static,
    Api,
    Tsp,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Static => "static",
            Origin::Api => "api",
            Origin::Tsp => "tsp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Origin::Static, Origin::Api, Origin::Tsp]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// The store's identity and a PoP's generation ([`Store::generation`]).
pub type Generation = (i64, u64);

/// A change the store notified (PostgreSQL): tunnel `id` of this PoP changed, and the
/// PoP's generation after the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notified {
    pub id: u32,
    pub generation: u64,
}

/// What the store's listener hears ([`PgStore::listen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Listening (again): changes notified while it was not are lost, and the PoP's
    /// generation says whether there were any.
    Listening,
    Changed(Notified),
}

/// Which tunnels a start reads ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// Every tunnel: a cold start reconciles them all.
    All,
    /// The watched ones ([`Store::watched`]): a restart over stamped maps needs only those.
    Watched,
}

/// Tunnels as of one generation ([`Store::generation`]), read ahead of need on another
/// connection while the data plane loads; used only if the store is still at that
/// generation.
#[derive(Debug)]
pub struct Preloaded {
    pub what: Ahead,
    pub generation: (i64, u64),
    pub tunnels: Vec<TunnelRecord>,
}

/// A tunnel as stored.
#[derive(Debug, Clone, Eq)]
pub struct TunnelRecord {
    pub spec: TunnelSpec,
    /// The PoP it lives on: the only one that projects it.
    pub pop: String,
    pub owner: Option<String>,
    pub origin: Origin,
    /// For the protocols that authenticate the tunnel itself (heartbeat, AYIYA, TIC).
    pub password: String,
    /// For endpoint updates (`/nic/update`): in clear only in the record `create_tunnel`
    /// returns (shown once); kept as its SHA-256, `update_key_hash`.
    pub update_key: Option<String>,
    pub update_key_hash: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// When the tunnel lapses unless renewed (TSP lifetimes): an anonymous one is deleted,
    /// a user's goes down until the user's next session.
    pub expires_at: Option<u64>,
}

/// Records are equal when they describe the same tunnel: the update key shown once at
/// creation is not part of what is kept.
impl PartialEq for TunnelRecord {
    fn eq(&self, o: &Self) -> bool {
        self.spec == o.spec
            && self.pop == o.pop
            && self.owner == o.owner
            && self.origin == o.origin
            && self.password == o.password
            && self.update_key_hash == o.update_key_hash
            && self.created_at == o.created_at
            && self.updated_at == o.updated_at
            && self.expires_at == o.expires_at
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// What is kept of the password ([`crate::secret`]).
    pub secrets: crate::secret::UserSecrets,
    pub created_at: u64,
}

/// What a run-time tunnel request asks for; the store allocates the rest: the link /64
/// (or, for v4v6, the client's inner IPv4), an id and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTunnel {
    /// The PoP to create it on (its pools); `None`: the store's own.
    pub pop: Option<String>,
    pub owner: Option<String>,
    /// `Api` or `Tsp`.
    pub origin: Origin,
    pub kind: Kind,
    pub state: State,
    pub endpoint: Endpoint,
    pub mtu: u16,
    pub keepalive: Option<u32>,
    pub expires_at: Option<u64>,
    /// Length of a routed prefix to allocate, if any.
    pub routed_length: Option<u8>,
    /// A specific link /64 from the link pools instead of the next free one.
    pub link_prefix: Option<Ipv6Net>,
    /// A specific routed prefix from the routed pools (instead of `routed_length`).
    pub routed_prefix: Option<Ipv6Net>,
}

#[cfg(test)]
impl NewTunnel {
    /// For tests: an up tunnel requested through the API, MTU 1280, nothing else asked.
    pub fn api(owner: Option<&str>, kind: Kind, endpoint: Endpoint) -> Self {
        Self {
            pop: None,
            owner: owner.map(str::to_string),
            origin: Origin::Api,
            kind,
            state: State::Up,
            endpoint,
            mtu: 1280,
            keepalive: None,
            expires_at: None,
            routed_length: None,
            link_prefix: None,
            routed_prefix: None,
        }
    }
}

/// Changes to a tunnel; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelChange {
    /// Only between kinds that carry the same family (proto-41 and v6udpv4: a TSP client
    /// that moved behind a NAT, or out from behind one).
    pub kind: Option<Kind>,
    pub endpoint: Option<Endpoint>,
    pub state: Option<State>,
    pub mtu: Option<u16>,
    pub keepalive: Option<Option<u32>>,
    pub expires_at: Option<Option<u64>>,
    /// Allocates a routed prefix of this length if the tunnel has none yet.
    pub add_routed_length: Option<u8>,
    /// Moves the tunnel to this PoP: it gets new prefixes (or inner IPv4) from that
    /// PoP's pools, of the same lengths; the old ones go into quarantine.
    pub pop: Option<String>,
    /// A new tunnel password (AYIYA's and the heartbeat's shared secret).
    pub password: Option<String>,
}

/// Which tunnels a listing asks for; each field left `None` matches every tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelFilter {
    pub pop: Option<String>,
    pub owner: Option<OwnerFilter>,
    pub origin: Option<Origin>,
    pub kind: Option<Kind>,
    pub state: Option<State>,
    /// The endpoint's address (any port).
    pub address: Option<std::net::IpAddr>,
    /// Tunnels whose link or routed prefix overlaps this one (an address is a /128).
    pub prefix: Option<Ipv6Net>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerFilter {
    /// Tunnels nobody owns (static ones, anonymous TSP).
    Nobody,
    User(String),
}

/// What reconciling the static tunnels changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticSync {
    pub added: Vec<u32>,
    pub changed: Vec<u32>,
    pub removed: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("preparing the store's files at {path}")]
    Files {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no tunnel {id}")]
    NoSuchTunnel { id: u32 },
    #[error("no PoP {name:?} in the store")]
    NoSuchPop { name: String },
    #[error("no user {name:?}")]
    NoSuchUser { name: String },
    #[error("user {name:?} exists")]
    UserExists { name: String },
    #[error("user {name:?} still owns tunnels {tunnels:?}")]
    UserHasTunnels { name: String, tunnels: Vec<u32> },
    #[error("{remote} is already the endpoint of tunnel {id}")]
    DuplicateEndpoint { remote: Endpoint, id: u32 },
    #[error("the {pool} pool has no free /{len}")]
    PoolExhausted { pool: &'static str, len: u8 },
    #[error("no {pool} pool is configured (pools.{pool})")]
    NoPool { pool: &'static str },
    #[error("{what}")]
    Invalid { what: String },
    #[error("{prefix} is not inside the {pool} pools")]
    OutsidePool { pool: &'static str, prefix: Ipv6Net },
    #[error("{prefix} overlaps a prefix in use or in quarantine")]
    PrefixInUse { prefix: Ipv6Net },
    #[error("routed prefix length /{len} is not offered (pools.routed_lengths: {offered:?})")]
    LengthNotOffered { len: u8, offered: Vec<u8> },
    #[error("tunnel id {id} is taken by a tunnel created at run time")]
    IdTaken { id: u32 },
    #[error("{prefix} of static tunnel {id} is already used by tunnel {other}")]
    PrefixTaken {
        prefix: Ipv6Net,
        id: u32,
        other: u32,
    },
    #[error("the store's schema version {found} is newer than this build's {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("opening the store at {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store")]
    Sql(#[from] rusqlite::Error),
    #[error("store (PostgreSQL)")]
    Postgres(#[from] ::postgres::Error),
    /// The shared store cannot be reached (PostgreSQL away, connection lost): what needs
    /// it fails, and is answered as unavailable (HTTP 503).
    #[error("the store is unavailable: {what}")]
    Unavailable { what: String },
    #[error("corrupt store: {what}")]
    Corrupt { what: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store as the controller uses it. Every method is one transaction.
pub trait Store: Send {
    /// This PoP's tunnels, in id order: for the few paths that need them all (start,
    /// reload).
    fn tunnels(&self) -> Result<Vec<TunnelRecord>>;
    fn tunnel(&self, id: u32) -> Result<Option<TunnelRecord>>;
    /// Tunnel `id` as the store holds it now, never from what a PoP remembers of it while
    /// the store is away ([`remembered`]): following a change notified by the store must
    /// not take an old copy for the change.
    fn tunnel_now(&self, id: u32) -> Result<Option<TunnelRecord>> {
        self.tunnel(id)
    }
    /// Up to `limit` tunnels matching `filter` with ids above `after`, in id order.
    fn tunnel_page(
        &self,
        filter: &TunnelFilter,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<TunnelRecord>>;
    /// The PoP the store was opened for (`pop.name`).
    fn pop(&self) -> &str;
    /// How many of this PoP's tunnels there are of each kind in each state (kept, not
    /// counted).
    fn census(&self) -> Result<Vec<(Kind, State, u64)>>;
    /// Every PoP of the store, with its tunnel counts.
    fn pops(&self) -> Result<Vec<PopRecord>>;
    /// Refreshes what this PoP says of itself (every few seconds).
    fn report_pop(&mut self, report: &PopReport, now: u64) -> Result<()>;
    /// This PoP's tunnels whose lifetime ended by `now`.
    fn expired(&self, now: u64) -> Result<Vec<TunnelRecord>>;
    /// This PoP's up tunnels whose clients are expected to be heard (a keepalive, AYIYA,
    /// heartbeat): what the liveness watchers need (`broker::watch`).
    fn watched(&self) -> Result<Vec<TunnelRecord>>;
    /// The store's identity and this PoP's generation, which changes with every change to
    /// one of its tunnels (made by anyone, on any PoP) and never returns to an earlier
    /// value.
    fn generation(&self) -> Result<(i64, u64)>;
    /// Allocates the link /64 (and a routed prefix when asked), an id, a password and an
    /// update key.
    fn create_tunnel(&mut self, req: &NewTunnel, now: u64) -> Result<TunnelRecord>;
    /// [`Store::create_tunnel`] for each request, in one transaction (a bulk import):
    /// each request succeeds or fails on its own.
    fn create_tunnels(&mut self, reqs: &[NewTunnel], now: u64)
        -> Result<Vec<Result<TunnelRecord>>>;
    fn update_tunnel(&mut self, id: u32, change: &TunnelChange, now: u64) -> Result<TunnelRecord>;
    /// Deletes a tunnel; its allocated prefixes go into quarantine.
    fn delete_tunnel(&mut self, id: u32, now: u64) -> Result<TunnelRecord>;
    /// Deletes a tunnel that never existed outside the store (its creation is being
    /// undone): its prefixes are free at once, no quarantine (nobody can have used them).
    fn discard_tunnel(&mut self, id: u32) -> Result<()>;
    /// Puts back a tunnel just deleted (undoing a deletion whose later steps failed),
    /// prefixes, credentials and all.
    fn restore_tunnel(&mut self, record: &TunnelRecord) -> Result<()>;
    /// Makes this PoP's static tunnels exactly `wanted` (declarative: missing means
    /// removed).
    fn sync_static(&mut self, wanted: &[TunnelSpec], now: u64) -> Result<StaticSync>;

    fn users(&self) -> Result<Vec<UserRecord>>;
    fn user(&self, name: &str) -> Result<Option<UserRecord>>;
    fn create_user(
        &mut self,
        name: &str,
        secrets: &crate::secret::UserSecrets,
        now: u64,
    ) -> Result<UserRecord>;
    /// Replaces what is kept of a user's password (a new password, or the upgrade of a
    /// store that kept it in clear).
    fn set_user_secrets(&mut self, name: &str, secrets: &crate::secret::UserSecrets) -> Result<()>;
    /// Users whose password a store from before version 3 kept in clear, with it.
    fn users_in_clear(&self) -> Result<Vec<(String, String)>>;
    /// Tunnels whose update key a store from before version 3 kept in clear, with it.
    fn update_keys_in_clear(&self) -> Result<Vec<(u32, String)>>;
    /// Keeps only the SHA-256 of tunnel `id`'s update key.
    fn set_update_key_hash(&mut self, id: u32, hash: &str) -> Result<()>;
    /// Makes sure what was overwritten is gone from the files too (SQLite: the WAL is
    /// written back and emptied; deleted content is zeroed as it goes, `secure_delete`).
    fn scrub(&mut self) -> Result<()>;
    fn delete_user(&mut self, name: &str) -> Result<()>;

    /// The tunnel a user's TSP sessions use: the one carrying IPv6 (proto-41 or v6udpv4)
    /// or the v4v6 one.
    fn tsp_tunnel(&self, owner: &str, v4v6: bool) -> Result<Option<TunnelRecord>>;

    /// A user's tunnels in id order (TIC `tunnel list`).
    fn tunnels_of(&self, owner: &str) -> Result<Vec<TunnelRecord>>;

    /// The tunnel whose link /64 is `link` (heartbeats name the client's `::2`).
    fn tunnel_by_link(&self, link: &Ipv6Net) -> Result<Option<TunnelRecord>>;

    /// Adds one to a named counter kept across restarts and returns the new value.
    fn bump(&mut self, counter: &str) -> Result<u64>;
    fn counter(&self, counter: &str) -> Result<u64>;

    /// While the store is away: tunnel `id`'s endpoint as its client's packets moved it,
    /// kept to be written when the store returns ([`Remembered`]); the tunnel as it is now.
    fn defer_endpoint(&mut self, id: u32, _endpoint: Endpoint, _now: u64) -> Result<TunnelRecord> {
        Err(StoreError::Unavailable {
            what: format!("tunnel {id}'s new endpoint cannot wait in this store"),
        })
    }

    /// Writes the deferred endpoints, each unless its tunnel changed in the store since;
    /// returns each tunnel and whether its endpoint was written.
    fn flush_deferred(&mut self, _now: u64) -> Result<Vec<(u32, bool)>> {
        Ok(Vec::new())
    }
}

/// A random token of `len` characters from an unambiguous alphabet (passwords, update
/// keys).
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
