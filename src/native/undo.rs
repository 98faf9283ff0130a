//! `undo_last` (DESIGN §5): each undoable write records how to reverse itself; undo applies the
//! newest such record of the same API key inside the window and says what it undid.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::{AudienceStatus, CampaignStatus, ContactStatus};
use crate::error::{ApiError, ApiResult};
use crate::native::reply::NativeReply;
use crate::store::{campaigns, contacts, interactions, native as rows};

/// How to reverse one write. Stored as JSON in `undo_entries`.
///
/// Undo is compare-and-set (DESIGN §15): an op carries what its write set, and reverting
/// happens only while that still holds. The `expected`/`member_id` fields are optional so
/// entries written before they existed still read (and then revert unconditionally, as they
/// always did).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UndoOp {
    RemoveFromCampaign {
        campaign_id: String,
        contact_id: String,
        /// The membership the add created: only that one is removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_id: Option<String>,
    },
    RestoreAudience {
        campaign_id: String,
        contact_id: String,
        status: String,
    },
    SetCampaignStatus {
        campaign_id: String,
        status: String,
        /// The status the write set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<String>,
    },
    DeleteDraft {
        draft_id: String,
    },
    CancelMessage {
        message_id: String,
    },
    CancelJob {
        job_id: String,
    },
    RevertEnrichment {
        job_id: String,
        contact_id: String,
    },
    RestoreStatus {
        contact_id: String,
        status: String,
        /// The status the write set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected: Option<String>,
    },
    DeleteNote {
        note_id: String,
    },
    /// Upstream backend only: a write forwarded to the upstream's native endpoint, undone by
    /// the upstream's own `undo_last` for the same key.
    UpstreamUndoLast,
}

/// What applying an undo did.
pub struct Applied {
    pub spoken: String,
    /// False when the world had moved on and the entry was left alone.
    pub reverted: bool,
}

impl Applied {
    pub fn done(summary: &str) -> Self {
        Applied {
            spoken: format!("Undone. {summary}"),
            reverted: true,
        }
    }

    pub fn left(spoken: impl Into<String>) -> Self {
        Applied {
            spoken: spoken.into(),
            reverted: false,
        }
    }
}

/// The undo window as a lower bound on `created_at` (RFC 3339).
pub fn undo_since(window: std::time::Duration) -> String {
    crate::ids::to_rfc3339(
        chrono::Utc::now()
            - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::minutes(10)),
    )
}

/// The answer to `undo_last` when nothing in the window is left to undo.
pub fn nothing_to_undo() -> NativeReply {
    NativeReply::result(
        "There's nothing to undo.",
        json!({ "undone": false, "reason": "nothing_to_undo" }),
    )
}

/// The answer to `undo_last` once `entry` has been applied (or left alone).
pub fn undone_reply(entry: crate::state::UndoEntry, applied: Applied) -> NativeReply {
    NativeReply::result(
        applied.spoken,
        json!({ "undone": applied.reverted, "undone_action": entry.action_type,
                "summary": entry.summary, "done_at": entry.created_at }),
    )
    .with_id("undo_id", entry.id)
}

/// Parses a stored status strictly: an unreadable value is an error, never a default.
pub fn parse_stored<T: std::str::FromStr<Err = String>>(what: &str, s: &str) -> ApiResult<T> {
    s.parse()
        .map_err(|e| ApiError::internal(format!("unreadable stored {what}: {e}")))
}

