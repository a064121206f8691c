//! [`RedisBackplane`]: broadcasts between nodes through Redis pub/sub.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{Backplane, Remote, wire};
use crate::Event;

/// Publishes waiting for Redis; beyond this, a broadcast is counted as not delivered to
/// other nodes rather than queued without bound.
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Publishes sent to Redis in one pipeline, one round trip.
const PIPELINE: usize = 256;
/// Subscription changes sent to Redis in one command.
const INTEREST_BATCH: usize = 1_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Shares a hub's broadcasts with other processes through Redis pub/sub.
///
/// Each topic is a Redis channel named `fanout:` and the topic. A node subscribes only
/// to the topics it has local subscribers for (or keeps history of) and unsubscribes when
/// it forgets them, so Redis sends each node only what it needs; a node with 100 000
/// topics holds 100 000 channel subscriptions on one connection.
///
/// A broadcast is delivered to local subscribers at once and published through a queue to
/// a task that pipelines publishes to Redis; the node ignores its own messages when they
/// come back. `broadcast` never waits for Redis: while Redis is slow or down, publishes
/// that do not fit the queue or fail are counted in [`RedisStats::not_delivered`]. The
/// task reconnects with exponential backoff (50 ms to 5 s), subscribes again to every
/// topic, and logs the outage and the recovery.
///
/// Build the hub inside a tokio runtime: the task is spawned on the runtime that calls
/// [`RedisBackplane::new`].
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    runtime: Handle,
    node: u64,
    prefix: String,
    publishes: mpsc::Sender<(String, Bytes)>,
    publish_queue: std::sync::Mutex<Option<mpsc::Receiver<(String, Bytes)>>>,
    subscriptions: mpsc::UnboundedSender<Interest>,
    subscription_queue: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Interest>>>,
    counters: Counters,
}

impl Shared {
    /// The Redis channel of `topic`.
    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    published: AtomicU64,
    not_delivered: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    reconnects: AtomicU64,
    subscribed: AtomicUsize,
}

enum Interest {
    Subscribe(String),
    Unsubscribe(String),
}

/// A snapshot of a [`RedisBackplane`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Whether the node is connected to Redis now.
    pub connected: bool,
    /// Events published to Redis.
    pub published: u64,
    /// Events broadcast on this node that did not reach Redis (it was down or slow), so
    /// other nodes did not get them.
    pub not_delivered: u64,
    /// Events received from other nodes.
    pub received: u64,
    /// Messages on our channels that were not ours to read; skipped.
    pub malformed: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Topics this node listens to in Redis.
    pub subscribed_topics: usize,
}

