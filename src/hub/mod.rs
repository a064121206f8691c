//! The hub: topic-keyed fan-out of [`Event`]s to any number of subscribers.
//!
//! A [`Hub`] is a cheap handle; clone it into every place that publishes or subscribes.
//! [`Hub::broadcast`] is a plain function that never waits for a subscriber: each topic
//! keeps a bounded ring of its recent events, which every [`Subscription`] reads at its own
//! pace. A subscriber that falls a whole ring behind is handled by the [`LagPolicy`]:
//! it skips ahead and learns how many events it missed, or it is disconnected.
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
mod subscription;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use hashbrown::HashTable;

use self::channel::Channel;
pub use self::subscription::{Lagged, RecvError, Subscription};
use crate::Event;

const DEFAULT_SHARDS: usize = 64;
const DEFAULT_BUFFER: usize = 256;

/// A handle to a topic-keyed fan-out hub. Cloning it is cheap; all clones share the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    hasher: RandomState,
    buffer: usize,
    lag_policy: LagPolicy,
    closed: AtomicBool,
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
    subscribers: usize,
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
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HubClosed => "the hub was closed",
            Self::Lagged => "the subscriber fell too far behind",
        })
    }
}

/// A snapshot of a hub's counters, from [`Hub::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Topics with at least one subscriber.
    pub topics: usize,
    /// Live subscriptions.
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
#[derive(Clone, Debug)]
pub struct HubBuilder {
    shards: usize,
    buffer: usize,
    lag_policy: LagPolicy,
}

impl Default for HubBuilder {
    fn default() -> Self {
        Self {
            shards: DEFAULT_SHARDS,
            buffer: DEFAULT_BUFFER,
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
    /// so the cost of a subscriber, slow or not, does not grow with the buffer.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
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
        Hub {
            inner: Arc::new(Inner {
                shards,
                hasher: RandomState::new(),
                buffer: self.buffer,
                lag_policy: self.lag_policy,
                closed: AtomicBool::new(false),
            }),
        }
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
    /// were.
    ///
    /// Never waits for a subscriber and never blocks on one: a subscriber whose buffer is
    /// full is handled by the [`LagPolicy`] when it next reads. Callable from any thread,
    /// inside or outside an async runtime. After [`Hub::close`] it reaches no one.
    pub fn broadcast(&self, topic: &str, event: impl Into<Event>) -> usize {
        if self.inner.closed.load(Ordering::Acquire) {
            return 0;
        }
        // Allocated before any lock is taken.
        let event = Arc::new(event.into());
        let hash = self.inner.hasher.hash_one(topic);
        let shard = self.inner.shard(hash);
        with_wake_list(|wake| {
            let mut state = lock(&shard.state);
            state.broadcasts += 1;
            let Some(channel) = state.topics.find(hash, |channel| channel.is(topic)) else {
                return (0, None);
            };
            let mut channel = lock(&channel.state);
            let reached = channel.subscribers;
            let evicted = channel.push(event, wake);
            drop(channel);
            state.deliveries += reached as u64;
            (reached, evicted)
        })
        .0
    }

    /// Subscribes to `topic`: the subscription receives every event broadcast to it from
    /// now on. Dropping the subscription unsubscribes; a topic without subscribers holds
    /// no memory.
    ///
    /// After [`Hub::close`], the subscription is already ended.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let hash = self.inner.hasher.hash_one(topic);
        let mut state = lock(&self.inner.shard(hash).state);
        if self.inner.closed.load(Ordering::Acquire) {
            drop(state);
            return Subscription::closed(self.clone(), Channel::new(topic, hash, 1));
        }
        let channel = match state.topics.find(hash, |channel| channel.is(topic)) {
            Some(channel) => Arc::clone(channel),
            None => {
                let channel = Arc::new(Channel::new(topic, hash, self.inner.buffer));
                state
                    .topics
                    .insert_unique(hash, Arc::clone(&channel), |channel| channel.hash);
                channel
            }
        };
        state.subscribers += 1;
        let cursor = {
            let mut channel = lock(&channel.state);
            channel.subscribers += 1;
            channel.tail()
        };
        drop(state);
        Subscription::new(self.clone(), channel, cursor)
    }

    /// Ends every subscription, after each has read what was already broadcast, so that
    /// connections can close cleanly. Later broadcasts reach no one and later
    /// subscriptions are ended from the start.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for shard in self.inner.shards.iter() {
            with_wake_list(|wake| {
                let state = lock(&shard.state);
                for channel in &state.topics {
                    let mut channel = lock(&channel.state);
                    channel.closed = Some(CloseReason::HubClosed);
                    channel.waiters.take_all(wake);
                }
            });
        }
    }

    /// Whether [`Hub::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// A snapshot of the hub's counters, summed over its shards.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for shard in self.inner.shards.iter() {
            let state = lock(&shard.state);
            stats.topics += state.topics.len();
            stats.subscribers += state.subscribers;
            stats.broadcasts += state.broadcasts;
            stats.deliveries += state.deliveries;
            drop(state);
            stats.dropped += shard.dropped.load(Ordering::Relaxed);
            stats.lag_disconnects += shard.lag_disconnects.load(Ordering::Relaxed);
        }
        stats
    }
}

impl Inner {
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

/// Runs `f`, which collects wakers while holding locks, then wakes them after `f` has
/// returned and its locks are released. What `f` returns is also dropped only then, so
/// that evicted events are freed outside the locks too.
///
/// The list is reused per thread, so a broadcast does not allocate for it.
fn with_wake_list<R>(f: impl FnOnce(&mut Vec<Waker>) -> R) -> R {
    thread_local! {
        static WAKE_LIST: std::cell::Cell<Vec<Waker>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // Taken rather than borrowed: a waker may broadcast again on this thread.
    let mut wake = WAKE_LIST.take();
    let result = f(&mut wake);
    wake.drain(..).for_each(Waker::wake);
    WAKE_LIST.set(wake);
    result
}
