//! A publisher's handle on one topic: [`Hub::broadcast`] without finding the topic's
//! hash again for every event.
//!
//! ```
//! use tower_fanout::Hub;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let prices = hub.publisher("prices");
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
use crate::Event;

/// Broadcasts to one topic, as [`Hub::broadcast`] does to it: made by [`Hub::publisher`].
///
/// The topic's hash (SipHash, keyed per hub, since clients choose topic names) is about
/// an eighth of a broadcast's cost to one subscriber; a publisher computes it once. It
/// holds nothing of the topic itself: subscribers come and go, the topic is forgotten
/// and made again, and the publisher reaches whoever subscribes at the time of each
/// broadcast. Cloning it is cheap.
#[derive(Clone)]
pub struct Publisher {
    hub: Hub,
    topic: Arc<str>,
    hash: u64,
}

impl Publisher {
    pub(super) fn new(hub: Hub, topic: &str, hash: u64) -> Self {
        Self {
            hub,
            topic: topic.into(),
            hash,
        }
    }

    /// The topic this publisher broadcasts to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends `event` to every current subscriber of the topic and returns how many there
    /// were: [`Hub::broadcast`], with all it says of ended subscriptions, lag, shared data
    /// and the backplane.
    pub fn broadcast(&self, event: impl Into<Event>) -> usize {
        self.hub
            .inner
            .take(&self.topic, self.hash, event.into(), true)
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}
