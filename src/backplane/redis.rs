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

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::{Backplane, History, Remote, wire};
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
/// Histories read per round trip (resumes answered, topics caught up): each reply may
/// hold a whole history.
const HISTORY_BATCH: usize = 64;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const PING_INTERVAL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(3);
const RECEIVE_QUEUE: usize = 16 * 1024;

/// Appends a batch of events to their topics' histories and publishes them, in one step.
/// `KEYS`: for each event, its topic's hash (`e` the epoch, `s` the last position) and
/// its stream; `ARGV`: the history length, an epoch for a topic that has none, then for
/// each event its channel and message. A topic without an epoch (new, or lost with
/// Redis' data) starts a new one, and its stream afresh.
///
/// Each topic's events of the batch take consecutive positions and travel together, as
/// `LENGTH:MESSAGE` each: one stream entry at the id `FIRST-0`, and one message published
/// as `EPOCH FIRST ` and them. A call from Lua costs more than the command it makes, so
/// the work per batch is four calls per topic, whatever its number of events. The
/// stream keeps at least the history length: entries wholly older than that are trimmed
/// a node at a time (`MINID ~`), an entry holding at most one batch of the backplane.
const PUBLISH_SCRIPT: &str = r"
local events = #KEYS / 2
local batches, order = {}, {}
for i = 1, events do
  local meta = KEYS[2 * i - 1]
  local parts = batches[meta]
  if not parts then
    parts = {}
    batches[meta] = parts
    order[#order + 1] = i
  end
  local message = ARGV[2 * i + 2]
  parts[#parts + 1] = #message .. ':' .. message
end
for _, i in ipairs(order) do
  local meta = KEYS[2 * i - 1]
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    epoch = ARGV[2]
    redis.call('DEL', KEYS[2 * i])
    redis.call('HSET', meta, 'e', epoch, 's', 0)
  end
  local parts = batches[meta]
  local last = redis.call('HINCRBY', meta, 's', #parts)
  local first = last - #parts + 1
  local keep = math.max(0, last - ARGV[1] - 255)
  local batch = table.concat(parts)
  redis.call('XADD', KEYS[2 * i], 'MINID', '~', keep, first .. '-0', 'd', batch)
  redis.call('PUBLISH', ARGV[2 * i + 1], epoch .. ' ' .. first .. ' ' .. batch)
end
return events
";

/// Starts a topic's history again in a new epoch (`ARGV[3]`), unless another node has
/// already: only while the epoch is still the one the node stood in (`ARGV[1]`) and the
/// last position is short of where it stood (`ARGV[2]`). Keys: the topic's hash, then its
/// stream, whose positions the new epoch counts again from 1.
const RESTART_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
local last = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
if epoch == ARGV[1] and last < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[3], 's', 0)
end
return 0
";

/// Shares a hub's broadcasts with other processes through Redis pub/sub, and with a hub
/// that keeps history, the history itself: see the README's "One history for the
/// cluster" for what each mode guarantees.
///
/// With history, each broadcast goes through a script that gives it the topic's next
/// position, appends it to the topic's stream (`fanout:s:` and the topic; its epoch and
/// last position in the hash `fanout:m:` and the topic) and publishes it; every node
/// delivers it with the id `EPOCH-POSITION`, fills gaps from the stream, and serves
/// resumes from it. Every node of a cluster must use the same mode.
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
    /// Whether the hub keeps history: then the cluster's history lives in Redis, and
    /// every broadcast, this node's included, is delivered in Redis' order.
    ordered: AtomicBool,
    /// Events per topic kept in Redis, in ordered mode.
    history: AtomicUsize,
    /// Makes each new epoch unlike any other.
    epochs: AtomicU64,
    subscriptions: mpsc::UnboundedSender<Interest>,
    subscription_queue: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Interest>>>,
    counters: Counters,
}

impl Shared {
    /// The Redis channel of `topic`.
    fn channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The key of the hash holding `topic`'s epoch (`e`) and last position (`s`).
    fn meta_key(&self, topic: &str) -> String {
        format!("{}m:{topic}", self.prefix)
    }

    /// The key of the stream holding `topic`'s last events, each at the id `POSITION-0`.
    fn stream_key(&self, topic: &str) -> String {
        format!("{}s:{topic}", self.prefix)
    }

    /// An epoch for a topic that has none in Redis: unlike every other, so that ids of a
    /// history Redis lost never match those of the one that replaces it.
    fn new_epoch(&self) -> String {
        use std::hash::BuildHasher;
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:x}",
            std::hash::RandomState::new().hash_one((self.node, n))
        )
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
    lost: AtomicU64,
    waiting_resumes: AtomicUsize,
}

