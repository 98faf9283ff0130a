//! The event outbox: server-pushed events (`crate::events`) written in the same transaction as
//! the change they announce, so an event is published if and only if its change committed —
//! also when the process stops in between. The background worker publishes and deletes them.
//! Also who started queued work (`jobs.key_id`, `outbox.key_id`), which says whose sessions hear
//! about it.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::ApiResult;
use crate::events::{Event, EventKind};
use crate::ids::now_rfc3339;

/// Records `event` for publication once the surrounding transaction commits.
pub fn enqueue(conn: &Connection, event: &Event) -> ApiResult<()> {
    conn.prepare_cached(
        "INSERT INTO event_outbox (key_id, event, data, spoken_summary, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        event.key_id,
        event.kind.as_str(),
        event.data.to_string(),
        event.spoken_summary,
        now_rfc3339()
    ])?;
    Ok(())
}

/// The oldest `limit` events waiting, with their sequence numbers. Rows that no longer parse
/// (an event name this version does not know) come back as `None` so they are still deleted.
pub fn waiting(conn: &Connection, limit: usize) -> ApiResult<Vec<(i64, Option<Event>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, key_id, event, data, spoken_summary FROM event_outbox ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, key_id, name, data, spoken_summary) = row?;
        let event = EventKind::parse(&name).map(|kind| Event {
            kind,
            key_id,
            data: serde_json::from_str(&data).unwrap_or_default(),
            spoken_summary,
        });
        out.push((seq, event));
    }
    Ok(out)
}

/// Deletes published events up to and including `seq`.
pub fn delete_through(conn: &Connection, seq: i64) -> ApiResult<()> {
    conn.prepare_cached("DELETE FROM event_outbox WHERE seq <= ?1")?
        .execute([seq])?;
    Ok(())
}

/// Records the API key that queued a job.
pub fn set_job_owner(conn: &Connection, job_id: &str, key_id: &str) -> ApiResult<()> {
    conn.prepare_cached("UPDATE jobs SET key_id = ?2 WHERE id = ?1")?
        .execute(params![job_id, key_id])?;
    Ok(())
}

/// Records the API key that queued a message.
pub fn set_message_owner(conn: &Connection, message_id: &str, key_id: &str) -> ApiResult<()> {
    conn.prepare_cached("UPDATE outbox SET key_id = ?2 WHERE id = ?1")?
        .execute(params![message_id, key_id])?;
    Ok(())
}

/// The API key that queued a job (`None` for jobs queued before owners were recorded).
pub fn job_owner(conn: &Connection, job_id: &str) -> ApiResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT key_id FROM jobs WHERE id = ?1")?
        .query_row([job_id], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

/// The API key that queued a message.
pub fn message_owner(conn: &Connection, message_id: &str) -> ApiResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT key_id FROM outbox WHERE id = ?1")?
        .query_row([message_id], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;
    use serde_json::json;

    #[test]
    fn events_wait_in_order_until_deleted() {
        let (_dir, store) = test_store();
        let ev = |kind, key: &str| Event {
            kind,
            key_id: key.into(),
            data: json!({ "message": { "id": "m1" } }),
            spoken_summary: "Your email to Sarah Chen went out.".into(),
        };
        store
            .write_sync(|tx| {
                enqueue(tx, &ev(EventKind::MessageSent, "k1"))?;
                enqueue(tx, &ev(EventKind::MessageCancelled, "k2"))?;
                tx.execute(
                    "INSERT INTO event_outbox (key_id, event, data, spoken_summary, created_at) VALUES ('k3', 'from.the.future', '{}', '', '')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        let got = store.read_sync(|c| waiting(c, 10)).unwrap();
        assert_eq!(got.len(), 3);
        let first = got[0].1.as_ref().unwrap();
        assert_eq!(
            (first.kind, first.key_id.as_str()),
            (EventKind::MessageSent, "k1")
        );
        assert_eq!(first.data["message"]["id"], "m1");
        assert_eq!(got[1].1.as_ref().unwrap().kind, EventKind::MessageCancelled);
        assert!(got[2].1.is_none());
        let first_seq = got[0].0;
        store
            .write_sync(|tx| delete_through(tx, first_seq))
            .unwrap();
        assert_eq!(store.read_sync(|c| waiting(c, 10)).unwrap().len(), 2);
    }
}
