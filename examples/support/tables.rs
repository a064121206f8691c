//! Current-thread runtimes on threads that each have a file table of their own, so that
//! one process holds more sockets than its open-file limit allows: the limit
//! (`RLIMIT_NOFILE`) bounds the descriptor numbers of a file table, not of a process, and
//! `unshare(CLONE_FILES)` gives the calling thread a table of its own, a copy of the
//! process's. On a host whose hard limit is 20 000 and that withholds
//! `CAP_SYS_RESOURCE`, six tables hold 100 000 connections in one process.
//!
//! Two rules keep this sound:
//! - Every runtime is built before any of the threads unshares, so every table has every
//!   runtime's wake-up descriptors (and those of what the process made before): a task
//!   woken from another thread is scheduled by a write to its runtime's eventfd, by
//!   number, in the waker's own table. A runtime built after the tables started is in
//!   none of them, and nothing on a table may wake its tasks.
//! - What a table's tasks open exists only in that table: a task spawned on a table's
//!   runtime keeps its sockets, uses them and closes them there (a current-thread runtime
//!   never moves a task to another thread), and a table's runtime is dropped on its own
//!   thread, closing what its tasks still hold.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

/// Descriptors a table keeps free of connections: the copies of the process's own, a
/// listener, and the control connections of a load run.
const RESERVE: u64 = 1_000;

/// Threads with file tables of their own, each running a current-thread runtime until
/// this is dropped.
pub struct Tables {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl Tables {
    /// How many tables hold `connections` sockets (at least `least`) when a table holds up
    /// to the soft open-file limit `limit`.
    pub fn needed(connections: usize, limit: u64, least: usize) -> usize {
        let room = limit.saturating_sub(RESERVE).max(1) as usize;
        connections.div_ceil(room).max(least)
    }

    /// Builds `count` runtimes, then starts a thread for each that takes a file table of
    /// its own and runs its runtime. Fails when a runtime cannot be built or a thread
    /// cannot have a table of its own.
    pub fn start(count: usize) -> io::Result<Self> {
        let runtimes = (0..count)
            .map(|_| Builder::new_current_thread().enable_all().build())
            .collect::<io::Result<Vec<_>>>()?;
        let handles = runtimes.iter().map(|rt| rt.handle().clone()).collect();
        let (stop, stopped) = watch::channel(false);
        let (started, starts) = mpsc::channel();
        let mut threads = Vec::with_capacity(count);
        for (i, runtime) in runtimes.into_iter().enumerate() {
            let mut stopped = stopped.clone();
            let started = started.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("table-{i}"))
                    .spawn(move || {
                        if let Err(error) = unshare_files() {
                            let _ = started.send(Err(error));
                            return;
                        }
                        let _ = started.send(Ok(()));
                        runtime.block_on(async {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        });
                        // The runtime, and every socket its tasks hold, goes with this
                        // thread's table.
                        drop(runtime);
                    })?,
            );
        }
        drop(started);
        let tables = Self {
            handles,
            stop,
            threads,
        };
        for _ in 0..count {
            starts
                .recv()
                .map_err(|_| io::Error::other("a table's thread ended"))??;
        }
        Ok(tables)
    }

    /// The tables' runtimes: spawn a table's tasks on its handle.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Gives the calling thread a file table of its own.
fn unshare_files() -> io::Result<()> {
    // SAFETY: unshare only changes which file table this thread uses; every descriptor
    // it had stays open under the same number.
    #[allow(unsafe_code)]
    let done = unsafe { libc::unshare(libc::CLONE_FILES) };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
