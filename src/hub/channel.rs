//! One topic's state: a bounded ring of recent events read by every subscriber at its own
//! cursor, and the wakers of the subscribers waiting for more.
//!
//! A broadcast stores one `Arc<Event>` in the ring, whatever the number of subscribers, and
//! the ring lets go of it once every subscriber has read it. A subscriber that never reads
//! costs nothing but its cursor, and memory per topic is bounded by the ring's capacity.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::CloseReason;
use super::waiters::{Waiters, Wakeups};
use crate::Event;

pub(super) struct Channel {
    pub(super) topic: Box<str>,
    /// The topic's hash in the hub, which keys the shard's table.
    pub(super) hash: u64,
    /// While the topic is idle (no subscriber, kept for its history), the generation of
    /// its entry in the shard's idle queue; 0 otherwise. Written and read only under the
    /// shard's lock, so that the queue can be checked without locking each channel.
    pub(super) idle: AtomicU64,
    pub(super) state: Mutex<ChannelState>,
}

pub(super) struct ChannelState {
    /// Recent events not yet read by every subscriber, oldest first; the last has sequence
    /// number `next_seq - 1`. At most `capacity` long.
    ring: VecDeque<Slot>,
    retention: Retention,
    next_seq: u64,
    /// `next_seq` at the last [`compact`](Self::compact): no event came since when the two
    /// are equal.
    compacted_at: u64,
    /// Subscriptions reading the ring, ended ones included until they are dropped.
    pub(super) subscribers: usize,
    /// Subscriptions that have not ended: those a broadcast reaches.
    pub(super) live: usize,
    /// Bumped by [`Hub::disconnect`](super::Hub::disconnect): subscriptions that joined
    /// before end.
    pub(super) disconnects: u64,
    pub(super) waiters: Waiters,
    pub(super) closed: Option<CloseReason>,
    /// Removed from its shard's table: a [`Publisher`](super::Publisher) holding it looks
    /// the topic up again.
    pub(super) retired: bool,
    /// Broadcasts that reached the channel, and the deliveries they made: counted under
    /// its lock, which a publisher holding it takes alone, and added to the shard's counts
    /// when it is forgotten.
    pub(super) broadcasts: u64,
    pub(super) deliveries: u64,
}

/// How many events a channel keeps, and the incarnation its ids are drawn from.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retention {
    /// Events a subscriber may be behind before it lags: the ring's length.
    pub(super) capacity: usize,
    /// Events kept after every subscriber has read them.
    pub(super) history: usize,
    /// Distinguishes this channel's ids from those of an earlier channel of the topic.
    pub(super) epoch: u64,
}

/// What a subscriber found when it read from a channel.
pub(super) enum Read {
    /// This many events were handed over; `caught_up` when they were the newest.
    Events { count: usize, caught_up: bool },
    /// The subscriber's cursor had fallen out of the ring; it now points at the oldest
    /// retained event, and this many events were missed.
    Lagged(u64),
    /// Nothing new.
    Empty,
    /// The next thing in the ring is a gap: events of the topic that this node could not
    /// get are missing there. The cursor has moved past it.
    Lost,
}

impl Channel {
    pub(super) fn new(topic: &str, hash: u64, retention: Retention) -> Self {
        Self {
            topic: topic.into(),
            hash,
            idle: AtomicU64::new(0),
            state: Mutex::new(ChannelState {
                // Grows on demand up to the capacity: a quiet topic stays small.
                ring: VecDeque::new(),
                retention,
                next_seq: 0,
                compacted_at: 0,
                subscribers: 0,
                live: 0,
                disconnects: 0,
                waiters: Waiters::default(),
                closed: None,
                retired: false,
                broadcasts: 0,
                deliveries: 0,
            }),
        }
    }

    pub(super) fn is(&self, topic: &str) -> bool {
        *self.topic == *topic
    }
}

impl ChannelState {
    /// The cursor of a subscriber that wants only events published from now on.
    pub(super) fn tail(&self) -> u64 {
        self.next_seq
    }

    /// The event broadcast last, if still held.
    pub(super) fn newest(&self) -> Option<Arc<Event>> {
        self.ring.back().map(|slot| Arc::clone(&slot.event))
    }

    /// Whether the channel keeps events for subscribers yet to come.
    pub(super) fn keeps_history(&self) -> bool {
        self.retention.history > 0
    }

    /// Adds a subscriber that reads from `cursor` on.
    pub(super) fn join(&mut self, cursor: u64) {
        self.subscribers += 1;
        self.live += 1;
        let start = (cursor.saturating_sub(self.oldest()) as usize).min(self.ring.len());
        for slot in self.ring.range_mut(start..) {
            slot.unread += 1;
        }
    }

