//! The bytes a connection has for its client, written in order with as few writes as
//! the socket allows.
//!
//! A wake-up appends whatever it gathered (frames, chunks, replies) and then writes it
//! all at once. Small pieces are copied into one buffer; a payload of [`SHARE_FROM`]
//! bytes or more is not copied but kept by reference, the `Bytes` every subscriber of a
//! broadcast shares, and written from there with a vectored write. So a connection whose
//! client has stopped reading holds its frame headers and references, not a copy of
//! every large event.
//!
//! What waits is bounded: past [`HIGH_WATER`] waiting bytes a connection stops taking
//! events, and leaves the rest to the hub's ring and its lag policy; past twice that it
//! stops reading what the client sends, whose replies would add more. Once written, the
//! buffer is freed: most connections are idle most of the time, and an allocation per
//! wake-up costs less than the memory of one per connection.
//!
//! It also knows since when its bytes have waited without the socket taking any, which is
//! what a write timeout measures: a client that reads slowly makes progress, one that
//! reads nothing does not.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

/// Bytes waiting for the client beyond which a connection takes no more events until the
/// client has read some.
const HIGH_WATER: usize = 64 * 1024;
/// Bytes waiting beyond which a connection reads nothing more from its client. Above
/// [`HIGH_WATER`], so that a client behind on its events is still heard (its pongs keep
/// it alive); bounded, so that one that sends without reading the replies is held back.
const READ_HIGH_WATER: usize = 2 * HIGH_WATER;
/// The capacity an empty buffer takes at once: enough for a handful of small events, and
/// small enough that the allocator serves it from its per-thread cache.
const INITIAL: usize = 1024;
/// Payloads this long or longer are sent from their shared `Bytes`; shorter ones cost
/// less to copy than to reference and write as a piece of their own.
pub(crate) const SHARE_FROM: usize = 2048;
/// Pieces handed to one vectored write.
const MAX_SLICES: usize = 64;

#[derive(Default)]
pub(crate) struct Outgoing {
    /// What was copied in, in order; the shared payloads go between its bytes.
    bytes: Vec<u8>,
    /// How many of `bytes` have been written.
    head: usize,
    /// Shared payloads, each with the offset in `bytes` it goes before; the front one is
    /// advanced as it is written.
    shared: VecDeque<(usize, Bytes)>,
    /// The bytes of `shared` not yet written.
    shared_len: usize,
    /// Since when bytes have waited without the socket taking any.
    stalled_since: Option<Instant>,
}

