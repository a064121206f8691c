//! A subscriber over a changing set of topics: one [`Subscription`] per topic, each with a
//! waker of its own that marks its topic as having news, so that a wake-up reads only
//! those, however many quiet topics the set holds. The first 64 topics (all of them, with
//! the layer's default bound) are marked in one atomic word; the others in a queue. A
//! set that has only ever held one topic needs none of this: its topic is read with the
//! task's own waker, as a lone [`Subscription`] is.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The one topic of a set that has never held more: read with the task's own waker,
    /// without marking anything.
    only: Option<usize>,
    /// What a set of several topics needs besides; made when it first holds two.
    many: Option<Box<Many>>,
    /// What [`recv`](Self::recv) has read and not yet returned, newest first.
    held: Vec<Item>,
    /// Topics that ended and whose slots are not yet freed.
    ended: usize,
}

/// The part of a [`Subscriber`] that only a set of several topics needs.
struct Many {
    /// What the topics' own wakers mark.
    ready: Arc<Ready>,
    /// Keys taken from `ready` and not yet read.
    pending: Vec<usize>,
}

struct Topic {
    subscription: Subscription,
    /// The topic's own waker, and the same as a [`Waker`]; none while it is the only
    /// topic a set has held, read with the task's waker.
    waker: Option<(Arc<TopicWaker>, Waker)>,
    /// Out of the set, its slot freed at the next read, once the items that name it
    /// have been taken.
    ended: bool,
}

/// The topics with news, shared with every topic's waker.
#[derive(Default)]
struct Ready {
    /// Bit `k` set: the topic of key `k` has news, for keys below [`BITS`].
    bits: AtomicU64,
    /// The keys from [`BITS`] on that have news; `raised` when not empty.
    queue: Mutex<Vec<usize>>,
    raised: AtomicBool,
    task: AtomicWaker,
}

/// Keys marked in [`Ready::bits`].
const BITS: usize = 64;

/// The waker a topic's subscription registers: it marks the topic and wakes the task.
struct TopicWaker {
    key: usize,
    /// For keys from [`BITS`] on: whether the key waits in the queue.
    queued: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake for TopicWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark();
        self.ready.task.wake();
    }
}

impl TopicWaker {
    /// The waker of the topic of `key`, marked already: a topic is read once it joins.
    fn new(key: usize, ready: &Arc<Ready>) -> (Arc<Self>, Waker) {
        let waker = Arc::new(Self {
            key,
            queued: AtomicBool::new(false),
            ready: Arc::clone(ready),
        });
        waker.mark();
        let handle = Waker::from(Arc::clone(&waker));
        (waker, handle)
    }

