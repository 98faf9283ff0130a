//! `undo_last`: reverses the newest undoable write of the same API key inside the undo window.

use rusqlite::Connection;
use serde_json::json;

use super::{ExecCtx, Executed};
use crate::error::ApiResult;
use crate::native::reply::NativeReply;
use crate::native::undo::{self, UndoOp};
use crate::store::{campaigns, contacts, native as rows};
use crate::webhooks::{self, EventType};

/// The record an undo may change, read before it runs, so the webhook events report what
/// the undo really changed (it can find the world changed since and do less).
enum Snapshot {
    Campaign(campaigns::Campaign),
    Contact(contacts::Contact),
    Message(rows::OutboxMessage),
    Nothing,
}

impl Snapshot {
    fn read(conn: &Connection, org: &str, op: &UndoOp) -> ApiResult<Snapshot> {
        Ok(match op {
            UndoOp::SetCampaignStatus { campaign_id, .. } => {
                campaigns::get(conn, org, campaign_id)?
                    .map_or(Snapshot::Nothing, Snapshot::Campaign)
            }
            UndoOp::RestoreStatus { contact_id, .. }
            | UndoOp::RevertEnrichment { contact_id, .. } => {
                contacts::get(conn, org, contact_id)?.map_or(Snapshot::Nothing, Snapshot::Contact)
            }
            UndoOp::CancelMessage { message_id } => rows::get_outbox(conn, org, message_id)?
                .map_or(Snapshot::Nothing, Snapshot::Message),
            // Audience changes, drafts, notes and jobs being cancelled have no event type.
            _ => Snapshot::Nothing,
        })
    }

    /// Emits the events of the difference between this snapshot and the record now.
    fn report_changes(self, conn: &Connection, org: &str) -> ApiResult<()> {
        match self {
            Snapshot::Campaign(before) => match campaigns::get(conn, org, &before.id)? {
                Some(after) => webhooks::campaign_status_changed(conn, org, before.status, &after),
                None => Ok(()),
            },
            Snapshot::Contact(before) => webhooks::contact_changed_since(conn, org, &before),
            Snapshot::Message(before) => match rows::get_outbox(conn, org, &before.id)? {
                Some(after) if after.status == "cancelled" && before.status != "cancelled" => {
                    webhooks::emit(conn, org, EventType::MessageCancelled, &after)
                }
                _ => Ok(()),
            },
            Snapshot::Nothing => Ok(()),
        }
    }
}

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>) -> ApiResult<Executed> {
    let since = crate::ids::to_rfc3339(
        chrono::Utc::now()
            - chrono::Duration::seconds(i64::try_from(ctx.undo_window_secs).unwrap_or(600)),
    );
    let Some(entry) = rows::latest_undo(conn, ctx.org, ctx.key_id, &since)? else {
        return Ok(Executed {
            reply: NativeReply::result("There's nothing to undo.", json!({ "undone": false })),
            undo: None,
        });
    };
    let op: Option<UndoOp> = serde_json::from_value(entry.undo.clone()).ok();
    let spoken = match &op {
        Some(op) => {
            let before = Snapshot::read(conn, ctx.org, op)?;
            let spoken = undo::apply(conn, ctx.org, op, &entry.summary)?;
            before.report_changes(conn, ctx.org)?;
            spoken
        }
        None => "I couldn't undo that.".to_string(),
    };
    rows::mark_undone(conn, &entry.id)?;
    Ok(Executed {
        reply: NativeReply::result(
            spoken,
            json!({ "undone": op.is_some(), "undone_action": entry.action_type, "summary": entry.summary, "done_at": entry.created_at }),
        )
        .with_id("undo_id", entry.id),
        undo: None,
    })
}
