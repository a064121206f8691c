//! Reading a client's compressed messages (RFC 7692) in front of the WebSocket library,
//! which refuses frames with RSV1 set: the client's frames are rewritten on their way to
//! it, each compressed one inflated into a frame with RSV1 clear, so that the library
//! still checks everything else (masking, fragmentation, control frames, UTF-8, close
//! codes, sizes) as for any connection.
//!
//! Uncompressed frames pass through as they are, payloads streamed. A compressed frame is
//! held until it is whole (at most the read limit), unmasked and inflated, and its output
//! counts towards the read limit of the message as it grows, so a small frame that would
//! inflate to gigabytes stops at the limit (closed with 1009). The client was told not
//! to take over its context, so the inflater lives for one message and is dropped at its
//! end: a connection between messages holds no inflate state and no buffer.

use std::fmt;
use std::io;

use flate2::{Decompress, FlushDecompress, Status};

use super::deflate::TAIL;
use super::frame;

/// What a read asks the socket for.
const READ: usize = 4096;
/// What one inflate call may add to a frame's output.
const STEP: usize = 16 * 1024;

/// Why a compressed message could not be read: the connection closes with 1009 or 1007.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Inflated, the message is larger than the read limit.
    TooBig,
    /// Not valid deflate data.
    Invalid,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooBig => "an inflated message over the read limit",
            Self::Invalid => "invalid compressed data",
        })
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// The refusal an I/O error from [`Inflate::read`] carries, if it is one.
    pub(super) fn of(error: &io::Error) -> Option<&Self> {
        error.get_ref()?.downcast_ref()
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// The client's side of a connection that negotiated permessage-deflate.
pub(super) struct Inflate {
    /// The largest message, inflated.
    limit: usize,
    /// Bytes from the socket not yet passed on: an incomplete header or compressed frame.
    raw: Vec<u8>,
    /// Frames for the library, from `ready_from` on.
    ready: Vec<u8>,
    ready_from: usize,
    /// Payload bytes of the frame passing through still to come.
    passing: u64,
    /// Inflates the compressed message in progress (its continuation frames are
    /// compressed too); none between messages.
    message: Option<Message>,
}

struct Message {
    inflater: Box<Decompress>,
    /// What the message has inflated to so far.
    len: usize,
}

/// A client frame's header (RFC 6455, section 5.2).
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: u64,
    /// The header's length on the wire.
    len: usize,
}

