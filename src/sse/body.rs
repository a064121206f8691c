//! The body of a Server-Sent-Events response: the pre-encoded events of a stream's
//! topics, with a comment whenever the stream has been quiet for the keep-alive interval.
//!
//! The server polls the body whenever the connection's task wakes, several times per
//! event; the body goes to the hub only when the hub has signalled, and to the timer
//! only when it is due.
//!
//! A stream of one topic sends each event as its shared encoding. A stream of several
//! sends the same bytes followed by a second `id:` line, the stream's [cursor](crate::cursor)
//! (a later `id:` wins), so that `Last-Event-ID` resumes every topic; the shared
//! encoding is still not copied for a large event.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::Instant;

use crate::config::{Config, Opened};
use crate::cursor::Positions;
use crate::hub::{Item, Subscriber};
use crate::outgoing::SHARE_FROM;
use crate::wake::{Alarm, Signal};
use crate::{CloseReason, Event};

/// Items taken from the subscriber at once.
const BATCH: usize = 64;

/// A comment line, which every client ignores: it keeps idle connections alive through
/// proxies that cut quiet streams.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

/// Tells a resuming client of one topic that events it missed are no longer retained:
/// an event of type `lost`, which `EventSource` dispatches to
/// `addEventListener("lost", ..)`.
const LOST: &str = "event: lost\ndata: \n\n";

pub(crate) struct SseBody {
    subscriber: Subscriber,
    /// For a stream of several topics, where it stands in each; `None` for one topic.
    positions: Option<Positions>,
    /// Sent before any event: the `retry:` hint and a comment, so the stream opens at once,
    /// then what was lost.
    opening: Option<Bytes>,
    /// The end of an event sent from its shared encoding: the stream's cursor.
    suffix: Option<Bytes>,
    /// A topic's subscription ended: the stream ends once what came before is sent.
    ended: Option<CloseReason>,
    keep_alive: Duration,
    /// When the last frame went out.
    last_sent: Instant,
    /// Rings when the stream may have been quiet for `keep_alive`.
    quiet: Alarm,
    /// Raised when the subscriber may have events.
    events: Signal,
    span: tracing::Span,
    /// Counts the stream as open while it lives.
    _open: crate::metrics::Open,
    /// Items taken from the subscriber and not yet sent: those from `next` on.
    batch: Vec<Item>,
    next: usize,
}

