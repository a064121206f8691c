//! A subscriber's handle on one topic: a [`Stream`] of shared events.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::oneshot;

use super::channel::{Channel, Gap, Read};
use super::waiters::Registration;
use super::{CloseReason, Hub, LagPolicy, lock};
use crate::Event;
use crate::backplane::History;

/// Receives the events broadcast to one topic, in order. Dropping it unsubscribes.
///
/// Events arrive as `Arc<Event>`: every subscriber shares the broadcast's one copy. Read
/// them with [`recv`](Self::recv), in batches with [`recv_many`](Self::recv_many), or as a
/// [`Stream`] whose items report missed events as [`Lagged`] and which ends when the
/// subscription does.
pub struct Subscription {
    hub: Hub,
    channel: Arc<Channel>,
    /// Whether the channel is registered in the hub; not for a subscription that was
    /// ended before it began.
    attached: bool,
    /// Sequence number of the next event to read.
    cursor: u64,
    registration: Option<Registration>,
    closed: Option<CloseReason>,
    /// The channel's disconnect count when this subscription joined.
    disconnects: u64,
    /// Events from the cluster's history to deliver before the ring's, while a resume
    /// this node could not serve from its own history is being stitched together.
    backfill: Option<Box<Backfill>>,
}

/// A resume served from the cluster's history: its events, then the ring's, of which
/// those the history held already are skipped.
struct Backfill {
    /// The answer, until it comes.
    pending: Option<oneshot::Receiver<History>>,
    events: VecDeque<Arc<Event>>,
    /// Whether to report a loss before the events.
    lost: bool,
    /// Whether the answer told of a loss: the ring's gaps that stand for that same loss
    /// are skipped.
    told_lost: bool,
    /// Whether the answer held no event.
    held_none: bool,
    /// The epoch and position of the last event the history held (or of the resume
    /// point): ring events of that epoch up to it are skipped.
    through: Option<(String, u64)>,
}

/// The epoch and position an id of the form `EPOCH-POSITION` names.
fn position(id: &str) -> Option<(&str, u64)> {
    let (epoch, at) = id.rsplit_once('-')?;
    Some((epoch, at.parse().ok()?))
}

/// Why [`Subscription::recv`] returned no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// The subscriber's buffer overflowed and this many events were skipped
    /// ([`LagPolicy::Skip`]); the next read goes on with the oldest event still held.
    Lagged(u64),
    /// Events of the topic are missing here, how many unknown: the cluster could not get
    /// them to this node (with a [backplane](crate::backplane) that keeps the cluster's
    /// history, events that Redis lost or trimmed before this node fetched them). The next
    /// read goes on with the events after the gap.
    Lost,
    /// The subscription has ended and will yield nothing more.
    Closed(CloseReason),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lagged(missed) => write!(f, "subscriber lagged and missed {missed} events"),
            Self::Lost => {
                f.write_str("events of the topic were lost before they reached this node")
            }
            Self::Closed(reason) => write!(f, "subscription closed: {reason}"),
        }
    }
}

impl std::error::Error for RecvError {}

/// A [`Subscription`] stream item: this many events were skipped because the subscriber
/// fell behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

impl fmt::Display for Lagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscriber lagged and missed {} events", self.0)
    }
}

impl std::error::Error for Lagged {}

impl Subscription {
    pub(super) fn new(hub: Hub, channel: Arc<Channel>, cursor: u64, disconnects: u64) -> Self {
        Self {
            hub,
            channel,
            attached: true,
            cursor,
            registration: None,
            closed: None,
            disconnects,
            backfill: None,
        }
    }

    pub(super) fn closed(hub: Hub, channel: Channel) -> Self {
        Self {
            channel: Arc::new(channel),
            attached: false,
            cursor: 0,
            registration: None,
            closed: Some(CloseReason::HubClosed),
            disconnects: 0,
            backfill: None,
            hub,
        }
    }

    /// Starts the subscription with the answer of the cluster's history to a resume after
    /// `after`.
    pub(super) fn backfill(&mut self, history: oneshot::Receiver<History>, after: &str) {
        self.backfill = Some(Box::new(Backfill {
            pending: Some(history),
            events: VecDeque::new(),
            lost: false,
            told_lost: false,
            held_none: false,
            through: position(after).map(|(epoch, at)| (epoch.to_owned(), at)),
        }));
    }

    /// The topic this subscription listens to.
    pub fn topic(&self) -> &str {
        &self.channel.topic
    }

    /// The id of the event just before this subscription's next one, if the topic still
    /// holds it: where a stream that has read nothing of the topic stands in it.
    pub(crate) fn last_id(&self) -> Option<String> {
        lock(&self.channel.state).id_before(self.cursor)
    }

