//! API keys: only the SHA-256 of a key is stored; the raw key is shown once at creation.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::domain::{KeyPolicy, Scope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::{new_id, now_rfc3339};

#[derive(Debug, Clone, Serialize)]
pub struct ApiKeyInfo {
    pub id: String,
    pub org_id: String,
    pub name: String,
    /// The first characters of the key, enough to recognise it in a list.
    pub prefix: String,
    pub scopes: Vec<Scope>,
    /// How the key may confirm dangerous actions.
    pub policy: KeyPolicy,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// When a request last authenticated with the key (to within the key cache's lifetime).
    pub last_used_at: Option<String>,
}

/// What a key hash resolves to: the key row joined with the state of its org.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub key_id: String,
    pub org_id: String,
    pub scopes: Vec<Scope>,
    pub policy: KeyPolicy,
    pub revoked: bool,
    /// `None` when the org row is gone.
    pub org: Option<super::orgs::Org>,
}

pub fn hash_key(raw: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(raw.as_bytes()).into()
}

/// A new raw key: `op_live_` plus 40 base62 characters from the OS RNG.
pub fn generate_raw_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    let mut s = String::from("op_live_");
    for _ in 0..40 {
        s.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    s
}

fn parse_scopes(s: &str) -> Vec<Scope> {
    s.split(',').filter_map(|p| p.trim().parse().ok()).collect()
}

/// Stores the hash of `raw` for `org_id` and returns the new key's id.
pub fn insert(
    conn: &Connection,
    org_id: &str,
    name: &str,
    scopes: &[Scope],
    raw: &str,
) -> ApiResult<ApiKeyInfo> {
    if super::orgs::get(conn, org_id)?.is_none() {
        return Err(ApiError::new(
            ErrorCode::OrgNotFound,
            format!("org '{org_id}' does not exist"),
        ));
    }
    let id = new_id();
    let prefix: String = raw.chars().take(12).collect();
    let now = now_rfc3339();
    let inserted = conn.execute(
        "INSERT INTO api_keys (id, org_id, name, key_hash, prefix, scopes, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            org_id,
            name,
            &hash_key(raw)[..],
            prefix,
            Scope::join(scopes),
            now
        ],
    );
    match inserted {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(ApiError::new(
                ErrorCode::DuplicateResource,
                "that key already exists",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(ApiKeyInfo {
        id,
        org_id: org_id.to_string(),
        name: name.to_string(),
        prefix,
        scopes: scopes.to_vec(),
        policy: KeyPolicy::Standard,
        created_at: now,
        revoked_at: None,
        last_used_at: None,
    })
}

/// Looks a key up by the hash of its raw value. The database compares the hash through a unique
/// index; [`crate::auth`] then compares it again in constant time.
pub fn find_by_hash(conn: &Connection, hash: &[u8; 32]) -> ApiResult<Option<(Vec<u8>, KeyRecord)>> {
    let row = conn
        .prepare_cached(
            "SELECT k.key_hash, k.id, k.org_id, k.scopes, k.revoked_at IS NOT NULL, k.policy
               FROM api_keys k WHERE k.key_hash = ?1",
        )?
        .query_row([&hash[..]], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                // Strict: an unreadable policy is an error, never a laxer default.
                r.get::<_, KeyPolicy>(5)?,
            ))
        })
        .optional()?;
    let Some((stored, key_id, org_id, scopes, revoked, policy)) = row else {
        return Ok(None);
    };
    let org = super::orgs::get(conn, &org_id)?;
    Ok(Some((
        stored,
        KeyRecord {
            key_id,
            org_id,
            scopes: parse_scopes(&scopes),
            policy,
            revoked,
            org,
        },
    )))
}

/// Sets the confirmation policy of key `id`.
pub fn set_policy(conn: &Connection, id: &str, policy: KeyPolicy) -> ApiResult<()> {
    let n = conn.execute(
        "UPDATE api_keys SET policy = ?2 WHERE id = ?1",
        params![id, policy],
    )?;
    match n {
        0 => Err(ApiError::not_found("API key")),
        _ => Ok(()),
    }
}