    /// Where a subscriber that last saw the event `last_id` resumes, and whether events
    /// after that one are no longer retained.
    pub(super) fn resume_cursor(&self, last_id: &str) -> (u64, bool) {
        if !self.keeps_history() {
            return (self.tail(), true);
        }
        let oldest = self.oldest();
        // An id the hub assigned names its position.
        if let Some(seq) = parse_id(last_id, self.retention.epoch)
            && seq < self.next_seq
        {
            return if seq + 1 >= oldest {
                (seq + 1, false)
            } else {
                (oldest, true)
            };
        }
        // An id the publisher chose is looked up among the retained events.
        match self
            .ring
            .iter()
            .rposition(|slot| slot.event.event_id() == Some(last_id))
        {
            Some(index) => (oldest + index as u64 + 1, false),
            None => (oldest, true),
        }
    }

    /// Where a subscriber that has seen nothing of the topic, but wants all of it since
    /// the channel began, resumes: at the oldest event retained; and whether events of
    /// the channel were dropped before it.
    pub(super) fn start_cursor(&self) -> (u64, bool) {
        let oldest = self.oldest();
        (oldest, !self.keeps_history() || oldest > 0)
    }

    /// The id of the event just before `cursor`, if still held.
    pub(super) fn id_before(&self, cursor: u64) -> Option<String> {
        let index = cursor.checked_sub(self.oldest())?.checked_sub(1)?;
        self.ring
            .get(index as usize)
            .and_then(|slot| slot.event.event_id().map(str::to_owned))
    }

    /// Sequence number of the oldest event still in the ring.
    fn oldest(&self) -> u64 {
        self.next_seq - self.ring.len() as u64
    }

    /// Appends the broadcast `event` for every current subscriber, moves the wakers of
    /// waiting subscribers to `wake`, and returns the event that fell out of a full ring,
    /// so that the caller frees it after unlocking.
    #[inline(always)]
    pub(super) fn push(&mut self, mut event: Arc<Event>, wake: &mut Wakeups) -> Option<Arc<Event>> {
        self.broadcasts += 1;
        self.deliveries += self.live as u64;
        if self.keeps_history()
            && event.event_id().is_none()
            && let Some(event) = Arc::get_mut(&mut event)
        {
            event.assign_id(format_id(self.retention.epoch, self.next_seq));
        }
        self.append(event, wake)
    }

    /// Marks a gap: events of the topic are missing here, which no one on this node will
    /// get. Every subscriber, and every later resume that replays past it, is told.
    pub(super) fn push_gap(&mut self, wake: &mut Wakeups) -> Option<Arc<Event>> {
        self.append(Arc::clone(gap()), wake)
    }

    #[inline(always)]
    fn append(&mut self, event: Arc<Event>, wake: &mut Wakeups) -> Option<Arc<Event>> {
        let evicted = if self.ring.len() == self.retention.capacity {
            self.ring.pop_front().map(|slot| slot.event)
        } else {
            None
        };
        self.ring.push_back(Slot {
            event,
            unread: self.subscribers,
        });
        self.next_seq += 1;
        // Only a ring with nobody to read its oldest event has anything to drop.
        if self.ring.front().is_some_and(|slot| slot.unread == 0) {
            self.trim();
        }
        self.waiters.take_all(wake);
        evicted
    }

    /// Hands up to `limit` events after `cursor` to `deliver`, advancing the cursor. A
    /// gap ends the run before it, and is reported by the next read on its own.
    pub(super) fn read(
        &mut self,
        cursor: &mut u64,
        limit: usize,
        mut deliver: impl FnMut(Arc<Event>),
    ) -> Read {
        let oldest = self.oldest();
        if *cursor < oldest {
            let missed = oldest - *cursor;
            *cursor = oldest;
            return Read::Lagged(missed);
        }
        let start = (*cursor - oldest) as usize;
        let available = (self.ring.len() - start).min(limit);
        if available == 0 {
            return Read::Empty;
        }
        let gap = gap();
        let mut count = 0;
        // An event no one else is left to read leaves the ring with this subscriber: moved,
        // not cloned then dropped, so that its count, last written by the publisher's
        // core, is not touched while the publisher may be waiting for the lock.
        if start == 0 {
            while count < available
                && self.ring.len() > self.retention.history
                && let Some(slot) = self.ring.front()
                && slot.unread == 1
                && !Arc::ptr_eq(&slot.event, gap)
                && let Some(slot) = self.ring.pop_front()
            {
                deliver(slot.event);
                count += 1;
            }
        }
        *cursor += count as u64;
        let taken = count;
        for slot in self.ring.range_mut(start..start + available - taken) {
            if Arc::ptr_eq(&slot.event, gap) {
                if count == 0 {
                    slot.unread -= 1;
                    *cursor += 1;
                    self.trim();
                    return Read::Lost;
                }
                break;
            }
            slot.unread -= 1;
            deliver(Arc::clone(&slot.event));
            count += 1;
        }
        *cursor += (count - taken) as u64;
        self.trim();
        Read::Events {
            count,
            caught_up: *cursor == self.next_seq,
        }
    }

