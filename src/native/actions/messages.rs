//! Messaging actions: `draft_message` and `send_message`, which follows the org's pilot mode
//! (DESIGN §7): off blocks, review saves a draft, auto queues in the outbox after confirmation.

use rusqlite::Connection;
use serde_json::json;

use super::{contact_or_clarify, reply, ExecCtx, Executed};
use crate::domain::{Channel, PilotMode};
use crate::error::{ApiError, ApiResult};
use crate::native::action::{DraftMessage, SendMessage};
use crate::native::plan::{channel_word, Plan, Step};
use crate::native::reply::{NativeReply, ReplyMode};
use crate::native::speech;
use crate::native::undo::UndoOp;
use crate::store::contacts::Contact;
use crate::store::{contacts, native as rows, orgs};

fn first_name(c: &Contact) -> String {
    c.first_name.clone().unwrap_or_else(|| "there".into())
}

/// A plain first draft from the user's instructions; the client or a human polishes it.
fn compose(contact: &Contact, instructions: Option<&str>) -> String {
    let middle = match instructions.map(str::trim).filter(|s| !s.is_empty()) {
        Some(i) => {
            let mut s = i.to_string();
            if !s.ends_with(['.', '!', '?']) {
                s.push('.');
            }
            let mut chars = s.chars();
            match chars.next() {
                Some(f) => f.to_uppercase().collect::<String>() + chars.as_str(),
                None => s,
            }
        }
        None => match &contact.company {
            Some(co) => format!("I had a quick idea for how {co} could book more meetings with less manual outreach."),
            None => "I had a quick idea I'd love to share with you.".to_string(),
        },
    };
    format!(
        "Hi {},\n\n{middle}\n\nWould you be open to a short call this week?\n\nBest regards",
        first_name(contact)
    )
}

fn default_subject(contact: &Contact, channel: Channel) -> Option<String> {
    match channel {
        Channel::Email => Some(match &contact.company {
            Some(co) => format!("Quick idea for {co}"),
            None => format!("Quick question, {}", first_name(contact)),
        }),
        Channel::Linkedin => None,
    }
}

pub fn plan_draft(conn: &Connection, org: &str, a: &DraftMessage) -> ApiResult<Step> {
    let contact = match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    Ok(draft_step(contact, a))
}

/// A draft for a resolved contact, composed from the user's instructions.
pub(crate) fn draft_step(contact: Contact, a: &DraftMessage) -> Step {
    let channel = a.channel.unwrap_or(Channel::Email);
    let subject = a
        .subject
        .clone()
        .or_else(|| default_subject(&contact, channel));
    let body = compose(&contact, a.instructions.as_deref());
    Step::Execute(Plan::DraftMessage {
        contact,
        channel,
        subject,
        body,
        instructions: a.instructions.clone(),
    })
}

pub fn plan_send(conn: &Connection, org: &str, a: &SendMessage) -> ApiResult<Step> {
    let contact = match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    let mut channel = a.channel;
    let mut subject = a.subject.clone();
    let mut body = a.body.clone().filter(|b| !b.trim().is_empty());
    let draft_id = a.draft_id.clone().filter(|d| !d.trim().is_empty());
    if let Some(id) = &draft_id {
        let draft = crate::ids::is_uuid(id)
            .then(|| rows::get_draft(conn, org, &id.to_ascii_lowercase()))
            .transpose()?
            .flatten()
            .ok_or_else(|| {
                ApiError::not_found("Draft").with_spoken("I couldn't find that draft.")
            })?;
        // A draft addresses its contact by name; sending it to someone else is never intended.
        if let Some(owner) = draft.contact_id.as_deref().filter(|o| *o != contact.id) {
            let owner = contacts::get(conn, org, owner)?
                .map(|c| c.display_name().to_string())
                .unwrap_or_else(|| "someone else".to_string());
            return Err(ApiError::validation(
                "action.draftId",
                "the draft was written for another contact",
            )
            .with_spoken(format!(
                "That draft is for {}, not {}.",
                speech::name(&owner),
                speech::name(contact.display_name())
            )));
        }
        channel = channel.or_else(|| draft.channel.parse().ok());
        subject = subject.or(draft.subject);
        body = body.or(Some(draft.body));
    }
    let mode = orgs::pilot_mode(conn, org)?;
    send_step(contact, channel, subject, body, draft_id, mode)
}