/// Applies `op` and says what happened. `summary` is what the undone write stored as "what
/// undoing this means" ("Sarah Chen is out of Seed founders again.").
pub fn apply(conn: &Connection, org: &str, op: &UndoOp, summary: &str) -> ApiResult<Applied> {
    Ok(match op {
        UndoOp::RemoveFromCampaign {
            campaign_id,
            contact_id,
            member_id,
        } => {
            let current = campaigns::audience_member(conn, campaign_id, contact_id)?;
            match (current, member_id) {
                (None, _) => Applied::left(
                    "That contact had already left the campaign, so there was nothing to undo.",
                ),
                (Some(m), Some(id)) if &m.id != id => Applied::left(
                    "That contact was added to the campaign again since, so I left them in.",
                ),
                (Some(_), _) => {
                    campaigns::remove_from_audience(conn, campaign_id, contact_id)?;
                    Applied::done(summary)
                }
            }
        }
        UndoOp::RestoreAudience {
            campaign_id,
            contact_id,
            status,
        } => {
            let status: AudienceStatus = parse_stored("audience status", status)?;
            if campaigns::audience_member(conn, campaign_id, contact_id)?.is_some() {
                Applied::left("That contact is back in the campaign already, so I left it.")
            } else {
                campaigns::restore_member(conn, campaign_id, contact_id, status)?;
                Applied::done(summary)
            }
        }
        UndoOp::SetCampaignStatus {
            campaign_id,
            status,
            expected,
        } => {
            let status: CampaignStatus = parse_stored("campaign status", status)?;
            let current = campaigns::require(conn, org, campaign_id)?;
            match expected {
                Some(e)
                    if parse_stored::<CampaignStatus>("campaign status", e)? != current.status =>
                {
                    Applied::left(format!(
                        "{} was changed to {} since, so I left it.",
                        current.name, current.status
                    ))
                }
                _ => {
                    campaigns::set_status(conn, org, campaign_id, status)?;
                    Applied::done(summary)
                }
            }
        }
        UndoOp::DeleteDraft { draft_id } => {
            rows::delete_draft(conn, org, draft_id)?;
            Applied::done(summary)
        }
        UndoOp::CancelMessage { message_id } => {
            if rows::cancel_outbox(conn, org, message_id)? {
                Applied::done(summary)
            } else {
                Applied::left("That message already went out, so I can't take it back.")
            }
        }
        UndoOp::CancelJob { job_id } => {
            if rows::transition_job(conn, job_id, "queued", "cancelled")? {
                Applied::done(summary)
            } else {
                Applied::left("That research already started, so I can't cancel it.")
            }
        }
        UndoOp::RevertEnrichment { job_id, contact_id } => {
            if !rows::transition_job(conn, job_id, "queued", "cancelled")? {
                if let Some(prev) = rows::job_previous(conn, org, job_id)? {
                    restore_fields(conn, org, contact_id, &prev)?;
                }
            }
            Applied::done(summary)
        }
        UndoOp::RestoreStatus {
            contact_id,
            status,
            expected,
        } => {
            let status: ContactStatus = parse_stored("contact status", status)?;
            let contact = contacts::require(conn, org, contact_id)?;
            let current = contact.status;
            match expected {
                Some(e) if parse_stored::<ContactStatus>("contact status", e)? != current => {
                    Applied::left(format!(
                        "{}'s status was changed to {} since, so I left it.",
                        contact.display_name(),
                        current.as_str().replace('_', " ")
                    ))
                }
                _ => {
                    contacts::set_status(conn, org, contact_id, status)?;
                    Applied::done(summary)
                }
            }
        }
        UndoOp::DeleteNote { note_id } => {
            interactions::delete(conn, org, note_id)?;
            Applied::done(summary)
        }
        // Only the upstream backend records these; an embedded store never sees one.
        UndoOp::UpstreamUndoLast => Applied::left("I couldn't undo that."),
    })
}

/// Puts back the fields an enrichment overwrote (`{"company": ..., "account_id": ...}`).
fn restore_fields(
    conn: &Connection,
    org: &str,
    contact_id: &str,
    prev: &serde_json::Value,
) -> ApiResult<()> {
    conn.execute(
        "UPDATE contacts SET company = ?3, company_norm = ?4, account_id = ?5, updated_at = ?6
          WHERE id = ?1 AND org_id = ?2",
        rusqlite::params![
            contact_id,
            org,
            prev["company"].as_str(),
            prev["company"]
                .as_str()
                .map(crate::text::normalize)
                .unwrap_or_default(),
            prev["account_id"].as_str(),
            crate::ids::now_rfc3339()
        ],
    )?;
    Ok(())
}

/// The JSON stored for `op`.
pub fn to_json(op: &UndoOp) -> serde_json::Value {
    serde_json::to_value(op).unwrap_or_else(|_| json!(null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_as_tagged_json() {
        let op = UndoOp::RestoreStatus {
            contact_id: "c".into(),
            status: "qualified".into(),
            expected: Some("replied".into()),
        };
        let v = to_json(&op);
        assert_eq!(v["op"], "restore_status");
        assert_eq!(serde_json::from_value::<UndoOp>(v).unwrap(), op);
    }

    #[test]
    fn entries_written_before_compare_and_set_still_read() {
        let old = json!({ "op": "restore_status", "contact_id": "c", "status": "new" });
        assert_eq!(
            serde_json::from_value::<UndoOp>(old).unwrap(),
            UndoOp::RestoreStatus {
                contact_id: "c".into(),
                status: "new".into(),
                expected: None
            }
        );
    }

    #[test]
    fn stored_statuses_parse_strictly() {
        assert!(parse_stored::<ContactStatus>("contact status", "qualifed").is_err());
        assert!(parse_stored::<ContactStatus>("contact status", "qualified").is_ok());
    }
}
