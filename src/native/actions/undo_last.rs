//! `undo_last`: reverses the newest undoable write of the same API key inside the undo window.

use rusqlite::Connection;
use serde_json::json;

use super::{ExecCtx, Executed};
use crate::error::ApiResult;
use crate::native::reply::NativeReply;
use crate::native::undo;
use crate::state::sqlite as state_rows;

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>) -> ApiResult<Executed> {
    let since = crate::ids::to_rfc3339(
        chrono::Utc::now()
            - chrono::Duration::seconds(i64::try_from(ctx.undo_window_secs).unwrap_or(600)),
    );
    let Some(entry) = state_rows::latest_undo(conn, ctx.org, ctx.key_id, &since)? else {
        return Ok(Executed {
            reply: NativeReply::result("There's nothing to undo.", json!({ "undone": false })),
            undo: None,
        });
    };
    let applied = undo::apply(conn, ctx.org, &entry.op, &entry.summary)?;
    // The entry is used up either way: reverted, or left alone because the world moved on.
    state_rows::mark_undone(conn, &entry.id, applied.reverted)?;
    Ok(Executed {
        reply: NativeReply::result(
            applied.spoken,
            json!({ "undone": applied.reverted, "undone_action": entry.action_type, "summary": entry.summary, "done_at": entry.created_at }),
        )
        .with_id("undo_id", entry.id),
        undo: None,
    })
}
