//! Secrets: comparing them without revealing where they differ, and what is kept of them
//! at rest. An account password is kept only as what each protocol needs to check it:
//! an argon2id hash (HTTP basic, TSP PLAIN), MD5 hex of it (TIC's `authenticate md5`
//! answers MD5(challenge + MD5hex(password))), and H(user:realm:password) for TSP's
//! DIGEST-MD5 in the realm it was set in. An update key is kept as its SHA-256 (it is
//! random, so a fast hash is enough). A tunnel's own password stays in clear: TIC hands
//! it to aiccu, and heartbeats are MD5 over it (docs/SECURITY.md).
use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use md5::{Digest, Md5};

/// Compares in time independent of where `a` and `b` differ (only of their lengths).
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What precedes the secrets of a disabled account.
const DISABLED: &str = "!";

/// What is kept of an account password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSecrets {
    /// argon2id, in the PHC string format (parameters and salt included).
    pub password_hash: String,
    /// MD5 hex of the password (TIC).
    pub tic_md5: String,
    /// The TSP realm `digest_ha1` was made for.
    pub digest_realm: String,
    /// Hex of MD5(user:realm:password) (TSP DIGEST-MD5).
    pub digest_ha1: String,
}

impl UserSecrets {
    /// Derives them from the password (slow: argon2; not on an async thread).
    pub fn derive(user: &str, password: &str, realm: &str) -> Self {
        Self {
            password_hash: hash_password(password),
            tic_md5: hex(Md5::digest(password.as_bytes())),
            digest_realm: realm.to_string(),
            digest_ha1: hex(digest_inner(user, realm, password)),
        }
    }

    /// Whether the account is disabled: its secrets are kept behind a `!` (as a locked
    /// Unix password is), so that no protocol's check can succeed with them.
    pub fn disabled(&self) -> bool {
        self.password_hash.starts_with(DISABLED)
    }

    /// The same secrets, disabled or enabled.
    pub fn with_disabled(&self, disabled: bool) -> Self {
        let mark = |v: &str| {
            let bare = v.strip_prefix(DISABLED).unwrap_or(v);
            if disabled {
                format!("{DISABLED}{bare}")
            } else {
                bare.to_string()
            }
        };
        Self {
            password_hash: mark(&self.password_hash),
            tic_md5: mark(&self.tic_md5),
            digest_realm: self.digest_realm.clone(),
            digest_ha1: mark(&self.digest_ha1),
        }
    }

    /// H(user:realm:password) for `realm`, if that is the realm it was kept for.
    pub fn digest_inner(&self, realm: &str) -> Option<[u8; 16]> {
        if self.digest_realm != realm || self.digest_ha1.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.digest_ha1[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }
}

/// MD5(user:realm:password), the start of DIGEST-MD5's A1.
pub fn digest_inner(user: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    for p in [user, ":", realm, ":", password] {
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// argon2id with the crate's defaults (19 MiB, two passes): tens of milliseconds.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters")
        .to_string()
}

/// Checks a password against [`hash_password`]'s result (slow, as that).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// SHA-256 hex of a random key (update keys).
pub fn hash_key(key: &str) -> String {
    hex(sha2::Sha256::digest(key.as_bytes()))
}

pub fn verify_key(key: &str, hash: &str) -> bool {
    same(&hash_key(key), hash)
}

pub fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_equal() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }

    #[test]
    fn what_is_kept_checks_the_password_and_is_not_it() {
        let s = UserSecrets::derive("alice", "wonderland", "broker");
        assert!(!format!("{s:?}").contains("wonderland"));
        assert!(s.password_hash.starts_with("$argon2id$"));
        assert!(verify_password("wonderland", &s.password_hash));
        assert!(!verify_password("wonderlanD", &s.password_hash));
        assert!(!verify_password("wonderland", "not a hash"));
        // TIC: md5hex("wonderland").
        assert_eq!(s.tic_md5, hex(Md5::digest(b"wonderland")));
        // DIGEST-MD5: only for the realm it was made in.
        assert_eq!(
            s.digest_inner("broker"),
            Some(digest_inner("alice", "broker", "wonderland"))
        );
        assert_eq!(s.digest_inner("other"), None);
        // Two derivations: different salts.
        let t = UserSecrets::derive("alice", "wonderland", "broker");
        assert_ne!(s.password_hash, t.password_hash);
    }

    #[test]
    fn disabled_secrets_pass_no_check_and_enabling_restores_them() {
        let s = UserSecrets::derive("alice", "wonderland", "broker");
        let off = s.with_disabled(true);
        assert!(off.disabled() && !s.disabled());
        assert_eq!(off.with_disabled(true), off, "disabling twice is once");
        assert!(!verify_password("wonderland", &off.password_hash));
        assert_eq!(off.digest_inner("broker"), None);
        assert_ne!(off.tic_md5, s.tic_md5);
        assert_eq!(off.with_disabled(false), s);
    }

    #[test]
    fn update_keys_are_kept_as_sha256() {
        let h = hash_key("PS69ndmHS3tf5pVW");
        assert_eq!(h.len(), 64);
        assert!(verify_key("PS69ndmHS3tf5pVW", &h));
        assert!(!verify_key("PS69ndmHS3tf5pVw", &h));
    }
}