impl RedisBackplane {
    /// A backplane through the Redis at `url` (`redis://host:port/`). Connects in the
    /// background when the hub is built, and keeps reconnecting.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL, or when called outside a tokio runtime.
    pub fn new(url: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let runtime = Handle::try_current().map_err(|_| {
            redis::RedisError::from((
                redis::ErrorKind::Client,
                "RedisBackplane::new must be called inside a tokio runtime",
            ))
        })?;
        let (publishes, publish_queue) = mpsc::channel(PUBLISH_QUEUE);
        let (subscriptions, subscription_queue) = mpsc::unbounded_channel();
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                runtime,
                node: node_id(),
                prefix: "fanout:".to_owned(),
                publishes,
                publish_queue: std::sync::Mutex::new(Some(publish_queue)),
                subscriptions,
                subscription_queue: std::sync::Mutex::new(Some(subscription_queue)),
                counters: Counters::default(),
            }),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        RedisStats {
            connected: c.connected.load(Ordering::Acquire),
            published: c.published.load(Ordering::Relaxed),
            not_delivered: c.not_delivered.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            subscribed_topics: c.subscribed.load(Ordering::Acquire),
        }
    }
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.shared.node)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Backplane for RedisBackplane {
    fn start(&self, remote: Remote) {
        let queues = (
            self.shared
                .publish_queue
                .lock()
                .ok()
                .and_then(|mut q| q.take()),
            self.shared
                .subscription_queue
                .lock()
                .ok()
                .and_then(|mut q| q.take()),
        );
        let (Some(publishes), Some(subscriptions)) = queues else {
            tracing::error!("a RedisBackplane serves one hub; this one is started already");
            return;
        };
        let shared = Arc::clone(&self.shared);
        self.shared
            .runtime
            .spawn(run(shared, publishes, subscriptions, remote));
    }

    fn publish(&self, topic: &str, event: &Arc<Event>) {
        let message = wire::encode(self.shared.node, event);
        let channel = self.shared.channel(topic);
        if self.shared.publishes.try_send((channel, message)).is_err() {
            self.shared
                .counters
                .not_delivered
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn subscribe(&self, topic: &str) {
        let _ = self
            .shared
            .subscriptions
            .send(Interest::Subscribe(topic.to_owned()));
    }

    fn unsubscribe(&self, topic: &str) {
        let _ = self
            .shared
            .subscriptions
            .send(Interest::Unsubscribe(topic.to_owned()));
    }
}

/// The backplane's task: connect, subscribe, then publish, receive and follow the hub's
/// interest until the connection fails; then again, after a backoff.
async fn run(
    shared: Arc<Shared>,
    mut publishes: mpsc::Receiver<(String, Bytes)>,
    mut interests: mpsc::UnboundedReceiver<Interest>,
    remote: Remote,
) {
    let mut topics: HashSet<String> = HashSet::new();
    let mut backoff = FIRST_BACKOFF;
    let mut connections = 0u64;
    while remote.is_alive() {
        match connect(&shared, &topics).await {
            Ok((publisher, sink, stream)) => {
                connections += 1;
                if connections > 1 {
                    shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topics = topics.len(), "redis backplane reconnected");
                } else {
                    tracing::debug!("redis backplane connected");
                }
                shared.counters.connected.store(true, Ordering::Release);
                backoff = FIRST_BACKOFF;
                let ended = serve(
                    &shared,
                    &remote,
                    &mut topics,
                    &mut publishes,
                    &mut interests,
                    publisher,
                    sink,
                    stream,
                )
                .await;
                shared.counters.connected.store(false, Ordering::Release);
                match ended {
                    Ended::HubGone => return,
                    Ended::Lost(error) => {
                        tracing::warn!(%error, "redis backplane lost its connection")
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "redis backplane cannot connect")
            }
        }
        // While down: broadcasts are not delivered to other nodes, say so; follow the
        // hub's interest so that the next connection subscribes to the right topics.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                Some(_) = publishes.recv() => {
                    shared.counters.not_delivered.fetch_add(1, Ordering::Relaxed);
                }
                interest = interests.recv() => match interest {
                    Some(interest) => follow(&mut topics, interest),
                    None => return,
                },
            }
        }
        shared.counters.subscribed.store(0, Ordering::Release);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Ended {
    HubGone,
    Lost(redis::RedisError),
}

async fn connect(
    shared: &Shared,
    topics: &HashSet<String>,
) -> redis::RedisResult<(MultiplexedConnection, PubSubSink, PubSubStream)> {
    let publisher = shared.client.get_multiplexed_async_connection().await?;
    let (mut sink, stream) = shared.client.get_async_pubsub().await?.split();
    // Many channels per command: 100 000 topics take 100 round trips, not 100 000.
    let channels: Vec<String> = topics.iter().map(|topic| shared.channel(topic)).collect();
    for chunk in channels.chunks(INTEREST_BATCH) {
        sink.subscribe(chunk).await?;
    }
    shared
        .counters
        .subscribed
        .store(topics.len(), Ordering::Release);
    Ok((publisher, sink, stream))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Shared,
    remote: &Remote,
    topics: &mut HashSet<String>,
    publishes: &mut mpsc::Receiver<(String, Bytes)>,
    interests: &mut mpsc::UnboundedReceiver<Interest>,
    mut publisher: MultiplexedConnection,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
) -> Ended {
    let mut batch = Vec::with_capacity(PIPELINE);
    loop {
        tokio::select! {
            count = publishes.recv_many(&mut batch, PIPELINE) => {
                if count == 0 {
                    return Ended::HubGone;
                }
                let mut pipeline = redis::pipe();
                for (channel, message) in &batch {
                    pipeline.publish(channel, &message[..]).ignore();
                }
                let sent = pipeline.query_async::<()>(&mut publisher).await;
                let counter = if sent.is_ok() { &shared.counters.published } else { &shared.counters.not_delivered };
                counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                if let Err(error) = sent {
                    return Ended::Lost(error);
                }
            }
            interest = interests.recv() => {
                let Some(first) = interest else { return Ended::HubGone };
                if let Err(error) = follow_batch(shared, topics, first, interests, &mut sink).await {
                    return Ended::Lost(error);
                }
            }
            message = stream.next() => {
                let Some(message) = message else {
                    return Ended::Lost(redis::RedisError::from((redis::ErrorKind::Io, "subscription stream ended")));
                };
                receive(shared, remote, &message);
            }
        }
    }
}

/// Applies `first` and whatever else is waiting to `topics`, and sends Redis only each
/// topic's net change, many channels per command.
async fn follow_batch(
    shared: &Shared,
    topics: &mut HashSet<String>,
    first: Interest,
    interests: &mut mpsc::UnboundedReceiver<Interest>,
    sink: &mut PubSubSink,
) -> redis::RedisResult<()> {
    let waiting = std::iter::from_fn(|| interests.try_recv().ok()).take(INTEREST_BATCH);
    let mut was_listening = std::collections::HashMap::new();
    for interest in std::iter::once(first).chain(waiting) {
        let topic = match &interest {
            Interest::Subscribe(topic) | Interest::Unsubscribe(topic) => topic,
        };
        was_listening
            .entry(topic.clone())
            .or_insert_with(|| topics.contains(topic));
        follow(topics, interest);
    }
    let (mut join, mut leave) = (Vec::new(), Vec::new());
    for (topic, was) in was_listening {
        match (was, topics.contains(&topic)) {
            (false, true) => join.push(shared.channel(&topic)),
            (true, false) => leave.push(shared.channel(&topic)),
            _ => {}
        }
    }
    shared
        .counters
        .subscribed
        .store(topics.len(), Ordering::Release);
    if !join.is_empty() {
        sink.subscribe(&join).await?;
    }
    if !leave.is_empty() {
        sink.unsubscribe(&leave).await?;
    }
    Ok(())
}

fn follow(topics: &mut HashSet<String>, interest: Interest) {
    match interest {
        Interest::Subscribe(topic) => topics.insert(topic),
        Interest::Unsubscribe(topic) => topics.remove(&topic),
    };
}

/// Delivers a message from Redis to local subscribers, unless it is this node's own.
fn receive(shared: &Shared, remote: &Remote, message: &redis::Msg) {
    let Some(topic) = message
        .get_channel_name()
        .strip_prefix(shared.prefix.as_str())
    else {
        return;
    };
    match wire::decode(Bytes::copy_from_slice(message.get_payload_bytes())) {
        Ok((origin, _)) if origin == shared.node => {}
        Ok((_, event)) => {
            shared.counters.received.fetch_add(1, Ordering::Relaxed);
            remote.deliver(topic, event);
        }
        Err(error) => {
            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, topic, "skipped a message from redis");
        }
    }
}

/// A random node id: std's hasher keys come from the operating system's randomness.
fn node_id() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(std::process::id())
}
