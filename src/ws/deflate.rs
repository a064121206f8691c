//! permessage-deflate (RFC 7692), negotiated per connection with no context takeover in
//! either direction, so that a message compressed once serves every connection that
//! negotiated it, and a connection between two messages holds no compression state.
//!
//! The server answers an acceptable offer with
//! `permessage-deflate; server_no_context_takeover; client_no_context_takeover`: the
//! first lets an event's compressed form be shared, the second (which a server may send
//! whether or not the client offered it, and every client must honour) lets the
//! connection drop its inflater after each message. An event is compressed at most once,
//! on first use, and kept beside its other wire forms. Frames smaller than the
//! [`Compression::min_size`] go out as they are, as does anything that compression
//! would not make smaller.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, FlushCompress};
use http::{HeaderMap, HeaderValue, header};

/// The extension's answer: no context takeover either way.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// Every sync-flushed message ends with these, which the wire form leaves out.
pub(super) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How a [`StreamLayer`](crate::StreamLayer) compresses WebSocket messages, for clients
/// that offer permessage-deflate (every browser does): see
/// [`StreamLayer::compression`](crate::StreamLayer::compression).
///
/// ```
/// use tower_fanout::{Compression, Hub, StreamLayer};
///
/// let layer = StreamLayer::new(Hub::new())
///     .compression(Compression::new().min_size(512).level(6));
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compression {
    pub(crate) min_size: usize,
    pub(crate) level: u32,
}

impl Compression {
    /// Messages of 256 bytes or more, at level 1 (the fastest).
    pub fn new() -> Self {
        Self {
            min_size: 256,
            level: 1,
        }
    }

    /// The smallest payload that is compressed, in bytes: below it compression saves
    /// little and costs a client's inflate as much. Default: 256.
    pub fn min_size(mut self, bytes: usize) -> Self {
        self.min_size = bytes;
        self
    }

    /// The deflate level, from 1 (fastest) to 9 (smallest); 0 is taken as 1. An event
    /// is compressed once for all its subscribers, so a higher level costs once per
    /// event, not per delivery. Default: 1.
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.clamp(1, 9);
        self
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::new()
    }
}

/// Which of an event's WebSocket payloads was compressed: each connection sends one of
/// them, and an event keeps the compressed form of the one it was first sent as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    /// The data alone.
    Data,
    /// The event's id, a line feed, then the data.
    WithId,
    /// The frame of the WebSocket protocol.
    Protocol,
}

/// The `Sec-WebSocket-Extensions` answer, when the client offered permessage-deflate
/// with parameters this server can honour.
///
/// Offers are taken in the client's order of preference. One that limits the server's
/// window (`server_max_window_bits` below 15) is declined: the compressor always uses
/// the full 32 KiB window. `client_max_window_bits` is a hint the answer may leave out:
/// the inflater reads any window.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(acceptable)
        .then(|| HeaderValue::from_static(ACCEPTED))
}

/// Whether one offer (`name; param; param=value`) is permessage-deflate that can be
/// accepted.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return false;
    }
    let mut seen = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        // A parameter given twice makes the offer invalid (RFC 7692, section 7.1).
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let valid = match name {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            "server_max_window_bits" => window_bits(value) == Some(15),
            "client_max_window_bits" => value.is_none() || window_bits(value).is_some(),
            _ => false,
        };
        if !valid {
            return false;
        }
    }
    true
}

fn window_bits(value: Option<&str>) -> Option<u8> {
    let bits: u8 = value?.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

thread_local! {
    /// One compressor per thread, reset for each message: its state is a few hundred
    /// kilobytes, too much to keep per connection or to make per message.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// `parts`, one after another, as one compressed message's payload: raw deflate, sync
/// flushed, without its last four bytes (RFC 7692, section 7.2.1). `None` when that is
/// not smaller.
pub(crate) fn compress(parts: &[&[u8]], level: u32) -> Option<Bytes> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    COMPRESSOR.with_borrow_mut(|slot| {
        let compressor = match slot {
            Some((kept, compressor)) if *kept == level => {
                compressor.reset();
                compressor
            }
            _ => {
                let made = Compress::new(flate2::Compression::new(level), false);
                &mut slot.insert((level, made)).1
            }
        };
        // Worth sending only if smaller; the tail takes 4 bytes, a stored block 5 more.
        let mut out = Vec::with_capacity(len + 16);
        for (at, part) in parts.iter().enumerate() {
            let flush = if at + 1 == parts.len() {
                FlushCompress::Sync
            } else {
                FlushCompress::None
            };
            let mut input = *part;
            loop {
                let before = compressor.total_in();
                if out.len() == out.capacity() {
                    out.reserve(len / 2 + 64);
                }
                compressor.compress_vec(input, &mut out, flush).ok()?;
                let taken = usize::try_from(compressor.total_in() - before).ok()?;
                input = &input[taken..];
                // Done with this part once it is all in and the output had room to spare.
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
            }
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < len).then(|| Bytes::from(out))
    })
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress};

    use super::*;

    fn offered(value: &str) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(value).expect("a header value"),
        );
        negotiate(&headers).is_some()
    }

    #[test]
    fn offers_that_fit_are_accepted_and_the_rest_declined() {
        assert!(offered("permessage-deflate"));
        // What browsers send.
        assert!(offered("permessage-deflate; client_max_window_bits"));
        assert!(offered(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
        ));
        assert!(offered("permessage-deflate; server_max_window_bits=15"));
        assert!(offered(
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ));
        assert!(offered("x-webkit-deflate-frame, permessage-deflate"));
        assert!(!offered("permessage-deflate; server_max_window_bits=10"));
        assert!(!offered("permessage-deflate; client_max_window_bits=16"));
        assert!(!offered("permessage-deflate; unknown"));
        assert!(!offered(
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ));
        assert!(!offered("permessage-deflate; client_no_context_takeover=1"));
        assert!(!offered("x-webkit-deflate-frame"));
        assert!(negotiate(&HeaderMap::new()).is_none());
    }

    fn inflate(payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&TAIL);
        let mut inflater = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("valid deflate");
        out
    }

    #[test]
    fn compressed_parts_inflate_to_the_message_and_each_stands_alone() {
        let json = br#"{"user":"ada","action":"edit","doc":17,"text":"lorem ipsum dolor"}"#;
        let data: Vec<u8> = json.iter().copied().cycle().take(40_000).collect();
        for level in [1, 6, 9] {
            let once = compress(&[b"17", b"\n", &data], level).expect("smaller");
            assert!(once.len() < data.len() / 10, "{} bytes", once.len());
            let mut expected = b"17\n".to_vec();
            expected.extend_from_slice(&data);
            assert_eq!(inflate(&once), expected);
            // The compressor kept nothing of the message before.
            assert_eq!(compress(&[b"17", b"\n", &data], level), Some(once));
        }
        // Random bytes do not get smaller.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert_eq!(compress(&[&noise], 1), None);
    }
}
