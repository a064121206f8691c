//! Frames the server sends, written straight into a connection's outgoing buffer.
//!
//! A server's frames are never masked (RFC 6455, section 5.1), so a frame is a header
//! and the payload as it is: a small payload is copied once, into the buffer that goes
//! to the socket, and a large one is not copied at all but written from the `Bytes` that
//! every subscriber of the event shares.

use bytes::Bytes;

use crate::Event;
use crate::outgoing::Outgoing;

/// Frame opcodes (RFC 6455, section 5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
}

/// Appends one final, unmasked frame whose payload is `parts`, one after another, copied.
pub(super) fn put(out: &mut Vec<u8>, opcode: Opcode, parts: &[&[u8]]) {
    let len = parts.iter().map(|part| part.len()).sum();
    out.reserve(10 + len);
    put_header(out, FIN | opcode as u8, len);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Appends one final, unmasked frame whose payload is `prefix` (copied) then `payload`.
pub(super) fn put_shared(out: &mut Outgoing, opcode: Opcode, prefix: &[&[u8]], payload: &Bytes) {
    let prefix_len: usize = prefix.iter().map(|part| part.len()).sum();
    let bytes = out.bytes();
    put_header(bytes, FIN | opcode as u8, prefix_len + payload.len());
    for part in prefix {
        bytes.extend_from_slice(part);
    }
    out.put(payload);
}

/// Appends one final, unmasked frame of a compressed message (RSV1 set, RFC 7692):
/// `payload` is the message compressed, shared when large.
pub(super) fn put_compressed(out: &mut Outgoing, opcode: Opcode, payload: &Bytes) {
    put_header(out.bytes(), FIN | RSV1 | opcode as u8, payload.len());
    out.put(payload);
}

const FIN: u8 = 0x80;
/// Marks a compressed message, on its first frame.
const RSV1: u8 = 0x40;

/// The first bytes of an unmasked frame of `len` payload bytes, after its first byte.
pub(super) fn put_header(out: &mut Vec<u8>, first: u8, len: usize) {
    out.push(first);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// The opcode of a frame that carries `event`'s data, after an id and a line feed or not
/// (both UTF-8): text unless `binary` or the data is not UTF-8.
pub(super) fn data_opcode(event: &Event, binary: bool) -> Opcode {
    if !binary && event.is_utf8() {
        Opcode::Text
    } else {
        Opcode::Binary
    }
}

/// Appends a close frame with `code` and `reason` (at most 123 bytes, as the limit of a
/// control frame leaves).
pub(super) fn put_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    put(
        out,
        Opcode::Close,
        &[&code.to_be_bytes(), reason.as_bytes()],
    );
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    use super::*;

    /// Parses `bytes` back with the WebSocket library: one whole frame, and its payload.
    fn parse(bytes: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("a valid header")
            .expect("a whole header");
        let start = cursor.position() as usize;
        assert_eq!(bytes.len() - start, len as usize, "one frame, nothing more");
        let frame = Frame::from_payload(header.clone(), bytes[start..].to_vec().into());
        (header, frame.into_payload().to_vec())
    }

    #[test]
    fn every_length_encoding_reads_back() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            put(&mut out, Opcode::Binary, &[&payload]);
            let (header, read) = parse(&out);
            assert!(header.is_final);
            assert!(header.mask.is_none(), "server frames are not masked");
            assert_eq!(read.len(), len);
        }
    }

    #[test]
    fn close_frames_carry_code_then_reason() {
        let mut out = Vec::new();
        put_close(&mut out, 1013, "write timed out");
        let (_, payload) = parse(&out);
        assert_eq!(&payload[..2], &1013u16.to_be_bytes());
        assert_eq!(&payload[2..], b"write timed out");
    }
}
