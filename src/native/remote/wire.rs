//! The upstream's wire shapes as typed serde structs: the envelopes and answers it sends back
//! (parsed once, at this edge) and the native actions and bodies the gateway sends it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{Channel, ContactStatus, PilotMode};
use crate::native::reply::{Candidate, ReplyMode};
use crate::store::campaigns::{AudienceStats, Campaign};
use crate::store::contacts::Contact;

/// A REST v1 answer, `{ ok, data, meta }`, of which only `data` is read.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope<T> {
    pub data: T,
}

/// A REST v1 list answer: its items and `meta.total`.
#[derive(Debug, Deserialize)]
pub(super) struct ListEnvelope<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub meta: ListMeta,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListMeta {
    /// All matching records, beyond this page; absent means the page is all there is.
    pub total: Option<u64>,
}

/// `GET /campaigns/:id/status`.
#[derive(Debug, Deserialize)]
pub(super) struct CampaignStatusAnswer {
    pub audience: AudienceStats,
}

/// `GET /settings`, of which only the pilot mode is read.
#[derive(Debug, Deserialize)]
pub(super) struct SettingsAnswer {
    pub pilot_mode: PilotMode,
}

/// `POST /campaigns/:id/trigger`: whether the contact was in the campaign already.
#[derive(Debug, Deserialize)]
pub(super) struct TriggerAnswer {
    #[serde(default)]
    pub already_in_campaign: bool,
}

/// `POST /notes`.
#[derive(Debug, Serialize)]
pub(super) struct NewNote<'a> {
    pub contact_id: &'a str,
    pub note: &'a str,
    pub idempotency_key: &'a str,
}

/// The `data` of an upstream native answer.
#[derive(Debug, Deserialize)]
pub(super) struct NativeAnswer {
    pub mode: ReplyMode,
    pub spoken_summary: String,
    /// The action's own result, passed on as the upstream shaped it.
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub ids: Map<String, Value>,
    #[serde(default)]
    pub candidates: Vec<Candidate>,
}

/// `data.data` of the upstream's `lookup_person` answer.
#[derive(Debug, Deserialize)]
pub(super) struct PersonFound {
    pub contact: Contact,
}

/// `data.data` of the upstream's `campaign_stats` answer.
#[derive(Debug, Deserialize)]
pub(super) struct CampaignFound {
    pub campaign: Campaign,
}

/// `data.data` of the upstream's `remove_from_campaign` answer.
#[derive(Debug, Deserialize)]
pub(super) struct RemovalAnswer {
    /// False when the contact was not in the campaign, so there is nothing to undo.
    #[serde(default)]
    pub removed: bool,
}

/// `data.data` of the upstream's `undo_last` answer.
#[derive(Debug, Deserialize)]
pub(super) struct UndoAnswer {
    /// Absent on an upstream that does not say; its spoken summary is passed on either way.
    #[serde(default)]
    pub undone: Option<bool>,
}

/// A request to the upstream's native endpoint, always in fast mode.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NativeRequest<'a, A: Serialize + ?Sized> {
    pub action: &'a A,
    pub execution_mode: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub confirmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<&'a str>,
}

/// A native action the gateway sends upstream, references already resolved to ids where it
/// has them. Optional fields the upstream's parser reads as absent are sent as `null`.
#[derive(Debug, Serialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub(super) enum UpstreamAction<'a> {
    LookupPerson {
        contact_ref: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        company: Option<&'a str>,
    },
    CampaignStats {
        campaign_ref: &'a str,
    },
    AddToCampaign {
        contact_id: &'a str,
        campaign_ref: &'a str,
    },
    RemoveFromCampaign {
        contact_id: &'a str,
        campaign_ref: &'a str,
    },
    PauseCampaign {
        campaign_ref: &'a str,
    },
    ResumeCampaign {
        campaign_ref: &'a str,
    },
    MarkStatus {
        contact_id: &'a str,
        status: ContactStatus,
    },
    DraftMessage {
        contact_id: &'a str,
        channel: Channel,
        subject: Option<&'a str>,
        instructions: Option<&'a str>,
    },
    SendMessage {
        contact_id: &'a str,
        channel: Channel,
        subject: Option<&'a str>,
        body: &'a str,
        draft_id: Option<&'a str>,
    },
    BookMeeting {
        contact_id: &'a str,
        start_time: &'a str,
        duration_minutes: u32,
        title: &'a str,
    },
    StartResearch {
        contact_id: Option<&'a str>,
        company: Option<&'a str>,
        topic: Option<&'a str>,
    },
    EnrichContact {
        contact_id: &'a str,
    },
    UndoLast,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn native_actions_serialize_as_the_upstream_parses_them() {
        let send = UpstreamAction::SendMessage {
            contact_id: "c1",
            channel: Channel::Email,
            subject: None,
            body: "",
            draft_id: Some("d1"),
        };
        assert_eq!(
            serde_json::to_value(&send).unwrap(),
            json!({ "type": "send_message", "contactId": "c1", "channel": "email",
                    "subject": null, "body": "", "draftId": "d1" })
        );
        let lookup = UpstreamAction::LookupPerson {
            contact_ref: "Sarah",
            company: None,
        };
        assert_eq!(
            serde_json::to_value(&lookup).unwrap(),
            json!({ "type": "lookup_person", "contactRef": "Sarah" })
        );
        assert_eq!(
            serde_json::to_value(UpstreamAction::UndoLast).unwrap(),
            json!({ "type": "undo_last" })
        );
    }

    #[test]
    fn a_native_request_names_only_what_is_set() {
        let action = UpstreamAction::UndoLast;
        let asked = NativeRequest {
            action: &action,
            execution_mode: "fast",
            confirmed: false,
            idempotency_key: None,
        };
        assert_eq!(
            serde_json::to_value(&asked).unwrap(),
            json!({ "action": { "type": "undo_last" }, "executionMode": "fast" })
        );
        let forwarded = NativeRequest {
            action: &action,
            execution_mode: "fast",
            confirmed: true,
            idempotency_key: Some("pb_1"),
        };
        assert_eq!(
            serde_json::to_value(&forwarded).unwrap(),
            json!({ "action": { "type": "undo_last" }, "executionMode": "fast",
                    "confirmed": true, "idempotencyKey": "pb_1" })
        );
    }
}
