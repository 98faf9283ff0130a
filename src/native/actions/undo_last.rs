//! `undo_last`: reverses the newest undoable write of the same API key inside the undo window.

use rusqlite::Connection;

use super::{ExecCtx, Executed};
use crate::error::ApiResult;
use crate::events::EventKind;
use crate::native::undo::{self, UndoOp};
use crate::state::sqlite as state_rows;
use crate::store::{campaigns, contacts, events, native as rows};
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
    let since = undo::undo_since(std::time::Duration::from_secs(ctx.undo_window_secs));
    let Some(entry) = state_rows::latest_undo(conn, ctx.org, ctx.key_id, &since)? else {
        return Ok(Executed {
            reply: undo::nothing_to_undo(),
            undo: None,
        });
    };
    // A message still queued before the undo is cancelled by it: its sessions hear about it.
    let queued_message = match &entry.op {
        UndoOp::CancelMessage { message_id } => {
            rows::get_outbox(conn, ctx.org, message_id)?.filter(|m| m.status == "queued")
        }
        _ => None,
    };
    let before = Snapshot::read(conn, ctx.org, &entry.op)?;
    let applied = undo::apply(conn, ctx.org, &entry.op, &entry.summary)?;
    before.report_changes(conn, ctx.org)?;
    if let Some(m) = queued_message {
        announce_cancelled(conn, ctx, &m.id)?;
    }
    // The entry is used up either way: reverted, or left alone because the world moved on.
    state_rows::mark_undone(conn, &entry.id, applied.reverted)?;
    Ok(Executed {
        reply: undo::undone_reply(entry, applied),
        undo: None,
    })
}

/// Records `message.cancelled` for the sessions of the key that queued the message, if the undo
/// did cancel it.
fn announce_cancelled(conn: &Connection, ctx: &ExecCtx<'_>, message_id: &str) -> ApiResult<()> {
    let Some(m) = rows::get_outbox(conn, ctx.org, message_id)?.filter(|m| m.status == "cancelled")
    else {
        return Ok(());
    };
    let owner = events::message_owner(conn, &m.id)?.unwrap_or_else(|| ctx.key_id.to_string());
    let contact = match &m.contact_id {
        Some(id) => contacts::get(conn, ctx.org, id)?,
        None => None,
    };
    let event = crate::native::workers::message_event(
        EventKind::MessageCancelled,
        owner,
        &m,
        contact.as_ref(),
    );
    events::enqueue(conn, &event)
}
