//! Connections waiting for their first request head, and what ends the wait from
//! outside: the head timeout, which a sweeper task enforces, and the server's shutdown.
//!
//! A waiting connection holds a ticket (8 bytes), not a timer and a shutdown listener of
//! its own. After a restart thousands of connections wait together, and the task a
//! connection waits in goes on to write its event stream in the same room (see
//! `Connected`): what waiting needs is kept out of that room for the stream's whole life.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The connections of one server that wait for their head.
#[derive(Clone, Default)]
pub(super) struct Waiting(Arc<Mutex<Places>>);

struct Places {
    /// Deadlines count milliseconds from here.
    epoch: Instant,
    places: Vec<Place>,
    free: Vec<u32>,
    /// Tells a place's occupants apart, so that a ticket leaves only its own; never 0.
    generation: u32,
}

impl Default for Places {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            places: Vec::new(),
            free: Vec::new(),
            generation: 0,
        }
    }
}

/// Small, since a storm of connections has one each: 24 bytes.
struct Place {
    /// 0 while the place is free.
    generation: u32,
    /// Milliseconds from the epoch.
    deadline: u64,
    /// The connection's task, once spawned.
    task: Option<AbortHandle>,
}

/// A connection's place among those waiting.
#[derive(Clone, Copy)]
pub(super) struct Ticket {
    index: u32,
    generation: u32,
}

/// Places kept allocated once every connection has its head again.
const KEPT: usize = 64;

impl Waiting {
    fn places(&self) -> MutexGuard<'_, Places> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection that must have its head by `deadline`.
    pub(super) fn enter(&self, deadline: Instant) -> Ticket {
        let mut places = self.places();
        places.generation = places.generation.checked_add(1).unwrap_or(1);
        let place = Place {
            generation: places.generation,
            deadline: millis(places.epoch, deadline),
            task: None,
        };
        let generation = place.generation;
        let index = match places.free.pop() {
            Some(index) => {
                places.places[index as usize] = place;
                index
            }
            None => {
                places.places.push(place);
                // More than 4 billion connections waiting at once do not fit in memory.
                (places.places.len() - 1) as u32
            }
        };
        Ticket { index, generation }
    }

    /// The connection of `ticket` has its head, or has failed before: it leaves.
    pub(super) fn leave(&self, ticket: Ticket) {
        let mut places = self.places();
        if places
            .places
            .get(ticket.index as usize)
            .is_some_and(|place| place.generation == ticket.generation)
        {
            places.vacate(ticket.index);
        }
    }

    /// Gives the place of `ticket` its connection's task, unless the connection has left
    /// already.
    pub(super) fn started(&self, ticket: Ticket, task: AbortHandle) {
        if let Some(place) = self.places().places.get_mut(ticket.index as usize)
            && place.generation == ticket.generation
        {
            place.task = Some(task);
        }
    }

    /// Closes the connections whose time is up at `now`, and returns how many.
    fn sweep(&self, now: Instant) -> usize {
        self.close(Some(now))
    }

    /// Closes every waiting connection: the server shuts down.
    pub(super) fn close_all(&self) {
        self.close(None);
    }

    /// Closes the connections whose time is up at `now`, or all of them.
    fn close(&self, now: Option<Instant>) -> usize {
        let tasks: Vec<AbortHandle> = {
            let mut places = self.places();
            let due = now.map(|now| millis(places.epoch, now));
            let mut tasks = Vec::new();
            for index in 0..places.places.len() {
                let place = &places.places[index];
                if place.generation != 0 && due.is_none_or(|due| place.deadline <= due) {
                    tasks.extend(places.vacate(index as u32));
                }
            }
            // After a storm of connections, every one served: let go of their places.
            if places.free.len() == places.places.len() && places.places.capacity() > KEPT {
                places.places.clear();
                places.places.shrink_to(KEPT);
                places.free.clear();
                places.free.shrink_to(KEPT);
            }
            tasks
        };
        // Aborted outside the lock, which is not needed to drop a task, but taken by
        // tasks that leave.
        tasks.iter().for_each(AbortHandle::abort);
        tasks.len()
    }
}

impl Places {
    /// Frees the place at `index`, and returns its connection's task.
    fn vacate(&mut self, index: u32) -> Option<AbortHandle> {
        let place = &mut self.places[index as usize];
        place.generation = 0;
        self.free.push(index);
        place.task.take()
    }
}

/// `at`, in milliseconds from `epoch`.
fn millis(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Enforces `head_timeout` on `waiting`'s connections, looking a few times per timeout
/// (at most every second), until the server and every connection have let go of it (it
/// lives in the value of their shutdown channel).
pub(super) async fn sweep(waiting: Waiting, head_timeout: Duration) {
    let period = (head_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let closed = waiting.sweep(Instant::now());
        if closed > 0 {
            tracing::debug!(closed, "connections closed without a request head in time");
        }
        if Arc::strong_count(&waiting.0) == 1 {
            break;
        }
    }
}
