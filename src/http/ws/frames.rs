//! What goes on the wire besides replies: close codes (RFC 6455 §7.4), the mapping from read
//! errors to them, and the small frames the session writes itself (errors, `auth_ok`, `pong`,
//! `progress`).

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use serde::Serialize;
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::http::envelope::error_body_for;

/// Close codes this server sends (RFC 6455 §7.4.1). A client's own close is echoed with its
/// code by the protocol layer.
pub mod close {
    /// Shutdown, or a peer silent for two ping intervals.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks RFC 6455 (reserved bits or opcodes, fragmented or oversized control
    /// frames, a bad close payload).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message (or close reason) that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Missing, bad or revoked credentials.
    pub const POLICY: u16 = 1008;
    /// A message over `websocket.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed in a way the session cannot survive.
    pub const INTERNAL: u16 = 1011;
    /// A connection cap was reached.
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// The code as a bounded metric label.
    pub fn label(code: u16) -> &'static str {
        match code {
            1000 => "1000",
            GOING_AWAY => "1001",
            PROTOCOL_ERROR => "1002",
            INVALID_PAYLOAD => "1007",
            POLICY => "1008",
            TOO_BIG => "1009",
            INTERNAL => "1011",
            TRY_AGAIN_LATER => "1013",
            _ => "other",
        }
    }
}

/// What a failed read means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFailure {
    /// The TCP connection is gone (reset, closed without a close frame): nothing can be sent.
    Gone,
    /// The peer broke the protocol: close with this code and reason.
    Close(u16, &'static str),
}

/// Maps a read error to what the session does: RFC 6455 asks for 1002 on protocol errors, 1007
/// on invalid UTF-8, and 1009 for messages over the limit.
pub fn read_failure(e: &axum::Error) -> ReadFailure {
    use tungstenite::error::ProtocolError;
    use tungstenite::Error as E;
    let Some(t) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<E>()) else {
        return ReadFailure::Gone;
    };
    match t {
        E::ConnectionClosed
        | E::AlreadyClosed
        | E::Io(_)
        | E::Tls(_)
        | E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadFailure::Gone,
        E::Utf8(_) => ReadFailure::Close(close::INVALID_PAYLOAD, "invalid UTF-8"),
        E::Capacity(_) => ReadFailure::Close(close::TOO_BIG, "message too big"),
        E::Protocol(_) | E::AttackAttempt => {
            ReadFailure::Close(close::PROTOCOL_ERROR, "protocol error")
        }
        _ => ReadFailure::Close(close::INTERNAL, "internal error"),
    }
}

/// Whether an authentication error is a verdict on the key (close 1008) rather than a failure to
/// reach one (an error frame; the session stays open).
pub fn is_definitive_auth_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MissingAuth
            | ErrorCode::InvalidApiKey
            | ErrorCode::PlanRequired
            | ErrorCode::ScopeDenied
            | ErrorCode::OrgNotFound
    )
}

pub fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

pub fn json_frame<T: Serialize>(v: &T) -> Message {
    // Our frame types are plain structs and `Value`s: serialising them cannot fail.
    Message::Text(serde_json::to_string(v).unwrap_or_default().into())
}

/// An error frame: the error envelope, after the request's `id` when one could be read (first,
/// as in reply frames).
pub fn error_frame(e: &ApiError, id: Option<&str>, request_id: &str) -> Message {
    let body = error_body_for(e, request_id.to_string());
    let (Some(id), Value::Object(fields)) = (id, &body) else {
        return json_frame(&body);
    };
    let mut framed = serde_json::Map::with_capacity(fields.len() + 1);
    framed.insert("id".into(), Value::String(id.to_string()));
    framed.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    json_frame(&framed)
}

#[derive(Serialize)]
struct Control<'a> {
    #[serde(rename = "type")]
    frame_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spoken_summary: Option<&'static str>,
}

/// `{"type":"auth_ok","org_id":…}` with the auth frame's `id`.
pub fn auth_ok(org_id: &str, id: Option<&Value>) -> Message {
    json_frame(&Control {
        frame_type: "auth_ok",
        org_id: Some(org_id),
        id,
        spoken_summary: None,
    })
}

/// `{"type":"pong"}` with the ping's `id`.
pub fn pong(id: Option<&Value>) -> Message {
    json_frame(&Control {
        frame_type: "pong",
        org_id: None,
        id,
        spoken_summary: None,
    })
}

/// What a voice client can say while a slow turn is still running.
pub const PROGRESS_SPOKEN: &str = "One moment.";

/// `{"type":"progress","id":…,"spoken_summary":"One moment."}` for a request still running.
pub fn progress(id: &Value) -> Message {
    json_frame(&Control {
        frame_type: "progress",
        org_id: None,
        id: Some(id),
        spoken_summary: Some(PROGRESS_SPOKEN),
    })
}

pub fn kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
    }
}

/// `{"type":"cancelled","id":…,"outcome":"not_started"|"committed"|"unknown"}`: the answer to a
/// cancel frame.
pub fn cancelled(id: &str, outcome: &'static str) -> Message {
    json_frame(&serde_json::json!({ "type": "cancelled", "id": id, "outcome": outcome }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::{CapacityError, ProtocolError};

    #[test]
    fn read_errors_map_to_rfc6455_close_codes() {
        let cases: Vec<(tungstenite::Error, ReadFailure)> = vec![
            (
                tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits),
                ReadFailure::Close(1002, "protocol error"),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::FragmentedControlFrame),
                ReadFailure::Close(1002, "protocol error"),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::InvalidCloseSequence),
                ReadFailure::Close(1002, "protocol error"),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::UnknownDataFrameType(3)),
                ReadFailure::Close(1002, "protocol error"),
            ),
            (
                tungstenite::Error::Utf8("invalid".into()),
                ReadFailure::Close(1007, "invalid UTF-8"),
            ),
            (
                tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size: 70_000,
                    max_size: 65_536,
                }),
                ReadFailure::Close(1009, "message too big"),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                ReadFailure::Gone,
            ),
            (tungstenite::Error::ConnectionClosed, ReadFailure::Gone),
            (
                tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                ReadFailure::Gone,
            ),
        ];
        for (err, want) in cases {
            let shown = err.to_string();
            assert_eq!(read_failure(&axum::Error::new(err)), want, "{shown}");
        }
    }

    #[test]
    fn only_verdicts_on_the_key_are_definitive() {
        for code in [
            ErrorCode::InvalidApiKey,
            ErrorCode::MissingAuth,
            ErrorCode::PlanRequired,
            ErrorCode::ScopeDenied,
            ErrorCode::OrgNotFound,
        ] {
            assert!(is_definitive_auth_failure(code), "{code:?}");
        }
        for code in [
            ErrorCode::UpstreamUnavailable,
            ErrorCode::UpstreamTimeout,
            ErrorCode::InternalError,
            ErrorCode::ServiceUnavailable,
            ErrorCode::RateLimited,
        ] {
            assert!(!is_definitive_auth_failure(code), "{code:?}");
        }
    }

    #[test]
    fn control_frames_carry_the_client_id() {
        let id = Value::String("r1".into());
        let text = |m: Message| match m {
            Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            text(progress(&id)),
            serde_json::json!({ "type": "progress", "id": "r1", "spoken_summary": "One moment." })
        );
        assert_eq!(text(pong(None)), serde_json::json!({ "type": "pong" }));
        assert_eq!(
            text(auth_ok("demo", Some(&id))),
            serde_json::json!({ "type": "auth_ok", "org_id": "demo", "id": "r1" })
        );
    }
}
