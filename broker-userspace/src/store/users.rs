//! The `users` table: accounts and what is kept of their passwords
//! ([`crate::secret::UserSecrets`]).
use super::{
    sql::{params, Row, Sql},
    Result, StoreError, UserRecord,
};
use crate::secret::UserSecrets;

const COLUMNS: &str = "name, password_hash, tic_md5, digest_realm, digest_ha1, created_at";

fn record(r: &dyn Row) -> Result<UserRecord> {
    let text = |i: usize| -> Result<String> {
        // NULL only for an account of a store from before version 3 not yet upgraded
        // (the controller upgrades at start): nothing will match it.
        Ok(r.get::<Option<String>>(i)?.unwrap_or_default())
    };
    Ok(UserRecord {
        name: r.get(0)?,
        secrets: UserSecrets {
            password_hash: text(1)?,
            tic_md5: text(2)?,
            digest_realm: text(3)?,
            digest_ha1: text(4)?,
        },
        created_at: r.get(5)?,
    })
}

pub(super) fn all(db: &dyn Sql) -> Result<Vec<UserRecord>> {
    db.rows(
        &format!("SELECT {COLUMNS} FROM users ORDER BY name"),
        params![],
        record,
    )
}

pub(super) fn one(db: &dyn Sql, name: &str) -> Result<Option<UserRecord>> {
    db.first(
        &format!("SELECT {COLUMNS} FROM users WHERE name = ?1"),
        params![name],
        record,
    )
}

pub(super) fn create(db: &dyn Sql, name: &str, s: &UserSecrets, now: u64) -> Result<UserRecord> {
    let exists: Option<String> = db.first(
        "SELECT name FROM users WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    if exists.is_some() {
        return Err(StoreError::UserExists { name: name.into() });
    }
    db.exec(
        "INSERT INTO users (name, password_hash, tic_md5, digest_realm, digest_ha1, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            name,
            &s.password_hash,
            &s.tic_md5,
            &s.digest_realm,
            &s.digest_ha1,
            now
        ],
    )?;
    Ok(UserRecord {
        name: name.into(),
        secrets: s.clone(),
        created_at: now,
    })
}

pub(super) fn set_secrets(db: &dyn Sql, name: &str, s: &UserSecrets) -> Result<()> {
    let n = db.exec(
        "UPDATE users SET password = NULL, password_hash = ?2, tic_md5 = ?3, \
         digest_realm = ?4, digest_ha1 = ?5 WHERE name = ?1",
        params![
            name,
            &s.password_hash,
            &s.tic_md5,
            &s.digest_realm,
            &s.digest_ha1
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NoSuchUser { name: name.into() });
    }
    Ok(())
}

/// Deletes an account that owns no tunnel.
pub(super) fn delete(db: &dyn Sql, name: &str) -> Result<()> {
    let tunnels: Vec<u32> = db.rows(
        "SELECT id FROM tunnels WHERE owner = ?1 ORDER BY id",
        params![name],
        |r| r.get(0),
    )?;
    if !tunnels.is_empty() {
        return Err(StoreError::UserHasTunnels {
            name: name.into(),
            tunnels,
        });
    }
    if db.exec("DELETE FROM users WHERE name = ?1", params![name])? == 0 {
        return Err(StoreError::NoSuchUser { name: name.into() });
    }
    Ok(())
}

/// Passwords an older version kept in clear (index `users_in_clear`).
pub(super) const IN_CLEAR: &str =
    "SELECT name, password FROM users WHERE password IS NOT NULL ORDER BY name";

pub(super) fn in_clear(db: &dyn Sql) -> Result<Vec<(String, String)>> {
    db.rows(IN_CLEAR, params![], |r| Ok((r.get(0)?, r.get(1)?)))
}
