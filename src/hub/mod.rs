//! The hub: topic-keyed fan-out of [`Event`]s to any number of subscribers.
//!
//! A [`Hub`] is a cheap handle; clone it into every place that publishes or subscribes.
//! [`Hub::broadcast`] is a plain function that never waits for a subscriber: each topic
//! keeps a bounded ring of its recent events, which every [`Subscription`] reads at its own
//! pace. A subscriber that falls a whole ring behind is handled by the [`LagPolicy`]:
//! it skips ahead and learns how many events it missed, or it is disconnected. A
//! [`Publisher`] broadcasts to one topic, for a publisher that sends it many events.
//!
//! Topics are spread over a power-of-two number of shards, each behind its own lock, so
//! broadcasts and subscriptions on different topics rarely meet on the same lock, and no
//! lock is ever held while a task is woken.
//!
//! ```
//! use tower_fanout::{Event, Hub};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let mut subscription = hub.subscribe("device-42");
//!
//! // Publishing is synchronous and returns the number of subscribers reached.
//! assert_eq!(hub.broadcast("device-42", Event::new("hello").event("greeting")?), 1);
//! assert_eq!(hub.broadcast("device-7", "nobody listens"), 0);
//!
//! let event = subscription.recv().await?;
//! assert_eq!(&event.data()[..], b"hello");
//! assert_eq!(event.event_type(), Some("greeting"));
//!
//! drop(subscription); // unsubscribes; the topic is forgotten
//! assert_eq!(hub.stats().topics, 0);
//! # Ok(())
//! # }
//! ```

mod channel;
mod publisher;
mod subscriber;
mod subscription;
mod waiters;

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;

use self::channel::{Channel, ChannelState, Retention};
pub use self::publisher::Publisher;
pub(crate) use self::subscriber::{Item, Joined, Since};
pub use self::subscriber::{Received, Subscriber};
pub use self::subscription::{Lagged, RecvError, Subscription};
use self::waiters::Wakeups;
use crate::Event;
use crate::backplane::{Backplane, Remote};

const DEFAULT_SHARDS: usize = 64;
const DEFAULT_BUFFER: usize = 256;
const DEFAULT_IDLE_TOPICS: usize = 10_000;
/// Stale entries the idle queue of a shard may hold beyond its idle topics before they are
/// swept.
const STALE_SLACK: usize = 64;

/// A handle to a topic-keyed fan-out hub. Cloning it is cheap; all clones share the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubCore>,
}

pub(crate) struct HubCore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    buffer: usize,
    pub(crate) history: usize,
    /// Topics kept for their history without a subscriber, per shard.
    idle_per_shard: usize,
    lag_policy: LagPolicy,
    closed: AtomicBool,
    /// Source of channel epochs: unique within the hub, and unlike the previous run's.
    epochs: AtomicU64,
    backplane: Option<Arc<dyn Backplane>>,
    /// Whether the backplane hands this node's broadcasts back in the cluster's order
    /// ([`Backplane::delivers_own`]); set once it has started.
    ordered: AtomicBool,
    /// Dropped with the hub, which tells the backplane's task to end.
    _alive: Option<tokio::sync::watch::Sender<()>>,
}

/// Aligned to two cache lines so that threads working on neighbouring shards do not
/// invalidate each other's lines (adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
struct Shard {
    state: Mutex<ShardState>,
    /// Counted by subscribers, which do not take the shard lock when they read.
    dropped: AtomicU64,
    lag_disconnects: AtomicU64,
}

#[derive(Default)]
struct ShardState {
    /// Keyed by the topic's hash, computed once per call and shared with shard selection.
    topics: HashTable<Arc<Channel>>,
    /// Topics that kept their history when their last subscriber left, oldest first, with
    /// the generation of their entry (`Channel::idle`). A topic that finds subscribers
    /// again leaves a stale entry behind, skipped when it comes up.
    idle: VecDeque<(Arc<Channel>, u64)>,
    /// Topics idle now: the fresh entries of `idle`.
    idle_topics: usize,
    /// The generation of the newest entry of `idle`.
    idle_generation: u64,
    subscribers: usize,
    /// Broadcasts that found no channel, and those of channels forgotten, with their
    /// deliveries; a channel in the table counts its own.
    broadcasts: u64,
    deliveries: u64,
}

