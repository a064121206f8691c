//! The body of a Server-Sent-Events response: a subscription's pre-encoded events, with a
//! comment whenever the stream has been quiet for the keep-alive interval.
//!
//! The server polls the body whenever the connection's task wakes, several times per
//! event; the body goes to the hub only when the hub has signalled, and to the timer
//! only when it is due.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::Instant;

use crate::config::Config;
use crate::outgoing::SHARE_FROM;
use crate::wake::{Alarm, Signal};
use crate::{Event, RecvError, Resume, Subscription};

/// Events gathered into one frame at most.
const BATCH: usize = 64;

/// A comment line, which every client ignores: it keeps idle connections alive through
/// proxies that cut quiet streams.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

/// Tells a resuming client that events it missed are no longer retained: an event of
/// type `lost`, which `EventSource` dispatches to `addEventListener("lost", ..)`.
const LOST: &str = "event: lost\ndata: \n\n";

pub(crate) struct SseBody {
    subscription: Subscription,
    /// Sent before any event: the `retry:` hint and a comment, so the stream opens at once.
    opening: Option<Bytes>,
    keep_alive: Duration,
    /// When the last frame went out.
    last_sent: Instant,
    /// Rings when the stream may have been quiet for `keep_alive`.
    quiet: Alarm,
    /// Raised when the subscription may have events.
    events: Signal,
    span: tracing::Span,
    /// Events taken from the subscription and not yet sent: those from `next` on.
    batch: Vec<Arc<Event>>,
    next: usize,
}

impl SseBody {
    pub(crate) fn new(
        subscription: Subscription,
        resume: Resume,
        config: &Config,
        span: tracing::Span,
    ) -> Self {
        let mut opening = String::from(":ok\n");
        if let Some(retry) = config.retry {
            opening.push_str(&format!("retry: {}\n", retry.as_millis()));
        }
        opening.push('\n');
        if resume == Resume::EventsLost {
            opening.push_str(LOST);
        }
        let keep_alive = config.keep_alive;
        let now = Instant::now();
        Self {
            subscription,
            opening: Some(Bytes::from(opening)),
            keep_alive,
            last_sent: now,
            quiet: Alarm::new(now + keep_alive),
            events: Signal::new(),
            span,
            batch: Vec::new(),
            next: 0,
        }
    }

    fn sent(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // The alarm is not moved for every frame (a trip to the timer wheel): when it
        // rings, it is set again from the last frame.
        self.last_sent = Instant::now();
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    /// Whether the stream has now been quiet for the keep-alive interval.
    fn poll_quiet(&mut self, cx: &mut Context<'_>) -> bool {
        while self.quiet.poll_rung(cx) {
            let due = self.last_sent + self.keep_alive;
            let now = Instant::now();
            if now >= due {
                self.quiet.set(now + self.keep_alive);
                return true;
            }
            self.quiet.set(due);
        }
        false
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(opening) = this.opening.take() {
            return this.sent(opening);
        }
        if this.next < this.batch.len() {
            let data = this.next_frame();
            return this.sent(data);
        }
        if this.events.take(cx.waker()) {
            let mut events_cx = Context::from_waker(this.events.waker());
            match this
                .subscription
                .poll_batch(&mut events_cx, &mut this.batch, BATCH)
            {
                Poll::Ready(Ok((_, caught_up))) => {
                    if !caught_up {
                        this.events.raise();
                    }
                    let data = this.next_frame();
                    return this.sent(data);
                }
                Poll::Ready(Err(RecvError::Lagged(missed))) => {
                    this.events.raise();
                    this.span
                        .in_scope(|| tracing::debug!(missed, "lagged: events skipped"));
                    return this.sent(Bytes::from(format!(": missed {missed} events\n\n")));
                }
                Poll::Ready(Err(RecvError::Closed(reason))) => {
                    this.span
                        .in_scope(|| tracing::debug!(%reason, "stream ended by the server"));
                    return Poll::Ready(None);
                }
                // The hub holds the signal's waker.
                Poll::Pending => {}
            }
        }
        if this.poll_quiet(cx) {
            return this.sent(KEEP_ALIVE);
        }
        Poll::Pending
    }
}

impl SseBody {
    /// The next frame of the batch. An event alone, or a large one, goes out as its
    /// shared encoding, without a copy; a run of small events is gathered into one
    /// frame, one chunk for the server to write.
    fn next_frame(&mut self) -> Bytes {
        let pending = &self.batch[self.next..];
        let small = pending
            .iter()
            .take_while(|event| event.sse_bytes().len() < SHARE_FROM)
            .count();
        let data = if small <= 1 {
            self.next += 1;
            pending[0].to_sse()
        } else {
            let run = &pending[..small];
            let len = run.iter().map(|event| event.sse_bytes().len()).sum();
            let mut data = BytesMut::with_capacity(len);
            for event in run {
                data.extend_from_slice(event.sse_bytes());
            }
            self.next += small;
            data.freeze()
        };
        if self.next == self.batch.len() {
            self.batch.clear();
            self.next = 0;
        }
        data
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.span.in_scope(|| tracing::debug!("stream closed"));
    }
}
