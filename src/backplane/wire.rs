//! The message between nodes: compact, versioned, and checked on the way in.
//!
//! ```text
//! u8      version (1)
//! u64 BE  origin node
//! u8      fields present: 1 event type, 2 id, 4 retry
//! [u16 BE length, bytes]  event type, if present
//! [u16 BE length, bytes]  id, if present
//! [u64 BE]                retry in milliseconds, if present
//! bytes   data, to the end
//! ```

use std::fmt;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Event;

const VERSION: u8 = 1;
const EVENT_TYPE: u8 = 1;
const ID: u8 = 2;
const RETRY: u8 = 4;

/// Encodes `event`, published by node `origin`.
pub(super) fn encode(origin: u64, event: &Event) -> Bytes {
    let event_type = event.event_type();
    let id = event.event_id();
    let retry = event.retry_interval();
    let text_len = |field: Option<&str>| field.map_or(0, |v| 2 + v.len());
    let mut out = BytesMut::with_capacity(
        10 + text_len(event_type) + text_len(id) + retry.map_or(0, |_| 8) + event.data().len(),
    );
    out.put_u8(VERSION);
    out.put_u64(origin);
    let flags =
        event_type.map_or(0, |_| EVENT_TYPE) | id.map_or(0, |_| ID) | retry.map_or(0, |_| RETRY);
    out.put_u8(flags);
    for field in [event_type, id].into_iter().flatten() {
        // Longer fields are cut at the limit of the length prefix; ids and types are short.
        let field = &field.as_bytes()[..field.len().min(usize::from(u16::MAX))];
        out.put_u16(field.len() as u16);
        out.put_slice(field);
    }
    if let Some(retry) = retry {
        out.put_u64(retry.as_millis().min(u128::from(u64::MAX)) as u64);
    }
    out.put_slice(event.data());
    out.freeze()
}

/// Decodes a message: its origin node and event.
pub(super) fn decode(mut message: Bytes) -> Result<(u64, Event), Malformed> {
    if message.remaining() < 10 {
        return Err(Malformed("shorter than the header"));
    }
    if message.get_u8() != VERSION {
        return Err(Malformed("unknown version"));
    }
    let origin = message.get_u64();
    let flags = message.get_u8();
    if flags & !(EVENT_TYPE | ID | RETRY) != 0 {
        return Err(Malformed("unknown fields"));
    }
    let mut text = |present: bool| -> Result<Option<String>, Malformed> {
        if !present {
            return Ok(None);
        }
        if message.remaining() < 2 {
            return Err(Malformed("truncated field"));
        }
        let len = usize::from(message.get_u16());
        if message.remaining() < len {
            return Err(Malformed("truncated field"));
        }
        let field = message.split_to(len);
        String::from_utf8(field.to_vec())
            .map(Some)
            .map_err(|_| Malformed("field is not UTF-8"))
    };
    let event_type = text(flags & EVENT_TYPE != 0)?;
    let id = text(flags & ID != 0)?;
    let retry = if flags & RETRY != 0 {
        if message.remaining() < 8 {
            return Err(Malformed("truncated retry"));
        }
        Some(Duration::from_millis(message.get_u64()))
    } else {
        None
    };
    let mut event = Event::new(message);
    if let Some(event_type) = event_type {
        event = event
            .event(&event_type)
            .map_err(|_| Malformed("invalid event type"))?;
    }
    if let Some(id) = id {
        event = event.id(&id).map_err(|_| Malformed("invalid id"))?;
    }
    if let Some(retry) = retry {
        event = event.retry(retry);
    }
    Ok((origin, event))
}

/// A message that is not one of ours, with what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Malformed(&'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed backplane message: {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let event = Event::new("data\nlines")
            .event("kind")
            .and_then(|e| e.id("a-1"))
            .map(|e| e.retry(Duration::from_millis(1500)))
            .expect("valid");
        let (origin, decoded) = decode(encode(7, &event)).expect("decodes");
        assert_eq!(origin, 7);
        assert_eq!(decoded, event);
        let (_, plain) = decode(encode(1, &Event::new(""))).expect("decodes");
        assert_eq!(plain, Event::new(""));
    }

    #[test]
    fn garbage_is_refused() {
        for message in [
            &b""[..],
            b"hello world",
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9, b'a'],
        ] {
            assert!(
                decode(Bytes::copy_from_slice(message)).is_err(),
                "{message:?}"
            );
        }
        let smuggled = [&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3][..], b"a\nb", b"data"].concat();
        assert_eq!(
            decode(Bytes::from(smuggled)),
            Err(Malformed("invalid event type"))
        );
    }
}