/// What happens to a subscriber whose buffer is full when another event arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LagPolicy {
    /// The oldest events are dropped for that subscriber. Its next read reports how many
    /// it missed ([`RecvError::Lagged`]), then goes on with the oldest event still held.
    #[default]
    Skip,
    /// The subscription ends with [`CloseReason::Lagged`]; a connection closes.
    Disconnect,
}

/// Why a [`Subscription`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Hub::close`] was called.
    HubClosed,
    /// The subscriber fell a whole buffer behind under [`LagPolicy::Disconnect`].
    Lagged,
    /// [`Hub::disconnect`] ended the topic's subscriptions.
    Disconnected,
}

/// Whether a resumed subscription ([`Hub::resume`]) starts right after the given event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Resume {
    /// Every event after the given one is still retained and will be delivered.
    Complete,
    /// Some events after the given one are no longer retained (the id is older than the
    /// history, or unknown); the subscription starts with the oldest event retained.
    EventsLost,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HubClosed => "the hub was closed",
            Self::Lagged => "the subscriber fell too far behind",
            Self::Disconnected => "the topic's subscribers were disconnected",
        })
    }
}

/// A snapshot of a hub's counters, from [`Hub::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Topics with at least one subscriber.
    pub topics: usize,
    /// Topics without subscribers kept for their history ([`HubBuilder::history`]), at
    /// most [`HubBuilder::idle_topics`].
    pub idle_topics: usize,
    /// Subscriptions not yet dropped. One that has ended ([`Hub::disconnect`], lag) counts
    /// until its handle is dropped, as a connection's does when the connection closes.
    pub subscribers: usize,
    /// Calls to [`Hub::broadcast`] while the hub was open.
    pub broadcasts: u64,
    /// Events handed to subscribers: the sum of what `broadcast` returned.
    pub deliveries: u64,
    /// Events that subscribers lost to their lag policy, counted when the subscriber
    /// notices (on its next read, or when it unsubscribes).
    pub dropped: u64,
    /// Subscriptions ended by [`LagPolicy::Disconnect`].
    pub lag_disconnects: u64,
}

/// Configures a [`Hub`]; from [`Hub::builder`].
#[derive(Clone)]
pub struct HubBuilder {
    backplane: Option<Arc<dyn Backplane>>,
    shards: usize,
    buffer: usize,
    history: usize,
    idle_topics: usize,
    lag_policy: LagPolicy,
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("shards", &self.shards)
            .field("buffer", &self.buffer)
            .field("history", &self.history)
            .field("idle_topics", &self.idle_topics)
            .field("lag_policy", &self.lag_policy)
            .field("backplane", &self.backplane.is_some())
            .finish()
    }
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self {
            backplane: None,
            shards: DEFAULT_SHARDS,
            buffer: DEFAULT_BUFFER,
            history: 0,
            idle_topics: DEFAULT_IDLE_TOPICS,
            lag_policy: LagPolicy::default(),
        }
    }
}

