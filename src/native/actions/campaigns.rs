//! Campaign actions: `campaign_stats` (read) and the four dangerous writes `add_to_campaign`,
//! `remove_from_campaign`, `pause_campaign`, `resume_campaign`.

use rusqlite::Connection;
use serde_json::json;

use super::{campaign_or_clarify, contact_or_clarify, reply, ExecCtx, Executed};
use crate::domain::{AudienceStatus, CampaignStatus};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::native::action::{CampaignOnly, ContactCampaign};
use crate::native::plan::{Plan, Step};
use crate::native::reply::NativeReply;
use crate::native::speech;
use crate::native::undo::UndoOp;
use crate::store::campaigns::{self, Added, Campaign};
use crate::store::contacts::{self, Contact};

pub fn stats(conn: &Connection, org: &str, a: &CampaignOnly) -> ApiResult<Step> {
    let campaign = match campaign_or_clarify(conn, org, a.campaign.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    let s = campaigns::audience_stats(conn, &campaign.id)?;
    Ok(Step::Reply(stats_reply(campaign, s)))
}

/// The answer to `campaign_stats`.
pub(crate) fn stats_reply(campaign: Campaign, s: campaigns::AudienceStats) -> NativeReply {
    let spoken = stats_sentence(&campaign, &s);
    let id = campaign.id.clone();
    NativeReply::result(spoken, json!({ "campaign": campaign, "audience_stats": s }))
        .with_id("campaign_id", id)
}

/// "Seed founders is active with 5 people: 3 active, 1 completed and 1 bounced." Zero counts are
/// left out, and a breakdown with one part says "all".
fn stats_sentence(campaign: &Campaign, s: &campaigns::AudienceStats) -> String {
    let name = speech::name(&campaign.name);
    let status = match campaign.status {
        CampaignStatus::Draft => "a draft",
        CampaignStatus::Active => "active",
        CampaignStatus::Paused => "paused",
        CampaignStatus::Completed => "completed",
    };
    if s.total == 0 {
        return format!("{name} is {status} and has no one in it yet.");
    }
    let parts = [
        (s.active, "active"),
        (s.paused, "paused"),
        (s.completed, "completed"),
        (s.bounced, "bounced"),
        (s.failed.unwrap_or(0), "failed"),
    ];
    let people = speech::count(s.total, "person", "people");
    let nonzero: Vec<&(u64, &str)> = parts.iter().filter(|(n, _)| *n > 0).collect();
    match nonzero.as_slice() {
        [] => format!("{name} is {status} with {people}."),
        [(n, label)] if *n == s.total && s.total == 1 => {
            format!("{name} is {status} with {people}, who is {label}.")
        }
        [(n, label)] if *n == s.total => {
            format!("{name} is {status} with {people}, all {label}.")
        }
        _ => format!(
            "{name} is {status} with {people}: {}.",
            speech::breakdown(&parts)
        ),
    }
}

/// Both references of a membership action, or the clarification to send.
fn contact_and_campaign(
    conn: &Connection,
    org: &str,
    a: &ContactCampaign,
) -> ApiResult<Result<(Contact, Campaign), NativeReply>> {
    let contact = match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(r) => return Ok(Err(r)),
    };
    let campaign = match campaign_or_clarify(conn, org, a.campaign.as_deref())? {
        Ok(c) => c,
        Err(r) => return Ok(Err(r)),
    };
    Ok(Ok((contact, campaign)))
}

pub(crate) fn membership_ids(
    contact: &Contact,
    campaign: &Campaign,
    r: NativeReply,
) -> NativeReply {
    r.with_id("contact_id", contact.id.clone())
        .with_id("campaign_id", campaign.id.clone())
}

pub fn plan_add(conn: &Connection, org: &str, a: &ContactCampaign) -> ApiResult<Step> {
    let (contact, campaign) = match contact_and_campaign(conn, org, a)? {
        Ok(x) => x,
        Err(r) => return reply(r),
    };
    // Checked before asking for confirmation, so the user is never asked a pointless question.
    campaigns::ensure_active(&campaign)?;
    if let Some(m) = campaigns::audience_member(conn, &campaign.id, &contact.id)? {
        if m.status != AudienceStatus::Removed {
            let r = NativeReply::result(
                format!(
                    "{} is already in {}.",
                    speech::name(contact.display_name()),
                    speech::name(&campaign.name)
                ),
                json!({ "already_in_campaign": true, "changed": false, "reason": "already_in_campaign", "audience_status": m.status }),
            );
            return reply(membership_ids(&contact, &campaign, r).with_id("audience_id", m.id));
        }
    }
    Ok(Step::Execute(Plan::AddToCampaign { contact, campaign }))
}

