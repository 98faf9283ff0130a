//! Undo entries applied upstream, compare-and-set where the upstream lets a field be read first.

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::wire::{UndoAnswer, UpstreamAction};
use super::{ask_native, forward, parse_part, Remote};
use crate::domain::{CampaignStatus, ContactStatus};
use crate::error::{ApiError, ApiResult};
use crate::native::undo::{parse_stored, Applied, UndoOp};
use crate::store::campaigns::Campaign;
use crate::store::contacts::Contact;
// Every id placed in an upstream path goes through this (ids come from clients and from
// upstream data alike).
use crate::upstream::path_segment as seg;

/// Applies one undo entry upstream and says what happened. Compare-and-set as in embedded
/// mode (DESIGN §15): a field is reverted only while it still holds the value the write set,
/// read first and written second (the upstream offers no conditional write, so a change landing
/// between the two is not caught).
pub async fn undo(
    r: &Remote<'_>,
    effect_key: &str,
    op: &UndoOp,
    summary: &str,
) -> ApiResult<Applied> {
    let done = || Applied {
        spoken: format!("Undone. {summary}"),
        reverted: true,
    };
    let left = |spoken: String| Applied {
        spoken,
        reverted: false,
    };
    match op {
        UndoOp::RemoveFromCampaign {
            campaign_id,
            contact_id,
            ..
        } => {
            let action = UpstreamAction::RemoveFromCampaign {
                contact_id,
                campaign_ref: campaign_id,
            };
            forward(r, effect_key, &action).await?;
            Ok(done())
        }
        UndoOp::RestoreAudience {
            campaign_id,
            contact_id,
            ..
        } => {
            r.send::<IgnoredAny>(
                "campaigns.trigger",
                Method::POST,
                &format!("/campaigns/{}/trigger", seg(campaign_id)),
                &json!({ "contact_id": contact_id }),
            )
            .await?;
            Ok(done())
        }
        UndoOp::SetCampaignStatus {
            campaign_id,
            status,
            expected,
        } => {
            let status: CampaignStatus = parse_stored("campaign status", status)?;
            if let Some(expected) = expected {
                let expected: CampaignStatus = parse_stored("campaign status", expected)?;
                let path = format!("/campaigns/{}", seg(campaign_id));
                let current: Campaign = r
                    .one("campaigns.get", &path)
                    .await?
                    .ok_or_else(|| ApiError::not_found("Campaign"))?;
                if current.status != expected {
                    return Ok(left(format!(
                        "{} was changed to {} since, so I left it.",
                        current.name, current.status
                    )));
                }
            }
            r.send::<IgnoredAny>(
                "campaigns.update",
                Method::PATCH,
                &format!("/campaigns/{}", seg(campaign_id)),
                &json!({ "status": status }),
            )
            .await?;
            Ok(done())
        }
        UndoOp::RestoreStatus {
            contact_id,
            status,
            expected,
        } => {
            let status: ContactStatus = parse_stored("contact status", status)?;
            if let Some(expected) = expected {
                let expected: ContactStatus = parse_stored("contact status", expected)?;
                let path = format!("/contacts/{}", seg(contact_id));
                let current: Contact = r
                    .one("contacts.get", &path)
                    .await?
                    .ok_or_else(|| ApiError::not_found("Contact"))?;
                if current.status != expected {
                    return Ok(left(format!(
                        "{}'s status was changed to {} since, so I left it.",
                        current.display_name(),
                        current.status.as_str().replace('_', " ")
                    )));
                }
            }
            r.send::<IgnoredAny>(
                "contacts.update",
                Method::PUT,
                &format!("/contacts/{}", seg(contact_id)),
                &json!({ "status": status }),
            )
            .await?;
            Ok(done())
        }
        UndoOp::DeleteNote { note_id } => {
            r.send::<IgnoredAny>(
                "notes.delete",
                Method::DELETE,
                &format!("/notes/{}", seg(note_id)),
                &json!({}),
            )
            .await?;
            Ok(done())
        }
        UndoOp::UpstreamUndoLast => {
            let action = UpstreamAction::UndoLast;
            let answer = ask_native(r, "native.forward", &action, false, Some(effect_key)).await?;
            // An upstream that answers without saying is taken at its word (its spoken summary
            // is passed on); one that says `undone: false` left the change in place.
            let outcome: Option<UndoAnswer> = parse_part(&answer.data, "native.forward")?;
            let reverted = outcome.and_then(|o| o.undone).unwrap_or(true);
            Ok(Applied {
                spoken: answer.spoken_summary,
                reverted,
            })
        }
        UndoOp::DeleteDraft { .. }
        | UndoOp::CancelMessage { .. }
        | UndoOp::CancelJob { .. }
        | UndoOp::RevertEnrichment { .. } => Ok(left("I couldn't undo that.".to_string())),
    }
}