/// What `keys revoke` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The key was active and is revoked now.
    Revoked { id: String },
    /// The key had been revoked before, at `revoked_at`; nothing changed.
    AlreadyRevoked { id: String, revoked_at: String },
}

/// Revokes a key by id or raw value, saying whether it was revoked already.
pub fn revoke_key(conn: &Connection, id_or_raw: &str) -> ApiResult<Revocation> {
    let hash = hash_key(id_or_raw);
    let found: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT id, revoked_at FROM api_keys WHERE id = ?1 OR key_hash = ?2",
            params![id_or_raw, &hash[..]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match found {
        None => Err(ApiError::not_found("API key")),
        Some((id, Some(revoked_at))) => Ok(Revocation::AlreadyRevoked { id, revoked_at }),
        Some((id, None)) => {
            conn.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
                params![id, now_rfc3339()],
            )?;
            Ok(Revocation::Revoked { id })
        }
    }
}

/// Records that the key `id` authenticated a request at `at`.
pub fn touch(conn: &Connection, id: &str, at: &str) -> ApiResult<()> {
    conn.execute(
        "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
        params![id, at],
    )?;
    Ok(())
}

pub fn revoke(conn: &Connection, id_or_raw: &str) -> ApiResult<String> {
    let now = now_rfc3339();
    let n = conn.execute(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        params![id_or_raw, now],
    )?;
    if n > 0 {
        return Ok(id_or_raw.to_string());
    }
    let hash = hash_key(id_or_raw);
    let id: Option<String> = conn
        .query_row(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE key_hash = ?1 RETURNING id",
            params![&hash[..], now],
            |r| r.get(0),
        )
        .optional()?;
    id.ok_or_else(|| ApiError::not_found("API key"))
}

pub fn list(conn: &Connection, org_id: Option<&str>) -> ApiResult<Vec<ApiKeyInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, org_id, name, prefix, scopes, created_at, revoked_at, last_used_at, policy FROM api_keys
          WHERE (?1 IS NULL OR org_id = ?1) ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([org_id], |r| {
        Ok(ApiKeyInfo {
            id: r.get(0)?,
            org_id: r.get(1)?,
            name: r.get(2)?,
            prefix: r.get(3)?,
            scopes: parse_scopes(&r.get::<_, String>(4)?),
            created_at: r.get(5)?,
            revoked_at: r.get(6)?,
            last_used_at: r.get(7)?,
            policy: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{orgs, test_store};

    #[test]
    fn raw_keys_have_the_documented_shape() {
        let k = generate_raw_key();
        assert!(k.starts_with("op_live_"));
        assert_eq!(k.len(), 48);
        assert!(k[8..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(k, generate_raw_key());
    }

    #[test]
    fn insert_find_revoke() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let raw = generate_raw_key();
                let info = insert(tx, "acme", "ci", &[Scope::Native], &raw)?;
                let (stored, rec) = find_by_hash(tx, &hash_key(&raw))?.unwrap();
                assert_eq!(stored, hash_key(&raw).to_vec());
                assert_eq!(rec.key_id, info.id);
                assert_eq!(rec.scopes, vec![Scope::Native]);
                assert!(!rec.revoked);
                assert_eq!(rec.policy, KeyPolicy::Standard);
                set_policy(tx, &info.id, KeyPolicy::TwoStep)?;
                let rec = find_by_hash(tx, &hash_key(&raw))?.unwrap().1;
                assert_eq!(rec.policy, KeyPolicy::TwoStep);
                assert_eq!(list(tx, Some("acme"))?[0].policy, KeyPolicy::TwoStep);
                assert!(set_policy(tx, "missing", KeyPolicy::TwoStep).is_err());
                assert!(find_by_hash(tx, &hash_key("op_live_nope"))?.is_none());
                revoke(tx, &info.id)?;
                assert!(find_by_hash(tx, &hash_key(&raw))?.unwrap().1.revoked);
                assert!(revoke(tx, "missing").is_err());
                // the raw value is never stored
                let n: i64 = tx.query_row(
                    "SELECT count(*) FROM api_keys WHERE prefix = ?1 OR name = ?1",
                    [&raw],
                    |r| r.get(0),
                )?;
                assert_eq!(n, 0);
                Ok(())
            })
            .unwrap();
    }
}
