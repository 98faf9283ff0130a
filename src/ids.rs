//! Identifiers and timestamps: record ids (UUID v7, time-ordered), request ids and RFC 3339 clocks.

use chrono::{DateTime, SecondsFormat, Utc};

/// A new record id. UUID v7 sorts by creation time, which keeps SQLite's indexes append-mostly.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A new request id, `req_` plus 24 hex characters.
pub fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let u = uuid::Uuid::new_v4();
    let mut s = String::with_capacity(28);
    s.push_str("req_");
    for b in &u.as_bytes()[..12] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// True when `s` parses as a UUID (any version): such a reference is an id, not a name.
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

/// Now as RFC 3339 with millisecond precision in UTC, the format stored and returned everywhere.
pub fn now_rfc3339() -> String {
    to_rfc3339(Utc::now())
}

pub fn to_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp into UTC.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_shape() {
        let id = new_request_id();
        assert!(id.starts_with("req_"));
        assert_eq!(id.len(), 28);
    }

    #[test]
    fn rfc3339_round_trip_normalises_to_utc() {
        let t = parse_rfc3339("2026-05-01T10:00:00+02:00").unwrap();
        assert_eq!(to_rfc3339(t), "2026-05-01T08:00:00.000Z");
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn ids_are_uuids() {
        assert!(is_uuid(&new_id()));
        assert!(!is_uuid("Sarah Chen"));
    }
}
