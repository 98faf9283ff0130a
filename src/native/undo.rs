//! `undo_last` (DESIGN §5): each undoable write records how to reverse itself; undo applies the
//! newest such record of the same API key inside the window and says what it undid.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::domain::{AudienceStatus, CampaignStatus, ContactStatus};
use crate::error::ApiResult;
use crate::store::{campaigns, contacts, interactions, native as rows};

/// How to reverse one write. Stored as JSON in `undo_entries`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UndoOp {
    RemoveFromCampaign {
        campaign_id: String,
        contact_id: String,
    },
    RestoreAudience {
        campaign_id: String,
        contact_id: String,
        status: String,
    },
    SetCampaignStatus {
        campaign_id: String,
        status: String,
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
    },
    DeleteNote {
        note_id: String,
    },
    /// Upstream backend only: a write forwarded to the upstream's native endpoint, undone by
    /// the upstream's own `undo_last` for the same key.
    UpstreamUndoLast,
}

/// Applies `op` and returns the sentence to speak. `summary` is what the undone write stored
/// as "what undoing this means" ("Sarah Chen is out of Seed founders again.").
pub fn apply(conn: &Connection, org: &str, op: &UndoOp, summary: &str) -> ApiResult<String> {
    let done = format!("Undone. {summary}");
    Ok(match op {
        UndoOp::RemoveFromCampaign {
            campaign_id,
            contact_id,
        } => {
            campaigns::remove_from_audience(conn, campaign_id, contact_id)?;
            done
        }
        UndoOp::RestoreAudience {
            campaign_id,
            contact_id,
            status,
        } => {
            let status: AudienceStatus = status.parse().unwrap_or(AudienceStatus::Active);
            campaigns::restore_member(conn, campaign_id, contact_id, status)?;
            done
        }
        UndoOp::SetCampaignStatus {
            campaign_id,
            status,
        } => {
            let status: CampaignStatus = status.parse().unwrap_or(CampaignStatus::Active);
            campaigns::set_status(conn, org, campaign_id, status)?;
            done
        }
        UndoOp::DeleteDraft { draft_id } => {
            rows::delete_draft(conn, org, draft_id)?;
            done
        }
        UndoOp::CancelMessage { message_id } => {
            if rows::cancel_outbox(conn, org, message_id)? {
                done
            } else {
                "That message already went out, so I can't take it back.".to_string()
            }
        }
        UndoOp::CancelJob { job_id } => {
            if rows::transition_job(conn, job_id, "queued", "cancelled")? {
                done
            } else {
                "That research already started, so I can't cancel it.".to_string()
            }
        }
        UndoOp::RevertEnrichment { job_id, contact_id } => {
            if !rows::transition_job(conn, job_id, "queued", "cancelled")? {
                if let Some(prev) = rows::job_previous(conn, org, job_id)? {
                    restore_fields(conn, org, contact_id, &prev)?;
                }
            }
            done
        }
        UndoOp::RestoreStatus { contact_id, status } => {
            let status: ContactStatus = status.parse().unwrap_or(ContactStatus::New);
            contacts::set_status(conn, org, contact_id, status)?;
            done
        }
        UndoOp::DeleteNote { note_id } => {
            interactions::delete(conn, org, note_id)?;
            done
        }
        // Only the upstream backend records these; an embedded store never sees one.
        UndoOp::UpstreamUndoLast => "I couldn't undo that.".to_string(),
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
        };
        let v = to_json(&op);
        assert_eq!(v["op"], "restore_status");
        assert_eq!(serde_json::from_value::<UndoOp>(v).unwrap(), op);
    }
}