enum Interest {
    Subscribe(String),
    Unsubscribe(String),
    /// A resume this node's own history cannot serve. Queued with the subscribes, so
    /// that it is answered once the node follows the topic.
    History(Resume),
}

/// A resume waiting for Redis: the events of `topic` after `at` of `epoch`.
struct Resume {
    topic: String,
    epoch: String,
    at: u64,
    reply: oneshot::Sender<History>,
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
    /// With history: gaps in a topic's positions that this node could not fill from
    /// Redis (events trimmed away, or lost with Redis' data); each was announced to the
    /// topic's subscribers here with `lost`.
    pub lost: u64,
    /// With history: resumes waiting for Redis to answer them from the cluster's history,
    /// asked for while it was away; each is answered once the node is back.
    pub waiting_resumes: usize,
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

    /// The Lua script that, with history, appends broadcasts to their topics' streams and
    /// publishes them in one step, a batch per call; for operators who want to inspect
    /// or measure it. Keys: for each event its topic's hash and stream; arguments: the
    /// history length, an epoch for a topic that has none, then for each event its
    /// channel and message.
    pub fn publish_script() -> &'static str {
        PUBLISH_SCRIPT
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
            lost: c.lost.load(Ordering::Relaxed),
            waiting_resumes: c.waiting_resumes.load(Ordering::Relaxed),
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
        // Pipelines are batched already: a write is never worth holding back for more.
        let info = self
            .url
            .as_str()
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
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
                ordered: AtomicBool::new(false),
                history: AtomicUsize::new(0),
                epochs: AtomicU64::new(0),
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
        let history = remote.history();
        self.shared.history.store(history, Ordering::Release);
        self.shared.ordered.store(history > 0, Ordering::Release);
        let shared = Arc::clone(&self.shared);
        self.shared
            .runtime
            .spawn(run(shared, publishes, subscriptions, remote));
    }

    fn history(&self, topic: &str, after: &str) -> Option<oneshot::Receiver<History>> {
        if !self.shared.ordered.load(Ordering::Acquire) {
            return None;
        }
        let (epoch, at) = after.rsplit_once('-')?;
        let at = at.parse().ok()?;
        let (reply, answer) = oneshot::channel();
        self.shared
            .subscriptions
            .send(Interest::History(Resume {
                topic: topic.to_owned(),
                epoch: epoch.to_owned(),
                at,
                reply,
            }))
            .ok()?;
        Some(answer)
    }

    fn delivers_own(&self) -> bool {
        self.shared.ordered.load(Ordering::Acquire)
    }

    fn publish(&self, topic: &str, event: &Arc<Event>) {
        let message = wire::encode(self.shared.node, event);
        if self
            .shared
            .publishes
            .try_send((topic.to_owned(), message))
            .is_err()
        {
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

/// The queues the task drains, the topics the hub wants, where this node stands in
/// each topic's history, and the resumes waiting for Redis.
struct Work {
    publishes: mpsc::Receiver<(String, Bytes)>,
    interests: mpsc::UnboundedReceiver<Interest>,
    topics: HashSet<String>,
    positions: Positions,
    /// Asked for while Redis was away, or not answered before it went: answered once it
    /// is back, so that an outage is not taken for a loss.
    resumes: VecDeque<Resume>,
}

/// The last position this node has delivered of each topic it listens to, in ordered
/// mode. Shared by the loops of one task, never across an await.
type Positions = std::sync::Mutex<HashMap<String, Position>>;

/// Where a node stands in a topic's history.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Position {
    /// `None`: the topic had no history in Redis when the node looked; the first epoch
    /// it sees is taken from its start.
    epoch: Option<String>,
    /// The last position delivered, 0 before the first.
    at: u64,
}

fn lock_positions(positions: &Positions) -> std::sync::MutexGuard<'_, HashMap<String, Position>> {
    positions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        positions: Positions::default(),
        resumes: VecDeque::new(),
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
                Some(interest) = work.interests.recv() => {
                    // Forgotten: taken up again, it starts from where Redis stands then.
                    if let Interest::Unsubscribe(topic) = &interest {
                        lock_positions(&work.positions).remove(topic);
                    }
                    follow(&mut work.topics, &mut work.resumes, interest);
                    shared.counters.waiting_resumes.store(work.resumes.len(), Ordering::Relaxed);
                }
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
    let ordered = shared.ordered.load(Ordering::Acquire);
    let positions = ordered.then_some(&work.positions);
    let connected = connect(shared, push_sender, &work.topics, positions).await;
    let (mut publisher, subscriber) = match connected {
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
    let script = if ordered {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(PUBLISH_SCRIPT);
        let load = load.query_async::<String>(&mut publisher);
        match shared.timed("loading the publish script", load).await {
            Ok(sha) => Some(sha),
            Err(error) => return error,
        }
    } else {
        None
    };
    // What was published while this node was away is fetched before anything newer, and
    // resumes asked for meanwhile are answered after it.
    if ordered {
        let followed: Vec<String> = lock_positions(&work.positions).keys().cloned().collect();
        let caught_up = catch_up(shared, remote, &work.positions, &mut publisher, &followed);
        if let Err(error) = caught_up.await {
            return error;
        }
        if let Err(error) = answer(shared, &mut publisher, &mut work.resumes).await {
            return error;
        }
    }

    let Work {
        publishes,
        interests,
        topics,
        positions,
        resumes,
    } = work;
    let publish = publish_loop(shared, publishes, publisher.clone(), script.as_deref());
    let receive = receive_loop(shared, remote, &mut pushes, positions, publisher.clone());
    let follow = follow_loop(
        shared,
        remote,
        Batch {
            topics,
            positions,
            interests,
            resumes,
        },
        [subscriber.clone(), publisher.clone()],
    );
    let check = check_loop(shared, [publisher, subscriber]);
    match tokio::try_join!(publish, receive, follow, check) {
        Err(error) => error,
        Ok(never) => match never.0 {},
    }
}

/// Opens both connections and subscribes to `topics`. In ordered mode, `positions` are
/// brought in line with the topics first: those the hub let go of while Redis was away
/// are forgotten, and those it asked for meanwhile are read before they are subscribed
/// to, as a join is, so that catching up fetches what comes between.
async fn connect(
    shared: &Arc<Shared>,
    pushes: mpsc::Sender<PushInfo>,
    topics: &HashSet<String>,
    positions: Option<&Positions>,
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
    let mut publisher = publisher.await?;
    if let Some(positions) = positions {
        let joined: Vec<&str> = {
            let mut known = lock_positions(positions);
            known.retain(|topic, _| topics.contains(topic));
            topics
                .iter()
                .filter(|topic| !known.contains_key(*topic))
                .map(String::as_str)
                .collect()
        };
        read_positions(shared, &mut publisher, positions, &joined).await?;
    }
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

/// Sends what the hub publishes, a pipeline per round trip: plain publishes, or with
/// `script` (ordered mode) each appended to its topic's history as it is published.
async fn publish_loop(
    shared: &Shared,
    publishes: &mut mpsc::Receiver<(String, Bytes)>,
    mut publisher: MultiplexedConnection,
    script: Option<&str>,
) -> Result<Infallible, RedisError> {
    let mut batch = Vec::with_capacity(PIPELINE);
    let history = shared.history.load(Ordering::Acquire);
    loop {
        // The sender lives in the backplane, so the queue never ends while the task runs.
        publishes.recv_many(&mut batch, PIPELINE).await;
        let mut pipeline = redis::pipe();
        match script {
            // One call for the batch: its keys, then its arguments.
            Some(sha) => {
                let call = pipeline.cmd("EVALSHA").arg(sha).arg(2 * batch.len());
                for (topic, _) in &batch {
                    call.arg(shared.meta_key(topic))
                        .arg(shared.stream_key(topic));
                }
                call.arg(history).arg(shared.new_epoch());
                for (topic, message) in &batch {
                    call.arg(shared.channel(topic)).arg(&message[..]);
                }
                call.ignore();
            }
            None => {
                for (topic, message) in &batch {
                    pipeline
                        .publish(shared.channel(topic), &message[..])
                        .ignore();
                }
            }
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

/// Hands what other nodes publish to the hub, as it arrives; in ordered mode, what this
/// node published too, and what the positions show it missed, fetched from the history.
async fn receive_loop(
    shared: &Shared,
    remote: &Remote,
    pushes: &mut mpsc::Receiver<PushInfo>,
    positions: &Positions,
    mut reader: MultiplexedConnection,
) -> Result<Infallible, RedisError> {
    let mut batch = Vec::with_capacity(RECEIVE_BATCH);
    let ordered = shared.ordered.load(Ordering::Acquire);
    loop {
        if pushes.recv_many(&mut batch, RECEIVE_BATCH).await == 0 {
            return Err(lost("the connection dropped its receive queue"));
        }
        for push in batch.drain(..) {
            if push.kind == PushKind::Disconnection {
                return Err(lost("the subscribing connection closed"));
            }
            let Some((topic, payload)) = message(shared, push) else {
                continue;
            };
            if ordered {
                receive_ordered(shared, remote, positions, &mut reader, &topic, payload).await?;
            } else {
                receive(shared, remote, &topic, payload);
            }
        }
    }
}

/// Follows the hub's interest, sending Redis each batch's net change.
async fn follow_loop(
    shared: &Shared,
    remote: &Remote,
    mut work: Batch<'_>,
    mut connections: [MultiplexedConnection; 2],
) -> Result<Infallible, RedisError> {
    loop {
        let Some(first) = work.interests.recv().await else {
            return Err(lost("the hub's interest queue ended"));
        };
        follow_batch(shared, remote, &mut work, first, &mut connections).await?;
    }
}

/// What the follow loop keeps up to date.
struct Batch<'a> {
    topics: &'a mut HashSet<String>,
    positions: &'a Positions,
    interests: &'a mut mpsc::UnboundedReceiver<Interest>,
    resumes: &'a mut VecDeque<Resume>,
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

/// Applies `first` and whatever else is waiting to the topics, and sends Redis only each
/// topic's net change, many channels per command. In ordered mode a joining topic's
/// position is read before it is subscribed to and again once the subscription has
/// taken effect, and what was published between is fetched: nothing published after the
/// hub asked for the topic is missed.
async fn follow_batch(
    shared: &Shared,
    remote: &Remote,
    work: &mut Batch<'_>,
    first: Interest,
    [subscriber, reader]: &mut [MultiplexedConnection; 2],
) -> redis::RedisResult<()> {
    let Batch {
        topics,
        positions,
        interests,
        resumes,
    } = work;
    let waiting = std::iter::from_fn(|| interests.try_recv().ok()).take(INTEREST_BATCH);
    let mut was_listening = HashMap::new();
    for interest in std::iter::once(first).chain(waiting) {
        if let Interest::Subscribe(topic) | Interest::Unsubscribe(topic) = &interest {
            was_listening
                .entry(topic.clone())
                .or_insert_with(|| topics.contains(topic));
        }
        follow(topics, resumes, interest);
    }
    let (mut join, mut leave) = (Vec::new(), Vec::new());
    for (topic, was) in was_listening {
        match (was, topics.contains(&topic)) {
            (false, true) => join.push(topic),
            (true, false) => leave.push(topic),
            _ => {}
        }
    }
    let ordered = shared.ordered.load(Ordering::Acquire);
    if !join.is_empty() {
        if ordered {
            let names: Vec<&str> = join.iter().map(String::as_str).collect();
            read_positions(shared, reader, positions, &names).await?;
        }
        let channels: Vec<String> = join.iter().map(|topic| shared.channel(topic)).collect();
        shared
            .timed("subscribing", subscriber.subscribe(&channels))
            .await?;
        if ordered {
            catch_up(shared, remote, positions, reader, &join).await?;
        }
    }
    if !leave.is_empty() {
        {
            let mut known = lock_positions(positions);
            for topic in &leave {
                known.remove(topic);
            }
        }
        let channels: Vec<String> = leave.iter().map(|topic| shared.channel(topic)).collect();
        shared
            .timed("unsubscribing", subscriber.unsubscribe(&channels))
            .await?;
    }
    // Listening to them now.
    shared
        .counters
        .subscribed
        .store(topics.len(), Ordering::Release);
    answer(shared, reader, resumes).await
}

/// Answers the waiting resumes from the history, oldest first, a pipeline per batch. A
/// batch that Redis does not answer waits, with those after it, for the next connection.
async fn answer(
    shared: &Shared,
    reader: &mut MultiplexedConnection,
    resumes: &mut VecDeque<Resume>,
) -> redis::RedisResult<()> {
    // A subscriber that left meanwhile does not need it.
    resumes.retain(|resume| !resume.reply.is_closed());
    while !resumes.is_empty() {
        let count = resumes.len().min(HISTORY_BATCH);
        let answers = histories(shared, reader, resumes.range(..count)).await?;
        for (resume, history) in resumes.drain(..count).zip(answers) {
            let _ = resume.reply.send(history);
        }
        shared
            .counters
            .waiting_resumes
            .store(resumes.len(), Ordering::Relaxed);
    }
    Ok(())
}

/// For each resume, the events of its topic after its position that Redis holds, and
/// whether some between are gone: all of the current epoch's when the resume's epoch is
/// an older one. One round trip, and a second for those of an older epoch.
async fn histories(
    shared: &Shared,
    reader: &mut MultiplexedConnection,
    asked: impl ExactSizeIterator<Item = &Resume> + Clone,
) -> redis::RedisResult<Vec<History>> {
    let mut pipeline = redis::pipe();
    for resume in asked.clone() {
        pipeline
            .cmd("HMGET")
            .arg(shared.meta_key(&resume.topic))
            .arg("e")
            .arg("s")
            .cmd("XRANGE")
            .arg(shared.stream_key(&resume.topic))
            .arg(range_start(resume.at))
            .arg("+");
    }
    let replies: Vec<Value> = shared
        .timed("reading histories", pipeline.query_async(reader))
        .await?;
    let mut replies = replies.into_iter();
    let mut found = Vec::with_capacity(asked.len());
    for _ in 0..asked.len() {
        let (Some(meta), Some(entries)) = (replies.next(), replies.next()) else {
            return Err(lost("a history reply was cut short"));
        };
        let (current, newest): (Option<String>, Option<u64>) = redis::from_redis_value(meta)?;
        found.push((current, newest, entries));
    }
    // What the current epoch holds from its start, for resumes of an older one.
    let mut older = redis::pipe();
    let mut any_older = false;
    for (resume, (current, _, _)) in asked.clone().zip(&found) {
        if current
            .as_ref()
            .is_some_and(|current| *current != resume.epoch)
        {
            older
                .cmd("XRANGE")
                .arg(shared.stream_key(&resume.topic))
                .arg("-")
                .arg("+");
            any_older = true;
        }
    }
    let mut older = if any_older {
        let replies: Vec<Value> = shared
            .timed("reading histories", older.query_async(reader))
            .await?;
        replies.into_iter()
    } else {
        Vec::new().into_iter()
    };
    let mut answers = Vec::with_capacity(found.len());
    for (resume, (current, newest, entries)) in asked.zip(found) {
        let Some(current) = current else {
            // Redis holds no history of the topic.
            answers.push(History::new(Vec::new(), true));
            continue;
        };
        let (entries, from) = if current == resume.epoch {
            (entries, resume.at + 1)
        } else {
            let entries = older
                .next()
                .ok_or_else(|| lost("a history reply was cut short"))?;
            (entries, 1)
        };
        let mut events = Vec::new();
        let mut lost = current != resume.epoch || newest.is_some_and(|newest| resume.at > newest);
        let mut next = from;
        for (position, message) in stream_entries(entries) {
            if position < from {
                continue;
            }
            lost |= position > next;
            next = position + 1;
            events.extend(ordered_event(
                shared,
                &resume.topic,
                &current,
                position,
                message,
            ));
        }
        answers.push(History::new(events, lost));
    }
    Ok(answers)
}

/// Takes `interest` into the topics the hub wants, or the resumes waiting for Redis.
fn follow(topics: &mut HashSet<String>, resumes: &mut VecDeque<Resume>, interest: Interest) {
    match interest {
        Interest::Subscribe(topic) => {
            topics.insert(topic);
        }
        Interest::Unsubscribe(topic) => {
            topics.remove(&topic);
        }
        Interest::History(resume) => {
            // Through a long outage clients come and go: before the queue grows, those
            // whose subscriber has left go.
            if resumes.len() == resumes.capacity() {
                resumes.retain(|waiting| !waiting.reply.is_closed());
            }
            resumes.push_back(resume);
        }
    }
}

/// The topic and payload of a message from Redis. Other pushes (subscription
/// confirmations) are not messages and are passed over.
fn message(shared: &Shared, push: PushInfo) -> Option<(String, Bytes)> {
    if push.kind != PushKind::Message {
        return None;
    }
    let mut data = push.data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let topic = String::from_utf8(channel)
        .ok()?
        .strip_prefix(shared.prefix.as_str())?
        .to_owned();
    Some((topic, Bytes::from(payload)))
}

/// Decodes a message of the wire format, or counts and logs it as malformed.
fn decode(shared: &Shared, topic: &str, message: Bytes) -> Option<(u64, Event)> {
    match wire::decode(message) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, topic, "skipped a message from redis");
            None
        }
    }
}

/// Delivers a message from Redis to local subscribers, unless it is this node's own.
fn receive(shared: &Shared, remote: &Remote, topic: &str, payload: Bytes) {
    match decode(shared, topic, payload) {
        Some((origin, _)) if origin == shared.node => {}
        Some((_, event)) => {
            shared.counters.received.fetch_add(1, Ordering::Relaxed);
            remote.deliver(topic, event);
        }
        None => {}
    }
}

/// Delivers a message of ordered mode, `EPOCH FIRST-POSITION ` and its events, after what
/// the node missed before them: the positions between the last one delivered and the
/// first of them, fetched from the topic's history, or a gap where the history no longer
/// holds them.
async fn receive_ordered(
    shared: &Shared,
    remote: &Remote,
    positions: &Positions,
    reader: &mut MultiplexedConnection,
    topic: &str,
    payload: Bytes,
) -> redis::RedisResult<()> {
    let Some((epoch, first, events)) = split_ordered(payload) else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    let (last, new_epoch) = match lock_positions(positions).get_mut(topic) {
        // Not followed (any more): delivered as it comes.
        None => (first.saturating_sub(1), false),
        Some(position) => match position.epoch.as_deref() {
            Some(known) if known == epoch => (position.at, false),
            None => {
                position.epoch = Some(epoch.clone());
                (position.at, false)
            }
            Some(_) => {
                // Redis lost the history this node stood in: what it held after that
                // point is gone, and the new epoch is taken from its start.
                *position = Position {
                    epoch: Some(epoch.clone()),
                    at: 0,
                };
                (0, true)
            }
        },
    };
    if new_epoch {
        announce_gap(shared, remote, topic);
    }
    if first > last + 1 {
        let missing = Missing {
            topic,
            epoch: epoch.clone(),
            after: last,
            before: Some(first),
        };
        fill(shared, remote, positions, reader, &[missing]).await?;
    }
    for (at, message) in (first..).zip(events) {
        if advance(positions, topic, &epoch, at).is_some() {
            deliver_ordered(shared, remote, topic, &epoch, at, message);
        }
    }
    Ok(())
}

/// Moves `topic`'s position in `epoch` to `at`, if that is past it, and returns where it
/// stood; `None` when `at` was delivered already (or the epoch has changed since). A topic
/// not followed stands just before whatever comes.
fn advance(positions: &Positions, topic: &str, epoch: &str, at: u64) -> Option<u64> {
    let mut known = lock_positions(positions);
    let Some(position) = known.get_mut(topic) else {
        return Some(at.saturating_sub(1));
    };
    if position.epoch.as_deref() != Some(epoch) || at <= position.at {
        return None;
    }
    Some(std::mem::replace(&mut position.at, at))
}

/// Splits `EPOCH FIRST-POSITION LENGTH:MESSAGE…` into the epoch, the first position and
/// the messages; `None` when it is not of that form.
fn split_ordered(mut payload: Bytes) -> Option<(String, u64, Vec<Bytes>)> {
    let mut field = || {
        let at = payload.iter().position(|&b| b == b' ')?;
        let field = String::from_utf8(payload.split_to(at).to_vec()).ok()?;
        payload.advance(1);
        Some(field)
    };
    let epoch = field()?;
    let first = field()?.parse().ok()?;
    Some((epoch, first, split_batch(payload)?))
}

/// Splits `LENGTH:MESSAGE…` into the messages.
fn split_batch(mut batch: Bytes) -> Option<Vec<Bytes>> {
    let mut messages = Vec::new();
    while !batch.is_empty() {
        let at = batch.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&batch[..at]).ok()?.parse().ok()?;
        batch.advance(at + 1);
        if batch.len() < len {
            return None;
        }
        messages.push(batch.split_to(len));
    }
    Some(messages)
}

/// Delivers the event of `message` at position `at` of `topic`'s history, with the id
/// that names that position on every node (in place of one its publisher chose).
fn deliver_ordered(
    shared: &Shared,
    remote: &Remote,
    topic: &str,
    epoch: &str,
    at: u64,
    message: Bytes,
) {
    let Some(event) = ordered_event(shared, topic, epoch, at, message) else {
        return;
    };
    shared.counters.received.fetch_add(1, Ordering::Relaxed);
    remote.deliver(topic, event);
}

/// The event of `message` at position `at` of `topic`'s history, with the id that names
/// that position on every node.
fn ordered_event(
    shared: &Shared,
    topic: &str,
    epoch: &str,
    at: u64,
    message: Bytes,
) -> Option<Event> {
    let (_, mut event) = decode(shared, topic, message)?;
    event.assign_id(format!("{epoch}-{at}"));
    Some(event)
}

/// Tells `topic`'s subscribers on this node that events of it are missing, and counts it.
fn announce_gap(shared: &Shared, remote: &Remote, topic: &str) {
    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(topic, "events missing from the cluster's history");
    remote.lost(topic);
}

/// What a topic lacks on this node: its events of `epoch` after position `after`, and
/// before `before` (to the newest without it).
struct Missing<'a> {
    topic: &'a str,
    epoch: String,
    after: u64,
    before: Option<u64>,
}

