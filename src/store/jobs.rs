//! Retry bookkeeping of research and enrichment jobs: which queued jobs are due (their hold
//! is over and their next attempt has come), and what a failed attempt does (a later retry,
//! or `failed` for good). The job rows themselves are in [`super::native`].

use rusqlite::{params, Connection};
use serde_json::json;

use super::native::{job_row, Job, JOB_COLUMNS};
use crate::error::{ApiError, ApiResult};
use crate::ids::now_rfc3339;

/// Queued jobs created at or before `created_before` whose next attempt is due at `now`,
/// oldest due first: (org, job). A job that failed before waits for its backoff, so it never
/// stands in front of jobs that are due.
pub fn due(
    conn: &Connection,
    created_before: &str,
    now: &str,
    cap: usize,
) -> ApiResult<Vec<(String, Job)>> {
    // The job's own columns first, so the one row reader of `super::native` reads them.
    let sql = format!(
        "SELECT {JOB_COLUMNS}, org_id FROM jobs
          WHERE status = 'queued' AND created_at <= ?1
            AND (next_attempt_at IS NULL OR next_attempt_at <= ?2)
          ORDER BY COALESCE(next_attempt_at, created_at), id
          LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![created_before, now, cap as i64], |r| {
        Ok((r.get::<_, String>(13)?, job_row(r)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// What became of a job after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Still queued; tried again at this RFC 3339 time.
    RetryAt(String),
    /// Out of attempts: marked `failed`, with the error in its result.
    Failed,
    /// No longer queued (cancelled by `undo_last` meanwhile): left alone.
    Gone,
}

/// How failed jobs are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; the last failure marks the job `failed`.
    pub max_attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub base_backoff: std::time::Duration,
    /// Longest wait between two attempts.
    pub max_backoff: std::time::Duration,
}

impl RetryPolicy {
    /// The wait after the `failures`-th failure (1-based): base × 2^(failures − 1), capped.
    pub fn backoff(&self, failures: u32) -> std::time::Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Counts a failed attempt of queued job `id`: schedules the next one after its backoff, or
/// marks the job `failed` once it has had `policy.max_attempts`. The client-visible error is
/// the error's code and public message (internal causes are logged, never stored).
pub fn record_failure(
    conn: &Connection,
    id: &str,
    error: &ApiError,
    policy: &RetryPolicy,
) -> ApiResult<AfterFailure> {
    let attempts: Option<u32> = conn
        .query_row(
            "UPDATE jobs SET attempts = attempts + 1 WHERE id = ?1 AND status = 'queued'
             RETURNING attempts",
            [id],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let Some(attempts) = attempts else {
        return Ok(AfterFailure::Gone);
    };
    let last_error = json!({ "code": error.code.as_str(), "message": error.message });
    if attempts >= policy.max_attempts {
        let result = json!({ "error": last_error, "attempts": attempts });
        conn.execute(
            "UPDATE jobs SET status = 'failed', result = ?2, last_error = ?3, next_attempt_at = NULL,
                    finished_at = ?4
              WHERE id = ?1",
            params![id, result.to_string(), last_error.to_string(), now_rfc3339()],
        )?;
        return Ok(AfterFailure::Failed);
    }
    let wait = chrono::Duration::from_std(policy.backoff(attempts))
        .unwrap_or_else(|_| chrono::Duration::hours(1));
    let at = crate::ids::to_rfc3339(chrono::Utc::now() + wait);
    conn.execute(
        "UPDATE jobs SET next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
        params![id, at, last_error.to_string()],
    )?;
    Ok(AfterFailure::RetryAt(at))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorCode;
    use crate::store::{native as rows, orgs, test_store};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(30), Duration::from_secs(60));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn a_failing_job_waits_its_backoff_then_fails_for_good() {
        let (_dir, store) = test_store();
        let err = ApiError::new(ErrorCode::InternalError, "Unexpected server error");
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let bad = rows::insert_job(tx, "acme", "research", None, Some("Bad"), None)?;
                let good = rows::insert_job(tx, "acme", "research", None, Some("Good"), None)?;
                let later = "9999-01-01T00:00:00.000Z";
                let now = now_rfc3339();
                assert_eq!(due(tx, later, &now, 10)?.len(), 2);

                let AfterFailure::RetryAt(at) = record_failure(tx, &bad.id, &err, &policy())?
                else {
                    panic!("first failure retries");
                };
                // Until its retry time only the good job is due.
                let ids: Vec<String> = due(tx, later, &now, 10)?
                    .into_iter()
                    .map(|(_, j)| j.id)
                    .collect();
                assert_eq!(ids, vec![good.id.clone()]);
                assert_eq!(due(tx, later, &at, 10)?.len(), 2);

                assert!(matches!(
                    record_failure(tx, &bad.id, &err, &policy())?,
                    AfterFailure::RetryAt(_)
                ));
                assert_eq!(
                    record_failure(tx, &bad.id, &err, &policy())?,
                    AfterFailure::Failed
                );
                let job = rows::get_job(tx, "acme", &bad.id)?.unwrap();
                assert_eq!(job.status, "failed");
                let result = job.result.unwrap();
                assert_eq!(result["attempts"], 3);
                assert_eq!(result["error"]["code"], "INTERNAL_ERROR");
                assert!(job.finished_at.is_some());
                assert_eq!(due(tx, later, "9999-01-01T00:00:00.000Z", 10)?.len(), 1);
                // A job no longer queued is left alone.
                assert_eq!(
                    record_failure(tx, &bad.id, &err, &policy())?,
                    AfterFailure::Gone
                );
                Ok(())
            })
            .unwrap();
    }
}