impl SseBody {
    pub(crate) fn new(
        opened: Opened,
        config: &Config,
        version: http::Version,
        span: tracing::Span,
    ) -> Self {
        let Opened {
            subscriber,
            lost,
            positions,
        } = opened;
        let several = subscriber.len() > 1;
        let mut opening = String::from(":ok\n");
        if let Some(retry) = config.retry {
            opening.push_str(&format!("retry: {}\n", retry.as_millis()));
        }
        opening.push('\n');
        let mut opening = BytesMut::from(opening.as_bytes());
        for key in lost {
            put_lost(&mut opening, &subscriber, key, several);
        }
        let keep_alive = config.keep_alive;
        let now = Instant::now();
        Self {
            subscriber,
            positions: several.then_some(positions),
            opening: Some(opening.freeze()),
            suffix: None,
            ended: None,
            keep_alive,
            last_sent: now,
            quiet: Alarm::new(now + keep_alive),
            events: Signal::new(),
            span,
            _open: crate::metrics::Open::new("sse", version),
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

    /// The next frame of the batch. An event alone, or a large one, goes out as its
    /// shared encoding, without a copy; a run of small events is gathered into one frame,
    /// one chunk for the server to write.
    fn next_frame(&mut self) -> Bytes {
        let mut run = BytesMut::new();
        while let Some(item) = self.batch.get(self.next) {
            match item {
                Item::Event(key, event) => {
                    let encoded = event.sse_bytes();
                    let large = encoded.len() >= SHARE_FROM;
                    if large && !run.is_empty() {
                        // In a frame of its own, the next one.
                        break;
                    }
                    let cursor = self
                        .positions
                        .as_mut()
                        .and_then(|positions| positions.advance(*key, event.event_id()));
                    let suffix = cursor.map(|cursor| format!("id: {cursor}\n\n"));
                    if run.is_empty() && (large || self.next + 1 == self.batch.len()) {
                        self.next += 1;
                        let frame = match suffix {
                            // Without its blank line, which the suffix ends with.
                            Some(suffix) => {
                                self.suffix = Some(Bytes::from(suffix));
                                encoded.slice(..encoded.len() - 1)
                            }
                            None => encoded.clone(),
                        };
                        if self.next == self.batch.len() {
                            self.batch.clear();
                            self.next = 0;
                        }
                        return frame;
                    }
                    match suffix {
                        Some(suffix) => {
                            run.extend_from_slice(&encoded[..encoded.len() - 1]);
                            run.extend_from_slice(suffix.as_bytes());
                        }
                        None => run.extend_from_slice(encoded),
                    }
                }
                Item::Lagged(_, missed) => {
                    self.span
                        .in_scope(|| tracing::debug!(missed, "lagged: events skipped"));
                    run.extend_from_slice(format!(": missed {missed} events\n\n").as_bytes());
                }
                Item::Lost(key) => {
                    self.span
                        .in_scope(|| tracing::debug!("lost: events missing from the history"));
                    put_lost(&mut run, &self.subscriber, *key, self.positions.is_some());
                }
                Item::Closed(_, reason) => {
                    self.ended = Some(*reason);
                    self.next = self.batch.len();
                    break;
                }
            }
            self.next += 1;
        }
        if self.next == self.batch.len() {
            self.batch.clear();
            self.next = 0;
        }
        run.freeze()
    }
}

/// Tells the client that events of the topic of `key` are missing: the `lost` event, whose
/// data names the topic in a stream of several.
fn put_lost(out: &mut BytesMut, subscriber: &Subscriber, key: usize, several: bool) {
    if !several {
        out.extend_from_slice(LOST.as_bytes());
        return;
    }
    // The topic in the data; a topic with a line break spans data lines.
    let notice = Event::new(subscriber.topic(key).to_owned())
        .event("lost")
        .map(|event| event.to_sse());
    if let Ok(notice) = notice {
        out.extend_from_slice(&notice);
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
        if let Some(suffix) = this.suffix.take() {
            return this.sent(suffix);
        }
        loop {
            if this.next < this.batch.len() {
                let data = this.next_frame();
                if !data.is_empty() {
                    return this.sent(data);
                }
            }
            if let Some(reason) = this.ended {
                this.span
                    .in_scope(|| tracing::debug!(%reason, "stream ended by the server"));
                return Poll::Ready(None);
            }
            if !this.events.take(cx.waker()) {
                break;
            }
            let mut events_cx = Context::from_waker(this.events.waker());
            match this
                .subscriber
                .poll_batch(&mut events_cx, &mut this.batch, BATCH)
            {
                // More may be waiting: look again on the next poll. Otherwise the
                // subscriber holds the signal's waker.
                Poll::Ready(more) => {
                    if more {
                        this.events.raise();
                    }
                }
                // The subscriber holds the signal's waker.
                Poll::Pending => break,
            }
        }
        if this.poll_quiet(cx) {
            // Quiet for a while: so may its topics be, whose rings need not stay.
            this.subscriber.compact();
            return this.sent(KEEP_ALIVE);
        }
        // Quiet, with the batch sent: its memory is let go until events come again, as
        // most streams are quiet most of the time.
        if this.batch.is_empty() {
            this.batch = Vec::new();
        }
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.span.in_scope(|| tracing::debug!("stream closed"));
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use crate::Hub;

    /// A burst grows the topic's ring; the stream's keep-alives let it go once the topic
    /// has been quiet from one to the next.
    #[tokio::test]
    async fn a_quiet_topic_lets_go_of_its_ring_at_the_keep_alives() {
        let hub = Hub::new();
        let mut config = Config::new(hub.clone());
        config.keep_alive = Duration::from_millis(20);
        let mut body = SseBody::new(
            config.open(&["t".to_owned()], None),
            &config,
            http::Version::HTTP_11,
            tracing::Span::none(),
        );
        for i in 0..64 {
            hub.broadcast("t", format!("event {i}"));
        }
        let grown = hub.ring_capacity("t").expect("the topic is known");
        assert!(grown >= 64, "{grown} slots");

        let mut sent = Vec::new();
        let read = async {
            while hub.ring_capacity("t") != Some(0) {
                let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                    .await
                    .expect("the stream goes on")
                    .expect("infallible");
                sent.extend_from_slice(&frame.into_data().expect("a data frame"));
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the ring is freed within 10 s of keep-alives");
        assert!(
            sent.windows(8).any(|window| window == b"event 63"),
            "the burst went out before its ring was freed"
        );
    }
}