/// Fetches and delivers what each of `missing` lacks from its history, a pipeline per
/// batch, announcing a gap where the history skips some. What another loop delivered
/// meanwhile is not delivered again.
async fn fill(
    shared: &Shared,
    remote: &Remote,
    positions: &Positions,
    reader: &mut MultiplexedConnection,
    missing: &[Missing<'_>],
) -> redis::RedisResult<()> {
    for batch in missing.chunks(HISTORY_BATCH) {
        let mut pipeline = redis::pipe();
        for missing in batch {
            let end = missing
                .before
                .map_or_else(|| "+".to_owned(), |before| format!("{}-0", before - 1));
            pipeline
                .cmd("XRANGE")
                .arg(shared.stream_key(missing.topic))
                .arg(range_start(missing.after))
                .arg(end);
        }
        let replies: Vec<Value> = shared
            .timed("reading a history", pipeline.query_async(reader))
            .await?;
        if replies.len() != batch.len() {
            return Err(lost("a history reply was cut short"));
        }
        for (missing, entries) in batch.iter().zip(replies) {
            let Missing {
                topic,
                epoch,
                before,
                ..
            } = missing;
            for (at, message) in stream_entries(entries) {
                if let Some(last) = advance(positions, topic, epoch, at) {
                    if at > last + 1 {
                        announce_gap(shared, remote, topic);
                    }
                    deliver_ordered(shared, remote, topic, epoch, at, message);
                }
            }
            // Trimmed away up to the message that showed the gap.
            if let Some(before) = *before
                && advance(positions, topic, epoch, before - 1)
                    .is_some_and(|last| last + 1 < before)
            {
                announce_gap(shared, remote, topic);
            }
        }
    }
    Ok(())
}

/// The events of an XRANGE reply: each one's position and message, from entries of one
/// batch each.
fn stream_entries(reply: Value) -> Vec<(u64, Bytes)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for entry in entries {
        let Value::Array(mut entry) = entry else {
            continue;
        };
        let (Some(Value::Array(mut fields)), Some(Value::BulkString(id))) =
            (entry.pop(), entry.pop())
        else {
            continue;
        };
        let Some(Value::BulkString(batch)) = fields.pop() else {
            continue;
        };
        let first = std::str::from_utf8(&id)
            .ok()
            .and_then(|id| id.split('-').next()?.parse::<u64>().ok());
        if let (Some(first), Some(messages)) = (first, split_batch(Bytes::from(batch))) {
            events.extend((first..).zip(messages));
        }
    }
    events
}

