//! The unit of fan-out: an [`Event`] with data and optional Server-Sent-Events fields.
//!
//! An event is built once by the publisher and shared by every subscriber. A WebSocket
//! frame carries only its [`data`](Event::data); a Server-Sent-Events stream carries the
//! whole event in its wire form, which is encoded on first use and then shared, so a
//! broadcast to many SSE subscribers formats the event exactly once.
//!
//! Text fields reject the characters that would let a value escape its line on the wire:
//!
//! ```
//! use tower_fanout::Event;
//!
//! let event = Event::new("{\"task\":7}").event("task.cancelled")?.id("42")?;
//! assert_eq!(event.event_type(), Some("task.cancelled"));
//! assert_eq!(
//!     &event.to_sse()[..],
//!     b"event: task.cancelled\nid: 42\ndata: {\"task\":7}\n\n"
//! );
//!
//! // A newline in a field would be read back by a browser as a second field.
//! assert!(Event::new("x").event("ping\ndata: forged").is_err());
//! # Ok::<(), tower_fanout::InvalidEvent>(())
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::sse::encode;
use crate::ws::deflate::Form;

/// Data shorter than this is copied into an allocation of its own when the hub keeps it
/// and its `Bytes` shares one; see [`Event::own_small_data`].
const OWN_BELOW: usize = 16 * 1024;

/// One message to fan out: its data and, for Server-Sent Events, an optional type, id and
/// reconnection hint.
///
/// Cloning is cheap for the data (a reference-counted [`Bytes`]); the hub shares one
/// `Arc<Event>` among all subscribers of a broadcast.
#[derive(Clone)]
pub struct Event {
    data: Bytes,
    event: Option<Box<str>>,
    id: Option<Box<str>>,
    retry: Option<Duration>,
    /// Whether the data is UTF-8 (a WebSocket text frame), checked on first use.
    utf8: Utf8,
    /// The wire forms, encoded on first use. Out of line: an event the hub allocates stays
    /// small enough for the allocator's fastest size classes, which matters when one
    /// thread allocates events and another frees them.
    wire: OnceLock<Box<Wire>>,
}

/// An event's wire forms, each encoded on first use and shared by every subscriber.
#[derive(Clone, Default)]
struct Wire {
    /// The Server-Sent-Events wire form.
    sse: OnceLock<Bytes>,
    /// The frame of the WebSocket protocol: an event belongs to the one topic it was
    /// broadcast to.
    protocol: OnceLock<Bytes>,
    /// One of its WebSocket payloads compressed (permessage-deflate): which one, and its
    /// compressed bytes unless compression did not make it smaller.
    deflated: OnceLock<Box<(Form, Option<Bytes>)>>,
}

/// Whether data is UTF-8, once checked (0 until then): a byte rather than a
/// `OnceLock<bool>`, which takes eight.
#[derive(Default)]
struct Utf8(AtomicU8);

impl Utf8 {
    const YES: u8 = 1;
    const NO: u8 = 2;

    fn get_or_check(&self, data: &[u8]) -> bool {
        match self.0.load(Ordering::Relaxed) {
            Self::YES => true,
            Self::NO => false,
            _ => {
                // Racing checks agree, so whichever store lands is right.
                let utf8 = std::str::from_utf8(data).is_ok();
                self.0
                    .store(if utf8 { Self::YES } else { Self::NO }, Ordering::Relaxed);
                utf8
            }
        }
    }
}

impl Clone for Utf8 {
    fn clone(&self) -> Self {
        Self(AtomicU8::new(self.0.load(Ordering::Relaxed)))
    }
}

impl Event {
    /// Creates an event carrying `data`.
    ///
    /// Data may contain any bytes. Over Server-Sent Events it is split into lines at CRLF,
    /// CR and LF (a browser reads every line ending back as LF) and decoded as UTF-8 by the
    /// client; over WebSocket it is sent unchanged.
    ///
    /// A request body (axum's `Bytes`, hyper's body frames) is a view into its
    /// connection's read buffer. [`Hub::broadcast`](crate::Hub::broadcast) copies such data
    /// under 16 KiB into an allocation of its own, so that an event kept in the history
    /// does not keep the buffer.
    pub fn new(data: impl Into<Bytes>) -> Self {
        Self {
            data: data.into(),
            event: None,
            id: None,
            retry: None,
            utf8: Utf8::default(),
            wire: OnceLock::new(),
        }
    }

