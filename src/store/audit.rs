//! Audit records of native actions (DESIGN §9): who did what, with which input, and how it ended.

use rusqlite::{params, Connection};
use serde_json::Value;

use crate::error::ApiResult;
use crate::ids::{new_id, now_rfc3339};

pub struct AuditRecord<'a> {
    pub org_id: &'a str,
    pub key_id: &'a str,
    pub action_type: &'a str,
    pub action: &'a Value,
    pub transcript: Option<&'a str>,
    pub execution_mode: &'a str,
    /// The reply mode (`result`, `queued`, …) or the error code.
    pub outcome: &'a str,
    pub ids: &'a Value,
    pub elapsed_ms: f64,
}

/// Writes one record and returns its id.
pub fn insert(conn: &Connection, r: &AuditRecord<'_>) -> ApiResult<String> {
    let id = new_id();
    conn.prepare_cached(
        "INSERT INTO audit_log (id, org_id, key_id, action_type, action, transcript, execution_mode,
                                outcome, ids, elapsed_ms, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        id,
        r.org_id,
        r.key_id,
        r.action_type,
        r.action.to_string(),
        r.transcript,
        r.execution_mode,
        r.outcome,
        r.ids.to_string(),
        r.elapsed_ms,
        now_rfc3339()
    ])?;
    Ok(id)
}

/// Number of audit records of an org (used by tests and diagnostics).
pub fn count(conn: &Connection, org: &str) -> ApiResult<i64> {
    Ok(conn.query_row(
        "SELECT count(*) FROM audit_log WHERE org_id = ?1",
        [org],
        |r| r.get(0),
    )?)
}

/// One audit record as JSON, for tests and diagnostics.
pub fn get(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Value>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT action_type, action, transcript, execution_mode, outcome, ids, key_id
               FROM audit_log WHERE org_id = ?1 AND id = ?2",
            [org, id],
            |r| {
                Ok(serde_json::json!({
                    "action_type": r.get::<_, String>(0)?,
                    "action": serde_json::from_str::<Value>(&r.get::<_, String>(1)?).unwrap_or(Value::Null),
                    "transcript": r.get::<_, Option<String>>(2)?,
                    "execution_mode": r.get::<_, String>(3)?,
                    "outcome": r.get::<_, String>(4)?,
                    "ids": serde_json::from_str::<Value>(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
                    "key_id": r.get::<_, Option<String>>(6)?,
                }))
            },
        )
        .optional()?)
}
