//! Portal sessions: a random token in an HttpOnly cookie names a session kept in memory
//! (only its SHA-256 is kept, so the table holds nothing a cookie could be made from).
//! A restart of the controller logs everyone out; nothing of a session is in the store.
//! Bounded per user and in all, so that logins cannot exhaust memory.
//!
//! Every form carries a CSRF token: the session's own, or before login that of a
//! `csrf` cookie (double submit), compared in constant time. Pure: time is passed in.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// Sessions one user may hold at once; a login beyond evicts their oldest.
pub const PER_USER: usize = 16;
/// Sessions in all; a login beyond evicts the oldest.
pub const IN_ALL: usize = 100_000;

/// A logged-in visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// What this session's forms carry.
    pub csrf: String,
    /// The account as it was at login ([`stamp`]): a session outlives no change of its
    /// password, and no account deleted and made again under its name.
    pub stamp: String,
    started: Instant,
}

/// What ties a session to the account it logged in to: a hash of what is kept of the
/// password (which a new password, or disabling, changes) and of when the account was
/// made.
pub fn stamp(u: &crate::store::UserRecord) -> String {
    let mut h = Sha256::new();
    h.update(u.secrets.password_hash.as_bytes());
    h.update(u.created_at.to_be_bytes());
    crate::secret::hex(h.finalize())
}

#[derive(Debug)]
pub struct Sessions {
    by_hash: HashMap<[u8; 32], Session>,
    lifetime: Duration,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A token: 32 random characters of 57 (about 187 bits).
pub fn token() -> String {
    crate::store::random_token(32)
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            by_hash: HashMap::new(),
            lifetime,
        }
    }

    /// Starts a session for `user` (its account's [`stamp`]); returns its token (for the
    /// cookie).
    pub fn start(&mut self, user: &str, stamp: &str, now: Instant) -> String {
        self.by_hash
            .retain(|_, s| now.duration_since(s.started) < self.lifetime);
        let theirs: Vec<([u8; 32], Instant)> = self
            .by_hash
            .iter()
            .filter(|(_, s)| s.user == user)
            .map(|(h, s)| (*h, s.started))
            .collect();
        if theirs.len() >= PER_USER {
            if let Some((h, _)) = theirs.iter().min_by_key(|(_, t)| *t) {
                self.by_hash.remove(h);
            }
        }
        if self.by_hash.len() >= IN_ALL {
            let oldest = self
                .by_hash
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(h, _)| *h);
            if let Some(h) = oldest {
                self.by_hash.remove(&h);
            }
        }
        let t = token();
        self.by_hash.insert(
            hash(&t),
            Session {
                user: user.to_string(),
                csrf: token(),
                stamp: stamp.to_string(),
                started: now,
            },
        );
        t
    }

    /// The session `token` names, if it has not ended.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Session> {
        let h = hash(token);
        match self.by_hash.get(&h) {
            Some(s) if now.duration_since(s.started) < self.lifetime => Some(s.clone()),
            Some(_) => {
                self.by_hash.remove(&h);
                None
            }
            None => None,
        }
    }

    /// The account changed by this session's own hand (its password): it goes on.
    pub fn restamp(&mut self, token: &str, stamp: &str) {
        if let Some(s) = self.by_hash.get_mut(&hash(token)) {
            s.stamp = stamp.to_string();
        }
    }

    /// Logs out.
    pub fn end(&mut self, token: &str) {
        self.by_hash.remove(&hash(token));
    }

    /// Ends every session of `user` but `keep` (a changed password, a disabled or
    /// deleted account).
    pub fn end_user(&mut self, user: &str, keep: Option<&str>) {
        let keep = keep.map(hash);
        self.by_hash
            .retain(|h, s| s.user != user || Some(*h) == keep);
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Whether a form's token is the one expected (both present and equal).
pub fn csrf_ok(expected: Option<&str>, presented: Option<&str>) -> bool {
    match (expected, presented) {
        (Some(e), Some(p)) if !e.is_empty() => crate::secret::same(e, p),
        _ => false,
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_at_their_lifetime_logout_and_for_their_user() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(3600));
        let a = s.start("alice", "st", t0);
        let b = s.start("bob", "st", t0);
        let a2 = s.start("alice", "st", t0);
        assert_eq!(s.get(&a, t0).unwrap().user, "alice");
        assert_ne!(s.get(&a, t0).unwrap().csrf, s.get(&a2, t0).unwrap().csrf);
        assert_eq!(s.get("nonsense", t0), None);
        s.end_user("alice", Some(&a2));
        assert_eq!(s.get(&a, t0), None);
        assert!(s.get(&a2, t0).is_some());
        s.end(&a2);
        assert_eq!(s.get(&a2, t0), None);
        assert!(s.get(&b, t0 + Duration::from_secs(3599)).is_some());
        assert_eq!(s.get(&b, t0 + Duration::from_secs(3600)), None);
        assert!(s.is_empty(), "an ended session is dropped when seen");
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_sessions() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(3600));
        let first = s.start("alice", "st", t0);
        for i in 1..PER_USER as u64 + 5 {
            s.start("alice", "st", t0 + Duration::from_millis(i));
        }
        assert_eq!(s.len(), PER_USER);
        assert_eq!(s.get(&first, t0), None, "the oldest went first");
    }

    #[test]
    fn tokens_and_cookies() {
        assert!(csrf_ok(Some("abc"), Some("abc")));
        assert!(!csrf_ok(Some("abc"), Some("abd")));
        assert!(!csrf_ok(Some("abc"), None));
        assert!(!csrf_ok(None, Some("abc")));
        assert!(!csrf_ok(Some(""), Some("")));
        let h = "a=1; broker_session=xyz; broker_csrf=q";
        assert_eq!(cookie(h, "broker_session"), Some("xyz"));
        assert_eq!(cookie(h, "broker_csrf"), Some("q"));
        assert_eq!(cookie(h, "session"), None);
    }
}
