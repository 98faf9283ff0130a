//! Tables written by native actions: drafts, the outbox, meetings, research/enrichment jobs and
//! the undo log.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiResult;
use crate::ids::{new_id, now_rfc3339};

// ---- drafts ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Draft {
    pub id: String,
    pub contact_id: Option<String>,
    pub channel: String,
    pub subject: Option<String>,
    pub body: String,
    pub status: String,
    pub created_at: String,
}

fn draft_row(r: &Row<'_>) -> rusqlite::Result<Draft> {
    Ok(Draft {
        id: r.get(0)?,
        contact_id: r.get(1)?,
        channel: r.get(2)?,
        subject: r.get(3)?,
        body: r.get(4)?,
        status: r.get(5)?,
        created_at: r.get(6)?,
    })
}

pub struct NewDraft<'a> {
    pub contact_id: &'a str,
    pub channel: &'a str,
    pub subject: Option<&'a str>,
    pub body: &'a str,
    pub instructions: Option<&'a str>,
    /// `draft` (written by draft_message) or `pending_review` (send_message in review mode).
    pub status: &'a str,
}

pub fn insert_draft(conn: &Connection, org: &str, d: &NewDraft<'_>) -> ApiResult<Draft> {
    let id = new_id();
    let now = now_rfc3339();
    conn.prepare_cached(
        "INSERT INTO drafts (id, org_id, contact_id, channel, subject, body, instructions, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )?
    .execute(params![id, org, d.contact_id, d.channel, d.subject, d.body, d.instructions, d.status, now])?;
    Ok(Draft {
        id,
        contact_id: Some(d.contact_id.to_string()),
        channel: d.channel.to_string(),
        subject: d.subject.map(str::to_string),
        body: d.body.to_string(),
        status: d.status.to_string(),
        created_at: now,
    })
}

pub fn get_draft(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Draft>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, contact_id, channel, subject, body, status, created_at FROM drafts WHERE id = ?1 AND org_id = ?2",
        )?
        .query_row([id, org], draft_row)
        .optional()?)
}

pub fn set_draft_status(conn: &Connection, org: &str, id: &str, status: &str) -> ApiResult<()> {
    conn.prepare_cached(
        "UPDATE drafts SET status = ?3, updated_at = ?4 WHERE id = ?1 AND org_id = ?2",
    )?
    .execute(params![id, org, status, now_rfc3339()])?;
    Ok(())
}

pub fn delete_draft(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    Ok(conn.execute(
        "DELETE FROM drafts WHERE id = ?1 AND org_id = ?2",
        [id, org],
    )? > 0)
}

// ---- outbox ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutboxMessage {
    pub id: String,
    pub contact_id: Option<String>,
    pub draft_id: Option<String>,
    pub channel: String,
    pub subject: Option<String>,
    pub body: String,
    pub status: String,
    pub deliver_after: String,
    pub created_at: String,
    pub sent_at: Option<String>,
}

fn outbox_row(r: &Row<'_>) -> rusqlite::Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: r.get(0)?,
        contact_id: r.get(1)?,
        draft_id: r.get(2)?,
        channel: r.get(3)?,
        subject: r.get(4)?,
        body: r.get(5)?,
        status: r.get(6)?,
        deliver_after: r.get(7)?,
        created_at: r.get(8)?,
        sent_at: r.get(9)?,
    })
}

const OUTBOX_COLUMNS: &str =
    "id, contact_id, draft_id, channel, subject, body, status, deliver_after, created_at, sent_at";

pub struct NewOutbox<'a> {
    pub contact_id: &'a str,
    pub draft_id: Option<&'a str>,
    pub channel: &'a str,
    pub subject: Option<&'a str>,
    pub body: &'a str,
    pub deliver_after: &'a str,
}

pub fn insert_outbox(conn: &Connection, org: &str, m: &NewOutbox<'_>) -> ApiResult<OutboxMessage> {
    let id = new_id();
    conn.prepare_cached(
        "INSERT INTO outbox (id, org_id, contact_id, draft_id, channel, subject, body, status, deliver_after, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9)",
    )?
    .execute(params![id, org, m.contact_id, m.draft_id, m.channel, m.subject, m.body, m.deliver_after, now_rfc3339()])?;
    get_outbox(conn, org, &id)?
        .ok_or_else(|| crate::error::ApiError::internal("outbox row vanished"))
}

