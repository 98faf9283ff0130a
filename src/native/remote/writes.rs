//! Writes upstream: planning the ones that need an upstream question first (membership,
//! pilot mode), then running confirmed plans against the REST endpoint made for them (notes,
//! campaign trigger, `PATCH` campaign, `PUT` contact) or, where REST v1 has none, against the
//! upstream's own native endpoint as an action the gateway already confirmed.

use reqwest::Method;
use serde_json::{json, Value};

use super::resolve::{contact, contact_and_campaign};
use super::{ask_native, data, forward, Remote, RemoteCtx};
use crate::domain::{CampaignStatus, Channel, ContactStatus, PilotMode};
use crate::error::{ApiResult, ErrorCode};
use crate::native::action::{ContactCampaign, SendMessage};
use crate::native::actions::{
    campaigns as campaign_actions, contacts as contact_actions, messages, reply, Executed,
};
use crate::native::plan::{Plan, Step};
use crate::native::reply::{NativeReply, ReplyMode};
use crate::native::undo::UndoOp;
use crate::store::campaigns::Campaign;
use crate::store::contacts::Contact;
use crate::store::interactions::Note;

// ---- planning ---------------------------------------------------------------------------

/// Resolves both references and asks the upstream whether the contact is in already.
pub(super) async fn plan_add_to_campaign(r: &Remote<'_>, a: &ContactCampaign) -> ApiResult<Step> {
    let (contact, campaign) = match contact_and_campaign(r, a).await? {
        Ok(x) => x,
        Err(clarification) => return reply(clarification),
    };
    crate::store::campaigns::ensure_active(&campaign)?;
    if let Some(no_op) = probe_membership(r, "add_to_campaign", &contact, &campaign).await? {
        return reply(no_op);
    }
    Ok(Step::Execute(Plan::AddToCampaign { contact, campaign }))
}

/// Resolves both references and asks the upstream whether the contact is in at all.
pub(super) async fn plan_remove_from_campaign(
    r: &Remote<'_>,
    a: &ContactCampaign,
) -> ApiResult<Step> {
    let (contact, campaign) = match contact_and_campaign(r, a).await? {
        Ok(x) => x,
        Err(clarification) => return reply(clarification),
    };
    if let Some(no_op) = probe_membership(r, "remove_from_campaign", &contact, &campaign).await? {
        return reply(no_op);
    }
    Ok(Step::Execute(Plan::RemoveFromCampaign {
        contact,
        campaign,
    }))
}

/// Resolves the recipient and reads the pilot mode, which decides whether a send is asked first.
pub(super) async fn plan_send_message(r: &Remote<'_>, a: &SendMessage) -> ApiResult<Step> {
    let settings = r.get("settings.get", "/settings", &[]);
    let (c, settings) = tokio::join!(
        contact(r, a.contact.as_deref(), a.company.as_deref()),
        settings
    );
    let c = match c? {
        Ok(c) => c,
        Err(clarification) => return reply(clarification),
    };
    let settings = match settings {
        // Without the settings scope the pilot mode is unknown: ask as in auto mode;
        // the upstream applies its real mode when the confirmed send reaches it.
        Err(e) if e.code == ErrorCode::ScopeDenied => {
            json!({ "data": { "pilot_mode": "auto" } })
        }
        other => other?,
    };
    let mode: PilotMode = settings
        .pointer("/data/pilot_mode")
        .and_then(Value::as_str)
        .and_then(|m| m.parse().ok())
        .unwrap_or(PilotMode::Review);
    let draft_id = a.draft_id.clone().filter(|d| !d.trim().is_empty());
    // A draft's text lives upstream; the upstream fills it in when the send runs.
    let body = a
        .body
        .clone()
        .filter(|b| !b.trim().is_empty())
        .or_else(|| draft_id.as_ref().map(|_| String::new()));
    messages::send_step(c, a.channel, a.subject.clone(), body, draft_id, mode)
}

