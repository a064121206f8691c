//! Who waits for a topic's next event, and how a broadcast wakes them.
//!
//! A broadcast takes every waiting subscriber's waker under the topic's lock and wakes
//! them once every lock is released. Waking a tokio task from a thread that is not one
//! of its runtime's workers queues it through the runtime's shared queue, under a lock
//! the workers take too; with thousands to wake, while the first ones already run, that
//! lock is fought over and each wake-up costs several times what it does from a worker.
//! So a broadcast from outside the runtime with many tasks to wake hands them to a task
//! of their runtime, which wakes them from a worker, where a wake-up is a push onto the
//! worker's own queue, and the publisher goes on at once.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::task::Waker;

use tokio::runtime::Handle;

/// Wakers a broadcast takes before it hands them to a task of their runtime rather than
/// waking them itself, when it does not run on that runtime. Below this, the task would
/// cost more than it saves.
const HAND_OVER_FROM: usize = 16;

/// Where a subscriber's waker sits in [`Waiters`]: valid only within one epoch.
#[derive(Clone, Copy, Debug)]
pub(super) struct Registration {
    epoch: u64,
    key: usize,
}

/// The wakers of subscribers waiting for the next event.
///
/// A broadcast takes them all at once and starts a new epoch; a subscriber whose
/// registration is from an older epoch has been woken and registers afresh. Slots freed by
/// subscribers that leave are reused, so the list never outgrows the subscriber count.
#[derive(Default)]
pub(super) struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
    epoch: u64,
    /// The runtime a subscriber registered from, to wake a crowd of them from: taken by
    /// the broadcast that uses it, and found again by the next registration, so that a
    /// runtime shut down since is not kept.
    runtime: Option<Handle>,
}

impl Waiters {
    pub(super) fn register(&mut self, registration: &mut Option<Registration>, waker: &Waker) {
        if let Some(current) = *registration
            && current.epoch == self.epoch
            && let Some(Some(registered)) = self.slots.get_mut(current.key)
        {
            if !registered.will_wake(waker) {
                registered.clone_from(waker);
            }
            return;
        }
        if self.runtime.is_none() {
            self.runtime = Handle::try_current().ok();
        }
        let key = match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(waker.clone());
                key
            }
            None => {
                self.slots.push(Some(waker.clone()));
                self.slots.len() - 1
            }
        };
        *registration = Some(Registration {
            epoch: self.epoch,
            key,
        });
    }

    pub(super) fn remove(&mut self, registration: Option<Registration>) {
        if let Some(current) = registration
            && current.epoch == self.epoch
            && let Some(slot) = self.slots.get_mut(current.key)
            && slot.take().is_some()
        {
            self.free.push(current.key);
        }
    }

    /// Moves every waker to `wake` and starts a new epoch.
    #[inline]
    pub(super) fn take_all(&mut self, wake: &mut Wakeups) {
        // Most broadcasts of a burst find no one waiting.
        if !self.slots.is_empty() {
            self.take_all_now(wake);
        }
    }

    fn take_all_now(&mut self, wake: &mut Wakeups) {
        let taken = wake.taken();
        if self.slots.len() >= HAND_OVER_FROM && taken.runtime.is_none() {
            taken.runtime = self.runtime.take();
        }
        taken.wakers.extend(self.slots.drain(..).flatten());
        self.free.clear();
        self.epoch += 1;
    }
}

/// Wakers taken from channels under their locks, woken when this is dropped: declared
/// before the guards, it is dropped after them, so no lock is held while a task is woken.
///
/// It borrows a list kept per thread once a waker is taken, and only then: a broadcast
/// that wakes no one, as most in a burst do, does not touch it.
#[derive(Default)]
pub(super) struct Wakeups {
    /// Emptied by the drop, so nothing is left for the compiler's drop glue, which it
    /// would otherwise call out of line on every broadcast.
    taken: ManuallyDrop<Option<Taken>>,
}

/// What a broadcast has taken to wake.
struct Taken {
    wakers: Vec<Waker>,
    /// The subscribers' runtime, when there are many to wake.
    runtime: Option<Handle>,
}

thread_local! {
    static WAKE_LIST: Cell<Vec<Waker>> = const { Cell::new(Vec::new()) };
}

impl Wakeups {
    fn taken(&mut self) -> &mut Taken {
        self.taken.get_or_insert_with(|| Taken {
            // Taken rather than borrowed: a waker may broadcast again on this thread.
            wakers: WAKE_LIST.try_with(Cell::take).unwrap_or_default(),
            runtime: None,
        })
    }

    #[cold]
    fn wake_all(&mut self) {
        let Some(Taken {
            mut wakers,
            runtime,
        }) = self.taken.take()
        else {
            return;
        };
        if wakers.len() >= HAND_OVER_FROM
            && let Some(runtime) = runtime
            && !on_workers_of(&runtime)
        {
            let crowd = Crowd(wakers);
            runtime.spawn(async move { drop(crowd) });
            return;
        }
        wakers.drain(..).for_each(Waker::wake);
        // Kept for the next broadcast, unless the thread is going away.
        let _ = WAKE_LIST.try_with(|kept| kept.set(wakers));
    }
}

impl Drop for Wakeups {
    #[inline]
    fn drop(&mut self) {
        if self.taken.is_some() {
            self.wake_all();
        }
    }
}

/// Whether this thread runs a task of `runtime`, which wakes its tasks cheaply already.
fn on_workers_of(runtime: &Handle) -> bool {
    tokio::task::try_id().is_some()
        && Handle::try_current().is_ok_and(|current| current.id() == runtime.id())
}

/// Wakers handed to a task of their runtime, woken when it runs. Woken when dropped, so
/// that none is lost if the task never runs: a runtime that has shut down drops it at
/// once, on the publisher's thread, and a waker that panics leaves the rest to the
/// unwinding.
struct Crowd(Vec<Waker>);

impl Drop for Crowd {
    fn drop(&mut self) {
        self.0.drain(..).for_each(Waker::wake);
    }
}
