//! The 17 native actions as one typed enum, parsed strictly: unknown fields inside `action` are
//! rejected (a mistyped voice slot must not silently do something else) and every error names
//! its field path, e.g. `action.campaignRef: missing`.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::domain::{Channel, ContactStatus};
use crate::error::{ApiError, ApiResult};

/// Every supported `action.type`, in the reference's order.
pub const ACTION_TYPES: &[&str] = &[
    "lookup_person",
    "lookup_company",
    "recent_signals",
    "start_research",
    "enrich_contact",
    "add_to_campaign",
    "remove_from_campaign",
    "pause_campaign",
    "resume_campaign",
    "draft_message",
    "send_message",
    "campaign_stats",
    "reply_inbox",
    "book_meeting",
    "mark_status",
    "note_on_contact",
    "undo_last",
];

/// Longest note (DESIGN §5).
pub const MAX_NOTE_CHARS: usize = 10_000;
/// Longest free-text field other than notes and message bodies.
const MAX_TEXT: usize = 500;
const MAX_BODY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupPerson {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    #[schema(max_length = 200)]
    pub company: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupCompany {
    /// Company name or domain (or send `companyId`).
    #[schema(max_length = 200)]
    pub company: Option<String>,
    /// Company id.
    #[serde(rename = "companyId")]
    pub company_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecentSignals {
    /// Only signals detected at or after this time: an RFC 3339 time, or a date
    /// (`2026-11-28`, from midnight in the org's time zone).
    #[schema(examples("2026-11-28T00:00:00Z", "2026-11-28"))]
    pub since: Option<String>,
    /// Only signals for this company.
    #[schema(max_length = 200)]
    pub company: Option<String>,
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Lowest intent score, 0-100.
    #[schema(minimum = 0, maximum = 100)]
    #[serde(
        rename = "minIntentScore",
        default,
        deserialize_with = "lenient::opt_i64"
    )]
    pub min_intent_score: Option<i64>,
    /// At most this many signals (default 5; more than 100 is read as 100).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartResearch {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company to research (when no contact is given).
    pub company: Option<String>,
    /// What to research.
    #[schema(max_length = 500)]
    pub topic: Option<String>,
}

