//! `undo_last`: reverses the newest undoable write of the same API key inside the undo window.

use rusqlite::Connection;
use serde_json::json;

use super::{ExecCtx, Executed};
use crate::error::ApiResult;
use crate::events::EventKind;
use crate::native::reply::NativeReply;
use crate::native::undo::{self, UndoOp};
use crate::store::{contacts, events, native as rows};

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
    // A message still queued before the undo is cancelled by it: its sessions hear about it.
    let queued_message = match &op {
        Some(UndoOp::CancelMessage { message_id }) => {
            rows::get_outbox(conn, ctx.org, message_id)?.filter(|m| m.status == "queued")
        }
        _ => None,
    };
    let spoken = match &op {
        Some(op) => undo::apply(conn, ctx.org, op, &entry.summary)?,
        None => "I couldn't undo that.".to_string(),
    };
    if let Some(m) = queued_message {
        announce_cancelled(conn, ctx, &m.id)?;
    }
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