    fn mark(&self) {
        if self.key < BITS {
            self.ready.bits.fetch_or(1 << self.key, Ordering::AcqRel);
        } else if !self.queued.swap(true, Ordering::AcqRel) {
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
    /// Events of `topic` are missing here, how many unknown ([`RecvError::Lost`]); it
    /// goes on with the events after the gap.
    Lost {
        /// The topic with the gap.
        topic: &'a str,
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
    Lost(usize),
    /// The topic has left the set.
    Closed(String, CloseReason),
}

impl Subscriber {
    pub(super) fn new(hub: Hub) -> Self {
        Self::with_capacity(hub, 0)
    }

    /// A subscriber with room for `topics` topics.
    pub(crate) fn with_capacity(hub: Hub, topics: usize) -> Self {
        Self {
            hub,
            slots: Vec::with_capacity(topics),
            len: 0,
            only: None,
            many: None,
            held: Vec::new(),
            ended: 0,
        }
    }

    /// Adds `topic` to the set: its events from now on are received. Returns false, and
    /// changes nothing, when the set holds it already.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.join(topic, Since::Now).is_some()
    }

    /// Adds `topic` to the set, resuming right after the event with id `last_event_id`
    /// as [`Hub::resume`] does; `None` when the set holds it already.
    pub fn resume(&mut self, topic: &str, last_event_id: &str) -> Option<Resume> {
        self.join(topic, Since::After(last_event_id))
            .map(|joined| joined.resume)
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
        if self.only == Some(key) {
            self.only = None;
        }
        self.held.retain(|item| match item {
            Item::Event(of, _) | Item::Lagged(of, _) | Item::Lost(of) => *of != key,
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
            poll_fn(|cx| self.poll_batch(cx, &mut items, 1).map(|_| ())).await;
            items.reverse();
            self.held = items;
        }
        Some(match self.held.pop()? {
            Item::Event(key, event) => Received::Event {
                topic: self.topic(key),
                event,
            },
            Item::Lagged(key, missed) => Received::Lagged {
                topic: self.topic(key),
                missed,
            },
            Item::Lost(key) => Received::Lost {
                topic: self.topic(key),
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
        self.slots[key] = Some(Topic {
            subscription,
            waker: None,
            ended: false,
        });
        self.len += 1;
        match &self.many {
            None if self.len == 1 => self.only = Some(key),
            None => {
                // A second topic: from now on every topic has its own waker. The first
                // one's subscription holds the task's waker; marked, it is read once more
                // through its own, which registers that instead.
                self.only = None;
                let ready = Arc::<Ready>::default();
                for (key, slot) in self.slots.iter_mut().enumerate() {
                    if let Some(topic) = slot.as_mut().filter(|topic| !topic.ended) {
                        topic.waker = Some(TopicWaker::new(key, &ready));
                    }
                }
                // A task waiting on the set learns of the new topic.
                ready.task.wake();
                self.many = Some(Box::new(Many {
                    ready,
                    pending: Vec::new(),
                }));
            }
            Some(many) => {
                if let Some(Some(topic)) = self.slots.get_mut(key) {
                    topic.waker = Some(TopicWaker::new(key, &many.ready));
                }
                many.ready.task.wake();
            }
        }
        key
    }

    /// Appends up to `limit` items from the topics with news to `out`: ready once it has
    /// appended any, with true when more may be waiting; pending when no topic has news.
    /// Once no topic has news, the task's waker is registered, so that after a `false`
    /// no further poll is needed until the task is woken.
    pub(crate) fn poll_batch(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Item>,
        limit: usize,
    ) -> Poll<bool> {
        self.free_ended();
        if let Some(key) = self.only {
            return self.read_only(key, cx, out, limit);
        }
        let Some(many) = &mut self.many else {
            // Empty, and never held two topics.
            return Poll::Pending;
        };
        let start = out.len();
        if many.pending.is_empty() {
            many.take_ready();
        }
        loop {
            while let Some(key) = self.many.as_mut().and_then(|many| many.pending.pop()) {
                self.read(key, out);
                if out.len() - start >= limit {
                    return Poll::Ready(true);
                }
            }
            let Some(many) = &mut self.many else {
                return Poll::Pending;
            };
            // Registered before looking once more: news from now on wakes the task.
            many.ready.task.register(cx.waker());
            if !many.take_ready() {
                return if out.len() > start {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                };
            }
        }
    }

    /// Frees the slots of topics that ended: the items naming them have been taken.
    fn free_ended(&mut self) {
        if self.ended == 0 {
            return;
        }
        self.ended = 0;
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|topic| topic.ended) {
                *slot = None;
            }
        }
        if self.only.is_some_and(|key| self.slots[key].is_none()) {
            self.only = None;
        }
    }

    /// Reads the one topic of a set that has held no other, with the task's waker.
    fn read_only(
        &mut self,
        key: usize,
        cx: &mut Context<'_>,
        out: &mut Vec<Item>,
        limit: usize,
    ) -> Poll<bool> {
        let Some(Some(topic)) = self.slots.get_mut(key) else {
            return Poll::Pending;
        };
        match topic
            .subscription
            .poll_each(cx, limit, |event| out.push(Item::Event(key, event)))
        {
            Poll::Ready(Ok((_, caught_up))) => Poll::Ready(!caught_up),
            Poll::Ready(Err(RecvError::Lost)) => {
                out.push(Item::Lost(key));
                Poll::Ready(true)
            }
            Poll::Ready(Err(RecvError::Lagged(missed))) => {
                out.push(Item::Lagged(key, missed));
                Poll::Ready(true)
            }
            Poll::Ready(Err(RecvError::Closed(reason))) => {
                topic.ended = true;
                self.ended += 1;
                self.len -= 1;
                out.push(Item::Closed(topic.subscription.topic().to_owned(), reason));
                Poll::Ready(false)
            }
            // The subscription holds the task's waker.
            Poll::Pending => Poll::Pending,
        }
    }

    /// Takes a turn of events from the topic of `key`, and marks it again if it has more.
    fn read(&mut self, key: usize, out: &mut Vec<Item>) {
        // A key may be left marked by a topic unsubscribed since.
        let Some(Some(topic)) = self.slots.get_mut(key) else {
            return;
        };
        let Some((waker, handle)) = &topic.waker else {
            return;
        };
        if topic.ended {
            return;
        }
        // Lowered before reading: news that comes during the read marks the topic again.
        waker.queued.store(false, Ordering::Release);
        let mut cx = Context::from_waker(handle);
        match topic.subscription.poll_each(&mut cx, PER_TOPIC, |event| {
            out.push(Item::Event(key, event))
        }) {
            Poll::Ready(Ok((_, caught_up))) => {
                if !caught_up {
                    waker.mark();
                }
            }
            Poll::Ready(Err(RecvError::Lost)) => {
                out.push(Item::Lost(key));
                waker.mark();
            }
            Poll::Ready(Err(RecvError::Lagged(missed))) => {
                out.push(Item::Lagged(key, missed));
                waker.mark();
            }
            Poll::Ready(Err(RecvError::Closed(reason))) => {
                topic.ended = true;
                self.ended += 1;
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

    /// Lets each topic free its ring if it has gone quiet: see
    /// [`Subscription::compact`].
    pub(crate) fn compact(&self) {
        for topic in self.slots.iter().flatten() {
            topic.subscription.compact();
        }
    }
}

impl Many {
    /// Moves the keys of the topics with news to `pending`, lowest first; false when
    /// there are none.
    fn take_ready(&mut self) -> bool {
        let ready = &self.ready;
        // Looked at before they are taken: a plain load costs less than a swap.
        let mut bits = if ready.bits.load(Ordering::Acquire) == 0 {
            0
        } else {
            ready.bits.swap(0, Ordering::AcqRel)
        };
        if ready.raised.load(Ordering::Acquire) && ready.raised.swap(false, Ordering::AcqRel) {
            let mut queue = lock(&ready.queue);
            // Popped from the end: the oldest news last pushed, so first out.
            self.pending.extend(queue.drain(..).rev());
        }
        while bits != 0 {
            let key = BITS - 1 - bits.leading_zeros() as usize;
            self.pending.push(key);
            bits &= !(1 << key);
        }
        !self.pending.is_empty()
    }
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("topics", &self.topics().collect::<Vec<_>>())
            .finish()
    }
}