    /// Sets the event type (the SSE `event:` field, which `EventSource` dispatches on).
    ///
    /// # Errors
    ///
    /// Fails when `event` contains CR or LF.
    pub fn event(self, event: &str) -> Result<Self, InvalidEvent> {
        check_line(event, Field::Event)?;
        Ok(Self {
            event: Some(event.into()),
            wire: OnceLock::new(),
            ..self
        })
    }

    /// Sets the event id (the SSE `id:` field, echoed by clients as `Last-Event-ID`).
    ///
    /// # Errors
    ///
    /// Fails when `id` contains CR, LF or NUL (a browser ignores an id with NUL).
    pub fn id(self, id: &str) -> Result<Self, InvalidEvent> {
        check_line(id, Field::Id)?;
        if id.contains('\0') {
            return Err(InvalidEvent {
                field: Field::Id,
                found: '\0',
            });
        }
        Ok(Self {
            id: Some(id.into()),
            wire: OnceLock::new(),
            ..self
        })
    }

    /// Sets the reconnection time a Server-Sent-Events client should wait after losing
    /// the stream (the SSE `retry:` field, in whole milliseconds).
    pub fn retry(self, retry: Duration) -> Self {
        Self {
            retry: Some(retry),
            wire: OnceLock::new(),
            ..self
        }
    }

    /// Makes data under [`OWN_BELOW`] that is a view into a larger allocation its own, so
    /// that keeping the event keeps only what it holds: a request body is typically a view
    /// into its connection's read buffer, and kept as it is, a six-byte event would hold
    /// kilobytes. With `shared`, data that shares its allocation is copied too, whatever
    /// lies behind it (a WebSocket message is a view into a read buffer still in use).
    /// Larger data is left as it is: it is most of whatever it shares.
    pub(crate) fn own_small_data(&mut self, shared: bool) {
        let len = self.data.len();
        if len == 0 || len >= OWN_BELOW {
            return;
        }
        if !self.data.is_unique() {
            if shared {
                self.data = Bytes::copy_from_slice(&self.data);
            }
            return;
        }
        // Data that owns its allocation alone shows how large it is.
        self.data = match std::mem::take(&mut self.data).try_into_mut() {
            Ok(own) if own.capacity() <= 2 * len + 64 => own.freeze(),
            Ok(view) => Bytes::copy_from_slice(&view),
            Err(others) => others,
        };
    }

    /// Sets the id the hub chose, which needs no checking.
    pub(crate) fn assign_id(&mut self, id: String) {
        self.id = Some(id.into());
        self.wire = OnceLock::new();
    }

    /// The event's data: the payload of a WebSocket frame, the `data:` lines of SSE.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Whether the data is UTF-8, checked once for all the subscribers of a broadcast.
    pub(crate) fn is_utf8(&self) -> bool {
        self.utf8.get_or_check(&self.data)
    }

