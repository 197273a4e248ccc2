//! The `users` table: accounts and what is kept of their passwords
//! ([`crate::secret::UserSecrets`]).
use rusqlite::{params, Connection, OptionalExtension};

use super::super::{Result, StoreError, UserRecord};
use crate::secret::UserSecrets;

const COLUMNS: &str = "name, password_hash, tic_md5, digest_realm, digest_ha1, created_at";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    let text = |i: usize| -> rusqlite::Result<String> {
        // NULL only for an account of a store from before version 3 not yet upgraded
        // (the controller upgrades at start): nothing will match it.
        Ok(r.get::<_, Option<String>>(i)?.unwrap_or_default())
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

pub(super) fn all(conn: &Connection) -> Result<Vec<UserRecord>> {
    let mut q = conn.prepare(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))?;
    let rows = q.query_map([], record)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(super) fn one(conn: &Connection, name: &str) -> Result<Option<UserRecord>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM users WHERE name = ?1"),
            [name],
            record,
        )
        .optional()?)
}

pub(super) fn create(
    conn: &mut Connection,
    name: &str,
    s: &UserSecrets,
    now: u64,
) -> Result<UserRecord> {
    let tx = conn.transaction()?;
    let exists: Option<String> = tx
        .query_row("SELECT name FROM users WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_some() {
        return Err(StoreError::UserExists { name: name.into() });
    }
    tx.execute(
        "INSERT INTO users (name, password_hash, tic_md5, digest_realm, digest_ha1, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            name,
            s.password_hash,
            s.tic_md5,
            s.digest_realm,
            s.digest_ha1,
            now
        ],
    )?;
    tx.commit()?;
    Ok(UserRecord {
        name: name.into(),
        secrets: s.clone(),
        created_at: now,
    })
}

pub(super) fn set_secrets(conn: &Connection, name: &str, s: &UserSecrets) -> Result<()> {
    let n = conn.execute(
        "UPDATE users SET password = NULL, password_hash = ?2, tic_md5 = ?3, \
         digest_realm = ?4, digest_ha1 = ?5 WHERE name = ?1",
        params![
            name,
            s.password_hash,
            s.tic_md5,
            s.digest_realm,
            s.digest_ha1
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NoSuchUser { name: name.into() });
    }
    Ok(())
}

/// Passwords an older version kept in clear (index `users_in_clear`).
pub(super) const IN_CLEAR: &str =
    "SELECT name, password FROM users WHERE password IS NOT NULL ORDER BY name";

pub(super) fn in_clear(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut q = conn.prepare(IN_CLEAR)?;
    let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
