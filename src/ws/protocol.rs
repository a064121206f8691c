//! The WebSocket protocol `fanout.v1`: JSON text frames that carry events of many topics
//! out, and subscribe and unsubscribe commands in. `PROTOCOL.md` at the root of the
//! repository describes it for client authors; this module speaks it.

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value};

use crate::Event;
use crate::classify::list_items;

/// The protocol's name in `Sec-WebSocket-Protocol`.
pub(crate) const NAME: &str = "fanout.v1";

/// Whether the client offers the protocol.
pub(crate) fn offered(headers: &HeaderMap) -> bool {
    list_items(headers, &header::SEC_WEBSOCKET_PROTOCOL).any(|name| name == NAME)
}

/// A command from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Subscribe {
        topic: String,
        since: Option<String>,
        req: Value,
    },
    Unsubscribe {
        topic: String,
        req: Value,
    },
}

/// A command the server cannot carry out, with the request id to answer, if it had one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) req: Value,
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
}

impl Refused {
    pub(crate) fn new(req: Value, status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            req,
            status,
            reason: reason.into(),
        }
    }
}

/// Reads a command from a text frame.
pub(crate) fn parse(text: &str) -> Result<Command, Refused> {
    let bad =
        |req: &Value, reason: &str| Refused::new(req.clone(), StatusCode::BAD_REQUEST, reason);
    let Ok(Value::Object(mut command)) = serde_json::from_str::<Value>(text) else {
        return Err(bad(&Value::Null, "a command is a JSON object"));
    };
    let req = command.remove("req").unwrap_or(Value::Null);
    if !matches!(req, Value::Null | Value::String(_) | Value::Number(_)) {
        return Err(bad(&Value::Null, "`req` is a string or a number"));
    }
    let text_field = |command: &mut Map<String, Value>, name: &str| match command.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(bad(&req, &format!("`{name}` is a string"))),
    };
    let kind = text_field(&mut command, "type")?;
    let topic = text_field(&mut command, "topic")?.filter(|topic| !topic.is_empty());
    match kind.as_deref() {
        Some("subscribe") => {
            let since = text_field(&mut command, "since")?;
            let topic = topic.ok_or_else(|| bad(&req, "subscribe needs a `topic`"))?;
            Ok(Command::Subscribe { topic, since, req })
        }
        Some("unsubscribe") => {
            let topic = topic.ok_or_else(|| bad(&req, "unsubscribe needs a `topic`"))?;
            Ok(Command::Unsubscribe { topic, req })
        }
        Some(other) => Err(bad(&req, &format!("unknown command type `{other}`"))),
        None => Err(bad(&req, "a command has a `type`")),
    }
}

/// `{"type":"ok","req":…}`: the command `req` was carried out.
pub(crate) fn ok(req: &Value) -> Bytes {
    object([("type", Value::from("ok")), ("req", req.clone())])
}

/// `{"type":"ok","req":…,"position":…}`: the subscribe `req` was carried out; the stream
/// stands at `position` in the topic (the id of the last event before the first it will
/// receive), or before its first event when there is none: a client that resumes it
/// later gives `since` that id, or `""`.
pub(crate) fn subscribed(req: &Value, position: Option<&str>) -> Bytes {
    object([
        ("type", Value::from("ok")),
        ("req", req.clone()),
        ("position", Value::from(position.unwrap_or_default())),
    ])
}

/// `{"type":"error","req":…,"status":…,"reason":…}`: the command was refused.
pub(crate) fn error(refused: &Refused) -> Bytes {
    object([
        ("type", Value::from("error")),
        ("req", refused.req.clone()),
        ("status", Value::from(refused.status.as_u16())),
        ("reason", Value::from(refused.reason.as_str())),
    ])
}

/// `{"type":"lost","topic":…}`: events of the topic after the resume point are no longer
/// retained; what follows starts with the oldest one that is.
pub(crate) fn lost(topic: &str) -> Bytes {
    object([("type", Value::from("lost")), ("topic", Value::from(topic))])
}

/// `{"type":"lagged","topic":…,"missed":…}`: the connection fell behind on the topic and
/// this many of its events were skipped.
pub(crate) fn lagged(topic: &str, missed: u64) -> Bytes {
    object([
        ("type", Value::from("lagged")),
        ("topic", Value::from(topic)),
        ("missed", Value::from(missed)),
    ])
}

/// `{"type":"event","topic":…,"id":…,"event":…,"data":…}` for `event` of `topic`: data
/// that is not UTF-8 goes base64-encoded in `data_base64`; absent fields are left out.
pub(crate) fn event(topic: &str, event: &Event) -> Bytes {
    let mut fields = Map::new();
    fields.insert("type".into(), Value::from("event"));
    fields.insert("topic".into(), Value::from(topic));
    if let Some(id) = event.event_id() {
        fields.insert("id".into(), Value::from(id));
    }
    if let Some(kind) = event.event_type() {
        fields.insert("event".into(), Value::from(kind));
    }
    match std::str::from_utf8(event.data()) {
        Ok(text) => fields.insert("data".into(), Value::from(text)),
        Err(_) => fields.insert("data_base64".into(), Value::from(base64(event.data()))),
    };
    Bytes::from(Value::Object(fields).to_string())
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Bytes {
    let fields = fields
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    Bytes::from(Value::Object(fields).to_string())
}

/// Standard base64 (RFC 4648, section 4), with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_or_are_refused_with_a_reason() {
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"a","since":"5-1","req":7}"#),
            Ok(Command::Subscribe {
                topic: "a".into(),
                since: Some("5-1".into()),
                req: Value::from(7)
            })
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","topic":"a"}"#),
            Ok(Command::Unsubscribe {
                topic: "a".into(),
                req: Value::Null
            })
        );
        for (text, reason) in [
            ("not json", "a command is a JSON object"),
            ("[1]", "a command is a JSON object"),
            (r#"{"topic":"a"}"#, "a command has a `type`"),
            (
                r#"{"type":"publish","req":"x"}"#,
                "unknown command type `publish`",
            ),
            (
                r#"{"type":"subscribe","req":"x"}"#,
                "subscribe needs a `topic`",
            ),
            (r#"{"type":"subscribe","topic":5}"#, "`topic` is a string"),
            (
                r#"{"type":"subscribe","topic":"a","req":{}}"#,
                "`req` is a string or a number",
            ),
        ] {
            let refused = parse(text).expect_err(text);
            assert_eq!(
                (refused.status, refused.reason.as_str()),
                (StatusCode::BAD_REQUEST, reason)
            );
        }
        assert_eq!(
            parse(r#"{"type":"x","req":"r1"}"#).expect_err("x").req,
            Value::from("r1")
        );
    }

    #[test]
    fn frames_are_json_with_what_is_known() {
        let plain = event("a\"b", &Event::new("line\nnext"));
        assert_eq!(
            &plain[..],
            br#"{"data":"line\nnext","topic":"a\"b","type":"event"}"#
        );
        let binary = event("t", &Event::new(vec![0xff, 0, 1]).id("7").expect("id"));
        assert_eq!(
            &binary[..],
            br#"{"data_base64":"/wAB","id":"7","topic":"t","type":"event"}"#
        );
        assert_eq!(&ok(&Value::Null)[..], br#"{"type":"ok"}"#);
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