/// Actions whose only input is a contact (plus an optional company to narrow a name).
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactOnly {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactCampaign {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// The campaign: a UUID or a name. Also accepted as `campaignId`.
    #[schema(max_length = 320)]
    #[serde(rename = "campaignRef", alias = "campaignId")]
    pub campaign: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignOnly {
    /// The campaign: a UUID or a name. Also accepted as `campaignId`.
    #[schema(max_length = 320)]
    #[serde(rename = "campaignRef", alias = "campaignId")]
    pub campaign: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftMessage {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// Channel (default email).
    pub channel: Option<Channel>,
    /// What the draft should say.
    #[schema(max_length = 2000)]
    pub instructions: Option<String>,
    /// Email subject.
    #[schema(max_length = 300)]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// Send this draft (or give `body`).
    #[serde(rename = "draftId")]
    pub draft_id: Option<String>,
    /// Message text (or give `draftId`).
    #[schema(max_length = 10000)]
    pub body: Option<String>,
    /// Channel (default email).
    pub channel: Option<Channel>,
    /// Email subject.
    #[schema(max_length = 300)]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyInbox {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// Only unread replies.
    #[serde(rename = "unreadOnly", default, deserialize_with = "lenient::opt_bool")]
    pub unread_only: Option<bool>,
    /// At most this many replies (default 5; more than 50 is read as 50).
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookMeeting {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// Start (RFC 3339).
    #[schema(format = DateTime)]
    #[serde(rename = "startTime")]
    pub start_time: Option<String>,
    /// Length in minutes (default 30).
    #[schema(minimum = 5, maximum = 480)]
    #[serde(
        rename = "durationMinutes",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub duration_minutes: Option<u32>,
    /// Meeting title.
    #[schema(max_length = 200)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkStatus {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// The new status (`disqualified` asks for confirmation).
    pub status: Option<ContactStatus>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteOnContact {
    /// The contact: a UUID, an email, or a name. Also accepted as `personName`, `contactId` or
    /// `email` (send one of them).
    #[schema(max_length = 320)]
    #[serde(
        rename = "contactRef",
        alias = "personName",
        alias = "contactId",
        alias = "email"
    )]
    pub contact: Option<String>,
    /// Company name, to narrow a contact name.
    pub company: Option<String>,
    /// The note (up to 10,000 characters).
    #[schema(max_length = 10000)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UndoLast {}

/// One validated action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    LookupPerson(LookupPerson),
    LookupCompany(LookupCompany),
    RecentSignals(RecentSignals),
    StartResearch(StartResearch),
    EnrichContact(ContactOnly),
    AddToCampaign(ContactCampaign),
    RemoveFromCampaign(ContactCampaign),
    PauseCampaign(CampaignOnly),
    ResumeCampaign(CampaignOnly),
    DraftMessage(DraftMessage),
    SendMessage(SendMessage),
    CampaignStats(CampaignOnly),
    ReplyInbox(ReplyInbox),
    BookMeeting(BookMeeting),
    MarkStatus(MarkStatus),
    NoteOnContact(NoteOnContact),
    UndoLast(UndoLast),
}

impl Action {
    /// The wire name of the action type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Action::LookupPerson(_) => "lookup_person",
            Action::LookupCompany(_) => "lookup_company",
            Action::RecentSignals(_) => "recent_signals",
            Action::StartResearch(_) => "start_research",
            Action::EnrichContact(_) => "enrich_contact",
            Action::AddToCampaign(_) => "add_to_campaign",
            Action::RemoveFromCampaign(_) => "remove_from_campaign",
            Action::PauseCampaign(_) => "pause_campaign",
            Action::ResumeCampaign(_) => "resume_campaign",
            Action::DraftMessage(_) => "draft_message",
            Action::SendMessage(_) => "send_message",
            Action::CampaignStats(_) => "campaign_stats",
            Action::ReplyInbox(_) => "reply_inbox",
            Action::BookMeeting(_) => "book_meeting",
            Action::MarkStatus(_) => "mark_status",
            Action::NoteOnContact(_) => "note_on_contact",
            Action::UndoLast(_) => "undo_last",
        }
    }

    /// Reads never change anything; everything else is a write.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Action::LookupPerson(_)
                | Action::LookupCompany(_)
                | Action::RecentSignals(_)
                | Action::CampaignStats(_)
                | Action::ReplyInbox(_)
        )
    }

    /// Irreversible writes that need `confirmed: true` (send_message: only in auto pilot mode,
    /// decided later).
    pub fn is_dangerous(&self) -> bool {
        match self {
            Action::AddToCampaign(_)
            | Action::RemoveFromCampaign(_)
            | Action::PauseCampaign(_)
            | Action::ResumeCampaign(_)
            | Action::SendMessage(_)
            | Action::BookMeeting(_) => true,
            Action::MarkStatus(m) => m.status == Some(ContactStatus::Disqualified),
            _ => false,
        }
    }
}

/// Parses and validates `action` (the JSON object under the request's `action` key).
pub fn parse_action(v: &Value) -> ApiResult<Action> {
    let Value::Object(obj) = v else {
        return Err(
            ApiError::validation("action", "expected an object with a type")
                .with_spoken("I didn't get an action to run."),
        );
    };
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(ApiError::validation("action.type", "expected a string")
                .with_spoken("I didn't understand which action to run."))
        }
        None => {
            return Err(ApiError::validation("action.type", "missing")
                .with_spoken("I didn't understand which action to run."))
        }
    };
    let mut rest: Map<String, Value> = obj.clone();
    rest.remove("type");
    let rest = Value::Object(rest);
    let action = match ty {
        "lookup_person" => Action::LookupPerson(fields(&rest)?),
        "lookup_company" => Action::LookupCompany(fields(&rest)?),
        "recent_signals" => Action::RecentSignals(fields(&rest)?),
        "start_research" => Action::StartResearch(fields(&rest)?),
        "enrich_contact" => Action::EnrichContact(fields(&rest)?),
        "add_to_campaign" => Action::AddToCampaign(fields(&rest)?),
        "remove_from_campaign" => Action::RemoveFromCampaign(fields(&rest)?),
        "pause_campaign" => Action::PauseCampaign(fields(&rest)?),
        "resume_campaign" => Action::ResumeCampaign(fields(&rest)?),
        "draft_message" => Action::DraftMessage(fields(&rest)?),
        "send_message" => Action::SendMessage(fields(&rest)?),
        "campaign_stats" => Action::CampaignStats(fields(&rest)?),
        "reply_inbox" => Action::ReplyInbox(fields(&rest)?),
        "book_meeting" => Action::BookMeeting(fields(&rest)?),
        "mark_status" => Action::MarkStatus(fields(&rest)?),
        "note_on_contact" => Action::NoteOnContact(fields(&rest)?),
        "undo_last" => Action::UndoLast(fields(&rest)?),
        other => {
            return Err(ApiError::validation(
                "action.type",
                format!(
                    "unknown action '{}'; supported: {}",
                    crate::text::clip(other, 64),
                    ACTION_TYPES.join(", ")
                ),
            )
            .with_spoken("I can't do that kind of action yet."))
        }
    };
    validate(&action)?;
    Ok(clamp_limits(action))
}

