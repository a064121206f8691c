//! An IO object whose writes fail once the client has taken nothing for a write timeout:
//! the connections [`serve`](super::serve) leaves to hyper, which has no such timeout of
//! its own, so that an event stream there is closed as one on the bare socket is.
//!
//! The timeout is not known when the connection opens: a response that carries one (the
//! layer's event streams carry its `write_timeout`) sets it for the connection, through
//! the handle [`TimedWrites::new`] returns.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::wake::Alarm;

pub(super) struct TimedWrites<T> {
    inner: T,
    /// The write timeout in milliseconds; 0 while no response has set one.
    timeout: Arc<AtomicU64>,
    /// Rings when a waiting write is overdue; made at the first write that waits.
    alarm: Option<Alarm>,
    /// Whether a write is waiting, and `alarm` runs for it.
    waiting: bool,
}

/// Sets the write timeout of the connection it came from.
#[derive(Clone)]
pub(super) struct SetTimeout(Arc<AtomicU64>);

impl SetTimeout {
    pub(super) fn set(&self, timeout: Duration) {
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0.store(millis, Ordering::Relaxed);
    }
}

impl<T> TimedWrites<T> {
    /// `inner` without a write timeout yet, and the handle that sets one.
    pub(super) fn new(inner: T) -> (Self, SetTimeout) {
        let timeout = Arc::new(AtomicU64::new(0));
        let io = Self {
            inner,
            timeout: Arc::clone(&timeout),
            alarm: None,
            waiting: false,
        };
        (io, SetTimeout(timeout))
    }

    /// Passes on what a write returned, or a timeout error when it has waited too long.
    fn timed(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if written.is_ready() {
            // The socket took bytes, or the connection failed: either way, not stalled.
            self.waiting = false;
            return written;
        }
        if self.overdue(cx) {
            // Set only by an event stream's response.
            crate::metrics::write_timeout("sse");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing for the write timeout",
            )));
        }
        Poll::Pending
    }

    /// A write waits: whether it has waited longer than the write timeout.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let millis = self.timeout.load(Ordering::Relaxed);
        if millis == 0 {
            return false;
        }
        if !self.waiting {
            self.waiting = true;
            let at = Instant::now() + Duration::from_millis(millis);
            match &mut self.alarm {
                Some(alarm) => alarm.set(at),
                None => self.alarm = Some(Alarm::new(at)),
            }
        }
        self.alarm.as_mut().is_some_and(|alarm| alarm.poll_rung(cx))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
