//! `undo_last`: reverses the newest undoable write of the same API key inside the undo window.

use rusqlite::Connection;
use serde_json::json;

use super::{ExecCtx, Executed};
use crate::error::ApiResult;
use crate::native::reply::NativeReply;
use crate::native::undo::{self, UndoOp};
use crate::store::native as rows;

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>) -> ApiResult<Executed> {
    let since = crate::ids::to_rfc3339(
        chrono::Utc::now()
            - chrono::Duration::seconds(i64::try_from(ctx.undo_window_secs).unwrap_or(600)),
    );
    let Some(entry) = rows::latest_undo(conn, ctx.org, ctx.key_id, &since)? else {
        return Ok(Executed {
            reply: NativeReply::result(
                "There's nothing to undo.",
                json!({ "undone": false, "reason": "nothing_to_undo" }),
            ),
            undo: None,
        });
    };
    let op: Option<UndoOp> = serde_json::from_value(entry.undo.clone()).ok();
    let spoken = match &op {
        Some(op) => undo::apply(conn, ctx.org, op, &entry.summary)?,
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
