//! Idempotent chat messages (DESIGN §8 applied to `POST /chat`). A message sent with an
//! idempotency key is claimed in SQLite, with its credit, before anything runs; its reply is
//! stored in the transaction that saves the thread's turns. A retry with the same key and body
//! gets that reply again, with no tool call and no credit; the same key with another body is
//! `IDEMPOTENCY_KEY_REUSED`; a retry while the first still runs waits for it, then replays or
//! answers `IDEMPOTENCY_KEY_IN_USE`. Scoped per (org, API key, key), like the native endpoint.
//!
//! Each attempt holding the claim has an owner token: only the owner stores the reply or releases
//! the claim (and only a release that removed the claim gives the credit back), and the owner
//! renews the claim while it runs. A claim not renewed for its lease (its process died) is
//! taken over by the next retry, in the same thread and without a second charge. The tool calls run under keys derived from the
//! client's key and body ([`Claim::message_id`]), so writes an earlier attempt made (one that
//! died, or failed after a tool ran and released its claim) replay in the native pipeline
//! instead of running twice.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{store, ChatReply};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Rows older than the retention pruned per claim, so the table stays bounded without a timer.
const PRUNE_BATCH: u32 = 100;

/// The client's key for one message, with what identifies the message's body.
#[derive(Debug, Clone)]
pub struct Claim {
    pub org: String,
    pub key_id: String,
    /// The client's `Idempotency-Key`.
    pub name: String,
    /// Hex SHA-256 of the body's `message` and `thread_id`.
    pub fingerprint: String,
}

#[derive(Serialize)]
struct Fingerprinted<'a> {
    message: &'a str,
    thread_id: Option<&'a str>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Claim {
    /// `message` as sent (before trimming) and `thread_id` define the request.
    pub fn new(
        org: &str,
        key_id: &str,
        name: String,
        message: &str,
        thread_id: Option<&str>,
    ) -> Self {
        let body = Fingerprinted { message, thread_id };
        // Serialising a struct of two strings cannot fail; the fallback only keeps this total.
        let canonical = serde_json::to_vec(&body).unwrap_or_default();
        Claim {
            org: org.to_string(),
            key_id: key_id.to_string(),
            name,
            fingerprint: sha256_hex(&canonical),
        }
    }

    /// The message's id in its tool calls' idempotency keys (`chat:<id>:<n>`): the same for
    /// every attempt of this key and body, so a retry's tool calls replay the earlier attempts'
    /// writes; another body under the same key (after a failed first) gets its own.
    pub fn message_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([0]);
        h.update(self.fingerprint.as_bytes());
        let digest = hex::encode(h.finalize());
        format!("k{}", &digest[..32])
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum Begun {
    /// Run the message in this thread, as `owner`. The credit is taken (by this claim, or by
    /// the earlier one this took over).
    Run { thread_id: String, owner: String },
    /// Answered before: the reply, again.
    Replay(Box<ChatReply>),
    /// The first request with this key is still running.
    Running,
}

fn reused(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "Idempotency-Key was already used for a different message",
    )
    .with_details(format!(
        "Idempotency-Key: '{}' belongs to another message or thread",
        crate::text::clip(name, 64)
    ))
}