    /// The gap at `cursor`, when the next thing there is one.
    pub(super) fn gap_at(&self, cursor: u64) -> Option<Gap<'_>> {
        let index = usize::try_from(cursor.checked_sub(self.oldest())?).ok()?;
        let slot = self.ring.get(index)?;
        Arc::ptr_eq(&slot.event, gap()).then(|| Gap {
            then: self.ring.get(index + 1).map(|slot| &*slot.event),
        })
    }

    /// Forgets a subscriber at `cursor`, which has `ended` already or not: the events it
    /// has not read are no longer held for it. Returns how many events it had lost to the
    /// ring without noticing.
    pub(super) fn leave(&mut self, cursor: u64, ended: bool) -> u64 {
        self.subscribers -= 1;
        if !ended {
            self.live -= 1;
        }
        let oldest = self.oldest();
        let start = cursor.saturating_sub(oldest) as usize;
        for slot in self.ring.range_mut(start.min(self.ring.len())..) {
            slot.unread -= 1;
        }
        self.trim();
        oldest.saturating_sub(cursor)
    }

    /// Drops the events every subscriber has read, beyond the history. Subscribers read
    /// in order, so those are always at the front.
    fn trim(&mut self) {
        while self.ring.len() > self.retention.history
            && self.ring.front().is_some_and(|slot| slot.unread == 0)
        {
            self.ring.pop_front();
        }
    }

    #[cfg(test)]
    pub(super) fn ring_capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Frees the ring of a topic that has gone quiet: empty, and no event since the last
    /// compaction. Called from its subscribers' timers, not when the ring empties: a ring
    /// freed at every emptying is allocated again by the next burst, and that allocation,
    /// of memory another thread freed, costs more than the burst's broadcasts together.
    pub(super) fn compact(&mut self) {
        if self.ring.is_empty() && self.next_seq == self.compacted_at {
            self.ring = VecDeque::new();
        }
        self.compacted_at = self.next_seq;
    }
}

/// The id the hub gives an event that has none: opaque to clients, unique to the
/// channel's incarnation, increasing within it.
fn format_id(epoch: u64, seq: u64) -> String {
    format!("{epoch:x}-{seq}")
}

/// The sequence number in an id of [`format_id`] from the channel of `epoch`.
fn parse_id(id: &str, epoch: u64) -> Option<u64> {
    let (id_epoch, seq) = id.split_once('-')?;
    (u64::from_str_radix(id_epoch, 16).ok()? == epoch)
        .then(|| seq.parse().ok())
        .flatten()
}

/// The one event that stands for a gap in a ring: recognised by address, so that a slot
/// needs no field of its own for it.
fn gap() -> &'static Arc<Event> {
    static GAP: OnceLock<Arc<Event>> = OnceLock::new();
    GAP.get_or_init(|| Arc::new(Event::new(Bytes::new())))
}

/// A gap in a ring, seen from a cursor at it.
pub(super) struct Gap<'a> {
    /// What follows it, if anything does yet: a gap, or an event.
    pub(super) then: Option<&'a Event>,
}

/// An event in the ring and how many current subscribers have yet to read it.
struct Slot {
    event: Arc<Event>,
    unread: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_is_kept_while_its_topic_is_busy_and_freed_once_it_is_quiet() {
        let retention = Retention {
            capacity: 256,
            history: 0,
            epoch: 1,
        };
        let channel = Channel::new("t", 0, retention);
        let mut state = channel.state.lock().expect("not poisoned");
        let mut cursor = state.tail();
        state.join(cursor);
        let event = Arc::new(Event::new("x"));
        let publish = |state: &mut ChannelState, events: usize| {
            for _ in 0..events {
                state.push(Arc::clone(&event), &mut Default::default());
            }
        };
        let mut read_all = |state: &mut ChannelState| {
            let mut count = 0;
            state.read(&mut cursor, usize::MAX, |_| count += 1);
            count
        };

        publish(&mut state, 64);
        let grown = state.ring.capacity();
        assert!(grown >= 64);
        assert_eq!(read_all(&mut state), 64);
        assert_eq!(state.ring.capacity(), grown, "emptied, not freed");

        state.compact();
        assert_eq!(
            state.ring.capacity(),
            grown,
            "events came since the last look"
        );
        publish(&mut state, 1);
        assert_eq!(read_all(&mut state), 1);
        state.compact();
        assert_eq!(state.ring.capacity(), grown, "still busy");

        publish(&mut state, 1);
        state.compact();
        assert_eq!(state.ring.capacity(), grown, "an unread event is kept");
        state.compact();
        assert_eq!(state.ring.capacity(), grown, "still unread");
        assert_eq!(read_all(&mut state), 1);
        state.compact();
        assert_eq!(
            state.ring.capacity(),
            0,
            "empty and quiet since the last look"
        );
    }
}
