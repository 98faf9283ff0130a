//! Chat rows in the service's SQLite database: threads (owned by one API key, with the pending
//! action their last question parked), their last turns, and the org's credit balance.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::now_rfc3339;

/// A thread as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Thread {
    pub id: String,
    /// The open question of the thread's last turn, answered by the user's next "yes" or "no".
    pub pending_action_id: Option<String>,
}

/// One remembered turn of a thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// The thread `id` if it belongs to this org and API key; anyone else's is not found.
pub fn thread(conn: &Connection, org: &str, key_id: &str, id: &str) -> ApiResult<Option<Thread>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, pending_action_id FROM chat_threads
              WHERE id = ?1 AND org_id = ?2 AND key_id = ?3",
        )?
        .query_row(params![id, org, key_id], |r| {
            Ok(Thread {
                id: r.get(0)?,
                pending_action_id: r.get(1)?,
            })
        })
        .optional()?)
}

/// The last `n` turns of a thread, oldest first.
pub fn last_turns(conn: &Connection, thread_id: &str, n: u32) -> ApiResult<Vec<Turn>> {
    let mut turns = conn
        .prepare_cached(
            "SELECT role, content FROM chat_turns WHERE thread_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?
        .query_map(params![thread_id, n], |r| {
            Ok(Turn {
                role: r.get(0)?,
                content: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    turns.reverse();
    Ok(turns)
}

/// Saves a message and its answer: creates the thread if new, appends both turns, keeps only
/// the last `keep` turns, and records the thread's open question (or clears it).
pub fn save_exchange(
    conn: &Connection,
    org: &str,
    key_id: &str,
    thread_id: &str,
    turns: &[Turn],
    pending_action_id: Option<&str>,
    keep: u32,
) -> ApiResult<()> {
    let now = now_rfc3339();
    conn.prepare_cached(
        "INSERT INTO chat_threads (id, org_id, key_id, pending_action_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(id) DO UPDATE SET pending_action_id = excluded.pending_action_id,
                                       updated_at = excluded.updated_at
         WHERE chat_threads.org_id = excluded.org_id AND chat_threads.key_id = excluded.key_id",
    )?
    .execute(params![thread_id, org, key_id, pending_action_id, now])?;
    // A thread id taken by another key stays theirs: nothing is added to it.
    if thread(conn, org, key_id, thread_id)?.is_none() {
        return Err(ApiError::not_found("Thread"));
    }
    for t in turns {
        conn.prepare_cached(
            "INSERT INTO chat_turns (thread_id, seq, role, content, created_at)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM chat_turns WHERE thread_id = ?1),
                     ?2, ?3, ?4)",
        )?
        .execute(params![thread_id, t.role, t.content, now])?;
    }
    conn.prepare_cached(
        "DELETE FROM chat_turns WHERE thread_id = ?1 AND seq <=
           (SELECT MAX(seq) FROM chat_turns WHERE thread_id = ?1) - ?2",
    )?
    .execute(params![thread_id, keep])?;
    Ok(())
}

/// Deletes up to `limit` threads (with their turns) last used before `before` (RFC 3339);
/// returns how many went.
pub fn prune_idle(conn: &Connection, before: &str, limit: u32) -> ApiResult<usize> {
    conn.prepare_cached(
        "DELETE FROM chat_turns WHERE thread_id IN
           (SELECT id FROM chat_threads WHERE updated_at < ?1 ORDER BY updated_at LIMIT ?2)",
    )?
    .execute(params![before, limit])?;
    Ok(conn
        .prepare_cached(
            "DELETE FROM chat_threads WHERE id IN
               (SELECT id FROM chat_threads WHERE updated_at < ?1 ORDER BY updated_at LIMIT ?2)",
        )?
        .execute(params![before, limit])?)
}

fn out_of_credits() -> ApiError {
    ApiError::new(
        ErrorCode::InsufficientCredits,
        "No credits left for AI chat",
    )
    .with_details("credits_remaining: 0; each chat message costs 1 credit")
    .with_spoken("You're out of chat credits.")
}

/// Takes one credit from the org, atomically: never below zero, whatever runs concurrently.
pub fn charge(conn: &Connection, org: &str) -> ApiResult<()> {
    let n = conn
        .prepare_cached(
            "UPDATE orgs SET credits_remaining = credits_remaining - 1
              WHERE id = ?1 AND credits_remaining >= 1",
        )?
        .execute([org])?;
    if n == 1 {
        return Ok(());
    }
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM orgs WHERE id = ?1")?
        .query_row([org], |r| r.get(0))
        .optional()?;
    match exists {
        Some(_) => Err(out_of_credits()),
        None => Err(ApiError::new(
            ErrorCode::OrgNotFound,
            "Organization deleted or invalid",
        )),
    }
}

/// Gives back a credit charged for a message that got no answer.
pub fn refund(conn: &Connection, org: &str) -> ApiResult<()> {
    conn.prepare_cached("UPDATE orgs SET credits_remaining = credits_remaining + 1 WHERE id = ?1")?
        .execute([org])?;
    Ok(())
}

/// Sets the org's balance (`pilot-bridge org set ORG --credits N`).
pub fn set_credits(conn: &Connection, org: &str, credits: i64) -> ApiResult<()> {
    if credits < 0 {
        return Err(ApiError::validation("credits", "must not be negative"));
    }
    let n = conn
        .prepare_cached("UPDATE orgs SET credits_remaining = ?2, updated_at = ?3 WHERE id = ?1")?
        .execute(params![org, credits, now_rfc3339()])?;
    if n == 0 {
        return Err(ApiError::new(
            ErrorCode::OrgNotFound,
            format!("org '{org}' does not exist"),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::{orgs, Store, StoreOptions};

    /// A fresh database with the org `acme` (also the idempotency tests' store).
    pub(in crate::chat) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        s.write_sync(|tx| orgs::create(tx, &orgs::NewOrg::named("acme")).map(|_| ()))
            .unwrap();
        (dir, s)
    }

    #[test]
    fn credits_stop_at_zero_and_are_set_and_refunded() {
        let (_d, s) = store();
        s.write_sync(|tx| set_credits(tx, "acme", 2)).unwrap();
        s.write_sync(|tx| charge(tx, "acme")).unwrap();
        s.write_sync(|tx| charge(tx, "acme")).unwrap();
        let e = s.write_sync(|tx| charge(tx, "acme")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientCredits);
        s.write_sync(|tx| refund(tx, "acme")).unwrap();
        s.write_sync(|tx| charge(tx, "acme")).unwrap();
        let left = s
            .read_sync(|c| Ok(orgs::get(c, "acme")?.unwrap().credits_remaining))
            .unwrap();
        assert_eq!(left, 0);
        assert_eq!(
            s.write_sync(|tx| charge(tx, "nobody")).unwrap_err().code,
            ErrorCode::OrgNotFound
        );
        assert!(s.write_sync(|tx| set_credits(tx, "acme", -1)).is_err());
    }

    #[test]
    fn threads_belong_to_their_key_and_keep_their_last_turns() {
        let (_d, s) = store();
        let turn = |role: &str, c: &str| Turn {
            role: role.into(),
            content: c.into(),
        };
        s.write_sync(|tx| {
            save_exchange(
                tx,
                "acme",
                "k1",
                "t1",
                &[turn("user", "a"), turn("assistant", "b")],
                Some("p1"),
                3,
            )
        })
        .unwrap();
        s.write_sync(|tx| {
            save_exchange(
                tx,
                "acme",
                "k1",
                "t1",
                &[turn("user", "c"), turn("assistant", "d")],
                None,
                3,
            )
        })
        .unwrap();
        let t = s
            .read_sync(|c| thread(c, "acme", "k1", "t1"))
            .unwrap()
            .unwrap();
        assert_eq!(t.pending_action_id, None);
        assert!(s
            .read_sync(|c| thread(c, "acme", "k2", "t1"))
            .unwrap()
            .is_none());
        assert!(s
            .read_sync(|c| thread(c, "other", "k1", "t1"))
            .unwrap()
            .is_none());
        let turns = s.read_sync(|c| last_turns(c, "t1", 10)).unwrap();
        let texts: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();
        assert_eq!(texts, ["b", "c", "d"]);
        // Another key cannot take the thread over by naming it.
        let e = s
            .write_sync(|tx| {
                save_exchange(tx, "acme", "k2", "t1", &[turn("user", "x")], Some("p9"), 3)
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ResourceNotFound);
        assert_eq!(s.read_sync(|c| last_turns(c, "t1", 10)).unwrap().len(), 3);
        let t = s
            .read_sync(|c| thread(c, "acme", "k1", "t1"))
            .unwrap()
            .unwrap();
        assert_eq!(t.pending_action_id, None);
        // Idle threads go with their turns; recent ones stay.
        assert_eq!(
            s.write_sync(|tx| prune_idle(tx, "2000-01-01T00:00:00Z", 100))
                .unwrap(),
            0
        );
        assert_eq!(
            s.write_sync(|tx| prune_idle(tx, "2999-01-01T00:00:00Z", 100))
                .unwrap(),
            1
        );
        assert!(s
            .read_sync(|c| thread(c, "acme", "k1", "t1"))
            .unwrap()
            .is_none());
        assert!(s.read_sync(|c| last_turns(c, "t1", 10)).unwrap().is_empty());
    }
}