/// The start of an XRANGE that finds the event after `after`: the entry holding it starts
/// at most one batch earlier.
fn range_start(after: u64) -> String {
    format!("{}-0", (after + 1).saturating_sub(PIPELINE as u64 - 1))
}

/// Where each of `topics` stands in Redis now: its epoch and last position.
async fn stand(
    shared: &Shared,
    reader: &mut MultiplexedConnection,
    topics: &[&str],
) -> redis::RedisResult<Vec<Position>> {
    let mut found = Vec::with_capacity(topics.len());
    for chunk in topics.chunks(INTEREST_BATCH) {
        let mut pipeline = redis::pipe();
        for topic in chunk {
            pipeline
                .cmd("HMGET")
                .arg(shared.meta_key(topic))
                .arg("e")
                .arg("s");
        }
        let replies: Vec<(Option<String>, Option<u64>)> = shared
            .timed("reading positions", pipeline.query_async(reader))
            .await?;
        found.extend(replies.into_iter().map(|(epoch, at)| Position {
            at: if epoch.is_some() { at.unwrap_or(0) } else { 0 },
            epoch,
        }));
    }
    Ok(found)
}

/// Starts following `topics` where Redis stands now, keeping the position of one followed
/// already.
async fn read_positions(
    shared: &Shared,
    reader: &mut MultiplexedConnection,
    positions: &Positions,
    topics: &[&str],
) -> redis::RedisResult<()> {
    let found = stand(shared, reader, topics).await?;
    let mut known = lock_positions(positions);
    for (topic, position) in topics.iter().zip(found) {
        known.entry((*topic).to_owned()).or_insert(position);
    }
    Ok(())
}