    /// Why the subscription ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] once after events were skipped, and [`RecvError::Closed`]
    /// when the subscription has ended.
    pub async fn recv(&mut self) -> Result<Arc<Event>, RecvError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Waits until at least one event is available, then appends up to `limit` of them to
    /// `buffer` and returns how many: one lock for the whole batch.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn recv_many(
        &mut self,
        buffer: &mut Vec<Arc<Event>>,
        limit: usize,
    ) -> Result<usize, RecvError> {
        poll_fn(|cx| self.poll_recv_many(cx, buffer, limit)).await
    }

    /// Polls for the next event; the waker is woken when one arrives.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Arc<Event>, RecvError>> {
        let mut received = None;
        self.poll_read(cx, 1, false, |event| received = Some(event))
            .map_ok(|_| received.expect("a read of one event delivers one event"))
    }

    /// Polls for a batch of events, as [`recv_many`](Self::recv_many).
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        buffer: &mut Vec<Arc<Event>>,
        limit: usize,
    ) -> Poll<Result<usize, RecvError>> {
        if limit == 0 {
            return Poll::Ready(Ok(0));
        }
        self.poll_read(cx, limit, false, |event| buffer.push(event))
            .map_ok(|(count, _)| count)
    }

    /// Polls for up to `limit` events, handing each to `deliver`, and says whether the
    /// batch ended at the newest event; the waker is then registered already, and no
    /// further poll is needed until it is woken. (The public methods do not register
    /// early: a task that reads again before the next broadcast would be woken for
    /// nothing.)
    pub(crate) fn poll_each(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        deliver: impl FnMut(Arc<Event>),
    ) -> Poll<Result<(usize, bool), RecvError>> {
        self.poll_read(cx, limit.max(1), true, deliver)
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        register_when_caught_up: bool,
        mut deliver: impl FnMut(Arc<Event>),
    ) -> Poll<Result<(usize, bool), RecvError>> {
        if let Some(reason) = self.closed {
            return Poll::Ready(Err(RecvError::Closed(reason)));
        }
        if let Some(backfill) = &mut self.backfill {
            if let Some(pending) = &mut backfill.pending {
                let history = std::task::ready!(Pin::new(pending).poll(cx))
                    // The backplane went away without an answer.
                    .unwrap_or_else(|_| History::new(Vec::new(), true));
                backfill.pending = None;
                backfill.lost = history.lost;
                backfill.told_lost = history.lost;
                backfill.held_none = history.events.is_empty();
                if let Some((epoch, at)) = history
                    .events
                    .last()
                    .and_then(|event| position(event.event_id()?))
                {
                    backfill.through = Some((epoch.to_owned(), at));
                }
                backfill.events = history.events.into_iter().map(Arc::new).collect();
            }
            if std::mem::take(&mut backfill.lost) {
                return Poll::Ready(Err(RecvError::Lost));
            }
            if !backfill.events.is_empty() {
                let count = limit.min(backfill.events.len());
                backfill.events.drain(..count).for_each(&mut deliver);
                // Not caught up: the ring follows.
                return Poll::Ready(Ok((count, false)));
            }
        }
        let mut channel = lock(&self.channel.state);
        if channel.disconnects != self.disconnects {
            self.closed = Some(CloseReason::Disconnected);
            return Poll::Ready(Err(RecvError::Closed(CloseReason::Disconnected)));
        }
        let stitch = self.backfill.as_ref().and_then(|backfill| {
            let (epoch, through) = backfill.through.as_ref()?;
            Some((epoch, *through, backfill.told_lost, backfill.held_none))
        });
        let read = match stitch {
            None => channel.read(&mut self.cursor, limit, deliver),
            Some((epoch, through, told_lost, held_none)) => {
                // A gap the node marked for its own subscribers (it lost events of the
                // topic, or came back from an outage) stands for events the history's
                // answer covers when what follows it follows that answer: the next
                // position of its epoch, or, when the answer held nothing and told of a
                // loss, the start of a new epoch. It is skipped, not told of twice.
                let follows_answer = |next: &Event| {
                    next.event_id().and_then(position).is_some_and(|(of, at)| {
                        (of == epoch && at <= through + 1)
                            || (told_lost && held_none && of != epoch && at == 1)
                    })
                };
                // What the history held is skipped; past it, the stitch is done.
                let (mut passed, mut skipped) = (false, 0);
                let read = loop {
                    match channel.gap_at(self.cursor) {
                        Some(Gap { then: Some(next) }) if follows_answer(next) => {
                            let _ = channel.read(&mut self.cursor, 1, |_| {});
                            continue;
                        }
                        // What follows decides; the client knows of a loss already.
                        Some(Gap { then: None }) if told_lost => break Read::Empty,
                        _ => {}
                    }
                    let read = channel.read(&mut self.cursor, limit, |event| {
                        let held = !passed
                            && event
                                .event_id()
                                .and_then(position)
                                .is_some_and(|(of, at)| of == epoch && at <= through);
                        if held {
                            skipped += 1;
                        } else {
                            passed = true;
                            deliver(event);
                        }
                    });
                    match read {
                        // Every one of them held already: look at the next ones.
                        Read::Events { count, .. } if count == skipped => skipped = 0,
                        read => break read,
                    }
                };
                if passed {
                    self.backfill = None;
                }
                match read {
                    Read::Events { count, caught_up } => Read::Events {
                        count: count - skipped,
                        caught_up,
                    },
                    other => other,
                }
            }
        };
        match read {
            Read::Events { count, caught_up } => {
                // Registered under the same lock, so the caller need not poll again to
                // learn that there is nothing more.
                if caught_up && register_when_caught_up {
                    channel.waiters.register(&mut self.registration, cx.waker());
                }
                Poll::Ready(Ok((count, caught_up)))
            }
            Read::Lagged(missed) => {
                let ends = self.hub.inner.lag_policy == LagPolicy::Disconnect;
                // A closed channel counts no one live any more.
                if ends && channel.closed.is_none() {
                    channel.live -= 1;
                }
                drop(channel);
                Poll::Ready(Err(self.lagged(missed)))
            }
            Read::Lost => Poll::Ready(Err(RecvError::Lost)),
            Read::Empty => match channel.closed {
                Some(reason) => {
                    self.closed = Some(reason);
                    Poll::Ready(Err(RecvError::Closed(reason)))
                }
                None => {
                    channel.waiters.register(&mut self.registration, cx.waker());
                    Poll::Pending
                }
            },
        }
    }

    fn lagged(&mut self, missed: u64) -> RecvError {
        let inner = &self.hub.inner;
        let shard = inner.shard(self.channel.hash);
        shard.dropped.fetch_add(missed, Ordering::Relaxed);
        match inner.lag_policy {
            LagPolicy::Skip => RecvError::Lagged(missed),
            LagPolicy::Disconnect => {
                shard.lag_disconnects.fetch_add(1, Ordering::Relaxed);
                self.closed = Some(CloseReason::Lagged);
                RecvError::Closed(CloseReason::Lagged)
            }
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Arc<Event>, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx).map(|result| match result {
            Ok(event) => Some(Ok(event)),
            Err(RecvError::Lagged(missed)) => Some(Err(Lagged(missed))),
            // Missed too, how many unknown.
            Err(RecvError::Lost) => Some(Err(Lagged(0))),
            Err(RecvError::Closed(_)) => None,
        })
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic())
            .field("cursor", &self.cursor)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Subscription {
    /// Leaves the topic now, as dropping does: a connection that is closing reads nothing
    /// more, and must not hold events or count as a subscriber while its last bytes go.
    pub(crate) fn detach(&mut self) {
        if !self.attached {
            return;
        }
        self.attached = false;
        let shard = self.hub.inner.shard(self.channel.hash);
        let (missed, forgotten) = {
            let mut state = lock(&shard.state);
            let mut channel = lock(&self.channel.state);
            channel.waiters.remove(self.registration);
            // Ended by lagging, by a disconnect or by the hub's close: not counted live.
            let ended = self.closed == Some(CloseReason::Lagged)
                || channel.disconnects != self.disconnects
                || channel.closed.is_some();
            let missed = channel.leave(self.cursor, ended);
            state.subscribers -= 1;
            let forgotten = if channel.subscribers == 0 {
                self.hub
                    .inner
                    .retire(&mut state, &self.channel, &mut channel)
            } else {
                Vec::new()
            };
            (missed, forgotten)
        };
        // Channels forgotten with their history are freed after the locks are released.
        drop(forgotten);
        // A subscription closed for lagging has counted its loss already.
        let missed = if self.closed.is_some() { 0 } else { missed };
        shard.dropped.fetch_add(missed, Ordering::Relaxed);
        // Reads nothing more; the reason matters to no one once it has left.
        self.closed.get_or_insert(CloseReason::Disconnected);
    }

    /// Lets the topic free its ring if it has gone quiet since the last call by any of
    /// its subscribers: for connections to call from their timers.
    pub(crate) fn compact(&self) {
        if self.attached {
            lock(&self.channel.state).compact();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn a_batch_short_of_the_newest_event_is_not_caught_up() {
        let hub = Hub::new();
        let mut subscription = hub.subscribe("t");
        hub.broadcast("t", "first");
        hub.broadcast("t", "second");
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = Vec::new();

        // Reading the first event frees it, which shifts the ring: the second is still
        // there to read.
        let first = subscription.poll_each(&mut cx, 1, |event| batch.push(event));
        assert!(matches!(first, Poll::Ready(Ok((1, false)))), "{first:?}");
        let second = subscription.poll_each(&mut cx, 1, |event| batch.push(event));
        assert!(matches!(second, Poll::Ready(Ok((1, true)))), "{second:?}");
        assert!(
            subscription
                .poll_each(&mut cx, 1, |event| batch.push(event))
                .is_pending()
        );
        assert_eq!(batch.len(), 2);
    }
}
