//! The bytes a connection has for its client, written in order with as few writes as
//! the socket allows.
//!
//! A wake-up appends whatever it gathered (frames, chunks, replies) and then writes the
//! whole buffer at once. The buffer is bounded: past [`HIGH_WATER`] waiting bytes a
//! connection stops taking events, and leaves the rest to the hub's ring and its lag
//! policy; past twice that it stops reading what the client sends, whose replies would
//! add more. Once written, the buffer is freed: most connections are idle most of the
//! time, and an allocation per wake-up costs less than the memory of one per connection.
//!
//! The buffer also knows since when its bytes have waited without the socket taking any,
//! which is what a write timeout measures: a client that reads slowly makes progress,
//! one that reads nothing does not.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

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

#[derive(Default)]
pub(crate) struct Outgoing {
    bytes: Vec<u8>,
    /// How many of `bytes` have been written.
    written: usize,
    /// Since when bytes have waited without the socket taking any.
    stalled_since: Option<Instant>,
}

impl Outgoing {
    /// The buffer, to append to.
    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(INITIAL);
        }
        &mut self.bytes
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
        self.bytes.len() - self.written
    }

    /// Writes everything waiting to `io`.
    pub(crate) fn poll_write<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        if self.bytes.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let mut took = false;
        while self.written < self.bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    took = true;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    // The clock is read only when a write waits, not for every delivery.
                    if took || self.stalled_since.is_none() {
                        self.stalled_since = Some(Instant::now());
                    }
                    // A client that reads a little at a time must not make the buffer grow.
                    if self.written >= HIGH_WATER {
                        self.bytes.drain(..self.written);
                        self.written = 0;
                    }
                    return Poll::Pending;
                }
            }
        }
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
        self.written = 0;
        self.bytes = Vec::new();
        self.stalled_since = None;
        Poll::Ready(Ok(()))
    }
}
