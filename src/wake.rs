//! Telling what woke a task that waits on several things at once.
//!
//! A connection waits on its subscription, its socket and a timer with one task waker;
//! most wake-ups are for an event, and polling everything else on each of them (a socket
//! read attempt, the timer wheel) would cost more than the delivery. A [`Signal`] stands
//! between one source and the task and remembers that it fired; an [`Alarm`] is a timer
//! that is polled only once it is due.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep, sleep_until};

/// A waker for one source: waking it raises a flag and wakes the task.
pub(crate) struct Signal {
    shared: Arc<Shared>,
    waker: Waker,
}

struct Shared {
    raised: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raised.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Signal {
    /// A signal that starts raised, so the source is polled once.
    pub(crate) fn new() -> Self {
        let shared = Arc::new(Shared {
            raised: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(Arc::clone(&shared)),
            shared,
        }
    }

    /// Remembers the task's waker, then lowers the flag: true when the source may have
    /// something, and is to be polled with [`waker`](Self::waker).
    pub(crate) fn take(&self, task: &Waker) -> bool {
        self.shared.task.register(task);
        self.shared.raised.swap(false, Ordering::AcqRel)
    }

    /// Raises the flag: the source was left with more to give.
    pub(crate) fn raise(&self) {
        self.shared.raised.store(true, Ordering::Release);
    }

    /// The waker to poll the source with.
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

/// A timer polled only when it is due or was just set: checking whether it is due is a
/// load, where a poll goes to the timer wheel.
pub(crate) struct Alarm {
    sleep: Pin<Box<Sleep>>,
    /// Whether the timer has been polled since it was set, so it will wake the task.
    armed: bool,
}

impl Alarm {
    pub(crate) fn new(at: Instant) -> Self {
        Self {
            sleep: Box::pin(sleep_until(at)),
            armed: false,
        }
    }

    /// True once the deadline has passed; the alarm then stays rung until it is
    /// [`set`](Self::set) again.
    pub(crate) fn poll_rung(&mut self, cx: &mut Context<'_>) -> bool {
        if self.armed && !self.sleep.is_elapsed() {
            return false;
        }
        let rung = self.sleep.as_mut().poll(cx).is_ready();
        self.armed = !rung;
        rung
    }

    /// Sets the deadline; the next [`poll_rung`](Self::poll_rung) registers it.
    pub(crate) fn set(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = false;
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }
}
