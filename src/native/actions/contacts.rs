//! Contact writes: `book_meeting`, `mark_status` and `note_on_contact`.

use rusqlite::Connection;
use serde_json::json;

use super::{contact_or_clarify, reply, ExecCtx, Executed};
use chrono::{DateTime, Duration, SecondsFormat, Utc};

use crate::domain::{ContactStatus, TimeZone};
use crate::error::{ApiError, ApiResult};
use crate::ids::{parse_rfc3339, to_rfc3339};
use crate::native::action::{BookMeeting, MarkStatus, NoteOnContact};
use crate::native::plan::{Plan, Step};
use crate::native::reply::NativeReply;
use crate::native::speech;
use crate::native::undo::UndoOp;
use crate::store::contacts::Contact;
use crate::store::interactions::{self, NewInteraction};
use crate::store::{contacts, native as rows, orgs};
use crate::webhooks::{self, EventType};

pub fn plan_meeting(conn: &Connection, org: &str, a: &BookMeeting) -> ApiResult<Step> {
    let contact = match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    let zone = orgs::timezone(conn, org)?;
    meeting_step_in(contact, a, zone, Utc::now())
}

/// Validates a meeting request for a resolved contact, speaking its time in UTC.
pub(crate) fn meeting_step(contact: Contact, a: &BookMeeting) -> ApiResult<Step> {
    meeting_step_in(contact, a, TimeZone::UTC, Utc::now())
}

/// How far in the past a start time may be and still be booked: the seconds a voice turn takes
/// between "now" being said and the request arriving.
const PAST_GRACE_SECS: i64 = 60;

/// Validates a meeting request for a resolved contact: the start must not be in the past. The
/// plan carries the start in the org's zone (`2026-12-01T16:00:00+01:00`), so the question and
/// the answer speak the org's wall-clock time; it is stored in UTC.
pub(crate) fn meeting_step_in(
    contact: Contact,
    a: &BookMeeting,
    zone: TimeZone,
    now: DateTime<Utc>,
) -> ApiResult<Step> {
    let start = a
        .start_time
        .as_deref()
        .and_then(parse_rfc3339)
        .ok_or_else(|| {
            ApiError::validation("action.startTime", "expected an RFC 3339 timestamp")
        })?;
    if start < now - Duration::seconds(PAST_GRACE_SECS) {
        let local = start.with_timezone(&zone.0);
        return Err(ApiError::validation(
            "action.startTime",
            format!(
                "{} is in the past; a meeting must start in the future",
                local.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        )
        .with_spoken(format!(
            "{} has already passed, so I can't book a meeting then. When should it be?",
            capitalize(&speech::when(&local, now, zone.is_utc()))
        )));
    }
    let title = a
        .title
        .clone()
        .unwrap_or_else(|| format!("Meeting with {}", contact.display_name()));
    Ok(Step::Execute(Plan::BookMeeting {
        contact,
        start_time: start
            .with_timezone(&zone.0)
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        duration_minutes: a.duration_minutes.unwrap_or(30),
        title,
    }))
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(f) => f.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

pub fn plan_status(conn: &Connection, org: &str, a: &MarkStatus) -> ApiResult<Step> {
    let contact = match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    status_step(contact, a)
}

/// A status change for a resolved contact, or the no-op answer when it already has it.
pub(crate) fn status_step(contact: Contact, a: &MarkStatus) -> ApiResult<Step> {
    let status = a
        .status
        .ok_or_else(|| ApiError::validation("action.status", "missing"))?;
    if contact.status == status {
        let id = contact.id.clone();
        return reply(
            NativeReply::result(
                format!(
                    "{} is already {}.",
                    speech::name(contact.display_name()),
                    status.spoken()
                ),
                json!({ "contact": contact, "changed": false, "reason": "already_set" }),
            )
            .with_id("contact_id", id),
        );
    }
    Ok(Step::Execute(Plan::MarkStatus { contact, status }))
}

pub fn plan_note(conn: &Connection, org: &str, a: &NoteOnContact) -> ApiResult<Step> {
    let contact = match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    let note = a.note.clone().unwrap_or_default().trim().to_string();
    Ok(Step::Execute(Plan::NoteOnContact { contact, note }))
}

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>, plan: Plan) -> ApiResult<Executed> {
    match plan {
        Plan::BookMeeting {
            contact,
            start_time,
            duration_minutes,
            title,
        } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            // Stored in UTC like every timestamp; the plan's offset is only for speaking.
            let stored_start = parse_rfc3339(&start_time)
                .map(to_rfc3339)
                .ok_or_else(|| ApiError::internal("a planned meeting lost its start time"))?;
            let meeting = rows::insert_meeting(
                conn,
                ctx.org,
                &contact.id,
                &title,
                &stored_start,
                duration_minutes,
            )?;
            let when = speech::when_rfc3339(&start_time, Utc::now());
            // The activity record keeps the date itself: "tomorrow" would be wrong next week.
            let content = format!("{title}, {duration_minutes} minutes, starting {start_time}");
            let interaction = interactions::insert(
                conn,
                ctx.org,
                &NewInteraction {
                    contact_id: Some(&contact.id),
                    campaign_id: None,
                    direction: "outbound",
                    channel: "meeting",
                    subject: Some(&title),
                    content: &content,
                    metadata: json!({ "meeting_id": meeting.id, "start_time": stored_start, "duration_minutes": duration_minutes }),
                    is_read: true,
                    idempotency_key: None,
                    created_at: None,
                },
            )?;
            let moved = !matches!(
                contact.status,
                ContactStatus::MeetingBooked | ContactStatus::Disqualified
            );
            if moved {
                contacts::set_status(conn, ctx.org, &contact.id, ContactStatus::MeetingBooked)?;
            }
            webhooks::emit(conn, ctx.org, EventType::MeetingBooked, &meeting)?;
            if moved {
                webhooks::contact_changed_since(conn, ctx.org, &contact)?;
            }
            let r = NativeReply::result(
                format!(
                    "Booked a {duration_minutes} minute meeting with {} {}.",
                    speech::name(contact.display_name()),
                    on_when(&when)
                ),
                json!({ "meeting": meeting }),
            )
            .with_id("meeting_id", meeting.id.clone())
            .with_id("contact_id", contact.id.clone())
            .with_id("interaction_id", interaction.id);
            // Booked meetings involve another person's calendar: not undoable (DESIGN §5).
            Ok(Executed {
                reply: r,
                undo: None,
            })
        }
        Plan::MarkStatus { contact, status } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            let previous = contact.status;
            contacts::set_status(conn, ctx.org, &contact.id, status)?;
            webhooks::contact_changed_since(conn, ctx.org, &contact)?;
            Ok(status_marked(&contact, previous, status))
        }
        Plan::NoteOnContact { contact, note } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            let row = interactions::insert(
                conn,
                ctx.org,
                &NewInteraction::note(&contact.id, &note, json!({ "source": "native" })),
            )?;
            let note = interactions::Note::from(row);
            webhooks::emit(conn, ctx.org, EventType::NoteCreated, &note)?;
            Ok(noted(&contact, note))
        }
        other => Err(ApiError::internal(format!(
            "contacts::execute got {}",
            other.action_type()
        ))),
    }
}

