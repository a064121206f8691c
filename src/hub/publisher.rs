//! A publisher's handle on one topic: [`Hub::broadcast`] without looking the topic up for
//! every event.
//!
//! ```
//! use tower_fanout::Hub;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let mut prices = hub.publisher("prices");
//! let mut subscription = hub.subscribe("prices");
//!
//! for tick in ["101.5", "101.7", "101.6"] {
//!     assert_eq!(prices.broadcast(tick), 1);
//! }
//! assert_eq!(&subscription.recv().await?.data()[..], b"101.5");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use super::Hub;
use super::channel::Channel;
use crate::Event;

/// Broadcasts to one topic, as [`Hub::broadcast`] does to it: made by [`Hub::publisher`].
///
/// A broadcast by name hashes the topic (SipHash, keyed per hub, since clients choose
/// topic names) and finds it in its shard's table under the shard's lock. A publisher
/// hashes it once, and keeps the topic's state from one broadcast to the next, so that a
/// broadcast takes only the topic's own lock, as a `tokio::sync::broadcast::Sender` takes
/// its channel's.
///
/// It does not keep the topic alive: subscribers come and go, the topic is forgotten and
/// made again, and the publisher reaches whoever subscribes at the time of each broadcast,
/// finding the topic again when the one it kept was forgotten. Until then, what it kept
/// stays allocated: a few hundred bytes, and a forgotten topic's history.
///
/// Broadcasting takes `&mut self`; a publisher shared by many tasks is cloned into each,
/// which is cheap.
#[derive(Clone)]
pub struct Publisher {
    hub: Hub,
    topic: Arc<str>,
    hash: u64,
    /// The topic's state as found by the last broadcast, if it had any.
    channel: Option<Arc<Channel>>,
}

impl Publisher {
    pub(super) fn new(hub: Hub, topic: &str, hash: u64) -> Self {
        Self {
            hub,
            topic: topic.into(),
            hash,
            channel: None,
        }
    }

    /// The topic this publisher broadcasts to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `event` to every current subscriber of the topic and returns how many there
    /// were: [`Hub::broadcast`], with all it says of ended subscriptions, lag, shared data
    /// and the backplane.
    pub fn broadcast(&mut self, event: impl Into<Event>) -> usize {
        let hub = &self.hub.inner;
        hub.deliver(
            &self.topic,
            self.hash,
            hub.keepable(event.into()),
            true,
            Some(&mut self.channel),
        )
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}