/// What `send_message` does for a resolved contact under the org's pilot mode (DESIGN §7): off
/// answers that nothing was sent, review saves a draft, auto sends after confirmation.
pub(crate) fn send_step(
    contact: Contact,
    channel: Option<Channel>,
    subject: Option<String>,
    body: Option<String>,
    draft_id: Option<String>,
    mode: PilotMode,
) -> ApiResult<Step> {
    let channel = channel.unwrap_or(Channel::Email);
    let body = body.ok_or_else(|| {
        ApiError::validation("action.body", "missing").with_spoken("What should the message say?")
    })?;
    if channel == Channel::Email && contact.email.is_none() {
        return Err(
            ApiError::validation("action.contactRef", "the contact has no email address")
                .with_spoken(format!(
                    "{} has no email address.",
                    speech::name(contact.display_name())
                )),
        );
    }
    match mode {
        PilotMode::Off => {
            let r = NativeReply::result(
                "Pilot is off, so I didn't send anything. Turn on review or auto mode to send messages.",
                json!({ "pilot_mode": "off", "sent": false, "reason": "pilot_off" }),
            )
            .with_id("contact_id", contact.id.clone());
            reply(r)
        }
        PilotMode::Review => Ok(Step::Execute(Plan::ReviewMessage {
            contact,
            channel,
            subject,
            body,
            draft_id,
        })),
        PilotMode::Auto => Ok(Step::Execute(Plan::SendMessage {
            contact,
            channel,
            subject,
            body,
            draft_id,
        })),
    }
}

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>, plan: Plan) -> ApiResult<Executed> {
    match plan {
        Plan::DraftMessage {
            contact,
            channel,
            subject,
            body,
            instructions,
        } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            let draft = rows::insert_draft(
                conn,
                ctx.org,
                &rows::NewDraft {
                    contact_id: &contact.id,
                    channel: channel.as_str(),
                    subject: subject.as_deref(),
                    body: &body,
                    instructions: instructions.as_deref(),
                    status: "draft",
                },
            )?;
            let name = speech::name(contact.display_name());
            let about = subject
                .as_deref()
                .map(|s| format!(" about {}", speech::quote(s, 60)))
                .unwrap_or_default();
            let r = NativeReply::result(
                format!(
                    "I drafted {} {} to {name}{about}.",
                    speech::article(channel_word(channel)),
                    channel_word(channel)
                ),
                json!({ "draft": draft }),
            )
            .with_id("draft_id", draft.id.clone())
            .with_id("contact_id", contact.id.clone());
            Ok(Executed {
                reply: r,
                undo: Some((
                    format!("I deleted the draft to {name}."),
                    UndoOp::DeleteDraft { draft_id: draft.id },
                )),
            })
        }
        Plan::ReviewMessage {
            contact,
            channel,
            subject,
            body,
            draft_id,
        } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            let draft = match draft_id.as_deref().map(|d| d.to_ascii_lowercase()) {
                Some(id) => {
                    rows::set_draft_status(conn, ctx.org, &id, "pending_review")?;
                    rows::get_draft(conn, ctx.org, &id)?
                        .ok_or_else(|| ApiError::not_found("Draft"))?
                }
                None => rows::insert_draft(
                    conn,
                    ctx.org,
                    &rows::NewDraft {
                        contact_id: &contact.id,
                        channel: channel.as_str(),
                        subject: subject.as_deref(),
                        body: &body,
                        instructions: None,
                        status: "pending_review",
                    },
                )?,
            };
            let name = speech::name(contact.display_name());
            let r = NativeReply::result(
                format!(
                    "Pilot is in review mode, so I saved the {} to {name} as a draft for review.",
                    channel_word(channel)
                ),
                json!({ "pilot_mode": "review", "sent": false, "reason": "pilot_review", "draft": draft }),
            )
            .with_id("draft_id", draft.id.clone())
            .with_id("contact_id", contact.id.clone());
            let undo = draft_id.is_none().then(|| {
                (
                    format!("I deleted the draft to {name}."),
                    UndoOp::DeleteDraft {
                        draft_id: draft.id.clone(),
                    },
                )
            });
            Ok(Executed { reply: r, undo })
        }
        Plan::SendMessage {
            contact,
            channel,
            subject,
            body,
            draft_id,
        } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            // Confirmed minutes after it was asked: the world may have changed since. Re-read
            // inside this transaction what sending depends on, and do nothing if it no longer
            // holds (DESIGN §15).
            let name = speech::name(contact.display_name());
            match orgs::pilot_mode(conn, ctx.org)? {
                PilotMode::Auto => {}
                mode => {
                    let reason = match mode {
                        PilotMode::Off => "pilot_off",
                        _ => "pilot_review",
                    };
                    let spoken = match mode {
                        PilotMode::Off => format!(
                            "Pilot was turned off since you asked, so I didn't send the {} to {name}.",
                            channel_word(channel)
                        ),
                        _ => format!(
                            "Pilot is in review mode now, so I didn't send the {} to {name}.",
                            channel_word(channel)
                        ),
                    };
                    return Ok(Executed {
                        reply: NativeReply::result(
                            spoken,
                            json!({ "pilot_mode": mode.as_str(), "sent": false, "reason": reason }),
                        )
                        .with_id("contact_id", contact.id.clone()),
                        undo: None,
                    });
                }
            }
            if channel == Channel::Email && contact.email.is_none() {
                return Err(ApiError::validation(
                    "action.contactRef",
                    "the contact has no email address",
                )
                .with_spoken(format!(
                    "{name} has no email address any more, so I didn't send it."
                )));
            }
            let deliver_after = crate::ids::to_rfc3339(
                chrono::Utc::now()
                    + chrono::Duration::seconds(i64::try_from(ctx.outbox_hold_secs).unwrap_or(30)),
            );
            let draft_id = draft_id.map(|d| d.to_ascii_lowercase());
            let msg = rows::insert_outbox(
                conn,
                ctx.org,
                &rows::NewOutbox {
                    contact_id: &contact.id,
                    draft_id: draft_id.as_deref(),
                    channel: channel.as_str(),
                    subject: subject.as_deref(),
                    body: &body,
                    deliver_after: &deliver_after,
                },
            )?;
            crate::store::events::set_message_owner(conn, &msg.id, ctx.key_id)?;
            if let Some(d) = &draft_id {
                rows::set_draft_status(conn, ctx.org, d, "queued")?;
            }
            let about = subject
                .as_deref()
                .map(|s| format!(" about {}", speech::quote(s, 60)))
                .unwrap_or_default();
            let mut r = NativeReply::new(
                ReplyMode::Queued,
                format!(
                    "Your {} to {name}{about} is queued and goes out in {}.",
                    channel_word(channel),
                    speech::count(ctx.outbox_hold_secs, "second", "seconds")
                ),
                json!({ "message": msg }),
            )
            .with_id("message_id", msg.id.clone())
            .with_id("contact_id", contact.id.clone());
            if let Some(d) = draft_id {
                r = r.with_id("draft_id", d);
            }
            Ok(Executed {
                reply: r,
                undo: Some((
                    format!(
                        "I cancelled the {} to {name} before it went out.",
                        channel_word(channel)
                    ),
                    UndoOp::CancelMessage { message_id: msg.id },
                )),
            })
        }
        other => Err(ApiError::internal(format!(
            "messages::execute got {}",
            other.action_type()
        ))),
    }
}