/// Claims `c` for a message that will run in `thread_id` unless an earlier claim fixed the
/// thread. `now_ms` is the time; records created before `expired_before_ms` are forgotten
/// (except a claim still renewed), and an unanswered claim not renewed for `lease_ms` is taken
/// over. A new claim takes the org's credit in the same transaction (`INSUFFICIENT_CREDITS`
/// leaves nothing behind).
pub fn begin(
    conn: &Connection,
    c: &Claim,
    thread_id: &str,
    now_ms: i64,
    expired_before_ms: i64,
    lease_ms: i64,
) -> ApiResult<Begun> {
    let stale_before_ms = now_ms.saturating_sub(lease_ms);
    conn.prepare_cached(
        "DELETE FROM chat_idempotency WHERE rowid IN
           (SELECT rowid FROM chat_idempotency
             WHERE created_ms < ?1 AND (reply IS NOT NULL OR claimed_ms < ?3) LIMIT ?2)",
    )?
    .execute(params![expired_before_ms, PRUNE_BATCH, stale_before_ms])?;
    conn.prepare_cached(
        "DELETE FROM chat_idempotency
          WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3 AND created_ms < ?4
            AND (reply IS NOT NULL OR claimed_ms < ?5)",
    )?
    .execute(params![
        c.org,
        c.key_id,
        c.name,
        expired_before_ms,
        stale_before_ms
    ])?;
    let found: Option<(String, String, Option<String>, i64)> = conn
        .prepare_cached(
            "SELECT fingerprint, thread_id, reply, claimed_ms FROM chat_idempotency
              WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3",
        )?
        .query_row(params![c.org, c.key_id, c.name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let owner = crate::ids::new_id();
    let Some((fingerprint, stored_thread, reply, claimed_ms)) = found else {
        store::charge(conn, &c.org)?;
        conn.prepare_cached(
            "INSERT INTO chat_idempotency
               (org_id, key_id, idem_key, fingerprint, thread_id, reply, owner, claimed_ms,
                created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?7)",
        )?
        .execute(params![
            c.org,
            c.key_id,
            c.name,
            c.fingerprint,
            thread_id,
            owner,
            now_ms
        ])?;
        return Ok(Begun::Run {
            thread_id: thread_id.to_string(),
            owner,
        });
    };
    if fingerprint != c.fingerprint {
        return Err(reused(&c.name));
    }
    if let Some(reply) = reply {
        let reply: ChatReply = serde_json::from_str(&reply)
            .map_err(|e| ApiError::internal(format!("stored chat reply is unreadable: {e}")))?;
        return Ok(Begun::Replay(Box::new(reply)));
    }
    if now_ms.saturating_sub(claimed_ms) < lease_ms {
        return Ok(Begun::Running);
    }
    // The claim's process is gone: its credit was taken and never given back, so this attempt
    // runs on it.
    conn.prepare_cached(
        "UPDATE chat_idempotency SET owner = ?4, claimed_ms = ?5
          WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3",
    )?
    .execute(params![c.org, c.key_id, c.name, owner, now_ms])?;
    Ok(Begun::Run {
        thread_id: stored_thread,
        owner,
    })
}

/// Keeps `owner`'s claim alive while its message runs. False when the claim is no longer its
/// own (taken over after a stall, or gone).
pub fn renew(conn: &Connection, c: &Claim, owner: &str, now_ms: i64) -> ApiResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE chat_idempotency SET claimed_ms = ?5
              WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3 AND owner = ?4
                AND reply IS NULL",
        )?
        .execute(params![c.org, c.key_id, c.name, owner, now_ms])?;
    Ok(n == 1)
}

/// Stores the reply of a claimed message (in the transaction that saves its turns). Refused with
/// `IDEMPOTENCY_KEY_IN_USE` when another attempt took the claim over meanwhile, which rolls back
/// that transaction: the other attempt answers the key.
pub fn finish(conn: &Connection, c: &Claim, owner: &str, reply: &ChatReply) -> ApiResult<()> {
    let json = serde_json::to_string(reply)
        .map_err(|e| ApiError::internal(format!("chat reply not serialisable: {e}")))?;
    let n = conn
        .prepare_cached(
            "UPDATE chat_idempotency SET reply = ?5
              WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3 AND owner = ?4
                AND reply IS NULL",
        )?
        .execute(params![c.org, c.key_id, c.name, owner, json])?;
    if n == 1 {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::IdempotencyKeyInUse,
            "Another request with this Idempotency-Key took over",
        ))
    }
}