/// REST v1 cannot tell whether a contact is in a campaign, so the upstream's own native
/// endpoint is asked the unconfirmed question: it answers "already in" / "isn't in" itself
/// (returned here, so the user is never asked a pointless question), or asks for confirmation,
/// which the gateway then does on its own (the upstream's pending action simply expires).
async fn probe_membership(
    r: &Remote<'_>,
    action_type: &str,
    contact: &Contact,
    campaign: &Campaign,
) -> ApiResult<Option<NativeReply>> {
    let action =
        json!({ "type": action_type, "contactId": contact.id, "campaignRef": campaign.id });
    // A fresh key: the upstream's keyless dedupe window would replay an earlier answer.
    let fresh = format!("pb_probe_{}", crate::ids::new_id());
    let answer = ask_native(r, "native.probe", action, false, Some(&fresh)).await?;
    Ok((answer.mode == ReplyMode::Result).then_some(answer))
}

// ---- execution --------------------------------------------------------------------------

/// Adds a contact through the campaign trigger endpoint.
pub(super) async fn add_to_campaign(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    campaign: Campaign,
) -> ApiResult<Executed> {
    let sent = rest_or_native(
        r,
        ctx,
        RestWrite {
            op: "campaigns.trigger",
            method: Method::POST,
            path: format!("/campaigns/{}/trigger", campaign.id),
            body: json!({ "contact_id": contact.id }),
        },
        json!({ "type": "add_to_campaign", "contactId": contact.id, "campaignRef": campaign.id }),
    )
    .await?;
    let v = match sent {
        Ok(v) => v,
        Err(forwarded) => return Ok(forwarded),
    };
    let already = v
        .pointer("/data/already_in_campaign")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let name = contact.display_name().to_string();
    let spoken = if already {
        format!("{name} is already in {}.", campaign.name)
    } else {
        format!("{name} is now in {}.", campaign.name)
    };
    let reply = campaign_actions::membership_ids(
        &contact,
        &campaign,
        NativeReply::result(spoken, v.get("data").cloned().unwrap_or(Value::Null)),
    );
    let undo = (!already).then(|| {
        (
            format!("{name} is out of {} again.", campaign.name),
            UndoOp::RemoveFromCampaign {
                campaign_id: campaign.id.clone(),
                contact_id: contact.id.clone(),
                member_id: None,
            },
        )
    });
    Ok(Executed { reply, undo })
}

/// Removes a contact through the upstream's native endpoint (REST v1 has no removal).
pub(super) async fn remove_from_campaign(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    campaign: Campaign,
) -> ApiResult<Executed> {
    let reply = forward(
        r,
        ctx.effect_key,
        json!({ "type": "remove_from_campaign", "contactId": contact.id, "campaignRef": campaign.id }),
    )
    .await?;
    // Forwarded, so the upstream's own undo_last reverses it (keeping both stacks in step).
    let removed = reply.data.get("removed").and_then(Value::as_bool) == Some(true);
    if removed {
        return Ok(undone_upstream(
            reply,
            &format!("the removal from {}", campaign.name),
        ));
    }
    Ok(Executed { reply, undo: None })
}

/// Pauses or resumes a campaign.
pub(super) async fn set_campaign_status(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    campaign: Campaign,
    to: CampaignStatus,
) -> ApiResult<Executed> {
    let kind = if to == CampaignStatus::Paused {
        "pause_campaign"
    } else {
        "resume_campaign"
    };
    let sent = rest_or_native(
        r,
        ctx,
        RestWrite {
            op: "campaigns.update",
            method: Method::PATCH,
            path: format!("/campaigns/{}", campaign.id),
            body: json!({ "status": to }),
        },
        json!({ "type": kind, "campaignRef": campaign.id }),
    )
    .await?;
    let v = match sent {
        Ok(v) => v,
        Err(forwarded) => return Ok(forwarded),
    };
    let updated: Campaign = data(&v, "campaigns.update")?;
    Ok(campaign_actions::status_set(updated, campaign.status, to))
}

/// Sets a contact's status.
pub(super) async fn mark_status(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    status: ContactStatus,
) -> ApiResult<Executed> {
    let sent = rest_or_native(
        r,
        ctx,
        RestWrite {
            op: "contacts.update",
            method: Method::PUT,
            path: format!("/contacts/{}", contact.id),
            body: json!({ "status": status }),
        },
        json!({ "type": "mark_status", "contactId": contact.id, "status": status }),
    )
    .await?;
    let v = match sent {
        Ok(v) => v,
        Err(forwarded) => return Ok(forwarded),
    };
    let updated: Contact = data(&v, "contacts.update")?;
    Ok(contact_actions::status_marked(
        &updated,
        contact.status,
        status,
    ))
}