/// Brings this node's positions in `topics` up to where Redis stands: delivers what each
/// gained since (after a reconnect, or while a new topic's subscription took effect),
/// and announces a gap where Redis lost the history the node stood in.
async fn catch_up(
    shared: &Shared,
    remote: &Remote,
    positions: &Positions,
    reader: &mut MultiplexedConnection,
    topics: &[String],
) -> redis::RedisResult<()> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    // Where the node stood before Redis was asked: a message that arrives meanwhile moves
    // it past what Redis answers, which must not be taken for Redis having lost it.
    let stood: Vec<Option<Position>> = {
        let known = lock_positions(positions);
        topics
            .iter()
            .map(|topic| known.get(topic).cloned())
            .collect()
    };
    let now = stand(shared, reader, &names).await?;
    let mut missing = Vec::new();
    for ((topic, now), was) in topics.iter().zip(now).zip(stood) {
        // Not followed, or moved on since: the message that moved it came after what
        // Redis answered, and its delivery fetched what came before it.
        let Some(was) = was.filter(|was| lock_positions(positions).get(topic) == Some(was)) else {
            continue;
        };
        // What the history no longer holds up to where Redis stands is a gap.
        let through = Some(now.at + 1);
        let from = match (was.epoch, now.epoch) {
            // Redis came back from a snapshot older than what it had stored: the events
            // after it that this node delivered are gone, and their positions would be
            // given to others. The history starts again in a new epoch.
            (Some(was_epoch), Some(epoch)) if was_epoch == epoch && now.at < was.at => {
                let mut restart = redis::cmd("EVAL");
                restart
                    .arg(RESTART_SCRIPT)
                    .arg(2)
                    .arg(shared.meta_key(topic))
                    .arg(shared.stream_key(topic))
                    .arg(&epoch)
                    .arg(was.at)
                    .arg(shared.new_epoch());
                let restart = restart.query_async::<()>(reader);
                shared.timed("starting a new epoch", restart).await?;
                announce_gap(shared, remote, topic);
                let fresh = Position { epoch: None, at: 0 };
                lock_positions(positions).insert(topic.clone(), fresh);
                None
            }
            (Some(was_epoch), Some(epoch)) if was_epoch == epoch => {
                (now.at > was.at).then_some((epoch, was.at))
            }
            (None, Some(epoch)) => Some((epoch, was.at)),
            (None, None) => None,
            // Redis lost the history the node stood in: the new epoch from its start.
            (Some(_), Some(epoch)) => {
                announce_gap(shared, remote, topic);
                Some((epoch, 0))
            }
            (Some(_), None) => {
                announce_gap(shared, remote, topic);
                let fresh = Position { epoch: None, at: 0 };
                lock_positions(positions).insert(topic.clone(), fresh);
                None
            }
        };
        if let Some((epoch, after)) = from {
            lock_positions(positions).insert(
                topic.clone(),
                Position {
                    epoch: Some(epoch.clone()),
                    at: after,
                },
            );
            missing.push(Missing {
                topic,
                epoch,
                after,
                before: through,
            });
        }
    }
    fill(shared, remote, positions, reader, &missing).await
}

fn lost(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}

/// A random node id: std's hasher keys come from the operating system's randomness.
fn node_id() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(std::process::id())
}
