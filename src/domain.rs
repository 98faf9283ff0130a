//! Small closed vocabularies of the CRM: plans, scopes, pilot modes and record statuses, each
//! with one wire spelling used by the API, the CLI and the database.

use std::fmt;
use std::str::FromStr;

/// Declares a string enum with `as_str`, `FromStr`, `Display`, serde, its JSON Schema and a list of
/// all values.
macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, utoipa::ToSchema)]
        pub enum $name { $(#[schema(rename = $s)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// All wire spellings joined with ", " for error messages.
            pub fn list() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    other => Err(format!("'{}' is not one of: {}", other, Self::list())),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?.parse().map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }
    };
}

string_enum! {
    /// Billing plan of an organisation. API access needs `pro` or `scale`.
    Plan { Free => "free", Pro => "pro", Scale => "scale" }
}

impl Plan {
    pub fn has_api_access(self) -> bool {
        matches!(self, Plan::Pro | Plan::Scale)
    }

    pub fn monthly_credits(self) -> i64 {
        match self {
            Plan::Free => 100,
            Plan::Pro => 5_000,
            Plan::Scale => 50_000,
        }
    }
}

string_enum! {
    /// What an API key may touch.
    Scope {
        Contacts => "contacts",
        Campaigns => "campaigns",
        Chat => "chat",
        Native => "native",
        Credits => "credits",
        Settings => "settings",
    }
}

string_enum! {
    /// How an API key may confirm dangerous actions (DESIGN §21). `two_step`: a dangerous action
    /// always answers with a confirmation question, whatever `confirmed` says; only a later
    /// request naming its `pendingActionId` executes it.
    KeyPolicy { Standard => "standard", TwoStep => "two_step" }
}

impl Scope {
    /// Parses a comma-separated scope list ("contacts,native").
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let scope: Scope = part.parse()?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        if out.is_empty() {
            return Err("at least one scope is required".into());
        }
        Ok(out)
    }

    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

string_enum! {
    /// How `send_message` behaves for an org (DESIGN §7).
    PilotMode { Off => "off", Review => "review", Auto => "auto" }
}

string_enum! {
    ContactStatus {
        New => "new",
        Contacted => "contacted",
        Replied => "replied",
        Interested => "interested",
        Qualified => "qualified",
        MeetingBooked => "meeting_booked",
        NotInterested => "not_interested",
        Disqualified => "disqualified",
    }
}

impl ContactStatus {
    /// Words for speech: "meeting_booked" → "meeting booked".
    pub fn spoken(self) -> String {
        self.as_str().replace('_', " ")
    }
}

string_enum! {
    CampaignStatus { Draft => "draft", Active => "active", Paused => "paused", Completed => "completed" }
}

string_enum! {
    /// State of one contact inside one campaign.
    AudienceStatus {
        Active => "active",
        Completed => "completed",
        Paused => "paused",
        Bounced => "bounced",
        Failed => "failed",
        Removed => "removed",
    }
}

string_enum! {
    Channel { Email => "email", Linkedin => "linkedin" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("pro".parse::<Plan>().unwrap(), Plan::Pro);
        assert!("gold"
            .parse::<Plan>()
            .unwrap_err()
            .contains("free, pro, scale"));
        assert_eq!(ContactStatus::MeetingBooked.spoken(), "meeting booked");
        let v: PilotMode = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(v, PilotMode::Auto);
        assert!(serde_json::from_str::<PilotMode>("\"on\"").is_err());
    }

    #[test]
    fn scope_lists() {
        assert_eq!(
            Scope::parse_list("contacts, native,contacts").unwrap(),
            vec![Scope::Contacts, Scope::Native]
        );
        assert!(Scope::parse_list("").is_err());
        assert!(Scope::parse_list("admin").is_err());
    }
}

/// An organisation's time zone: an IANA name such as `Europe/Berlin` (default `UTC`). Times are
/// spoken in it (DESIGN §20) and calendar dates such as `since: "2026-11-28"` start at its
/// midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(pub chrono_tz::Tz);

impl TimeZone {
    pub const UTC: TimeZone = TimeZone(chrono_tz::Tz::UTC);

    /// The IANA name, e.g. `Europe/Berlin`.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Whether clocks in this zone read UTC (so the zone is worth saying aloud).
    pub fn is_utc(self) -> bool {
        matches!(
            self.0,
            chrono_tz::Tz::UTC | chrono_tz::Tz::Etc__UTC | chrono_tz::Tz::Etc__UCT
        )
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone::UTC
    }
}

impl FromStr for TimeZone {
    type Err = String;
    /// Accepts IANA names exactly as the tz database spells them, and also in another case
    /// (`europe/berlin`), as people type them.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<chrono_tz::Tz>()
            .or_else(|_| chrono_tz::Tz::from_str_insensitive(s))
            .map(TimeZone)
            .map_err(|_| {
                format!(
                    "'{}' is not an IANA time zone name (e.g. Europe/Berlin, America/New_York, UTC)",
                    s.chars().take(64).collect::<String>()
                )
            })
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for TimeZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for TimeZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for TimeZone {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("IANA time zone name, e.g. Europe/Berlin"))
            .examples([serde_json::json!("Europe/Berlin")])
            .into()
    }
}

impl utoipa::ToSchema for TimeZone {}

impl rusqlite::types::FromSql for TimeZone {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

impl rusqlite::types::ToSql for TimeZone {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.name()))
    }
}