impl Inflate {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            raw: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            passing: 0,
            message: None,
        }
    }

    /// Fills `buf` with the client's frames, compressed ones inflated, reading the socket
    /// with `read` when nothing is ready; its errors (`WouldBlock` included) pass through.
    pub(super) fn read(
        &mut self,
        buf: &mut [u8],
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            if self.ready_from < self.ready.len() {
                let ready = &self.ready[self.ready_from..];
                let n = ready.len().min(buf.len());
                buf[..n].copy_from_slice(&ready[..n]);
                self.ready_from += n;
                if self.ready_from == self.ready.len() {
                    // Nothing kept between messages: the connection may idle for hours.
                    self.ready = Vec::new();
                    self.ready_from = 0;
                }
                return Ok(n);
            }
            self.rewrite().map_err(Refused::into_io)?;
            if !self.ready.is_empty() {
                continue;
            }
            let at = self.raw.len();
            self.raw.resize(at + READ, 0);
            let n = read(&mut self.raw[at..]);
            self.raw.truncate(at + *n.as_ref().unwrap_or(&0));
            if self.raw.is_empty() {
                self.raw = Vec::new();
            }
            if n? == 0 {
                // The library makes of an end mid-frame what it is.
                return Ok(0);
            }
        }
    }

    /// Moves what `raw` holds whole into `ready`: passing bytes as they are, compressed
    /// frames inflated.
    fn rewrite(&mut self) -> Result<(), Refused> {
        let mut taken = 0;
        let result = loop {
            let raw = &mut self.raw[taken..];
            if self.passing > 0 {
                let n = raw
                    .len()
                    .min(usize::try_from(self.passing).unwrap_or(usize::MAX));
                if n == 0 {
                    break Ok(());
                }
                self.ready.extend_from_slice(&raw[..n]);
                self.passing -= n as u64;
                taken += n;
                continue;
            }
            let Some(header) = Header::parse(raw) else {
                break Ok(());
            };
            let control = header.opcode & 0x8 != 0;
            // RSV1 marks a compressed message on its first frame; the library refuses it
            // anywhere else, as it should.
            let compressed = !control
                && if header.opcode == 0 {
                    self.message.is_some() && !header.rsv1
                } else {
                    header.rsv1
                };
            if !compressed {
                if !control && header.opcode != 0 {
                    // A new message, not compressed.
                    self.message = None;
                }
                self.ready.extend_from_slice(&raw[..header.len]);
                self.passing = header.payload;
                taken += header.len;
                continue;
            }
            let Some(end) = usize::try_from(header.payload)
                .ok()
                .filter(|&payload| payload <= self.limit)
                .map(|payload| header.len + payload)
            else {
                break Err(Refused::TooBig);
            };
            if raw.len() < end {
                break Ok(());
            }
            let payload = &mut raw[header.len..end];
            if let Some(mask) = header.mask {
                for (i, byte) in payload.iter_mut().enumerate() {
                    *byte ^= mask[i % 4];
                }
            }
            if header.opcode != 0 {
                self.message = Some(Message {
                    inflater: Box::new(Decompress::new(false)),
                    len: 0,
                });
            }
            let Some(message) = self.message.as_mut() else {
                break Err(Refused::Invalid);
            };
            let mut inflated = Vec::new();
            let mut done = message.inflate(payload, self.limit, &mut inflated);
            if header.fin {
                done = done.and_then(|()| message.inflate(&TAIL, self.limit, &mut inflated));
                self.message = None;
            }
            if let Err(refused) = done {
                break Err(refused);
            }
            put_frame(&mut self.ready, header.fin, header.opcode, &inflated);
            taken += end;
        };
        self.raw.drain(..taken);
        if self.raw.is_empty() {
            self.raw = Vec::new();
        }
        result
    }
}

impl Message {
    /// Inflates `input` onto `out`, refusing to let the message grow past `limit`.
    fn inflate(
        &mut self,
        mut input: &[u8],
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Refused> {
        loop {
            let room = (limit - self.len).min(STEP) + 1;
            out.reserve(room);
            let (before_in, before_out) = (self.inflater.total_in(), out.len());
            let status = self
                .inflater
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| Refused::Invalid)?;
            let consumed = usize::try_from(self.inflater.total_in() - before_in)
                .map_err(|_| Refused::Invalid)?;
            input = &input[consumed..];
            self.len += out.len() - before_out;
            if self.len > limit {
                return Err(Refused::TooBig);
            }
            let stalled = consumed == 0 && out.len() == before_out;
            // Done once the input is in and the output had room to spare: nothing waits.
            if (input.is_empty() && out.len() < out.capacity()) || status == Status::StreamEnd {
                return Ok(());
            }
            if stalled && !input.is_empty() {
                return Err(Refused::Invalid);
            }
        }
    }
}

impl Header {
    /// The header at the start of `raw`, once it is all there.
    fn parse(raw: &[u8]) -> Option<Self> {
        let (&first, &second) = (raw.first()?, raw.get(1)?);
        let (payload, mut len) = match second & 0x7f {
            126 => (
                u64::from(u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?), 10),
            short => (u64::from(short), 2),
        };
        let mask = if second & 0x80 != 0 {
            let key = raw.get(len..len + 4)?.try_into().ok()?;
            len += 4;
            Some(key)
        } else {
            None
        };
        Some(Self {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: first & 0x0f,
            mask,
            payload,
            len,
        })
    }
}

