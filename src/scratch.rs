//! Reading through a buffer of the thread's.
//!
//! Most push connections are quiet most of the time, and a quiet connection should hold
//! no read buffer. A read lands in a buffer that belongs to the worker thread, and the
//! connection keeps only what it takes from it: a request head of its exact size, or
//! the part of a client's message its WebSocket library has not asked for yet.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// What one read asks the socket for.
const SIZE: usize = 16 * 1024;

/// Polls one read from `io` into the thread's buffer, and hands what it filled (nothing
/// at the end of the stream) to `take`.
pub(crate) fn poll_read<R>(
    io: Pin<&mut impl AsyncRead>,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]) -> R,
) -> Poll<io::Result<R>> {
    thread_local! {
        static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SIZE].into_boxed_slice());
    }
    let read = |scratch: &mut [u8]| {
        let mut buf = ReadBuf::new(scratch);
        ready!(io.poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(take(buf.filled())))
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => read(&mut scratch),
        // A transport reading through this module itself, on the same thread.
        Err(_) => read(&mut vec![0; SIZE]),
    })
}