pub fn get_outbox(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<OutboxMessage>> {
    let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = ?1 AND org_id = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id, org], outbox_row)
        .optional()?)
}

/// Cancels a message that is still queued; false when it was already sent or cancelled.
pub fn cancel_outbox(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    Ok(conn.execute(
        "UPDATE outbox SET status = 'cancelled' WHERE id = ?1 AND org_id = ?2 AND status = 'queued'",
        [id, org],
    )? > 0)
}

/// Queued messages due for delivery, oldest first: (org, message).
pub fn due_outbox(
    conn: &Connection,
    now: &str,
    cap: usize,
) -> ApiResult<Vec<(String, OutboxMessage)>> {
    let sql = format!(
        "SELECT org_id, {OUTBOX_COLUMNS} FROM outbox WHERE status = 'queued' AND deliver_after <= ?1 ORDER BY deliver_after LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![now, cap as i64], |r| {
        let org: String = r.get(0)?;
        let m = OutboxMessage {
            id: r.get(1)?,
            contact_id: r.get(2)?,
            draft_id: r.get(3)?,
            channel: r.get(4)?,
            subject: r.get(5)?,
            body: r.get(6)?,
            status: r.get(7)?,
            deliver_after: r.get(8)?,
            created_at: r.get(9)?,
            sent_at: r.get(10)?,
        };
        Ok((org, m))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Marks a queued message sent; false when it is no longer queued (cancelled meanwhile).
pub fn mark_sent(conn: &Connection, id: &str) -> ApiResult<bool> {
    Ok(conn.execute(
        "UPDATE outbox SET status = 'sent', sent_at = ?2 WHERE id = ?1 AND status = 'queued'",
        params![id, now_rfc3339()],
    )? > 0)
}

// ---- meetings -------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Meeting {
    pub id: String,
    pub contact_id: String,
    pub title: String,
    pub start_time: String,
    pub duration_minutes: u32,
    pub status: String,
}

pub fn insert_meeting(
    conn: &Connection,
    org: &str,
    contact_id: &str,
    title: &str,
    start_time: &str,
    duration_minutes: u32,
) -> ApiResult<Meeting> {
    let id = new_id();
    conn.prepare_cached(
        "INSERT INTO meetings (id, org_id, contact_id, title, start_time, duration_minutes, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'scheduled', ?7)",
    )?
    .execute(params![id, org, contact_id, title, start_time, duration_minutes, now_rfc3339()])?;
    Ok(Meeting {
        id,
        contact_id: contact_id.to_string(),
        title: title.to_string(),
        start_time: start_time.to_string(),
        duration_minutes,
        status: "scheduled".into(),
    })
}

// ---- jobs -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub contact_id: Option<String>,
    pub company: Option<String>,
    pub topic: Option<String>,
    pub status: String,
    pub result: Option<Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Failed attempts so far; a job retried after a failure shows them while it waits.
    pub attempts: u32,
    /// When a job that failed an attempt is tried again (RFC 3339); null otherwise.
    pub next_attempt_at: Option<String>,
    /// The last failure, `{"code", "message"}`; null while nothing failed.
    pub last_error: Option<Value>,
}

pub(crate) const JOB_COLUMNS: &str =
    "id, kind, contact_id, company, topic, status, result, created_at, started_at, finished_at, \
     attempts, next_attempt_at, last_error";

pub(crate) fn job_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        contact_id: r.get(2)?,
        company: r.get(3)?,
        topic: r.get(4)?,
        status: r.get(5)?,
        result: r
            .get::<_, Option<String>>(6)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        created_at: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        attempts: r.get(10)?,
        next_attempt_at: r.get(11)?,
        last_error: r
            .get::<_, Option<String>>(12)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