impl Outgoing {
    /// The buffer, to copy into.
    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(INITIAL);
        }
        &mut self.bytes
    }

    /// Appends a payload: by reference when it is long, else copied.
    pub(crate) fn put(&mut self, payload: &Bytes) {
        if payload.len() >= SHARE_FROM {
            self.shared_len += payload.len();
            self.shared.push_back((self.bytes.len(), payload.clone()));
        } else {
            self.bytes().extend_from_slice(payload);
        }
    }

    /// Appends what is left of `payload`, as [`put`](Self::put) does; without a copy when
    /// it is a `Bytes`.
    pub(crate) fn put_buf(&mut self, mut payload: impl Buf) {
        if payload.remaining() >= SHARE_FROM {
            let shared = payload.copy_to_bytes(payload.remaining());
            self.put(&shared);
        } else {
            let out = self.bytes();
            while payload.has_remaining() {
                let chunk = payload.chunk();
                out.extend_from_slice(chunk);
                let len = chunk.len();
                payload.advance(len);
            }
        }
    }

    /// Whether the client has read enough that more events may be queued for it.
    pub(crate) fn has_room(&self) -> bool {
        self.waiting() < HIGH_WATER
    }

    /// Whether what the client sends may be read, and its replies queued.
    pub(crate) fn has_room_for_replies(&self) -> bool {
        self.waiting() < READ_HIGH_WATER
    }

    /// Since when bytes have waited for the client without the socket taking any; `None`
    /// once everything is written.
    pub(crate) fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    fn waiting(&self) -> usize {
        self.bytes.len() - self.head + self.shared_len
    }

    /// Writes everything waiting to `io`.
    pub(crate) fn poll_write<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        if self.bytes.is_empty() && self.shared.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut took = false;
        while self.waiting() > 0 {
            let written = if self.shared.is_empty() {
                // The usual case, small events only: one buffer, one plain write.
                Pin::new(&mut *io).poll_write(cx, &self.bytes[self.head..])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                match self.slices(&mut slices) {
                    [one] => Pin::new(&mut *io).poll_write(cx, one),
                    many => Pin::new(&mut *io).poll_write_vectored(cx, many),
                }
            };
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.advance(n);
                    took = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // The clock is read only when a write waits, not for every delivery.
                    if took || self.stalled_since.is_none() {
                        self.stalled_since = Some(Instant::now());
                    }
                    self.compact();
                    return Poll::Pending;
                }
            }
        }
        // A transport that buffers (TLS) may take every write and hold the bytes until
        // the socket does: a flush that waits is a stalled write as well.
        if Pin::new(&mut *io).poll_flush(cx)?.is_pending() {
            if took || self.stalled_since.is_none() {
                self.stalled_since = Some(Instant::now());
            }
            return Poll::Pending;
        }
        *self = Self::default();
        Poll::Ready(Ok(()))
    }

    /// The waiting bytes in order, as many pieces as fit in `slices`.
    fn slices<'a>(&'a self, slices: &'a mut [IoSlice<'a>]) -> &'a [IoSlice<'a>] {
        let mut count = 0;
        let mut from = self.head;
        for (at, payload) in &self.shared {
            if count + 2 > slices.len() {
                return &slices[..count];
            }
            if *at > from {
                slices[count] = IoSlice::new(&self.bytes[from..*at]);
                count += 1;
            }
            slices[count] = IoSlice::new(payload);
            count += 1;
            from = *at;
        }
        if count < slices.len() && from < self.bytes.len() {
            slices[count] = IoSlice::new(&self.bytes[from..]);
            count += 1;
        }
        &slices[..count]
    }

    /// Marks `n` more bytes as written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let next_shared = self.shared.front().map_or(self.bytes.len(), |(at, _)| *at);
            if self.head < next_shared {
                let copied = n.min(next_shared - self.head);
                self.head += copied;
                n -= copied;
                continue;
            }
            let Some((_, payload)) = self.shared.front_mut() else {
                return;
            };
            let shared = n.min(payload.len());
            payload.advance(shared);
            self.shared_len -= shared;
            n -= shared;
            if payload.is_empty() {
                self.shared.pop_front();
            }
        }
    }

    /// Lets go of the written part of the buffer once it is large: a client that reads a
    /// little at a time must not make the buffer grow.
    fn compact(&mut self) {
        if self.head < HIGH_WATER {
            return;
        }
        self.bytes.drain(..self.head);
        // Nothing after a shared payload is written before it, so every offset is at
        // least `head`.
        for (at, _) in &mut self.shared {
            *at -= self.head;
        }
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// A writer that takes at most `limit` bytes per call, across slices, and whose
    /// flush waits while it `holds` them, as a TLS stream's does.
    struct Trickle {
        written: Vec<u8>,
        limit: usize,
        holds: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.limit;
            for buf in bufs {
                let n = buf.len().min(left);
                self.written.extend_from_slice(&buf[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.limit - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.holds {
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn copied_and_shared_pieces_go_out_in_order_however_the_writes_split() {
        let large = |byte: u8| Bytes::from(vec![byte; SHARE_FROM + 5]);
        for limit in [1, 3, 7, 1000, SHARE_FROM, 1 << 20] {
            let mut out = Outgoing::default();
            let mut expected = Vec::new();
            for round in 0..40u8 {
                out.bytes().extend_from_slice(&[b'h', round]);
                expected.extend_from_slice(&[b'h', round]);
                let payload = if round % 3 == 0 {
                    Bytes::from(vec![round; 10])
                } else {
                    large(round)
                };
                out.put(&payload);
                expected.extend_from_slice(&payload);
                if round % 5 == 0 {
                    // Two shared payloads back to back.
                    out.put(&large(255));
                    expected.extend_from_slice(&large(255));
                }
            }
            let mut io = Trickle {
                written: Vec::new(),
                limit,
                holds: false,
            };
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(
                out.poll_write(&mut io, &mut cx),
                Poll::Ready(Ok(()))
            ));
            assert!(io.written == expected, "limit {limit}");
            assert_eq!(out.waiting(), 0);
        }
    }

    #[test]
    fn a_flush_that_waits_is_a_stalled_write() {
        let mut out = Outgoing::default();
        out.bytes().extend_from_slice(b"event");
        let mut io = Trickle {
            written: Vec::new(),
            limit: 1 << 20,
            holds: true,
        };
        let mut cx = Context::from_waker(Waker::noop());
        assert!(out.poll_write(&mut io, &mut cx).is_pending());
        assert!(out.stalled_since().is_some());
        io.holds = false;
        assert!(matches!(
            out.poll_write(&mut io, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(io.written, b"event");
        assert!(out.stalled_since().is_none());
    }

    #[test]
    fn only_small_payloads_are_copied() {
        let mut out = Outgoing::default();
        out.put(&Bytes::from(vec![0; SHARE_FROM - 1]));
        out.put(&Bytes::from(vec![0; SHARE_FROM]));
        out.put_buf(Bytes::from(vec![0; 10 * SHARE_FROM]));
        assert_eq!(out.bytes.len(), SHARE_FROM - 1);
        assert_eq!(out.shared.len(), 2);
        assert_eq!(out.waiting(), 12 * SHARE_FROM - 1);
    }
}