    /// The event type, if set.
    pub fn event_type(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The event id, if set.
    pub fn event_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The reconnection hint, if set.
    pub fn retry_interval(&self) -> Option<Duration> {
        self.retry
    }

    /// The event in Server-Sent-Events wire form, ending with the blank line that
    /// dispatches it.
    ///
    /// Encoded on the first call and shared afterwards: every SSE subscriber of a
    /// broadcast gets a cheap clone of the same bytes.
    pub fn to_sse(&self) -> Bytes {
        self.sse_bytes().clone()
    }

    /// The event's frame in the WebSocket protocol, as an event of `topic`: encoded on
    /// first use and shared by every subscriber.
    pub(crate) fn protocol_frame(&self, topic: &str) -> &Bytes {
        self.wire()
            .protocol
            .get_or_init(|| crate::ws::protocol::event(topic, self))
    }

    /// The payload of `form` compressed by `compress`: made on first use and kept for every
    /// connection that sends the event in the same form; made anew for another form.
    pub(crate) fn deflated(
        &self,
        form: Form,
        compress: impl FnOnce() -> Option<Bytes>,
    ) -> Option<Bytes> {
        let mut compress = Some(compress);
        let kept = self
            .wire()
            .deflated
            .get_or_init(|| Box::new((form, compress.take().and_then(|compress| compress()))));
        if kept.0 == form {
            kept.1.clone()
        } else {
            compress.and_then(|compress| compress())
        }
    }

    /// The Server-Sent-Events wire form, borrowed: encoded on first use.
    pub(crate) fn sse_bytes(&self) -> &Bytes {
        self.wire().sse.get_or_init(|| encode::encode(self))
    }

    fn wire(&self) -> &Wire {
        self.wire.get_or_init(Box::default)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("data", &self.data)
            .field("event", &self.event)
            .field("id", &self.id)
            .field("retry", &self.retry)
            .finish()
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
            && self.event == other.event
            && self.id == other.id
            && self.retry == other.retry
    }
}

impl Eq for Event {}

impl From<Bytes> for Event {
    fn from(data: Bytes) -> Self {
        Self::new(data)
    }
}

impl From<&'static str> for Event {
    fn from(data: &'static str) -> Self {
        Self::new(data)
    }
}

impl From<String> for Event {
    fn from(data: String) -> Self {
        Self::new(data)
    }
}

impl From<Vec<u8>> for Event {
    fn from(data: Vec<u8>) -> Self {
        Self::new(data)
    }
}

fn check_line(value: &str, field: Field) -> Result<(), InvalidEvent> {
    match value.chars().find(|c| matches!(c, '\r' | '\n')) {
        Some(found) => Err(InvalidEvent { field, found }),
        None => Ok(()),
    }
}

/// A text field of an [`Event`] was given a character that could break it out of its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidEvent {
    field: Field,
    found: char,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Event,
    Id,
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = match self.field {
            Field::Event => "event type",
            Field::Id => "event id",
        };
        write!(f, "{field} must not contain {:?}", self.found)
    }
}

impl std::error::Error for InvalidEvent {}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn kept(data: &Bytes, shared: bool) -> bool {
        let mut event = Event::new(data.clone());
        event.own_small_data(shared);
        event.data().as_ptr() == data.as_ptr()
    }

    #[test]
    fn a_shared_event_fits_the_allocators_fast_size_classes() {
        // glibc serves chunks up to 128 bytes (a 120-byte request) from its fast bins;
        // one size class up, an event allocated on one thread and freed on another costs
        // two to three times as much. `Arc` adds two counts.
        assert!(2 * std::mem::size_of::<usize>() + std::mem::size_of::<Event>() <= 120);
        assert!(std::mem::size_of::<Wire>() <= 120);
    }

    #[test]
    fn small_views_into_larger_allocations_are_copied() {
        // A six-byte view alone in an 8 KiB allocation, as a request body is.
        let buffer = Bytes::from(vec![7; 8192]);
        let view = buffer.slice(100..106);
        drop(buffer);
        let mut event = Event::new(view.clone());
        let pointer = view.as_ptr();
        drop(view);
        event.own_small_data(false);
        assert_ne!(event.data().as_ptr(), pointer);
        assert_eq!(&event.data()[..], &[7; 6]);

        // Data that is its whole allocation, or large, stays where it is.
        let exact = Bytes::from(vec![1; 100]);
        let pointer = exact.as_ptr();
        let mut event = Event::new(exact);
        event.own_small_data(true);
        assert_eq!(event.data().as_ptr(), pointer);
        let large = Bytes::from(vec![2; 20_000]).slice(0..OWN_BELOW);
        assert!(kept(&large, true));

        // Shared data is copied only when asked.
        let shared = Bytes::from(vec![3; 100]);
        assert!(kept(&shared, false));
        assert!(!kept(&shared, true));
        assert!(kept(&Bytes::from_static(b"static"), false));
    }
}
