//! [`Directory`] over the store: what a TIC session looks up, read while the server holds
//! the broker's lock for one line.
use tracing::warn;

use super::session::{Directory, PopFacts};
use crate::store::{Store, TunnelRecord};

pub struct StoreDirectory<'a, S> {
    pub store: &'a S,
    pub pop: &'a PopFacts,
}

impl<S: Store> Directory for StoreDirectory<'_, S> {
    fn user_password_md5(&self, user: &str) -> Option<String> {
        match self.store.user(user) {
            // Empty: an account of an older store not upgraded yet; nothing matches.
            Ok(u) => u
                .filter(|u| !u.secrets.disabled())
                .map(|u| u.secrets.tic_md5)
                .filter(|m| !m.is_empty()),
            Err(e) => {
                // A store failure refuses the login rather than ending the process.
                warn!(user, error = %e, "TIC: reading the user failed");
                None
            }
        }
    }

    fn user_tunnels(&self, user: &str) -> Vec<TunnelRecord> {
        self.store.tunnels_of(user).unwrap_or_else(|e| {
            warn!(user, error = %e, "TIC: reading the user's tunnels failed");
            Vec::new()
        })
    }

    fn pop(&self) -> PopFacts {
        self.pop.clone()
    }

    fn pop_of(&self, t: &TunnelRecord) -> PopFacts {
        if t.pop == self.store.pop() {
            return self.pop.clone();
        }
        self.others()
            .into_iter()
            .find(|p| p.pop_id == t.pop)
            .unwrap_or_else(|| self.pop.clone())
    }

    fn pops(&self) -> Vec<PopFacts> {
        let mut pops = vec![self.pop.clone()];
        pops.extend(self.others());
        pops
    }
}

impl<S: Store> StoreDirectory<'_, S> {
    /// The other PoPs as they reported themselves; their `POP Id` is their name.
    /// Heartbeat settings are taken to be this PoP's (one broker, one policy).
    fn others(&self) -> Vec<PopFacts> {
        let pops = self.store.pops().unwrap_or_else(|e| {
            warn!(error = %e, "TIC: reading the PoPs failed");
            Vec::new()
        });
        pops.into_iter()
            .filter(|p| p.name != self.store.pop())
            .filter_map(|p| {
                let r = p.report?;
                Some(PopFacts {
                    pop_id: p.name,
                    ipv4: r.ipv4,
                    ipv6: r.ipv6,
                    ..self.pop.clone()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Endpoint, Kind},
        store::{NewTunnel, PoolSet, SqliteStore},
    };

    #[test]
    fn reads_users_and_their_tunnels_from_the_store() {
        let mut store = SqliteStore::in_memory(PoolSet {
            link: vec!["2001:db8:10::/48".parse().unwrap()],
            routed: vec![],
            routed_lengths: vec![64],
            quarantine_secs: 0,
            v4v6: None,
        })
        .unwrap();
        let secrets = crate::secret::UserSecrets::derive("gus", "gus-password", "broker");
        store.create_user("gus", &secrets, 0).unwrap();
        let t = store
            .create_tunnel(
                &NewTunnel::api(
                    Some("gus"),
                    Kind::Heartbeat,
                    Endpoint::unspecified(Kind::Heartbeat),
                ),
                0,
            )
            .unwrap();
        let pop = PopFacts {
            pop_id: "p".into(),
            ipv4: "192.0.2.1".parse().unwrap(),
            ipv6: None,
            heartbeat_interval: 60,
            heartbeat: true,
        };
        let d = StoreDirectory {
            store: &store,
            pop: &pop,
        };
        // What TIC needs of the password, not the password.
        assert_eq!(d.user_password_md5("gus"), Some(secrets.tic_md5.clone()));
        assert_ne!(d.user_password_md5("gus").as_deref(), Some("gus-password"));
        assert_eq!(d.user_password_md5("nobody"), None);
        assert_eq!(d.user_tunnels("gus"), vec![t]);
        assert!(d.user_tunnels("nobody").is_empty());
    }
}