/// Limits above an action's cap read as the cap, as REST pages do (DESIGN §10): a voice model
/// asking for "all" signals gets the most there are room for, not an error.
fn clamp_limits(mut action: Action) -> Action {
    match &mut action {
        Action::RecentSignals(x) => x.limit = x.limit.map(|l| l.min(MAX_SIGNALS_LIMIT)),
        Action::ReplyInbox(x) => x.limit = x.limit.map(|l| l.min(MAX_INBOX_LIMIT)),
        _ => {}
    }
    action
}

/// Most signals one `recent_signals` answer lists.
pub const MAX_SIGNALS_LIMIT: u32 = 100;
/// Most replies one `reply_inbox` answer lists.
pub const MAX_INBOX_LIMIT: u32 = 50;

/// The instant a `since` value means: an RFC 3339 time as given, or a calendar date's midnight
/// in `zone` (LLM tool calls often send `"2026-11-28"`). `None` when it is neither.
pub fn parse_since(
    s: &str,
    zone: crate::domain::TimeZone,
) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::TimeZone as _;
    let s = s.trim();
    if let Some(t) = crate::ids::parse_rfc3339(s) {
        return Some(t);
    }
    let day = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let midnight = day.and_hms_opt(0, 0, 0)?;
    // A midnight skipped by a DST change starts the day at the first instant that exists.
    zone.0
        .from_local_datetime(&midnight)
        .earliest()
        .or_else(|| {
            zone.0
                .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Numbers and flags as LLM tool calls send them: `5` or `"5"`, `true` or `"true"`.
mod lenient {
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    struct Number;

    impl Visitor<'_> for Number {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number (such as 5)")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("is too large"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                Ok(Some(v as i64))
            } else {
                Err(E::custom("expected a whole number (such as 5)"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let t = v.trim();
            if t.is_empty() {
                return Ok(None);
            }
            t.parse::<i64>().map(Some).map_err(|_| {
                E::custom(format!(
                    "'{}' is not a whole number (such as 5)",
                    t.chars().take(32).collect::<String>()
                ))
            })
        }
    }

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(Number)
    }

    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match d.deserialize_any(Number)? {
            None => Ok(None),
            Some(n) if n < 0 => Err(de::Error::custom("must not be negative")),
            Some(n) => Ok(Some(u32::try_from(n).unwrap_or(u32::MAX))),
        }
    }

    struct Flag;

    impl Visitor<'_> for Flag {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                "" => Ok(None),
                _ => Err(E::custom("expected true or false")),
            }
        }
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        d.deserialize_any(Flag)
    }
}

fn fields<T: DeserializeOwned>(v: &Value) -> ApiResult<T> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        // serde reports missing and unknown fields at the parent; name the field itself.
        if let Some(name) = between(&msg, "unknown field `", "`") {
            let expected = backticked(&msg).into_iter().skip(1).collect::<Vec<_>>();
            return unknown_field(&format!("action.{name}"), name, &expected).with_spoken(
                "One of the details in that request isn't something this action takes.",
            );
        }
        if let Some(name) = between(&msg, "duplicate field `", "`") {
            return ApiError::validation(
                &format!("action.{name}"),
                "given twice (check aliases such as personName and contactRef)",
            );
        }
        let path = if path == "." {
            "action".to_string()
        } else {
            format!("action.{path}")
        };
        let spoken = format!(
            "The {} value doesn't look right.",
            spoken_field(path.trim_start_matches("action."))
        );
        ApiError::validation(&path, without_rust_types(&msg)).with_spoken(spoken)
    })
}

