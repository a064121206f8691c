//! Backplanes: carrying broadcasts between the processes of a deployment through an
//! existing pub/sub engine, so that a broadcast on any node reaches the topic's
//! subscribers on every node.
//!
//! A hub with a backplane delivers each broadcast to its own subscribers at once and hands
//! it to the backplane, which publishes it; every other node's backplane receives it and
//! delivers it to that node's subscribers. A node drops its own messages when they come
//! back, so no subscriber gets an event twice, and local subscribers get it without the
//! round trip. Across nodes delivery is at most once: what is published while a node is
//! cut off from the engine does not reach it.
//!
//! A backplane may instead keep the cluster's history ([`Backplane::delivers_own`]): the
//! Redis one does when the hub keeps history. Every broadcast is then stored in the
//! engine first and delivered by every node, its own included, in the engine's order,
//! with an id that is the same everywhere; a node fills what it missed from the stored
//! history, says `lost` where the history no longer holds it, and serves resumes its own
//! ring does not reach ([`Backplane::history`]).
//!
//! A node listens only to the topics it has subscribers for (or keeps history of): the
//! hub tells the backplane when a topic gains its first subscriber and when it is
//! forgotten.
//!
//! With the `redis` feature, `RedisBackplane` does this through Redis pub/sub:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_fanout::Hub;
//! use tower_fanout::backplane::RedisBackplane;
//!
//! let backplane = RedisBackplane::new("redis://127.0.0.1:6379/")?;
//! let hub = Hub::builder().backplane(backplane.clone()).build();
//! hub.broadcast("device-42", "reaches every node");
//! println!("{:?}", backplane.stats());
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod wire;

use std::fmt;
use std::sync::{Arc, Weak};

use tokio::sync::{oneshot, watch};

#[cfg(feature = "redis")]
pub use self::redis::{RedisBackplane, RedisBackplaneBuilder, RedisStats};
use crate::Event;
use crate::hub::HubCore;

/// Carries a hub's broadcasts to the other nodes of a deployment and theirs to it.
///
/// Every method is called from `broadcast` or `subscribe` paths, some under a hub lock:
/// each must return at once, handing work to a task of the backplane's own.
pub trait Backplane: Send + Sync + 'static {
    /// Called once, when the hub is built: events from other nodes go to `remote`.
    fn start(&self, remote: Remote);

    /// An event was broadcast on this node: publish it to the others.
    fn publish(&self, topic: &str, event: &Arc<Event>);

    /// This node has a subscriber for `topic` now: listen to it.
    fn subscribe(&self, topic: &str);

    /// This node has forgotten `topic`: stop listening to it.
    fn unsubscribe(&self, topic: &str);

    /// The events of `topic` after the event `after` that the cluster's history holds,
    /// for a resume that this node's own history cannot serve (the topic is new here, or
    /// the id older than what this node kept): the hub delivers them before what arrives
    /// next, skipping what both hold. `None` when the backplane keeps no history or
    /// `after` is not one of its ids; the resume is then incomplete. The answer must
    /// come after this node follows the topic (the [`subscribe`](Self::subscribe) that
    /// precedes the call for a topic new here), so that nothing falls between; it may
    /// wait, while the backplane is cut off from its engine, until it can be given.
    ///
    /// Ids are `EPOCH-POSITION`, positions counting from 1 in each epoch: a gap marked
    /// with [`Remote::lost`] and followed by the position after the answer's last event
    /// (or, after an answer that held nothing and told of a loss, by a new epoch's first
    /// position) is the loss the answer told of, and is not told again. Default: `None`.
    fn history(&self, topic: &str, after: &str) -> Option<oneshot::Receiver<History>> {
        let _ = (topic, after);
        None
    }

    /// Whether this node's broadcasts come back through [`Remote::deliver`] like every
    /// other node's, once the engine has put them in the cluster's order: the hub then
    /// hands them only to the backplane, so that every node delivers the same events in
    /// the same order with the same ids. Asked once, after [`start`](Self::start).
    /// Default: false, the hub delivers its own broadcasts at once.
    fn delivers_own(&self) -> bool {
        false
    }
}

/// Events of one topic from the cluster's history; the answer to [`Backplane::history`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct History {
    /// The events after the resume point, oldest first, each with its id.
    pub events: Vec<Event>,
    /// Whether events between the resume point and the first of `events` are no longer
    /// held (trimmed away, lost with the engine's data, or the id was of an older
    /// history): the subscriber is told so.
    pub lost: bool,
}

impl History {
    /// The history `events` after the resume point, with `lost` when some were missing.
    pub fn new(events: Vec<Event>, lost: bool) -> Self {
        Self { events, lost }
    }
}

/// Hands events from other nodes to the hub's local subscribers; given to
/// [`Backplane::start`].
#[derive(Clone)]
pub struct Remote {
    pub(crate) hub: Weak<HubCore>,
    /// Its sender lives in the hub: it closes when the hub is dropped.
    pub(crate) alive: watch::Receiver<()>,
}

impl Remote {
    /// Delivers `event` to this node's subscribers of `topic`, without publishing it
    /// again. Returns how many there were; 0 once the hub is gone.
    pub fn deliver(&self, topic: &str, event: Event) -> usize {
        self.hub
            .upgrade()
            .map_or(0, |hub| hub.take(topic, hub.hash(topic), event, false))
    }

    /// Marks a gap in `topic` on this node: events of it are missing here, which this
    /// node's subscribers, and those that resume past the gap later, are told of. Returns
    /// how many subscribers there were.
    pub fn lost(&self, topic: &str) -> usize {
        self.hub.upgrade().map_or(0, |hub| hub.mark_lost(topic))
    }

    /// How many events per topic the hub keeps for subscribers that resume
    /// ([`HubBuilder::history`](crate::HubBuilder::history)); 0 once the hub is gone.
    pub fn history(&self) -> usize {
        self.hub.upgrade().map_or(0, |hub| hub.history)
    }

    /// Whether the hub still exists; a backplane's task can stop when it does not.
    pub fn is_alive(&self) -> bool {
        self.hub.strong_count() > 0
    }

    /// Completes once the hub has been dropped: a backplane's task waits on it beside its
    /// work, so that it ends, and lets go of its connections, with the hub.
    pub async fn closed(&self) {
        let mut alive = self.alive.clone();
        while alive.changed().await.is_ok() {}
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("alive", &self.is_alive())
            .finish()
    }
}