/// Appends a client frame carrying `payload` as the library expects one: RSV bits clear,
/// masked (with a key of zeros, which leaves the payload as it is).
fn put_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.reserve(14 + payload.len());
    let at = out.len();
    frame::put_header(out, if fin { 0x80 } else { 0 } | opcode, payload.len());
    // The mask bit, then the key.
    out[at + 1] |= 0x80;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, FlushCompress};

    use super::*;

    /// `data` compressed as a client would send it, without the tail.
    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut compressor = Compress::new(flate2::Compression::new(6), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        compressor
            .compress_vec(data, &mut out, FlushCompress::Sync)
            .expect("compressed");
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// A masked client frame.
    fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | (if rsv1 { 0x40 } else { 0 }) | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Everything `inflate` makes of `wire`, fed `chunk` bytes per read.
    fn rewritten(inflate: &mut Inflate, wire: &[u8], chunk: usize) -> Result<Vec<u8>, Refused> {
        let mut fed = 0;
        let mut out = Vec::new();
        let mut buf = [0; 100];
        loop {
            let read = inflate.read(&mut buf, |into| {
                let n = chunk.min(wire.len() - fed).min(into.len());
                if n == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                into[..n].copy_from_slice(&wire[fed..fed + n]);
                fed += n;
                Ok(n)
            });
            match read {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(error) => {
                    return Err(match Refused::of(&error).expect("a refusal") {
                        Refused::TooBig => Refused::TooBig,
                        Refused::Invalid => Refused::Invalid,
                    });
                }
            }
        }
    }

    #[test]
    fn compressed_messages_come_out_inflated_and_the_rest_as_it_was() {
        let text = "hello, hello, hello, hello, compressed world".repeat(20);
        let compressed = deflated(text.as_bytes());
        let (first, second) = compressed.split_at(compressed.len() / 2);
        let mut wire = client_frame(true, false, 0x1, b"plain");
        // A fragmented compressed message with a ping between its frames.
        wire.extend(client_frame(false, true, 0x1, first));
        wire.extend(client_frame(true, false, 0x9, b"ping"));
        wire.extend(client_frame(true, false, 0x0, second));
        wire.extend(client_frame(
            true,
            true,
            0x2,
            &deflated(b"binary binary binary"),
        ));
        for chunk in [1, 7, 4096] {
            let mut inflate = Inflate::new(1 << 20);
            let out = rewritten(&mut inflate, &wire, chunk).expect("read");
            let mut expected = client_frame(true, false, 0x1, b"plain");
            let mut inflated_first = Vec::new();
            let mut message = Message {
                inflater: Box::new(Decompress::new(false)),
                len: 0,
            };
            message
                .inflate(first, 1 << 20, &mut inflated_first)
                .expect("inflated");
            put_frame(&mut expected, false, 0x1, &inflated_first);
            expected.extend(client_frame(true, false, 0x9, b"ping"));
            let mut rest = Vec::new();
            message
                .inflate(second, 1 << 20, &mut rest)
                .expect("inflated");
            message
                .inflate(&TAIL, 1 << 20, &mut rest)
                .expect("inflated");
            put_frame(&mut expected, true, 0x0, &rest);
            put_frame(&mut expected, true, 0x2, b"binary binary binary");
            // The plain frames keep their mask; the rewritten ones carry a zero key.
            assert_eq!(out, expected, "chunk {chunk}");
            let mut whole = inflated_first;
            whole.extend(rest);
            assert_eq!(whole, text.as_bytes());
            assert!(inflate.message.is_none() && inflate.raw.capacity() == 0);
            assert_eq!(inflate.ready.capacity(), 0);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let bomb = deflated(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 2048, "{}", bomb.len());
        let mut inflate = Inflate::new(64 * 1024);
        let wire = client_frame(true, true, 0x2, &bomb);
        assert_eq!(rewritten(&mut inflate, &wire, 4096), Err(Refused::TooBig));

        let mut inflate = Inflate::new(64 * 1024);
        let wire = client_frame(true, true, 0x1, &[0xff; 32]);
        assert_eq!(rewritten(&mut inflate, &wire, 4096), Err(Refused::Invalid));

        // A compressed frame larger than the limit is refused before it is held.
        let mut inflate = Inflate::new(100);
        let wire = client_frame(true, true, 0x1, &[0; 200]);
        assert_eq!(rewritten(&mut inflate, &wire, 4096), Err(Refused::TooBig));
    }
}