/// The `names` in backticks of a serde message, in order.
fn backticked(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// serde names Rust types in some messages ("expected u32"); say what a client should send.
fn without_rust_types(msg: &str) -> String {
    let mut out = msg.to_string();
    for (rust, plain) in [
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("struct ", ""),
        ("enum ", ""),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// A 422 for an unknown field at `path`, with "did you mean `x`?" when one of `known` is close
/// (`idempotency_key` → `idempotencyKey`, `person_name` → `personName`).
pub(crate) fn unknown_field(path: &str, name: &str, known: &[&str]) -> ApiError {
    let detail = match closest_field(name, known) {
        Some(k) => format!("unknown field; did you mean {k}?"),
        None if known.is_empty() => "unknown field".to_string(),
        None => format!("unknown field; known fields: {}", known.join(", ")),
    };
    let shown: String = path.chars().take(80).collect();
    ApiError::validation(&shown, detail)
}

/// The known field `name` most likely meant: the same letters in another case or separator
/// style, else the closest by Jaro–Winkler (≥ 0.85).
fn closest_field<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let wanted = squash(name);
    if let Some(k) = known.iter().find(|k| squash(k) == wanted) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&wanted, &squash(k)), *k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(&s[i..j])
}

fn spoken_field(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push(' ');
            out.push(c.to_ascii_lowercase());
        } else if c == '_' || c == '.' {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

fn missing(field: &str, spoken: &str) -> ApiError {
    ApiError::validation(&format!("action.{field}"), "missing").with_spoken(spoken)
}

fn need_contact(c: &Option<String>) -> ApiResult<()> {
    match c {
        Some(s) if !s.trim().is_empty() => check_len("contactRef", s, 320),
        _ => Err(missing(
            "contactRef",
            "I need to know which contact you mean.",
        )),
    }
}

fn need_campaign(c: &Option<String>) -> ApiResult<()> {
    match c {
        Some(s) if !s.trim().is_empty() => check_len("campaignRef", s, 320),
        _ => Err(missing("campaignRef", "I need a campaign name for that.")),
    }
}

fn check_len(field: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.chars().count() > max {
        return Err(ApiError::validation(
            &format!("action.{field}"),
            format!("longer than {max} characters"),
        )
        .with_spoken(format!("The {} is too long.", spoken_field(field))));
    }
    Ok(())
}

fn opt_len(field: &str, s: &Option<String>, max: usize) -> ApiResult<()> {
    s.as_deref().map_or(Ok(()), |s| check_len(field, s, max))
}

/// A limit below 1 is an error; one above the cap is clamped later ([`clamp_limits`]).
fn check_limit(limit: Option<u32>) -> ApiResult<()> {
    match limit {
        Some(0) => Err(ApiError::validation("action.limit", "must be at least 1")
            .with_spoken("I need to list at least one.")),
        _ => Ok(()),
    }
}

/// Checks what serde cannot: required references, lengths, ranges and formats.
fn validate(a: &Action) -> ApiResult<()> {
    match a {
        Action::LookupPerson(x) => {
            need_contact(&x.contact)?;
            opt_len("company", &x.company, 200)
        }
        Action::LookupCompany(x) => {
            if x.company.as_deref().is_none_or(|s| s.trim().is_empty())
                && x.company_id.as_deref().is_none_or(|s| s.trim().is_empty())
            {
                return Err(missing("company", "Which company do you mean?"));
            }
            opt_len("company", &x.company, 200)
        }
        Action::RecentSignals(x) => {
            check_limit(x.limit)?;
            if let Some(s) = &x.since {
                if parse_since(s, crate::domain::TimeZone::UTC).is_none() {
                    return Err(ApiError::validation(
                        "action.since",
                        "expected a date such as 2026-05-01 or an RFC 3339 time such as 2026-05-01T00:00:00Z",
                    )
                    .with_spoken("I didn't understand the time to look back to."));
                }
            }
            if let Some(m) = x.min_intent_score {
                if !(0..=100).contains(&m) {
                    return Err(ApiError::validation(
                        "action.minIntentScore",
                        "must be between 0 and 100",
                    ));
                }
            }
            opt_len("company", &x.company, 200)
        }
        Action::StartResearch(x) => {
            let has_contact = x.contact.as_deref().is_some_and(|s| !s.trim().is_empty());
            let has_company = x.company.as_deref().is_some_and(|s| !s.trim().is_empty());
            if !has_contact && !has_company {
                return Err(missing(
                    "contactRef",
                    "Who or which company should I research?",
                ));
            }
            opt_len("topic", &x.topic, MAX_TEXT)
        }
        Action::EnrichContact(x) => need_contact(&x.contact),
        Action::AddToCampaign(x) | Action::RemoveFromCampaign(x) => {
            need_contact(&x.contact)?;
            need_campaign(&x.campaign)
        }
        Action::PauseCampaign(x) | Action::ResumeCampaign(x) | Action::CampaignStats(x) => {
            need_campaign(&x.campaign)
        }
        Action::DraftMessage(x) => {
            need_contact(&x.contact)?;
            opt_len("instructions", &x.instructions, 2_000)?;
            opt_len("subject", &x.subject, 300)
        }
        Action::SendMessage(x) => {
            need_contact(&x.contact)?;
            let has_body = x.body.as_deref().is_some_and(|s| !s.trim().is_empty());
            let has_draft = x.draft_id.as_deref().is_some_and(|s| !s.trim().is_empty());
            if !has_body && !has_draft {
                return Err(missing("body", "What should the message say?"));
            }
            opt_len("body", &x.body, MAX_BODY)?;
            opt_len("subject", &x.subject, 300)
        }
        Action::ReplyInbox(x) => {
            check_limit(x.limit)?;
            opt_len("contactRef", &x.contact, 320)
        }
        Action::BookMeeting(x) => {
            need_contact(&x.contact)?;
            match &x.start_time {
                None => return Err(missing("startTime", "When should the meeting start?")),
                Some(s) if crate::ids::parse_rfc3339(s).is_none() => {
                    return Err(ApiError::validation(
                        "action.startTime",
                        "expected an RFC 3339 timestamp such as 2026-12-01T15:00:00Z",
                    )
                    .with_spoken("I didn't understand the meeting time."))
                }
                Some(_) => {}
            }
            if let Some(d) = x.duration_minutes {
                if !(5..=480).contains(&d) {
                    return Err(ApiError::validation(
                        "action.durationMinutes",
                        "must be between 5 and 480",
                    )
                    .with_spoken("Meetings can be between 5 minutes and 8 hours long."));
                }
            }
            opt_len("title", &x.title, 200)
        }
        Action::MarkStatus(x) => {
            need_contact(&x.contact)?;
            if x.status.is_none() {
                return Err(missing("status", "Which status should I set?"));
            }
            Ok(())
        }
        Action::NoteOnContact(x) => {
            need_contact(&x.contact)?;
            match &x.note {
                Some(n) if !n.trim().is_empty() => check_len("note", n, MAX_NOTE_CHARS),
                _ => Err(missing("note", "What should the note say?")),
            }
        }
        Action::UndoLast(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        parse_action(&v).unwrap_err().details.unwrap_or_default()
    }

    #[test]
    fn parses_every_type_with_minimal_fields() {
        let samples = [
            json!({"type":"lookup_person","personName":"Sarah Chen","company":"Notion"}),
            json!({"type":"lookup_company","company":"notion.so"}),
            json!({"type":"recent_signals","limit":5,"minIntentScore":50}),
            json!({"type":"start_research","company":"Acme","topic":"funding"}),
            json!({"type":"enrich_contact","email":"john@acme.com"}),
            json!({"type":"add_to_campaign","contactRef":"Sarah Chen","campaignRef":"Seed founders"}),
            json!({"type":"remove_from_campaign","contactId":"x","campaignId":"y"}),
            json!({"type":"pause_campaign","campaignRef":"Seed founders"}),
            json!({"type":"resume_campaign","campaignRef":"Q4 Enterprise"}),
            json!({"type":"draft_message","contactRef":"John Smith","channel":"linkedin"}),
            json!({"type":"send_message","contactRef":"John Smith","body":"Hi"}),
            json!({"type":"campaign_stats","campaignRef":"Seed founders"}),
            json!({"type":"reply_inbox","unreadOnly":true}),
            json!({"type":"book_meeting","contactRef":"Sarah Chen","startTime":"2026-12-01T15:00:00Z"}),
            json!({"type":"mark_status","contactRef":"John Smith","status":"interested"}),
            json!({"type":"note_on_contact","contactRef":"Sarah Chen","note":"Follow up Friday"}),
            json!({"type":"undo_last"}),
        ];
        assert_eq!(samples.len(), ACTION_TYPES.len());
        for (s, name) in samples.iter().zip(ACTION_TYPES) {
            let a = parse_action(s).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(a.type_name(), *name);
        }
    }

    #[test]
    fn aliases_fill_the_same_field() {
        for key in ["contactRef", "personName", "contactId", "email"] {
            let a = parse_action(&json!({"type":"lookup_person", key: "x"})).unwrap();
            assert_eq!(
                a,
                Action::LookupPerson(LookupPerson {
                    contact: Some("x".into()),
                    company: None
                })
            );
        }
        let a = parse_action(&json!({"type":"pause_campaign","campaignId":"c"})).unwrap();
        assert_eq!(
            a,
            Action::PauseCampaign(CampaignOnly {
                campaign: Some("c".into())
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            err(json!({"type":"add_to_campaign","contactRef":"Sarah"})),
            "action.campaignRef: missing"
        );
        assert_eq!(
            err(json!({"type":"lookup_person","personName":"x","compnay":"y"})),
            "action.compnay: unknown field; did you mean company?"
        );
        assert_eq!(
            err(json!({"type":"lookup_person","person_name":"x"})),
            "action.person_name: unknown field; did you mean personName?"
        );
        assert_eq!(
            err(json!({"type":"undo_last","x":1})),
            "action.x: unknown field"
        );
        assert_eq!(
            err(json!({"type":"recent_signals","limit":"many"})),
            "action.limit: 'many' is not a whole number (such as 5)"
        );
        assert_eq!(
            err(json!({"type":"recent_signals","limit":0})),
            "action.limit: must be at least 1"
        );
        assert_eq!(
            err(
                json!({"type":"book_meeting","contactRef":"x","startTime":"2026-12-01T15:00:00Z","durationMinutes":[30]})
            ),
            "action.durationMinutes: invalid type: sequence, expected a whole number (such as 5)"
        );
        assert!(
            err(json!({"type":"mark_status","contactRef":"x","status":"vip"}))
                .starts_with("action.status: 'vip' is not one of")
        );
        assert_eq!(err(json!({"personName":"x"})), "action.type: missing");
        assert!(
            err(json!({"type":"fly_to_moon"})).contains("supported: lookup_person, lookup_company")
        );
        assert_eq!(
            err(json!("lookup_person")),
            "action: expected an object with a type"
        );
        assert!(
            err(json!({"type":"note_on_contact","contactRef":"x","note":"a".repeat(10_001)}))
                .contains("longer than 10000")
        );
        assert_eq!(
            err(json!({"type":"book_meeting","contactRef":"x","startTime":"tomorrow"}))
                .split(':')
                .next(),
            Some("action.startTime")
        );
    }

    #[test]
    fn forgiving_numbers_flags_dates_and_limits() {
        let a = parse_action(&json!({"type":"recent_signals","limit":"5","minIntentScore":"70","since":"2026-11-28"}))
            .unwrap();
        let Action::RecentSignals(r) = a else {
            panic!("recent_signals")
        };
        assert_eq!((r.limit, r.min_intent_score), (Some(5), Some(70)));
        let a = parse_action(&json!({"type":"recent_signals","limit":500})).unwrap();
        let Action::RecentSignals(r) = a else {
            panic!("recent_signals")
        };
        assert_eq!(r.limit, Some(MAX_SIGNALS_LIMIT), "clamped like REST");
        let a =
            parse_action(&json!({"type":"reply_inbox","limit":"80","unreadOnly":"true"})).unwrap();
        let Action::ReplyInbox(r) = a else {
            panic!("reply_inbox")
        };
        assert_eq!(
            (r.limit, r.unread_only),
            (Some(MAX_INBOX_LIMIT), Some(true))
        );
        let berlin: crate::domain::TimeZone = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            parse_since("2026-11-28", berlin).map(crate::ids::to_rfc3339),
            Some("2026-11-27T23:00:00.000Z".to_string())
        );
        assert_eq!(
            parse_since("2026-11-28T10:00:00+01:00", berlin).map(crate::ids::to_rfc3339),
            Some("2026-11-28T09:00:00.000Z".to_string())
        );
        assert!(parse_since("last week", berlin).is_none());
    }

    #[test]
    fn spoken_summary_says_what_is_missing() {
        let e = parse_action(&json!({"type":"pause_campaign"})).unwrap_err();
        assert_eq!(e.spoken_summary, "I need a campaign name for that.");
        let e = parse_action(&json!({"type":"note_on_contact","contactRef":"x"})).unwrap_err();
        assert_eq!(e.spoken_summary, "What should the note say?");
    }

    #[test]
    fn danger_and_kind() {
        let dis =
            parse_action(&json!({"type":"mark_status","contactRef":"x","status":"disqualified"}))
                .unwrap();
        let ok = parse_action(&json!({"type":"mark_status","contactRef":"x","status":"qualified"}))
            .unwrap();
        assert!(dis.is_dangerous() && !ok.is_dangerous());
        assert!(
            parse_action(&json!({"type":"lookup_person","personName":"x"}))
                .unwrap()
                .is_read()
        );
        assert!(!parse_action(&json!({"type":"undo_last"}))
            .unwrap()
            .is_read());
    }
}