/// Drops `owner`'s unanswered claim (the message failed), so the client may retry with the same
/// key. True when it did: only then is the credit the claim took the caller's to give back.
pub fn release(conn: &Connection, c: &Claim, owner: &str) -> ApiResult<bool> {
    let n = conn
        .prepare_cached(
            "DELETE FROM chat_idempotency
              WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3 AND owner = ?4
                AND reply IS NULL",
        )?
        .execute(params![c.org, c.key_id, c.name, owner])?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Usage;
    use crate::store::{orgs, Store};

    /// The chat store's test database, with 5 credits.
    fn store() -> (tempfile::TempDir, Store) {
        let (dir, s) = super::store::tests::store();
        s.write_sync(|tx| store::set_credits(tx, "acme", 5))
            .unwrap();
        (dir, s)
    }

    fn credits(s: &Store) -> i64 {
        s.read_sync(|c| Ok(orgs::get(c, "acme")?.unwrap().credits_remaining))
            .unwrap()
    }

    /// [`begin`] in its own transaction.
    fn claim(
        s: &Store,
        c: &Claim,
        thread: &str,
        now_ms: i64,
        expired_before_ms: i64,
        lease_ms: i64,
    ) -> ApiResult<Begun> {
        s.write_sync(|tx| begin(tx, c, thread, now_ms, expired_before_ms, lease_ms))
    }

    fn reply() -> ChatReply {
        ChatReply {
            response: "Done.".into(),
            thread_id: "t1".into(),
            tool_calls: Vec::new(),
            model: "m".into(),
            usage: Usage::default(),
        }
    }

    #[test]
    fn a_key_runs_once_is_paid_once_and_replays() {
        let (_d, s) = store();
        let c = Claim::new("acme", "k1", "key-1".into(), "hi", None);
        let begun = claim(&s, &c, "t1", 1_000, 0, 60_000).unwrap();
        let Begun::Run { thread_id, owner } = begun else {
            panic!("not run: {begun:?}")
        };
        assert_eq!(thread_id, "t1");
        assert_eq!(credits(&s), 4);
        // A twin while it runs.
        let twin = claim(&s, &c, "t2", 2_000, 0, 60_000).unwrap();
        assert!(matches!(twin, Begun::Running));
        s.write_sync(|tx| finish(tx, &c, &owner, &reply())).unwrap();
        let again = claim(&s, &c, "t3", 3_000, 0, 60_000).unwrap();
        assert!(matches!(again, Begun::Replay(ref r) if r.thread_id == "t1"));
        assert_eq!(credits(&s), 4, "a replay is free");
        // Same key, other body; the same key of another API key is another entry.
        let other = Claim::new("acme", "k1", "key-1".into(), "hi there", None);
        let e = claim(&s, &other, "t4", 4_000, 0, 60_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::IdempotencyKeyReused);
        let k2 = Claim::new("acme", "k2", "key-1".into(), "hi there", None);
        assert!(matches!(
            claim(&s, &k2, "t5", 4_000, 0, 60_000).unwrap(),
            Begun::Run { .. }
        ));
        assert_eq!(credits(&s), 3);
        // A running claim past the retention is kept while it is renewed.
        let slow = Claim::new("acme", "k1", "key-slow".into(), "hi", None);
        let Begun::Run {
            owner: slow_owner, ..
        } = claim(&s, &slow, "t7", 5_000, 0, 60_000).unwrap()
        else {
            panic!("not run")
        };
        assert!(s
            .write_sync(|tx| renew(tx, &slow, &slow_owner, 8_000))
            .unwrap());
        assert!(matches!(
            claim(&s, &slow, "t7", 9_000, 6_000, 60_000).unwrap(),
            Begun::Running
        ));
        // Past the retention the key is free again.
        assert!(matches!(
            claim(&s, &other, "t6", 9_000, 5_000, 60_000).unwrap(),
            Begun::Run { .. }
        ));
    }

    #[test]
    fn a_dead_claim_is_taken_over_in_its_thread_without_a_second_charge() {
        let (_d, s) = store();
        let c = Claim::new("acme", "k1", "key-1".into(), "hi", Some("t0"));
        let Begun::Run { owner: first, .. } = claim(&s, &c, "t1", 1_000, 0, 500).unwrap() else {
            panic!("not run")
        };
        assert_eq!(credits(&s), 4);
        // Renewed, the claim is not taken over past its first lease.
        assert!(s.write_sync(|tx| renew(tx, &c, &first, 1_400)).unwrap());
        assert!(matches!(
            claim(&s, &c, "t9", 1_800, 0, 500).unwrap(),
            Begun::Running
        ));
        let taken = claim(&s, &c, "t9", 2_000, 0, 500).unwrap();
        let Begun::Run { thread_id, owner } = taken else {
            panic!("not taken over: {taken:?}")
        };
        assert_eq!(thread_id, "t1");
        assert_eq!(credits(&s), 4);
        // The first attempt, back from its stall, no longer owns the claim: it can neither
        // renew it, nor store its reply, nor release it (so it gives no credit back).
        assert!(!s.write_sync(|tx| renew(tx, &c, &first, 2_050)).unwrap());
        let e = s
            .write_sync(|tx| finish(tx, &c, &first, &reply()))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::IdempotencyKeyInUse);
        assert!(!s.write_sync(|tx| release(tx, &c, &first)).unwrap());
        // Released by its owner after a failure: the next attempt claims (and pays) anew.
        assert!(s.write_sync(|tx| release(tx, &c, &owner)).unwrap());
        assert!(matches!(
            claim(&s, &c, "t2", 2_100, 0, 500).unwrap(),
            Begun::Run { ref thread_id, .. } if thread_id == "t2"
        ));
        assert_eq!(credits(&s), 3);
        // Out of credits: nothing is claimed.
        s.write_sync(|tx| store::set_credits(tx, "acme", 0))
            .unwrap();
        let broke = Claim::new("acme", "k1", "key-2".into(), "hi", None);
        let e = claim(&s, &broke, "t3", 3_000, 0, 500).unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientCredits);
        s.write_sync(|tx| store::set_credits(tx, "acme", 1))
            .unwrap();
        assert!(matches!(
            claim(&s, &broke, "t3", 3_000, 0, 500).unwrap(),
            Begun::Run { .. }
        ));
    }

    #[test]
    fn message_ids_follow_key_and_body() {
        let a = Claim::new("acme", "k1", "key-1".into(), "hi", None);
        let b = Claim::new("acme", "k1", "key-1".into(), "hi", None);
        let c = Claim::new("acme", "k1", "key-1".into(), "hi", Some("t"));
        assert_eq!(a.message_id(), b.message_id());
        assert_ne!(a.message_id(), c.message_id());
        assert_eq!(a.message_id().len(), 33);
    }
}
