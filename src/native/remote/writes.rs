//! Writes upstream: planning the ones that need an upstream question first (membership,
//! pilot mode), then running confirmed plans against the REST endpoint made for them (notes,
//! campaign trigger, `PATCH` campaign, `PUT` contact) or, where REST v1 has none, against the
//! upstream's own native endpoint as an action the gateway already confirmed.

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::resolve::{contact, contact_and_campaign};
use super::wire::{
    Envelope, NewNote, RemovalAnswer, SettingsAnswer, TriggerAnswer, UpstreamAction,
};
use super::{ask_native, forward, parse_part, Remote, RemoteCtx};
use crate::domain::{CampaignStatus, ContactStatus, PilotMode};
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
// Every id placed in an upstream path goes through this (ids come from clients and from
// upstream data alike).
use crate::upstream::path_segment as seg;

// ---- planning ---------------------------------------------------------------------------

/// Resolves both references and asks the upstream whether the contact is in already.
pub(super) async fn plan_add_to_campaign(r: &Remote<'_>, a: &ContactCampaign) -> ApiResult<Step> {
    let (contact, campaign) = match contact_and_campaign(r, a).await? {
        Ok(x) => x,
        Err(clarification) => return reply(clarification),
    };
    crate::store::campaigns::ensure_active(&campaign)?;
    if let Some(no_op) = probe_membership(r, &contact, &campaign, true).await? {
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
    if let Some(no_op) = probe_membership(r, &contact, &campaign, false).await? {
        return reply(no_op);
    }
    Ok(Step::Execute(Plan::RemoveFromCampaign {
        contact,
        campaign,
    }))
}

/// Resolves the recipient and reads the pilot mode, which decides whether a send is asked first.
pub(super) async fn plan_send_message(r: &Remote<'_>, a: &SendMessage) -> ApiResult<Step> {
    let settings = r.get::<Envelope<SettingsAnswer>>("settings.get", "/settings", &[]);
    let (c, settings) = tokio::join!(
        contact(r, a.contact.as_deref(), a.company.as_deref()),
        settings
    );
    let c = match c? {
        Ok(c) => c,
        Err(clarification) => return reply(clarification),
    };
    let mode = match settings {
        Ok(settings) => settings.data.pilot_mode,
        // Without the settings scope the pilot mode is unknown: ask as in auto mode;
        // the upstream applies its real mode when the confirmed send reaches it.
        Err(e) if e.code == ErrorCode::ScopeDenied => PilotMode::Auto,
        Err(e) => return Err(e),
    };
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
    contact: &Contact,
    campaign: &Campaign,
    adding: bool,
) -> ApiResult<Option<NativeReply>> {
    let action = membership_action(contact, campaign, adding);
    // A fresh key: the upstream's keyless dedupe window would replay an earlier answer.
    let fresh = format!("pb_probe_{}", crate::ids::new_id());
    let answer = ask_native(r, "native.probe", &action, false, Some(&fresh)).await?;
    Ok((answer.mode == ReplyMode::Result).then_some(answer))
}

/// The upstream's native `add_to_campaign` (`adding`) or `remove_from_campaign`.
fn membership_action<'a>(
    contact: &'a Contact,
    campaign: &'a Campaign,
    adding: bool,
) -> UpstreamAction<'a> {
    let (contact_id, campaign_ref) = (contact.id.as_str(), campaign.id.as_str());
    if adding {
        UpstreamAction::AddToCampaign {
            contact_id,
            campaign_ref,
        }
    } else {
        UpstreamAction::RemoveFromCampaign {
            contact_id,
            campaign_ref,
        }
    }
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
            path: format!("/campaigns/{}/trigger", seg(&campaign.id)),
            body: json!({ "contact_id": contact.id }),
        },
        &membership_action(&contact, &campaign, true),
    )
    .await?;
    let answer: Value = match sent {
        Ok(Envelope { data }) => data,
        Err(forwarded) => return Ok(forwarded),
    };
    let already = parse_part::<TriggerAnswer>(&answer, "campaigns.trigger")?.already_in_campaign;
    let name = contact.display_name().to_string();
    let spoken = if already {
        format!("{name} is already in {}.", campaign.name)
    } else {
        format!("{name} is now in {}.", campaign.name)
    };
    let reply =
        campaign_actions::membership_ids(&contact, &campaign, NativeReply::result(spoken, answer));
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
    let action = membership_action(&contact, &campaign, false);
    let reply = forward(r, ctx.effect_key, &action).await?;
    // Forwarded, so the upstream's own undo_last reverses it (keeping both stacks in step).
    let removal: RemovalAnswer = parse_part(&reply.data, "native.forward")?;
    if removal.removed {
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
    let campaign_ref = campaign.id.as_str();
    let native_action = if to == CampaignStatus::Paused {
        UpstreamAction::PauseCampaign { campaign_ref }
    } else {
        UpstreamAction::ResumeCampaign { campaign_ref }
    };
    let sent = rest_or_native(
        r,
        ctx,
        RestWrite {
            op: "campaigns.update",
            method: Method::PATCH,
            path: format!("/campaigns/{}", seg(&campaign.id)),
            body: json!({ "status": to }),
        },
        &native_action,
    )
    .await?;
    let updated: Campaign = match sent {
        Ok(Envelope { data }) => data,
        Err(forwarded) => return Ok(forwarded),
    };
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
            path: format!("/contacts/{}", seg(&contact.id)),
            body: json!({ "status": status }),
        },
        &UpstreamAction::MarkStatus {
            contact_id: &contact.id,
            status,
        },
    )
    .await?;
    let updated: Contact = match sent {
        Ok(Envelope { data }) => data,
        Err(forwarded) => return Ok(forwarded),
    };
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
    let new_note = NewNote {
        contact_id: &contact.id,
        note: &note,
        idempotency_key: ctx.effect_key,
    };
    let saved: Envelope<Note> = r
        .send("notes.create", Method::POST, "/notes", &new_note)
        .await?;
    Ok(contact_actions::noted(&contact, saved.data))
}

/// Runs a write REST v1 has no endpoint for through the upstream's own native endpoint;
/// `undone_as` names it for the undo stack (`None`: not undoable).
pub(super) async fn forwarded(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    action: &UpstreamAction<'_>,
    undone_as: Option<&str>,
) -> ApiResult<Executed> {
    let reply = forward(r, ctx.effect_key, action).await?;
    Ok(match undone_as {
        Some(what) => undone_upstream(reply, what),
        None => Executed { reply, undo: None },
    })
}

/// One REST v1 write; its bodies are single fields, so they stay `json!` literals.
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
async fn rest_or_native<T: DeserializeOwned>(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    write: RestWrite,
    native_action: &UpstreamAction<'_>,
) -> ApiResult<Result<Envelope<T>, Executed>> {
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
