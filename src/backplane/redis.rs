//! [`RedisBackplane`]: broadcasts between nodes through Redis pub/sub.
//!
//! One task per node keeps two connections: one publishes, the other subscribes and
//! receives (RESP3, so that the server's pushes reach a bounded queue of ours as they are
//! read). Publishing, receiving, following the hub's topics and checking the connections
//! are four loops that run side by side: a publish that waits for its reply never holds
//! up what arrives, and no call to Redis waits longer than the timeout. A connection
//! that stops answering (a failover, a NAT or load balancer that dropped the flow without
//! a reset) is found by a PING that gets no answer in time; both connections are then
//! replaced.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{Backplane, Remote, wire};
use crate::Event;

/// Publishes waiting for Redis; beyond this, a broadcast is counted as not delivered to
/// other nodes rather than queued without bound.
const PUBLISH_QUEUE: usize = 16 * 1024;
/// Publishes sent to Redis in one pipeline, one round trip.
const PIPELINE: usize = 256;
/// Messages from Redis handed to local subscribers at once.
const RECEIVE_BATCH: usize = 256;
/// Subscription changes sent to Redis in one command.
const INTEREST_BATCH: usize = 1_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const PING_INTERVAL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);
const RECEIVE_QUEUE: usize = 16 * 1024;

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
/// that do not fit the queue or fail are counted in [`RedisStats::not_delivered`].
/// Messages from other nodes wait in a bounded queue for the hub; what does not fit is
/// counted in [`RedisStats::dropped`].
///
/// Every [ping interval](RedisBackplaneBuilder::ping_interval) (2 s) both connections
/// are sent a PING, and no call to Redis may take longer than the
/// [timeout](RedisBackplaneBuilder::timeout) (3 s): a connection that has silently
/// stopped is found within 5 s, and replaced. The task reconnects with exponential backoff
/// (50 ms to 5 s), subscribes again to every topic, logs the outage and the recovery, and
/// ends, closing its connections, when the hub is dropped.
///
/// The subscribing connection speaks RESP3, which needs Redis 6 or later.
///
/// Build the hub inside a tokio runtime: the task is spawned on the runtime that calls
/// [`RedisBackplane::new`] (or [`build`](RedisBackplaneBuilder::build)).
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
}

/// Configures a [`RedisBackplane`]; from [`RedisBackplane::builder`].
#[derive(Clone, Debug)]
pub struct RedisBackplaneBuilder {
    url: String,
    ping_interval: Duration,
    timeout: Duration,
    receive_queue: usize,
}

struct Shared {
    publisher: Client,
    subscriber: Client,
    runtime: Handle,
    node: u64,
    prefix: String,
    ping_interval: Duration,
    timeout: Duration,
    receive_queue: usize,
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

    /// `call`, or an error once it has taken longer than the timeout.
    async fn timed<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer from redis within the timeout",
                    what.to_owned(),
                )))
            })
    }
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    published: AtomicU64,
    not_delivered: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
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
    /// Events from other nodes dropped because they came faster than this node could
    /// hand them to its subscribers, and its receive queue was full.
    pub dropped: u64,
    /// Messages on our channels that were not ours to read; skipped.
    pub malformed: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Topics this node listens to in Redis.
    pub subscribed_topics: usize,
}

impl RedisBackplane {
    /// A backplane through the Redis at `url` (`redis://host:port/`), with the defaults
    /// of [`RedisBackplaneBuilder`]. Connects in the background when the hub is built, and
    /// keeps reconnecting.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL, or when called outside a tokio runtime.
    pub fn new(url: &str) -> Result<Self, RedisError> {
        Self::builder(url).build()
    }

    /// Starts configuring a backplane through the Redis at `url`.
    pub fn builder(url: &str) -> RedisBackplaneBuilder {
        RedisBackplaneBuilder {
            url: url.to_owned(),
            ping_interval: PING_INTERVAL,
            timeout: TIMEOUT,
            receive_queue: RECEIVE_QUEUE,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        RedisStats {
            connected: c.connected.load(Ordering::Acquire),
            published: c.published.load(Ordering::Relaxed),
            not_delivered: c.not_delivered.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            subscribed_topics: c.subscribed.load(Ordering::Acquire),
        }
    }
}

impl RedisBackplaneBuilder {
    /// How often both connections are sent a PING, so that one that has silently stopped
    /// is found; at least 10 ms. Default: 2 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The longest any call to Redis may take (connecting, a PING, a publish, a
    /// subscribe) before the connections are replaced; at least 10 ms. Default: 3 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(10));
        self
    }

    /// How many messages from other nodes may wait for the hub before more are dropped
    /// (and counted in [`RedisStats::dropped`]); at least 1. Default: 16 384.
    pub fn receive_queue(mut self, messages: usize) -> Self {
        self.receive_queue = messages.max(1);
        self
    }