/// Saves a note, keyed upstream by the effect key.
pub(super) async fn note_on_contact(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    note: String,
) -> ApiResult<Executed> {
    let v = r
        .send(
            "notes.create",
            Method::POST,
            "/notes",
            &json!({ "contact_id": contact.id, "note": note, "idempotency_key": ctx.effect_key }),
        )
        .await?;
    let saved: Note = data(&v, "notes.create")?;
    Ok(contact_actions::noted(&contact, saved))
}

/// Drafts a message through the upstream's native endpoint.
pub(super) async fn draft_message(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    channel: Channel,
    subject: Option<String>,
    instructions: Option<String>,
) -> ApiResult<Executed> {
    let reply = forward(
        r,
        ctx.effect_key,
        json!({ "type": "draft_message", "contactId": contact.id, "channel": channel,
                "subject": subject, "instructions": instructions }),
    )
    .await?;
    Ok(undone_upstream(reply, "the draft"))
}

/// Sends (or queues for review) a message through the upstream's native endpoint.
pub(super) async fn send_message(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    channel: Channel,
    subject: Option<String>,
    body: String,
    draft_id: Option<String>,
) -> ApiResult<Executed> {
    // Absent and null are the same to the native parser; an empty body means "the
    // draft's text", which the upstream fills in.
    let action = json!({ "type": "send_message", "contactId": contact.id, "channel": channel,
                         "subject": subject, "body": body, "draftId": draft_id });
    let reply = forward(r, ctx.effect_key, action).await?;
    Ok(undone_upstream(reply, "the message"))
}

/// Books a meeting through the upstream's native endpoint.
pub(super) async fn book_meeting(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
    start_time: String,
    duration_minutes: u32,
    title: String,
) -> ApiResult<Executed> {
    let reply = forward(
        r,
        ctx.effect_key,
        json!({ "type": "book_meeting", "contactId": contact.id, "startTime": start_time,
                "durationMinutes": duration_minutes, "title": title }),
    )
    .await?;
    // Booked meetings involve another person's calendar: not undoable (DESIGN §5).
    Ok(Executed { reply, undo: None })
}

/// Starts a research job through the upstream's native endpoint.
pub(super) async fn start_research(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Option<Contact>,
    company: Option<String>,
    topic: Option<String>,
) -> ApiResult<Executed> {
    let action = json!({ "type": "start_research", "contactId": contact.map(|c| c.id),
                         "company": company, "topic": topic });
    let reply = forward(r, ctx.effect_key, action).await?;
    Ok(undone_upstream(reply, "the research"))
}

/// Starts an enrichment through the upstream's native endpoint.
pub(super) async fn enrich_contact(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    contact: Contact,
) -> ApiResult<Executed> {
    let reply = forward(
        r,
        ctx.effect_key,
        json!({ "type": "enrich_contact", "contactId": contact.id }),
    )
    .await?;
    Ok(undone_upstream(reply, "the enrichment"))
}

/// One REST v1 write.
struct RestWrite {
    op: &'static str,
    method: Method,
    path: String,
    body: Value,
}

/// Sends `write` to its REST endpoint: `Ok(answer)`; or, when the key may not use that endpoint
/// (a voice key without `campaigns` or `contacts` scope), sends `native_action` to the upstream's
/// native endpoint instead, which such a key may use: `Err(executed)` with its answer, undone
/// through the upstream's own stack.
async fn rest_or_native(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    write: RestWrite,
    native_action: Value,
) -> ApiResult<Result<Value, Executed>> {
    match r
        .send(write.op, write.method, &write.path, &write.body)
        .await
    {
        Err(e) if e.code == ErrorCode::ScopeDenied => {
            let reply = forward(r, ctx.effect_key, native_action).await?;
            Ok(Err(undone_upstream(reply, "that change")))
        }
        other => other.map(Ok),
    }
}

/// A forwarded write is undone by the upstream's own `undo_last` for the same key, which holds
/// it as its newest undoable write (the gateway's REST writes never enter that stack).
fn undone_upstream(reply: NativeReply, what: &str) -> Executed {
    Executed {
        reply,
        undo: Some((format!("I undid {what}."), UndoOp::UpstreamUndoLast)),
    }
}
