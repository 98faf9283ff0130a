//! Plans: writes whose references are resolved to records, ready to execute — or to park as a
//! pending action until the user confirms. Reads never become plans; they answer directly.

use serde_json::{json, Map, Value};

use super::reply::NativeReply;
use crate::domain::{CampaignStatus, Channel, ContactStatus};
use crate::store::campaigns::Campaign;
use crate::store::contacts::Contact;

/// What resolution produced for one action. Built once per request and consumed at once, so the
/// size difference between the variants costs nothing worth a heap allocation.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// A complete answer: read results, clarifications, and writes that turned out to be no-ops
    /// ("Sarah Chen is already in Seed founders").
    Reply(NativeReply),
    /// A write to execute (after confirmation when it is dangerous).
    Execute(Plan),
}

/// Serialisable: a pending action keeps its plan in the state store across restarts.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum Plan {
    AddToCampaign {
        contact: Contact,
        campaign: Campaign,
    },
    RemoveFromCampaign {
        contact: Contact,
        campaign: Campaign,
    },
    SetCampaignStatus {
        campaign: Campaign,
        to: CampaignStatus,
    },
    DraftMessage {
        contact: Contact,
        channel: Channel,
        subject: Option<String>,
        body: String,
        instructions: Option<String>,
    },
    /// `send_message` in review pilot mode: saved as a draft for a human to review.
    ReviewMessage {
        contact: Contact,
        channel: Channel,
        subject: Option<String>,
        body: String,
        draft_id: Option<String>,
    },
    /// `send_message` in auto pilot mode: queued in the outbox after confirmation.
    SendMessage {
        contact: Contact,
        channel: Channel,
        subject: Option<String>,
        body: String,
        draft_id: Option<String>,
    },
    BookMeeting {
        contact: Contact,
        start_time: String,
        duration_minutes: u32,
        title: String,
    },
    MarkStatus {
        contact: Contact,
        status: ContactStatus,
    },
    NoteOnContact {
        contact: Contact,
        note: String,
    },
    StartResearch {
        contact: Option<Contact>,
        company: Option<String>,
        topic: Option<String>,
    },
    EnrichContact {
        contact: Contact,
    },
    UndoLast,
}

