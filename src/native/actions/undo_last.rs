//! `undo_last`: reverses the newest undoable write of the same API key inside the undo window.

use rusqlite::Connection;

use super::{ExecCtx, Executed};
use crate::error::ApiResult;
use crate::native::undo;
use crate::state::sqlite as state_rows;

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>) -> ApiResult<Executed> {
    let since = undo::undo_since(std::time::Duration::from_secs(ctx.undo_window_secs));
    let Some(entry) = state_rows::latest_undo(conn, ctx.org, ctx.key_id, &since)? else {
        return Ok(Executed {
            reply: undo::nothing_to_undo(),
            undo: None,
        });
    };
    let applied = undo::apply(conn, ctx.org, &entry.op, &entry.summary)?;
    // The entry is used up either way: reverted, or left alone because the world moved on.
    state_rows::mark_undone(conn, &entry.id, applied.reverted)?;
    Ok(Executed {
        reply: undo::undone_reply(entry, applied),
        undo: None,
    })
}