pub fn insert_job(
    conn: &Connection,
    org: &str,
    kind: &str,
    contact_id: Option<&str>,
    company: Option<&str>,
    topic: Option<&str>,
) -> ApiResult<Job> {
    let id = new_id();
    conn.prepare_cached(
        "INSERT INTO jobs (id, org_id, kind, contact_id, company, topic, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7)",
    )?
    .execute(params![
        id,
        org,
        kind,
        contact_id,
        company,
        topic,
        now_rfc3339()
    ])?;
    get_job(conn, org, &id)?.ok_or_else(|| crate::error::ApiError::internal("job row vanished"))
}

pub fn get_job(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND org_id = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id, org], job_row)
        .optional()?)
}

/// Moves a job from `from` to `to`; false when it was not in `from` (e.g. cancelled meanwhile).
pub fn transition_job(conn: &Connection, id: &str, from: &str, to: &str) -> ApiResult<bool> {
    let now = now_rfc3339();
    let n = conn.execute(
        "UPDATE jobs SET status = ?3,
                started_at = CASE WHEN ?3 = 'running' THEN ?4 ELSE started_at END,
                finished_at = CASE WHEN ?3 IN ('completed', 'failed', 'cancelled') THEN ?4 ELSE finished_at END
          WHERE id = ?1 AND status = ?2",
        params![id, from, to, now],
    )?;
    Ok(n > 0)
}

pub fn finish_job(
    conn: &Connection,
    id: &str,
    status: &str,
    result: &Value,
    previous: Option<&Value>,
) -> ApiResult<()> {
    conn.execute(
        "UPDATE jobs SET status = ?2, result = ?3, previous = COALESCE(?4, previous), finished_at = ?5,
                next_attempt_at = NULL WHERE id = ?1",
        params![id, status, result.to_string(), previous.map(|p| p.to_string()), now_rfc3339()],
    )?;
    Ok(())
}

/// The fields an enrichment job overwrote, so undo can put them back.
pub fn job_previous(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Value>> {
    Ok(conn
        .query_row(
            "SELECT previous FROM jobs WHERE id = ?1 AND org_id = ?2",
            [id, org],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten()
        .and_then(|s| serde_json::from_str(&s).ok()))
}

// ---- undo log -------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct UndoEntry {
    pub id: String,
    pub action_type: String,
    pub summary: String,
    pub undo: Value,
    pub created_at: String,
}

pub fn insert_undo(
    conn: &Connection,
    org: &str,
    key_id: &str,
    action_type: &str,
    summary: &str,
    undo: &Value,
) -> ApiResult<String> {
    let id = new_id();
    insert_undo_with_id(conn, &id, org, key_id, action_type, summary, undo)?;
    Ok(id)
}

pub fn insert_undo_with_id(
    conn: &Connection,
    id: &str,
    org: &str,
    key_id: &str,
    action_type: &str,
    summary: &str,
    undo: &Value,
) -> ApiResult<()> {
    conn.prepare_cached(
        "INSERT INTO undo_entries (id, org_id, key_id, action_type, summary, undo, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id,
        org,
        key_id,
        action_type,
        summary,
        undo.to_string(),
        now_rfc3339()
    ])?;
    Ok(())
}

/// The newest not-yet-undone entry of this key created at or after `since`.
pub fn latest_undo(
    conn: &Connection,
    org: &str,
    key_id: &str,
    since: &str,
) -> ApiResult<Option<UndoEntry>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, action_type, summary, undo, created_at FROM undo_entries
              WHERE org_id = ?1 AND key_id = ?2 AND created_at >= ?3 AND undone_at IS NULL
              ORDER BY created_at DESC, id DESC LIMIT 1",
        )?
        .query_row(params![org, key_id, since], |r| {
            Ok(UndoEntry {
                id: r.get(0)?,
                action_type: r.get(1)?,
                summary: r.get(2)?,
                undo: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(Value::Null), // parsed strictly by the caller
                created_at: r.get(4)?,
            })
        })
        .optional()?)
}

/// Marks an entry used up by `undo_last` (`reverted`: whether its effect was undone); false
/// when it already was (compare-and-set).
pub fn mark_undone(conn: &Connection, id: &str, reverted: bool) -> ApiResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE undo_entries SET undone_at = ?2, reverted = ?3 WHERE id = ?1 AND undone_at IS NULL",
        )?
        .execute(params![id, now_rfc3339(), reverted])?;
    Ok(n == 1)
}
