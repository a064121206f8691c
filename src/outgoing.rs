//! The bytes a connection has for its client, written in order with as few writes as
//! the socket allows.
//!
//! A wake-up appends whatever it gathered (frames, chunks, replies) and then writes the
//! whole buffer at once. The buffer is bounded: past [`HIGH_WATER`] waiting bytes a
//! connection stops taking more, and leaves the rest to the hub's ring and its lag
//! policy. Once written, the buffer is freed: most connections are idle most of the
//! time, and an allocation per wake-up costs less than the memory of one per connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

/// Bytes waiting for the client beyond which a connection takes no more until the client
/// has read some.
const HIGH_WATER: usize = 64 * 1024;
/// The capacity an empty buffer takes at once: enough for a handful of small events, and
/// small enough that the allocator serves it from its per-thread cache.
const INITIAL: usize = 1024;

#[derive(Default)]
pub(crate) struct Outgoing {
    bytes: Vec<u8>,
    /// How many of `bytes` have been written.
    written: usize,
}

impl Outgoing {
    /// The buffer, to append to.
    pub(crate) fn bytes(&mut self) -> &mut Vec<u8> {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(INITIAL);
        }
        &mut self.bytes
    }

    /// Whether the client has read enough that more may be queued for it.
    pub(crate) fn has_room(&self) -> bool {
        self.bytes.len() - self.written < HIGH_WATER
    }

    /// Writes everything waiting to `io`.
    pub(crate) fn poll_write<W>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin,
    {
        if self.bytes.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while self.written < self.bytes.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.bytes[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
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
        Poll::Ready(Ok(()))
    }
}
