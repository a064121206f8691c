//! The body of a Server-Sent-Events response: a subscription's pre-encoded events, with a
//! comment whenever the stream has been quiet for the keep-alive interval.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep, sleep};

use crate::layer::Config;
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
    quiet: Pin<Box<Sleep>>,
    span: tracing::Span,
    /// Events taken from the subscription for the frame being made.
    batch: Vec<Arc<Event>>,
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
        Self {
            subscription,
            opening: Some(Bytes::from(opening)),
            keep_alive,
            quiet: Box::pin(sleep(keep_alive)),
            span,
            batch: Vec::new(),
        }
    }

    fn sent(&mut self, data: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.quiet.as_mut().reset(Instant::now() + self.keep_alive);
        Poll::Ready(Some(Ok(Frame::data(data))))
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
        match this.subscription.poll_recv_many(cx, &mut this.batch, BATCH) {
            Poll::Ready(Ok(_)) => {
                // A lone event goes out as its shared encoding, without a copy; a burst is
                // gathered into one frame, one chunk for hyper to frame and write.
                let data = match this.batch.as_slice() {
                    [event] => event.to_sse(),
                    events => {
                        let encoded: Vec<Bytes> =
                            events.iter().map(|event| event.to_sse()).collect();
                        let mut data =
                            BytesMut::with_capacity(encoded.iter().map(Bytes::len).sum());
                        encoded
                            .iter()
                            .for_each(|bytes| data.extend_from_slice(bytes));
                        data.freeze()
                    }
                };
                this.batch.clear();
                this.sent(data)
            }
            Poll::Ready(Err(RecvError::Lagged(missed))) => {
                this.span
                    .in_scope(|| tracing::debug!(missed, "lagged: events skipped"));
                this.sent(Bytes::from(format!(": missed {missed} events\n\n")))
            }
            Poll::Ready(Err(RecvError::Closed(reason))) => {
                this.span
                    .in_scope(|| tracing::debug!(%reason, "stream ended by the server"));
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(this.quiet.as_mut().poll(cx));
                this.sent(KEEP_ALIVE)
            }
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.span.in_scope(|| tracing::debug!("stream closed"));
    }
}
