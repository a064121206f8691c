//! A subscriber over a changing set of topics: one [`Subscription`] per topic, each with a
//! waker of its own that puts its topic in a queue of topics with news, so that a wake-up
//! reads only those, however many quiet topics the set holds.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

use super::{CloseReason, Hub, RecvError, Resume, Subscription, lock};
use crate::Event;

/// Events read from one topic before the others with news get their turn.
const PER_TOPIC: usize = 16;

/// Receives the events of a set of topics that may change while it is in use; each topic
/// keeps its own order. From [`Hub::subscriber`].
///
/// A topic that is busy does not starve the others: each topic with news gets a turn of a
/// few events before the next. A wake-up reads only the topics that have news, so a
/// subscriber on a thousand quiet topics and one busy one costs per event about what a
/// subscriber of one topic does. Lag is per topic: under [`LagPolicy::Skip`] the missed
/// count of that topic is reported ([`Received::Lagged`]); a topic whose subscription ends
/// (for lagging under [`LagPolicy::Disconnect`], by [`Hub::disconnect`] or
/// [`Hub::close`]) is reported once and leaves the set.
///
/// [`LagPolicy::Skip`]: super::LagPolicy::Skip
/// [`LagPolicy::Disconnect`]: super::LagPolicy::Disconnect
///
/// ```
/// use tower_fanout::{Hub, hub::Received};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let hub = Hub::new();
/// let mut dashboard = hub.subscriber();
/// dashboard.subscribe("cpu");
/// dashboard.subscribe("disk");
/// hub.broadcast("disk", "91%");
///
/// match dashboard.recv().await {
///     Some(Received::Event { topic, event }) => {
///         assert_eq!((topic, &event.data()[..]), ("disk", &b"91%"[..]));
///     }
///     other => panic!("{other:?}"),
/// }
/// dashboard.unsubscribe("cpu");
/// assert_eq!(dashboard.topics().collect::<Vec<_>>(), ["disk"]);
/// # }
/// ```
pub struct Subscriber {
    hub: Hub,
    /// The topics, by key; a key freed by an unsubscribe is reused.
    slots: Vec<Option<Topic>>,
    len: usize,
    ready: Arc<Ready>,
    /// Keys taken from the ready queue and not yet read.
    pending: Vec<usize>,
    /// Events read from one topic, before they are handed over.
    events: Vec<Arc<Event>>,
    /// Keys of topics that ended, freed at the next read, once the items that name them
    /// have been taken.
    ended: Vec<usize>,
    /// What [`recv`](Self::recv) has read and not yet returned, oldest first.
    held: std::collections::VecDeque<Item>,
}

struct Topic {
    subscription: Subscription,
    waker: Arc<TopicWaker>,
    /// Out of the set, its slot not yet free.
    ended: bool,
}

/// The topics with news, shared with every topic's waker.
#[derive(Default)]
struct Ready {
    queue: Mutex<Vec<usize>>,
    raised: AtomicBool,
    task: AtomicWaker,
}

/// The waker a topic's subscription registers: it queues the topic and wakes the task.
struct TopicWaker {
    key: usize,
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for TopicWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue();
        self.ready.task.wake();
    }
}

impl TopicWaker {
    fn queue(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            lock(&self.ready.queue).push(self.key);
            self.ready.raised.store(true, Ordering::Release);
        }
    }
}

/// What a [`Subscriber`] received.
#[derive(Debug)]
#[non_exhaustive]
pub enum Received<'a> {
    /// An event of `topic`.
    Event {
        /// The topic it was broadcast to.
        topic: &'a str,
        /// The event.
        event: Arc<Event>,
    },
    /// Events of `topic` were skipped because the subscriber fell behind on it
    /// ([`LagPolicy::Skip`](super::LagPolicy::Skip)); it goes on with the oldest held.
    Lagged {
        /// The topic that lagged.
        topic: &'a str,
        /// How many of its events were skipped.
        missed: u64,
    },
    /// The subscription of `topic` ended; the topic is no longer in the set.
    Closed {
        /// The topic that left the set.
        topic: String,
        /// Why it ended.
        reason: CloseReason,
    },
}