impl Plan {
    pub fn action_type(&self) -> &'static str {
        match self {
            Plan::AddToCampaign { .. } => "add_to_campaign",
            Plan::RemoveFromCampaign { .. } => "remove_from_campaign",
            Plan::SetCampaignStatus {
                to: CampaignStatus::Paused,
                ..
            } => "pause_campaign",
            Plan::SetCampaignStatus { .. } => "resume_campaign",
            Plan::DraftMessage { .. } => "draft_message",
            Plan::ReviewMessage { .. } | Plan::SendMessage { .. } => "send_message",
            Plan::BookMeeting { .. } => "book_meeting",
            Plan::MarkStatus { .. } => "mark_status",
            Plan::NoteOnContact { .. } => "note_on_contact",
            Plan::StartResearch { .. } => "start_research",
            Plan::EnrichContact { .. } => "enrich_contact",
            Plan::UndoLast => "undo_last",
        }
    }

    /// Needs `confirmed: true` before it runs (DESIGN §6, §7).
    pub fn is_dangerous(&self) -> bool {
        match self {
            Plan::AddToCampaign { .. }
            | Plan::RemoveFromCampaign { .. }
            | Plan::SetCampaignStatus { .. }
            | Plan::SendMessage { .. }
            | Plan::BookMeeting { .. } => true,
            Plan::MarkStatus { status, .. } => *status == ContactStatus::Disqualified,
            _ => false,
        }
    }

    /// The question asked before a dangerous plan runs.
    pub fn question(&self) -> String {
        use super::speech::{name, quote};
        match self {
            Plan::AddToCampaign { contact, campaign } => {
                format!(
                    "Add {} to {}?",
                    name(contact.display_name()),
                    name(&campaign.name)
                )
            }
            Plan::RemoveFromCampaign { contact, campaign } => {
                format!(
                    "Remove {} from {}?",
                    name(contact.display_name()),
                    name(&campaign.name)
                )
            }
            Plan::SetCampaignStatus {
                campaign,
                to: CampaignStatus::Paused,
            } => {
                format!("Pause {}?", name(&campaign.name))
            }
            Plan::SetCampaignStatus { campaign, .. } => format!("Resume {}?", name(&campaign.name)),
            // The user hears what will go out before saying yes: the subject and how it begins.
            Plan::SendMessage {
                contact,
                channel,
                subject,
                body,
                ..
            } => {
                let about = subject
                    .as_deref()
                    .map(|s| format!(" with the subject {}", quote(s, 60)))
                    .unwrap_or_default();
                let ask = format!(
                    "Send {} {} {}{about}, starting:",
                    name(contact.display_name()),
                    super::speech::article(channel_word(*channel)),
                    channel_word(*channel),
                );
                // The quote gets what is left of the summary, so the question mark survives.
                let room = super::speech::MAX_SPOKEN
                    .saturating_sub(ask.chars().count() + 2)
                    .max(20);
                let start = quote(body, room);
                let start = if start.ends_with("...") {
                    start.as_str()
                } else {
                    start.trim_end_matches(['.', '!', '?', ','])
                };
                format!("{ask} {start}?")
            }
            Plan::BookMeeting {
                contact,
                start_time,
                duration_minutes,
                ..
            } => format!(
                "Book a {duration_minutes} minute meeting with {} {}?",
                name(contact.display_name()),
                crate::native::actions::contacts::on_when(&spoken_time(start_time))
            ),
            Plan::MarkStatus { contact, status } => {
                format!(
                    "Mark {} as {}?",
                    name(contact.display_name()),
                    status.spoken()
                )
            }
            other => format!("Go ahead with {}?", other.action_type().replace('_', " ")),
        }
    }

    /// Ids of the records the plan touches, for the confirmation reply.
    pub fn ids(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: &str| {
            m.insert(k.to_string(), Value::String(v.to_string()));
        };
        match self {
            Plan::AddToCampaign { contact, campaign }
            | Plan::RemoveFromCampaign { contact, campaign } => {
                put("contact_id", &contact.id);
                put("campaign_id", &campaign.id);
            }
            Plan::SetCampaignStatus { campaign, .. } => put("campaign_id", &campaign.id),
            Plan::DraftMessage { contact, .. }
            | Plan::ReviewMessage { contact, .. }
            | Plan::SendMessage { contact, .. }
            | Plan::BookMeeting { contact, .. }
            | Plan::MarkStatus { contact, .. }
            | Plan::NoteOnContact { contact, .. }
            | Plan::EnrichContact { contact } => put("contact_id", &contact.id),
            Plan::StartResearch {
                contact: Some(c), ..
            } => put("contact_id", &c.id),
            Plan::StartResearch { .. } | Plan::UndoLast => {}
        }
        m
    }

    /// What will happen, as data for the confirmation reply.
    pub fn describe(&self) -> Value {
        match self {
            Plan::AddToCampaign { contact, campaign }
            | Plan::RemoveFromCampaign { contact, campaign } => json!({
                "action": self.action_type(),
                "contact": { "id": contact.id, "name": contact.display_name(), "company": contact.company },
                "campaign": { "id": campaign.id, "name": campaign.name, "status": campaign.status },
            }),
            Plan::SetCampaignStatus { campaign, to } => json!({
                "action": self.action_type(),
                "campaign": { "id": campaign.id, "name": campaign.name, "status": campaign.status },
                "new_status": to,
            }),
            Plan::SendMessage {
                contact,
                channel,
                subject,
                body,
                draft_id,
            }
            | Plan::ReviewMessage {
                contact,
                channel,
                subject,
                body,
                draft_id,
            } => json!({
                "action": self.action_type(),
                "contact": { "id": contact.id, "name": contact.display_name(), "email": contact.email },
                "channel": channel, "subject": subject, "body": body, "draft_id": draft_id,
            }),
            Plan::BookMeeting {
                contact,
                start_time,
                duration_minutes,
                title,
            } => json!({
                "action": self.action_type(),
                "contact": { "id": contact.id, "name": contact.display_name() },
                "start_time": start_time, "duration_minutes": duration_minutes, "title": title,
            }),
            Plan::MarkStatus { contact, status } => json!({
                "action": self.action_type(),
                "contact": { "id": contact.id, "name": contact.display_name(), "status": contact.status },
                "new_status": status,
            }),
            _ => json!({ "action": self.action_type() }),
        }
    }
}

pub fn channel_word(c: Channel) -> &'static str {
    match c {
        Channel::Email => "email",
        Channel::Linkedin => "LinkedIn message",
    }
}

/// "Tuesday, December 1 at 3:00 PM" for an RFC 3339 time, in the offset it carries (the
/// org's zone, see `actions::contacts::meeting_step_in`).
pub fn spoken_time(rfc3339: &str) -> String {
    super::speech::when_rfc3339(rfc3339, chrono::Utc::now())
}
