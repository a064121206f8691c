//! The wire form of an [`Event`]: fields as `name: value` lines, data split at every line
//! ending, a blank line to dispatch.

use bytes::{BufMut, Bytes, BytesMut};

use crate::Event;

/// Encodes `event` in one allocation of exactly the size it needs.
pub(crate) fn encode(event: &Event) -> Bytes {
    let retry = event
        .retry_interval()
        .map(|retry| retry.as_millis().to_string());
    let data = event.data();
    let lines = data_lines(data);

    let mut len = 1; // the blank line
    len += event
        .event_type()
        .map_or(0, |v| "event: \n".len() + v.len());
    len += event.event_id().map_or(0, |v| "id: \n".len() + v.len());
    len += retry.as_ref().map_or(0, |v| "retry: \n".len() + v.len());
    len += lines
        .clone()
        .map(|line| "data: \n".len() + line.len())
        .sum::<usize>();

    let mut out = BytesMut::with_capacity(len);
    let mut field = |name: &[u8], value: &[u8]| {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_u8(b'\n');
    };
    if let Some(value) = event.event_type() {
        field(b"event", value.as_bytes());
    }
    if let Some(value) = event.event_id() {
        field(b"id", value.as_bytes());
    }
    if let Some(value) = &retry {
        field(b"retry", value.as_bytes());
    }
    for line in lines {
        field(b"data", line);
    }
    out.put_u8(b'\n');
    debug_assert_eq!(out.len(), len);
    out.freeze()
}

/// The lines of `data`, split at CRLF, CR and LF. An empty payload is one empty line, so
/// that the event still carries a `data:` field and is dispatched.
fn data_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(end) => {
                let skip = if current[end..].starts_with(b"\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[end + skip..]);
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn splits_every_line_ending() {
        let lines: Vec<&[u8]> = data_lines(b"a\r\nb\rc\nd").collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"c", b"d"]);
    }

    #[test]
    fn trailing_newline_keeps_an_empty_last_line() {
        let lines: Vec<&[u8]> = data_lines(b"a\n").collect();
        assert_eq!(lines, [&b"a"[..], b""]);
    }

    #[test]
    fn empty_data_is_one_empty_line() {
        assert_eq!(&encode(&Event::new(""))[..], b"data: \n\n");
    }

    #[test]
    fn all_fields_in_order() {
        let event = Event::new("x")
            .event("e")
            .and_then(|e| e.id("7"))
            .map(|e| e.retry(Duration::from_millis(1500)))
            .expect("valid fields");
        assert_eq!(
            &encode(&event)[..],
            b"event: e\nid: 7\nretry: 1500\ndata: x\n\n"
        );
    }
}