/// Where a topic joining a [`Subscriber`] starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Since<'a> {
    /// With the next event broadcast.
    Now,
    /// Right after the event with this id.
    After(&'a str),
    /// With the oldest event the topic retains.
    Start,
}

/// A topic that joined a [`Subscriber`].
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) key: usize,
    pub(crate) resume: Resume,
    /// The id of the last event before the first one it will read, if known.
    pub(crate) position: Option<String>,
}

/// What [`Subscriber::poll_batch`] hands over, a topic named by its key.
#[derive(Debug)]
pub(crate) enum Item {
    Event(usize, Arc<Event>),
    Lagged(usize, u64),
    /// The topic has left the set.
    Closed(String, CloseReason),
}

impl Subscriber {
    pub(super) fn new(hub: Hub) -> Self {
        Self {
            hub,
            slots: Vec::new(),
            len: 0,
            ready: Arc::default(),
            pending: Vec::new(),
            events: Vec::new(),
            ended: Vec::new(),
            held: std::collections::VecDeque::new(),
        }
    }

    /// Adds `topic` to the set: its events from now on are received. Returns false, and
    /// changes nothing, when the set holds it already.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        if self.key(topic).is_some() {
            return false;
        }
        let subscription = self.hub.subscribe(topic);
        self.insert(subscription);
        true
    }

    /// Adds `topic` to the set, resuming right after the event with id `last_event_id`
    /// as [`Hub::resume`] does; `None` when the set holds it already.
    pub fn resume(&mut self, topic: &str, last_event_id: &str) -> Option<Resume> {
        if self.key(topic).is_some() {
            return None;
        }
        let (subscription, resume) = self.hub.resume(topic, last_event_id);
        self.insert(subscription);
        Some(resume)
    }

    /// Adds `topic` to the set as `since` says; `None` when the set holds it already.
    /// Returns its key, whether the resume is complete, and where the stream stands in
    /// the topic.
    pub(crate) fn join(&mut self, topic: &str, since: Since<'_>) -> Option<Joined> {
        if self.key(topic).is_some() {
            return None;
        }
        let (subscription, resume) = match since {
            Since::Now => (self.hub.subscribe(topic), Resume::Complete),
            Since::After(id) => self.hub.resume(topic, id),
            Since::Start => self.hub.resume_from_start(topic),
        };
        let position = match since {
            Since::After(id) => Some(id.to_owned()),
            Since::Now | Since::Start => subscription.last_id(),
        };
        let key = self.insert(subscription);
        Some(Joined {
            key,
            resume,
            position,
        })
    }

    /// Removes `topic` from the set; false when it was not in it. What was read of it
    /// and not yet received is dropped.
    pub fn unsubscribe(&mut self, topic: &str) -> bool {
        let Some(key) = self.key(topic) else {
            return false;
        };
        self.slots[key] = None;
        self.len -= 1;
        self.held.retain(|item| match item {
            Item::Event(of, _) | Item::Lagged(of, _) => *of != key,
            Item::Closed(..) => true,
        });
        true
    }

    /// Whether `topic` is in the set.
    pub fn contains(&self, topic: &str) -> bool {
        self.key(topic).is_some()
    }

    /// The topics of the set, in the order of their keys.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .flatten()
            .filter(|topic| !topic.ended)
            .map(|topic| topic.subscription.topic())
    }

    /// How many topics the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds no topic.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits for the next event of any topic of the set, or news of one; `None` when the
    /// set is empty.
    pub async fn recv(&mut self) -> Option<Received<'_>> {
        if self.held.is_empty() {
            if self.is_empty() {
                return None;
            }
            let mut items = Vec::new();
            poll_fn(|cx| self.poll_batch(cx, &mut items, 1)).await;
            self.held.extend(items);
        }
        Some(match self.held.pop_front()? {
            Item::Event(key, event) => Received::Event {
                topic: self.topic(key),
                event,
            },
            Item::Lagged(key, missed) => Received::Lagged {
                topic: self.topic(key),
                missed,
            },
            Item::Closed(topic, reason) => Received::Closed { topic, reason },
        })
    }

    /// The topic of `key`.
    pub(crate) fn topic(&self, key: usize) -> &str {
        self.slots[key]
            .as_ref()
            .map_or("", |topic| topic.subscription.topic())
    }

    /// The key of `topic`, if the set holds it. The set is small (a connection's topics are
    /// bounded), so a scan costs less than an index would hold.
    pub(crate) fn key(&self, topic: &str) -> Option<usize> {
        self.slots.iter().position(|slot| {
            slot.as_ref()
                .is_some_and(|slot| !slot.ended && slot.subscription.topic() == topic)
        })
    }

    /// Adds `subscription` under the lowest free key, and reads it at once: a resumed
    /// subscription has events waiting.
    fn insert(&mut self, subscription: Subscription) -> usize {
        let key = self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
        let waker = Arc::new(TopicWaker {
            key,
            queued: AtomicBool::new(false),
            ready: Arc::clone(&self.ready),
        });
        waker.queue();
        self.slots[key] = Some(Topic {
            subscription,
            waker,
            ended: false,
        });
        self.len += 1;
        // A task waiting on the set learns of the new topic.
        self.ready.task.wake();
        key
    }

    /// Appends up to `limit` items from the topics with news to `out`: ready once it has
    /// appended any, pending (with the task's waker registered) when no topic has news.
    pub(crate) fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Item>,
        limit: usize,
    ) -> Poll<()> {
        self.ready.task.register(cx.waker());
        for key in self.ended.drain(..) {
            self.slots[key] = None;
        }
        let start = out.len();
        loop {
            if self.pending.is_empty() {
                if !self.ready.raised.swap(false, Ordering::AcqRel) {
                    break;
                }
                std::mem::swap(&mut self.pending, &mut *lock(&self.ready.queue));
                // Oldest news first.
                self.pending.reverse();
            }
            let Some(key) = self.pending.pop() else {
                continue;
            };
            self.read(key, out);
            if out.len() - start >= limit {
                break;
            }
        }
        if out.len() > start {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes a turn of events from the topic of `key`, and queues it again if it has more.
    fn read(&mut self, key: usize, out: &mut Vec<Item>) {
        // A key may be left in the queue by a topic unsubscribed since.
        let Some(Some(topic)) = self.slots.get_mut(key) else {
            return;
        };
        if topic.ended {
            return;
        }
        // Lowered before reading: news that comes during the read queues the topic again.
        topic.waker.queued.store(false, Ordering::Release);
        let waker = Waker::from(Arc::clone(&topic.waker));
        let mut cx = Context::from_waker(&waker);
        match topic
            .subscription
            .poll_batch(&mut cx, &mut self.events, PER_TOPIC)
        {
            Poll::Ready(Ok((_, caught_up))) => {
                out.extend(self.events.drain(..).map(|event| Item::Event(key, event)));
                if !caught_up {
                    topic.waker.queue();
                }
            }
            Poll::Ready(Err(RecvError::Lagged(missed))) => {
                out.push(Item::Lagged(key, missed));
                topic.waker.queue();
            }
            Poll::Ready(Err(RecvError::Closed(reason))) => {
                topic.ended = true;
                self.ended.push(key);
                self.len -= 1;
                out.push(Item::Closed(topic.subscription.topic().to_owned(), reason));
            }
            // The subscription holds the topic's waker.
            Poll::Pending => {}
        }
    }

    /// Leaves every topic now, as dropping does: see [`Subscription::detach`].
    pub(crate) fn detach(&mut self) {
        for topic in self.slots.iter_mut().flatten() {
            topic.subscription.detach();
        }
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("topics", &self.topics().collect::<Vec<_>>())
            .finish()
    }
}