pub fn plan_remove(conn: &Connection, org: &str, a: &ContactCampaign) -> ApiResult<Step> {
    let (contact, campaign) = match contact_and_campaign(conn, org, a)? {
        Ok(x) => x,
        Err(r) => return reply(r),
    };
    match campaigns::audience_member(conn, &campaign.id, &contact.id)? {
        Some(m) if m.status != AudienceStatus::Removed => {
            Ok(Step::Execute(Plan::RemoveFromCampaign {
                contact,
                campaign,
            }))
        }
        _ => {
            let r = NativeReply::result(
                format!(
                    "{} isn't in {}.",
                    speech::name(contact.display_name()),
                    speech::name(&campaign.name)
                ),
                json!({ "in_campaign": false, "changed": false, "reason": "not_in_campaign" }),
            );
            reply(membership_ids(&contact, &campaign, r))
        }
    }
}

fn not_running(c: &Campaign, verb: &str) -> ApiError {
    ApiError::new(
        ErrorCode::CampaignNotActive,
        format!("Campaign is {}", c.status),
    )
    .with_details(format!("a {} campaign cannot be {verb}", c.status))
    .with_spoken(format!(
        "{} is {}, so I can't {} it.",
        speech::name(&c.name),
        status_phrase(c.status),
        verb.trim_end_matches('d')
    ))
}

/// "a draft", "completed", "paused", "active".
pub fn status_phrase(s: CampaignStatus) -> &'static str {
    match s {
        CampaignStatus::Draft => "still a draft",
        CampaignStatus::Active => "active",
        CampaignStatus::Paused => "paused",
        CampaignStatus::Completed => "completed",
    }
}

pub fn plan_pause(conn: &Connection, org: &str, a: &CampaignOnly) -> ApiResult<Step> {
    plan_switch(conn, org, a, CampaignStatus::Paused)
}

pub fn plan_resume(conn: &Connection, org: &str, a: &CampaignOnly) -> ApiResult<Step> {
    plan_switch(conn, org, a, CampaignStatus::Active)
}

/// How pausing (`to` = paused) or resuming (`to` = active) is checked and said.
struct Switch {
    /// The status a campaign must have to be switched.
    from: CampaignStatus,
    /// "paused" / "resumed".
    verb: &'static str,
}

fn switch(to: CampaignStatus) -> Switch {
    if to == CampaignStatus::Paused {
        Switch {
            from: CampaignStatus::Active,
            verb: "paused",
        }
    } else {
        Switch {
            from: CampaignStatus::Paused,
            verb: "resumed",
        }
    }
}

/// "paused" for a paused campaign, "running" for an active one.
fn running_or_paused(s: CampaignStatus) -> &'static str {
    if s == CampaignStatus::Paused {
        "paused"
    } else {
        "running"
    }
}

/// The no-op answer when the campaign already has the status asked for.
fn already(campaign: Campaign) -> NativeReply {
    let id = campaign.id.clone();
    NativeReply::result(
        format!(
            "{} is already {}.",
            speech::name(&campaign.name),
            running_or_paused(campaign.status)
        ),
        json!({ "campaign": campaign, "changed": false, "reason": "already_set" }),
    )
    .with_id("campaign_id", id)
}

fn plan_switch(
    conn: &Connection,
    org: &str,
    a: &CampaignOnly,
    to: CampaignStatus,
) -> ApiResult<Step> {
    let campaign = match campaign_or_clarify(conn, org, a.campaign.as_deref())? {
        Ok(c) => c,
        Err(r) => return reply(r),
    };
    switch_step(campaign, to)
}

/// Pausing or resuming `campaign`: the plan, the no-op answer, or why it cannot be done.
pub(crate) fn switch_step(campaign: Campaign, to: CampaignStatus) -> ApiResult<Step> {
    let s = switch(to);
    if campaign.status == s.from {
        Ok(Step::Execute(Plan::SetCampaignStatus { campaign, to }))
    } else if campaign.status == to {
        reply(already(campaign))
    } else {
        Err(not_running(&campaign, s.verb))
    }
}