    /// Builds the backplane.
    ///
    /// # Errors
    ///
    /// When the URL is not a Redis URL, or when called outside a tokio runtime.
    pub fn build(self) -> Result<RedisBackplane, RedisError> {
        let info = self.url.as_str().into_connection_info()?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber = Client::open(info.clone().set_redis_settings(resp3))?;
        let publisher = Client::open(info)?;
        let runtime = Handle::try_current().map_err(|_| {
            RedisError::from((
                redis::ErrorKind::Client,
                "a RedisBackplane must be built inside a tokio runtime",
            ))
        })?;
        let (publishes, publish_queue) = mpsc::channel(PUBLISH_QUEUE);
        let (subscriptions, subscription_queue) = mpsc::unbounded_channel();
        Ok(RedisBackplane {
            shared: Arc::new(Shared {
                publisher,
                subscriber,
                runtime,
                node: node_id(),
                prefix: "fanout:".to_owned(),
                ping_interval: self.ping_interval,
                timeout: self.timeout,
                receive_queue: self.receive_queue,
                publishes,
                publish_queue: std::sync::Mutex::new(Some(publish_queue)),
                subscriptions,
                subscription_queue: std::sync::Mutex::new(Some(subscription_queue)),
                counters: Counters::default(),
            }),
        })
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

/// The queues the task drains, and the topics the hub wants.
struct Work {
    publishes: mpsc::Receiver<(String, Bytes)>,
    interests: mpsc::UnboundedReceiver<Interest>,
    topics: HashSet<String>,
}

/// The backplane's task: connect, subscribe, then publish, receive, follow the hub's
/// interest and check the connections until one fails; then again, after a backoff.
/// Ends when the hub is dropped.
async fn run(
    shared: Arc<Shared>,
    publishes: mpsc::Receiver<(String, Bytes)>,
    interests: mpsc::UnboundedReceiver<Interest>,
    remote: Remote,
) {
    let mut work = Work {
        publishes,
        interests,
        topics: HashSet::new(),
    };
    let mut backoff = FIRST_BACKOFF;
    let mut connections = 0u64;
    loop {
        let lost = tokio::select! {
            () = remote.closed() => break,
            lost = session(&shared, &remote, &mut work, &mut connections) => lost,
        };
        if shared.counters.connected.swap(false, Ordering::AcqRel) {
            backoff = FIRST_BACKOFF;
            tracing::warn!(error = %lost, "redis backplane lost its connection");
        } else {
            tracing::warn!(error = %lost, retry_in = ?backoff, "redis backplane cannot connect");
        }
        shared.counters.subscribed.store(0, Ordering::Release);
        // While down: broadcasts are not delivered to other nodes, say so; follow the
        // hub's interest so that the next connection subscribes to the right topics.
        let wait = tokio::time::sleep(backoff);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                () = remote.closed() => return tracing::debug!("redis backplane stopped with its hub"),
                Some(_) = work.publishes.recv() => {
                    shared.counters.not_delivered.fetch_add(1, Ordering::Relaxed);
                }
                Some(interest) = work.interests.recv() => follow(&mut work.topics, interest),
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    shared.counters.connected.store(false, Ordering::Release);
    tracing::debug!("redis backplane stopped with its hub");
}

/// One pair of connections, from connecting until one of them fails.
async fn session(
    shared: &Arc<Shared>,
    remote: &Remote,
    work: &mut Work,
    connections: &mut u64,
) -> RedisError {
    let (push_sender, mut pushes) = mpsc::channel(shared.receive_queue);
    let (publisher, subscriber) = match connect(shared, push_sender, &work.topics).await {
        Ok(connected) => connected,
        Err(error) => return error,
    };
    *connections += 1;
    if *connections > 1 {
        shared.counters.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(topics = work.topics.len(), "redis backplane reconnected");
    } else {
        tracing::debug!("redis backplane connected");
    }
    shared.counters.connected.store(true, Ordering::Release);

    let Work {
        publishes,
        interests,
        topics,
    } = work;
    let publish = publish_loop(shared, publishes, publisher.clone());
    let receive = receive_loop(shared, remote, &mut pushes);
    let follow = follow_loop(shared, interests, topics, subscriber.clone());
    let check = check_loop(shared, [publisher, subscriber]);
    match tokio::try_join!(publish, receive, follow, check) {
        Err(error) => error,
        Ok(never) => match never.0 {},
    }
}

/// Opens both connections and subscribes to `topics`.
async fn connect(
    shared: &Arc<Shared>,
    pushes: mpsc::Sender<PushInfo>,
    topics: &HashSet<String>,
) -> redis::RedisResult<(MultiplexedConnection, MultiplexedConnection)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(shared.timeout));
    let publisher = shared.timed(
        "connecting",
        shared
            .publisher
            .get_multiplexed_async_connection_with_config(&config),
    );
    let publisher = publisher.await?;
    // The server's pushes are handed over as they are read; what does not fit the queue
    // is counted, not buffered.
    let counted = Arc::clone(shared);
    let config = config.set_push_sender(move |push: PushInfo| match pushes.try_send(push) {
        Err(mpsc::error::TrySendError::Full(_)) => {
            counted.counters.dropped.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        Ok(()) => Ok(()),
    });
    let mut subscriber = shared
        .timed(
            "connecting",
            shared
                .subscriber
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
    // Many channels per command: 100 000 topics take 100 round trips, not 100 000.
    let channels: Vec<String> = topics.iter().map(|topic| shared.channel(topic)).collect();
    for chunk in channels.chunks(INTEREST_BATCH) {
        shared
            .timed("subscribing", subscriber.subscribe(chunk))
            .await?;
    }
    shared
        .counters
        .subscribed
        .store(topics.len(), Ordering::Release);
    Ok((publisher, subscriber))
}

/// Sends what the hub publishes, a pipeline per round trip.
async fn publish_loop(
    shared: &Shared,
    publishes: &mut mpsc::Receiver<(String, Bytes)>,
    mut publisher: MultiplexedConnection,
) -> Result<Infallible, RedisError> {
    let mut batch = Vec::with_capacity(PIPELINE);
    loop {
        // The sender lives in the backplane, so the queue never ends while the task runs.
        publishes.recv_many(&mut batch, PIPELINE).await;
        let mut pipeline = redis::pipe();
        for (channel, message) in &batch {
            pipeline.publish(channel, &message[..]).ignore();
        }
        let sent = shared
            .timed("publishing", pipeline.query_async::<()>(&mut publisher))
            .await;
        let counter = if sent.is_ok() {
            &shared.counters.published
        } else {
            &shared.counters.not_delivered
        };
        counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
        sent?;
    }
}

/// Hands what other nodes publish to the hub, as it arrives.
async fn receive_loop(
    shared: &Shared,
    remote: &Remote,
    pushes: &mut mpsc::Receiver<PushInfo>,
) -> Result<Infallible, RedisError> {
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    loop {
        if pushes.recv_many(&mut batch, RECEIVE_BATCH).await == 0 {
            return Err(lost("the connection dropped its receive queue"));
        }
        for push in batch.drain(..) {
            if push.kind == PushKind::Disconnection {
                return Err(lost("the subscribing connection closed"));
            }
            receive(shared, remote, push);
        }
    }
}

/// Follows the hub's interest, sending Redis each batch's net change.
async fn follow_loop(
    shared: &Shared,
    interests: &mut mpsc::UnboundedReceiver<Interest>,
    topics: &mut HashSet<String>,
    mut subscriber: MultiplexedConnection,
) -> Result<Infallible, RedisError> {
    loop {
        let Some(first) = interests.recv().await else {
            return Err(lost("the hub's interest queue ended"));
        };
        follow_batch(shared, topics, first, interests, &mut subscriber).await?;
    }
}

/// PINGs both connections every ping interval: one that gets no answer within the
/// timeout has stopped, even if the operating system has not noticed.
async fn check_loop(
    shared: &Shared,
    mut connections: [MultiplexedConnection; 2],
) -> Result<Infallible, RedisError> {
    let mut ticks = tokio::time::interval(shared.ping_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for connection in &mut connections {
            shared
                .timed(
                    "pinging",
                    redis::cmd("PING").query_async::<Value>(connection),
                )
                .await?;
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
    subscriber: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    let waiting = std::iter::from_fn(|| interests.try_recv().ok()).take(INTEREST_BATCH);
    let mut was_listening = HashMap::new();
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
        shared
            .timed("subscribing", subscriber.subscribe(&join))
            .await?;
    }
    if !leave.is_empty() {
        shared
            .timed("unsubscribing", subscriber.unsubscribe(&leave))
            .await?;
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
/// Other pushes (subscription confirmations) are not messages and are passed over.
fn receive(shared: &Shared, remote: &Remote, push: PushInfo) {
    if push.kind != PushKind::Message {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(topic) = std::str::from_utf8(&channel)
        .ok()
        .and_then(|channel| channel.strip_prefix(shared.prefix.as_str()))
    else {
        return;
    };
    match wire::decode(Bytes::from(payload)) {
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

fn lost(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}

/// A random node id: std's hasher keys come from the operating system's randomness.
fn node_id() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(std::process::id())
}