impl HubBuilder {
    /// The number of lock shards topics are spread over, rounded up to a power of two.
    /// Default: 64.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1).next_power_of_two();
        self
    }

    /// How many events may wait for one subscriber before the [`LagPolicy`] acts; at least
    /// 1. Default: 256.
    ///
    /// Each topic keeps this many recent events in one ring shared by all its subscribers,
    /// so the cost of a subscriber, slow or not, does not grow with the buffer. The ring
    /// grows with use up to this size and keeps its memory while the topic is busy; the
    /// WebSocket and Server-Sent-Events connections of [`StreamLayer`](crate::StreamLayer)
    /// free the ring of a topic that has gone quiet, at their pings and keep-alives.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }

    /// Keeps the last `events` events of each topic, so that a subscriber that reconnects
    /// gets what it missed ([`Hub::resume`]). Default: 0, none.
    ///
    /// With history, the hub gives every event without an id one of its own: unique,
    /// increasing within a topic, and opaque. A topic keeps its history when its last
    /// subscriber leaves, and events broadcast meanwhile are kept too, until it has a
    /// subscriber again or is evicted (see [`idle_topics`](Self::idle_topics)). History
    /// starts when a topic first has a subscriber. A subscriber may then be up to
    /// `max(buffer, history)` events behind before the lag policy acts.
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// How many topics without subscribers keep their history; beyond that, the topic
    /// that has been idle longest is forgotten. At most `idle_topics × history` events are
    /// kept for absent subscribers. Default: 10 000.
    pub fn idle_topics(mut self, topics: usize) -> Self {
        self.idle_topics = topics;
        self
    }

    /// Shares broadcasts with the other nodes of a deployment through `backplane`
    /// (see [`backplane`](crate::backplane)). Default: none, this process only.
    pub fn backplane(mut self, backplane: impl Backplane) -> Self {
        self.backplane = Some(Arc::new(backplane));
        self
    }

    /// What happens to a subscriber whose buffer is full. Default: [`LagPolicy::Skip`].
    pub fn lag_policy(mut self, policy: LagPolicy) -> Self {
        self.lag_policy = policy;
        self
    }

    /// Builds the hub.
    pub fn build(self) -> Hub {
        let shards = (0..self.shards)
            .map(|_| Shard {
                state: Mutex::default(),
                dropped: AtomicU64::new(0),
                lag_disconnects: AtomicU64::new(0),
            })
            .collect();
        // Epochs start from the clock so that ids of a restarted process differ.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        let (alive, alive_receiver) = tokio::sync::watch::channel(());
        let hub = Hub {
            inner: Arc::new(HubCore {
                idle_per_shard: self.idle_topics.div_ceil(self.shards),
                shards,
                hasher: RandomState::new(),
                buffer: self.buffer,
                history: self.history,
                lag_policy: self.lag_policy,
                closed: AtomicBool::new(false),
                epochs: AtomicU64::new(start),
                ordered: AtomicBool::new(false),
                _alive: self.backplane.is_some().then_some(alive),
                backplane: self.backplane,
            }),
        };
        if let Some(backplane) = &hub.inner.backplane {
            backplane.start(Remote {
                hub: Arc::downgrade(&hub.inner),
                alive: alive_receiver,
            });
            hub.inner
                .ordered
                .store(backplane.delivers_own(), Ordering::Release);
        }
        hub
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("shards", &self.inner.shards.len())
            .field("buffer", &self.inner.buffer)
            .field("lag_policy", &self.inner.lag_policy)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Hub {
    /// A hub with the defaults of [`HubBuilder`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a hub.
    pub fn builder() -> HubBuilder {
        HubBuilder::default()
    }

    /// Sends `event` to every current subscriber of `topic` and returns how many there
    /// were. A subscription that has ended (by [`Hub::disconnect`] or its lag policy) is
    /// not counted, even before it is dropped.
    ///
    /// Never waits for a subscriber and never blocks on one: a subscriber whose buffer is
    /// full is handled by the [`LagPolicy`] when it next reads. Callable from any thread,
    /// inside or outside an async runtime. After [`Hub::close`] it reaches no one.
    ///
    /// Waiting subscribers are woken after every lock is released. From a thread outside
    /// their tokio runtime, a broadcast with many of them to wake (16 or more) spawns one
    /// task on that runtime that wakes them: from one of its workers a wake-up costs a
    /// fraction of what it does from outside, and the broadcast returns at once.
    ///
    /// Data under 16 KiB that is a view into a larger allocation is copied first, once: a
    /// request body read by hyper or axum is a view into its connection's read buffer, and
    /// an event kept in the history or by a slow subscriber would otherwise keep that whole
    /// buffer. With [history](HubBuilder::history), data under 16 KiB that shares its
    /// allocation with other `Bytes` (a WebSocket message from `on_message`) is copied
    /// too.
    ///
    /// With a backplane that keeps the cluster's history ([`Backplane::delivers_own`]),
    /// the event reaches this node's subscribers too only once the backplane has stored
    /// it and handed it back, in the cluster's order; the count is of the subscribers it
    /// will reach then.
    pub fn broadcast(&self, topic: &str, event: impl Into<Event>) -> usize {
        self.inner
            .take(topic, self.inner.hash(topic), event.into(), true)
    }

    /// A handle that broadcasts to `topic` as [`broadcast`](Self::broadcast) does, for a
    /// publisher that sends many events to one topic: see [`Publisher`].
    pub fn publisher(&self, topic: &str) -> Publisher {
        Publisher::new(self.clone(), topic, self.inner.hash(topic))
    }

    /// Subscribes to `topic`: the subscription receives every event broadcast to it from
    /// now on. Dropping the subscription unsubscribes; a topic without subscribers holds
    /// no memory, unless it keeps a [history](HubBuilder::history).
    ///
    /// After [`Hub::close`], the subscription is already ended.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        self.attach(topic, |channel| (channel.tail(), Resume::Complete))
            .0
    }

    /// A subscriber over a set of topics that may change while it is in use, empty to
    /// begin with: see [`Subscriber`].
    pub fn subscriber(&self) -> Subscriber {
        Subscriber::new(self.clone())
    }

    /// Subscribes to `topic` starting right after the event with id `last_event_id`: the
    /// retained events after it come first, then live ones, with no gap and no duplicate
    /// however broadcasts race the call. When events after it are no longer retained, the
    /// subscription starts with the oldest retained event and [`Resume::EventsLost`] says
    /// so.
    ///
    /// With a [backplane](crate::backplane) that keeps the cluster's history, an id this
    /// node's history does not reach is looked up there: the subscription starts with the
    /// events the cluster's history holds after it, then live ones, and a loss there
    /// shows as [`RecvError::Lost`] before them.
    pub fn resume(&self, topic: &str, last_event_id: &str) -> (Subscription, Resume) {
        let mut fetched = None;
        let (mut subscription, resume) = self.attach(topic, |channel| {
            let (cursor, lost) = channel.resume_cursor(last_event_id);
            if lost
                && self.inner.ordered.load(Ordering::Acquire)
                && let Some(history) = self
                    .inner
                    .backplane
                    .as_ref()
                    .and_then(|backplane| backplane.history(topic, last_event_id))
            {
                // What arrives from now on follows what the cluster's history holds.
                fetched = Some(history);
                return (channel.tail(), Resume::Complete);
            }
            (
                cursor,
                if lost {
                    Resume::EventsLost
                } else {
                    Resume::Complete
                },
            )
        });
        if let Some(history) = fetched {
            subscription.backfill(history, last_event_id);
        }
        (subscription, resume)
    }

    /// Subscribes to `topic` from the oldest event it retains: for a stream that has seen
    /// nothing of it yet. `EventsLost` when events of it were dropped before those.
    pub(crate) fn resume_from_start(&self, topic: &str) -> (Subscription, Resume) {
        self.attach(topic, |channel| {
            let (cursor, lost) = channel.start_cursor();
            (
                cursor,
                if lost {
                    Resume::EventsLost
                } else {
                    Resume::Complete
                },
            )
        })
    }

    /// Ends every current subscription of `topic` ([`CloseReason::Disconnected`]): their
    /// connections close, a connection holding other topics as well included (its
    /// client resumes all of them when it reconnects), and later subscriptions are not
    /// affected. The topic keeps its
    /// history. Returns how many subscriptions were ended, not counting those that had
    /// ended already.
    pub fn disconnect(&self, topic: &str) -> usize {
        let hash = self.inner.hash(topic);
        let mut wake = Wakeups::default();
        let state = lock(&self.inner.shard(hash).state);
        let Some(channel) = state.topics.find(hash, |channel| channel.is(topic)) else {
            return 0;
        };
        let mut channel = lock(&channel.state);
        channel.disconnects += 1;
        channel.waiters.take_all(&mut wake);
        std::mem::take(&mut channel.live)
    }

    /// The slots allocated for `topic`'s ring, if this node knows the topic.
    #[cfg(test)]
    pub(crate) fn ring_capacity(&self, topic: &str) -> Option<usize> {
        let hash = self.inner.hash(topic);
        let state = lock(&self.inner.shard(hash).state);
        let channel = state.topics.find(hash, |channel| channel.is(topic))?;
        Some(lock(&channel.state).ring_capacity())
    }

    /// Adds a subscriber to `topic`'s channel, creating it if needed, at the cursor `start`
    /// chooses under the channel's lock.
    fn attach(
        &self,
        topic: &str,
        start: impl FnOnce(&ChannelState) -> (u64, Resume),
    ) -> (Subscription, Resume) {
        let hash = self.inner.hash(topic);
        let mut state = lock(&self.inner.shard(hash).state);
        if self.inner.closed.load(Ordering::Acquire) {
            drop(state);
            let channel = Channel::new(topic, hash, self.retention());
            return (
                Subscription::closed(self.clone(), channel),
                Resume::EventsLost,
            );
        }
        let channel = match state.topics.find(hash, |channel| channel.is(topic)) {
            Some(channel) => {
                let channel = Arc::clone(channel);
                // An idle topic is idle no more; its entry in the idle queue is stale.
                if channel.idle.swap(0, Ordering::Relaxed) != 0 {
                    state.idle_topics -= 1;
                }
                channel
            }
            None => {
                let channel = Arc::new(Channel::new(topic, hash, self.retention()));
                state
                    .topics
                    .insert_unique(hash, Arc::clone(&channel), |channel| channel.hash);
                if let Some(backplane) = &self.inner.backplane {
                    backplane.subscribe(topic);
                }
                channel
            }
        };
        state.subscribers += 1;
        let (cursor, disconnects, resume) = {
            let mut channel = lock(&channel.state);
            let (cursor, resume) = start(&channel);
            channel.join(cursor);
            (cursor, channel.disconnects, resume)
        };
        drop(state);
        (
            Subscription::new(self.clone(), channel, cursor, disconnects),
            resume,
        )
    }

    fn retention(&self) -> Retention {
        Retention {
            capacity: self.inner.buffer.max(self.inner.history),
            history: self.inner.history,
            epoch: self.inner.epochs.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Ends every subscription, after each has read what was already broadcast, so that
    /// connections can close cleanly. Later broadcasts reach no one and later
    /// subscriptions are ended from the start.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            let mut wake = Wakeups::default();
            let state = lock(&shard.state);
            for channel in &state.topics {
                let mut channel = lock(&channel.state);
                channel.closed = Some(CloseReason::HubClosed);
                channel.live = 0;
                channel.waiters.take_all(&mut wake);
            }
        }
    }

    /// Whether [`Hub::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// A snapshot of the hub's counters, summed over its shards and topics. It takes each
    /// topic's lock in turn, so its cost grows with the topics: a call per metrics scrape,
    /// not per broadcast.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for shard in self.inner.shards.iter() {
            let state = lock(&shard.state);
            stats.topics += state.topics.len() - state.idle_topics;
            stats.idle_topics += state.idle_topics;
            stats.subscribers += state.subscribers;
            stats.broadcasts += state.broadcasts;
            stats.deliveries += state.deliveries;
            for channel in &state.topics {
                let channel = lock(&channel.state);
                stats.broadcasts += channel.broadcasts;
                stats.deliveries += channel.deliveries;
            }
            drop(state);
            stats.dropped += shard.dropped.load(Ordering::Relaxed);
            stats.lag_disconnects += shard.lag_disconnects.load(Ordering::Relaxed);
        }
        stats
    }
}