/// The answer and undo of a status change from `previous` to `status`.
pub(crate) fn status_marked(
    contact: &Contact,
    previous: ContactStatus,
    status: ContactStatus,
) -> Executed {
    let name = speech::name(contact.display_name());
    let r = NativeReply::result(
        format!("{name} is now marked {}.", status.spoken()),
        json!({ "contact_id": contact.id, "previous_status": previous, "status": status }),
    )
    .with_id("contact_id", contact.id.clone());
    let undo = (previous != status).then(|| {
        (
            format!("{name} is back to {}.", previous.spoken()),
            UndoOp::RestoreStatus {
                contact_id: contact.id.clone(),
                status: previous.to_string(),
                expected: Some(status.to_string()),
            },
        )
    });
    Executed { reply: r, undo }
}

/// The answer and undo of a note saved on `contact`.
pub(crate) fn noted(contact: &Contact, note: interactions::Note) -> Executed {
    let name = speech::name(contact.display_name());
    let note_id = note.id.clone();
    let r = NativeReply::result(format!("Noted on {name}."), json!({ "note": note }))
        .with_id("note_id", note_id.clone())
        .with_id("contact_id", contact.id.clone());
    Executed {
        reply: r,
        undo: Some((
            format!("I deleted the note on {name}."),
            UndoOp::DeleteNote { note_id },
        )),
    }
}

/// "on Tuesday, December 8 at 3:00 PM", but "today at 3:00 PM" without the "on".
pub(crate) fn on_when(when: &str) -> String {
    if when.starts_with("today") || when.starts_with("tomorrow") {
        when.to_string()
    } else {
        format!("on {when}")
    }
}