/// Re-reads both records inside the write transaction: they may have changed since the plan.
fn fresh(
    conn: &Connection,
    org: &str,
    contact: &Contact,
    campaign: &Campaign,
) -> ApiResult<(Contact, Campaign)> {
    Ok((
        contacts::require(conn, org, &contact.id)?,
        campaigns::require(conn, org, &campaign.id)?,
    ))
}

pub fn execute_add(
    conn: &Connection,
    ctx: &ExecCtx<'_>,
    contact: Contact,
    campaign: Campaign,
) -> ApiResult<Executed> {
    let (contact, campaign) = fresh(conn, ctx.org, &contact, &campaign)?;
    let (member, added) = campaigns::add_to_audience(conn, ctx.org, &campaign, &contact.id)?;
    let name = speech::name(contact.display_name());
    let campaign_name = speech::name(&campaign.name);
    let spoken = match added {
        Added::New => format!("{name} is now in {campaign_name}."),
        Added::AlreadyIn => format!("{name} is already in {campaign_name}."),
    };
    let stats = campaigns::audience_stats(conn, &campaign.id)?;
    let r = membership_ids(
        &contact,
        &campaign,
        NativeReply::result(
            spoken,
            json!({ "audience_member": member, "audience_stats": stats }),
        ),
    )
    .with_id("audience_id", member.id.clone());
    let undo = (added == Added::New).then(|| {
        (
            format!("{name} is out of {campaign_name} again."),
            UndoOp::RemoveFromCampaign {
                campaign_id: campaign.id.clone(),
                contact_id: contact.id.clone(),
                member_id: Some(member.id.clone()),
            },
        )
    });
    Ok(Executed { reply: r, undo })
}

pub fn execute_remove(
    conn: &Connection,
    ctx: &ExecCtx<'_>,
    contact: Contact,
    campaign: Campaign,
) -> ApiResult<Executed> {
    let (contact, campaign) = fresh(conn, ctx.org, &contact, &campaign)?;
    let previous = campaigns::remove_from_audience(conn, &campaign.id, &contact.id)?;
    let name = speech::name(contact.display_name());
    let campaign_name = speech::name(&campaign.name);
    let spoken = match previous {
        Some(_) => format!("I removed {name} from {campaign_name}."),
        None => format!("{name} isn't in {campaign_name}."),
    };
    let stats = campaigns::audience_stats(conn, &campaign.id)?;
    let r = membership_ids(
        &contact,
        &campaign,
        NativeReply::result(
            spoken,
            json!({ "removed": previous.is_some(), "audience_stats": stats }),
        ),
    );
    let undo = previous.map(|status| {
        (
            format!("{name} is back in {campaign_name}."),
            UndoOp::RestoreAudience {
                campaign_id: campaign.id.clone(),
                contact_id: contact.id.clone(),
                status: status.to_string(),
            },
        )
    });
    Ok(Executed { reply: r, undo })
}

pub fn execute_set_status(
    conn: &Connection,
    ctx: &ExecCtx<'_>,
    campaign: Campaign,
    to: CampaignStatus,
) -> ApiResult<Executed> {
    let campaign = campaigns::require(conn, ctx.org, &campaign.id)?;
    let from = campaign.status;
    let s = switch(to);
    if from == to {
        return Ok(Executed {
            reply: already(campaign),
            undo: None,
        });
    }
    if from != s.from {
        return Err(not_running(&campaign, s.verb));
    }
    campaigns::set_status(conn, ctx.org, &campaign.id, to)?;
    let updated = campaigns::require(conn, ctx.org, &campaign.id)?;
    crate::webhooks::campaign_status_changed(conn, ctx.org, from, &updated)?;
    Ok(status_set(updated, from, to))
}

/// The answer and undo of a campaign switched from `from` to `to` (`updated` is after it).
pub(crate) fn status_set(updated: Campaign, from: CampaignStatus, to: CampaignStatus) -> Executed {
    let s = switch(to);
    let r = NativeReply::result(
        format!("I {} {}.", s.verb, speech::name(&updated.name)),
        json!({ "campaign": updated }),
    )
    .with_id("campaign_id", updated.id.clone());
    let undo = Some((
        format!(
            "{} is {} again.",
            speech::name(&updated.name),
            running_or_paused(from)
        ),
        UndoOp::SetCampaignStatus {
            campaign_id: updated.id.clone(),
            status: from.to_string(),
            expected: Some(to.to_string()),
        },
    ));
    Executed { reply: r, undo }
}
