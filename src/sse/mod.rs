//! Server-Sent Events: the wire form of an [`Event`](crate::Event), as the WHATWG HTML
//! standard's "server-sent events" section parses it, and the response body that streams
//! a subscription with keep-alive comments.
//!
//! Every field is written as `name: value` followed by LF. The single space after the
//! colon is the one a parser strips, so a value that itself starts with a space survives.
//! Data is split into one `data:` line per line of the payload, at CRLF, CR or LF; a
//! parser joins those lines with LF. A blank line ends the event.
//!
//! ```
//! use tower_fanout::Event;
//!
//! let event = Event::new("first\r\nsecond").event("note")?;
//! assert_eq!(&event.to_sse()[..], b"event: note\ndata: first\ndata: second\n\n");
//! # Ok::<(), tower_fanout::InvalidEvent>(())
//! ```

mod body;
pub(crate) mod encode;

pub(crate) use body::SseBody;
