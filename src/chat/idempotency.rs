//! Idempotent chat messages (DESIGN §8 applied to `POST /chat`). A message sent with an
//! idempotency key is claimed in SQLite, with its credit, before anything runs; its reply is
//! stored in the transaction that saves the thread's turns. A retry with the same key and body
//! gets that reply again, with no tool call and no credit; the same key with another body is
//! `IDEMPOTENCY_KEY_REUSED`; a retry while the first still runs waits for it, then replays or
//! answers `IDEMPOTENCY_KEY_IN_USE`. Scoped per (org, API key, key), like the native endpoint.
//!
//! A claim whose process died (no reply after its lease) is taken over by the next retry, in the
//! same thread and without a second charge. The tool calls run under keys derived from the
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
    /// Run the message in this thread. The credit is taken (by this claim, or by the earlier
    /// one this took over).
    Run { thread_id: String },
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
/// thread. `now_ms` is the time; records created before `expired_before_ms` are forgotten, and
/// an unanswered claim older than `lease_ms` is taken over. A new claim takes the org's credit
/// in the same transaction (`INSUFFICIENT_CREDITS` leaves nothing behind).
pub fn begin(
    conn: &Connection,
    c: &Claim,
    thread_id: &str,
    now_ms: i64,
    expired_before_ms: i64,
    lease_ms: i64,
) -> ApiResult<Begun> {
    conn.prepare_cached(
        "DELETE FROM chat_idempotency WHERE rowid IN
           (SELECT rowid FROM chat_idempotency WHERE created_ms < ?1 LIMIT ?2)",
    )?
    .execute(params![expired_before_ms, PRUNE_BATCH])?;
    conn.prepare_cached(
        "DELETE FROM chat_idempotency
          WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3 AND created_ms < ?4",
    )?
    .execute(params![c.org, c.key_id, c.name, expired_before_ms])?;
    let found: Option<(String, String, Option<String>, i64)> = conn
        .prepare_cached(
            "SELECT fingerprint, thread_id, reply, claimed_ms FROM chat_idempotency
              WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3",
        )?
        .query_row(params![c.org, c.key_id, c.name], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((fingerprint, stored_thread, reply, claimed_ms)) = found else {
        store::charge(conn, &c.org)?;
        conn.prepare_cached(
            "INSERT INTO chat_idempotency
               (org_id, key_id, idem_key, fingerprint, thread_id, reply, claimed_ms, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?6)",
        )?
        .execute(params![
            c.org,
            c.key_id,
            c.name,
            c.fingerprint,
            thread_id,
            now_ms
        ])?;
        return Ok(Begun::Run {
            thread_id: thread_id.to_string(),
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
        "UPDATE chat_idempotency SET claimed_ms = ?4
          WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3",
    )?
    .execute(params![c.org, c.key_id, c.name, now_ms])?;
    Ok(Begun::Run {
        thread_id: stored_thread,
    })
}

/// Stores the reply of a claimed message (in the transaction that saves its turns).
pub fn finish(conn: &Connection, c: &Claim, reply: &ChatReply) -> ApiResult<()> {
    let json = serde_json::to_string(reply)
        .map_err(|e| ApiError::internal(format!("chat reply not serialisable: {e}")))?;
    conn.prepare_cached(
        "UPDATE chat_idempotency SET reply = ?4
          WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3",
    )?
    .execute(params![c.org, c.key_id, c.name, json])?;
    Ok(())
}

/// Drops an unanswered claim (the message failed; its credit is given back by the caller), so
/// the client may retry with the same key.
pub fn release(conn: &Connection, c: &Claim) -> ApiResult<()> {
    conn.prepare_cached(
        "DELETE FROM chat_idempotency
          WHERE org_id = ?1 AND key_id = ?2 AND idem_key = ?3 AND reply IS NULL",
    )?
    .execute(params![c.org, c.key_id, c.name])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Usage;
    use crate::store::{orgs, Store, StoreOptions};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        s.write_sync(|tx| orgs::create(tx, &orgs::NewOrg::named("acme")).map(|_| ()))
            .unwrap();
        s.write_sync(|tx| store::set_credits(tx, "acme", 5))
            .unwrap();
        (dir, s)
    }

    fn credits(s: &Store) -> i64 {
        s.read_sync(|c| Ok(orgs::get(c, "acme")?.unwrap().credits_remaining))
            .unwrap()
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
        let begun = s
            .write_sync(|tx| begin(tx, &c, "t1", 1_000, 0, 60_000))
            .unwrap();
        assert!(matches!(begun, Begun::Run { ref thread_id } if thread_id == "t1"));
        assert_eq!(credits(&s), 4);
        // A twin while it runs.
        let twin = s
            .write_sync(|tx| begin(tx, &c, "t2", 2_000, 0, 60_000))
            .unwrap();
        assert!(matches!(twin, Begun::Running));
        s.write_sync(|tx| finish(tx, &c, &reply())).unwrap();
        let again = s
            .write_sync(|tx| begin(tx, &c, "t3", 3_000, 0, 60_000))
            .unwrap();
        assert!(matches!(again, Begun::Replay(ref r) if r.thread_id == "t1"));
        assert_eq!(credits(&s), 4, "a replay is free");
        // Same key, other body; the same key of another API key is another entry.
        let other = Claim::new("acme", "k1", "key-1".into(), "hi there", None);
        let e = s
            .write_sync(|tx| begin(tx, &other, "t4", 4_000, 0, 60_000))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::IdempotencyKeyReused);
        let k2 = Claim::new("acme", "k2", "key-1".into(), "hi there", None);
        assert!(matches!(
            s.write_sync(|tx| begin(tx, &k2, "t5", 4_000, 0, 60_000))
                .unwrap(),
            Begun::Run { .. }
        ));
        assert_eq!(credits(&s), 3);
        // Past the retention the key is free again.
        assert!(matches!(
            s.write_sync(|tx| begin(tx, &other, "t6", 9_000, 5_000, 60_000))
                .unwrap(),
            Begun::Run { .. }
        ));
    }

    #[test]
    fn a_dead_claim_is_taken_over_in_its_thread_without_a_second_charge() {
        let (_d, s) = store();
        let c = Claim::new("acme", "k1", "key-1".into(), "hi", Some("t0"));
        s.write_sync(|tx| begin(tx, &c, "t1", 1_000, 0, 500))
            .unwrap();
        assert_eq!(credits(&s), 4);
        let taken = s
            .write_sync(|tx| begin(tx, &c, "t9", 2_000, 0, 500))
            .unwrap();
        assert!(matches!(taken, Begun::Run { ref thread_id } if thread_id == "t1"));
        assert_eq!(credits(&s), 4);
        // Released after a failure: the next attempt claims (and pays) anew.
        s.write_sync(|tx| release(tx, &c)).unwrap();
        assert!(matches!(
            s.write_sync(|tx| begin(tx, &c, "t2", 2_100, 0, 500)).unwrap(),
            Begun::Run { ref thread_id } if thread_id == "t2"
        ));
        assert_eq!(credits(&s), 3);
        // Out of credits: nothing is claimed.
        s.write_sync(|tx| store::set_credits(tx, "acme", 0))
            .unwrap();
        let broke = Claim::new("acme", "k1", "key-2".into(), "hi", None);
        let e = s
            .write_sync(|tx| begin(tx, &broke, "t3", 3_000, 0, 500))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientCredits);
        s.write_sync(|tx| store::set_credits(tx, "acme", 1))
            .unwrap();
        assert!(matches!(
            s.write_sync(|tx| begin(tx, &broke, "t3", 3_000, 0, 500))
                .unwrap(),
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