impl HubCore {
    /// Delivers `event` as [`deliver`](Self::deliver) does, once it holds only what it
    /// needs.
    pub(crate) fn take(&self, topic: &str, hash: u64, event: Event, publish: bool) -> usize {
        self.deliver(topic, hash, self.keepable(event), publish, None)
    }

    /// `event` as the hub keeps it: a broadcast's data, or another node's (a view into a
    /// message that carried many events), may share a larger allocation. Allocated before
    /// any lock is taken.
    #[inline]
    fn keepable(&self, mut event: Event) -> Arc<Event> {
        // Events kept for history live long: what they share is copied too.
        event.own_small_data(self.history > 0);
        Arc::new(event)
    }

    /// Hands `event` to the local subscribers of `topic`, whose hash is `hash`, and, for a
    /// broadcast of this node, to the backplane. A publisher passes the channel it found
    /// last, which is used while it is the topic's and replaced when it is not.
    fn deliver(
        &self,
        topic: &str,
        hash: u64,
        event: Arc<Event>,
        publish: bool,
        cached: Option<&mut Option<Arc<Channel>>>,
    ) -> usize {
        if self.closed.load(Ordering::Acquire) {
            return 0;
        }
        let backplane = if publish {
            self.backplane.as_ref()
        } else {
            None
        };
        // Declared first, so that tasks are woken after every lock is released.
        let mut wake = Wakeups::default();
        let (reached, published, _evicted) = 'pushed: {
            if let Some(channel) = cached.as_deref().and_then(Option::as_ref) {
                let channel = lock(&channel.state);
                if !channel.retired {
                    break 'pushed self.hand_over(channel, event, backplane, &mut wake);
                }
            }
            let mut state = lock(&self.shard(hash).state);
            let found = state.topics.find(hash, |channel| channel.is(topic));
            if let Some(cached) = cached {
                cached.clone_from(&found.cloned());
            }
            match found {
                Some(channel) => self.hand_over(lock(&channel.state), event, backplane, &mut wake),
                None => {
                    state.broadcasts += 1;
                    (0, Some(event), None)
                }
            }
        };
        if let (Some(backplane), Some(event)) = (backplane, published) {
            backplane.publish(topic, &event);
        }
        reached
    }

    /// The part of [`deliver`](Self::deliver) under `channel`'s lock: pushes `event` to
    /// its subscribers. Returns how many it reaches, what to publish to `backplane` once
    /// unlocked, and what fell out of the ring, to be freed then. With a backplane that
    /// delivers in the cluster's order, pushes nothing: the event comes back to be pushed.
    #[inline(always)]
    fn hand_over(
        &self,
        mut channel: MutexGuard<'_, ChannelState>,
        event: Arc<Event>,
        backplane: Option<&Arc<dyn Backplane>>,
        wake: &mut Wakeups,
    ) -> (usize, Option<Arc<Event>>, Option<Arc<Event>>) {
        let reached = channel.live;
        if backplane.is_some() && self.ordered.load(Ordering::Acquire) {
            return (reached, Some(event), None);
        }
        let evicted = channel.push(event, wake);
        // What the others get carries the id this node gave it.
        let published = backplane.and_then(|_| channel.newest());
        (reached, published, evicted)
    }

    /// Marks a gap in `topic`'s ring, if this node knows the topic; returns how many
    /// subscribers it has.
    pub(crate) fn mark_lost(&self, topic: &str) -> usize {
        let hash = self.hash(topic);
        let mut wake = Wakeups::default();
        let state = lock(&self.shard(hash).state);
        let Some(channel) = state.topics.find(hash, |channel| channel.is(topic)) else {
            return 0;
        };
        let mut channel = lock(&channel.state);
        let evicted = channel.push_gap(&mut wake);
        let reached = channel.live;
        drop(channel);
        drop(state);
        drop(evicted);
        reached
    }

    /// Removes `channel`, whose state `channel_state` is, from its shard's table; the
    /// node stops listening to its topic.
    fn forget(
        &self,
        state: &mut ShardState,
        channel: &Arc<Channel>,
        channel_state: &mut ChannelState,
    ) {
        if let Ok(entry) = state
            .topics
            .find_entry(channel.hash, |registered| Arc::ptr_eq(registered, channel))
        {
            entry.remove();
            channel_state.retired = true;
            state.broadcasts += channel_state.broadcasts;
            state.deliveries += channel_state.deliveries;
            if let Some(backplane) = &self.backplane {
                backplane.unsubscribe(&channel.topic);
            }
        }
    }

    /// Called under the shard's lock and that of `channel`, whose state is
    /// `channel_state`, when it has lost its last subscriber: forgets it, or keeps it for
    /// its history while no more than the bound of topics are idle, forgetting the longest
    /// idle beyond it. Returns what the caller frees after unlocking.
    fn retire(
        &self,
        state: &mut ShardState,
        channel: &Arc<Channel>,
        channel_state: &mut ChannelState,
    ) -> Vec<Arc<Channel>> {
        if !channel_state.keeps_history() {
            self.forget(state, channel, channel_state);
            return Vec::new();
        }
        state.idle_generation += 1;
        channel.idle.store(state.idle_generation, Ordering::Relaxed);
        state
            .idle
            .push_back((Arc::clone(channel), state.idle_generation));
        state.idle_topics += 1;
        let mut forgotten = Vec::new();
        // Every idle topic has one fresh entry, so the queue holds one while this runs.
        while state.idle_topics > self.idle_per_shard {
            let Some((oldest, generation)) = state.idle.pop_front() else {
                break;
            };
            if oldest.idle.load(Ordering::Relaxed) == generation {
                oldest.idle.store(0, Ordering::Relaxed);
                state.idle_topics -= 1;
                // `channel` is locked already: it is evicted at once when no topic may idle.
                if Arc::ptr_eq(&oldest, channel) {
                    self.forget(state, &oldest, channel_state);
                } else {
                    self.forget(state, &oldest, &mut lock(&oldest.state));
                }
                forgotten.push(oldest);
            }
        }
        // A topic whose clients come and go leaves a stale entry each time: sweep them
        // before they outnumber the idle topics, so the queue stays within twice the bound.
        if state.idle.len() > 2 * state.idle_topics + STALE_SLACK {
            state.idle.retain(|(channel, generation)| {
                channel.idle.load(Ordering::Relaxed) == *generation
            });
        }
        forgotten
    }

    /// The hash of `topic`, keyed per hub: clients choose topic names, so the table must
    /// not let them pick colliding ones. The name is the only thing hashed, written in one
    /// go (SipHash counts its length in).
    pub(crate) fn hash(&self, topic: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(topic.as_bytes());
        hasher.finish()
    }

    /// The shard of a topic with this hash. The hash table inside the shard indexes by the
    /// low bits and tags by the top seven, so the shard is chosen by bits in between.
    fn shard(&self, hash: u64) -> &Shard {
        // The shard count is a power of two.
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }
}

/// Locks `mutex`, ignoring poisoning: no code of the hub panics while holding a lock, and
/// the state stays consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_whose_clients_come_and_go_leaves_the_idle_queue_bounded() {
        let hub = Hub::builder().history(4).idle_topics(8).shards(1).build();
        drop(hub.subscribe("kept"));
        for _ in 0..10_000 {
            drop(hub.subscribe("busy"));
        }
        let state = lock(&hub.inner.shards[0].state);
        assert_eq!(state.idle_topics, 2);
        assert!(
            state.idle.len() <= 2 * 2 + STALE_SLACK + 1,
            "{}",
            state.idle.len()
        );
        drop(state);
        let (_resumed, resume) = hub.resume("kept", "unknown");
        assert_eq!(
            resume,
            Resume::EventsLost,
            "an unknown id is lost either way"
        );
        let stats = hub.stats();
        assert_eq!(
            (stats.topics, stats.idle_topics),
            (1, 1),
            "kept is subscribed again"
        );
    }
}
