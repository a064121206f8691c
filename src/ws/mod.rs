//! WebSocket: the opening handshake, origin checks, and the task that serves one
//! connection from its topics.
//!
//! A connection holds one topic or several, named at its handshake (see
//! [`StreamLayer::topics`](crate::StreamLayer::topics)). What its frames carry depends on
//! what the client asked for:
//!
//! - By default only an event's data goes into a frame: a text frame, or a binary frame
//!   with [`StreamLayer::binary`](crate::StreamLayer::binary) or when the data is not
//!   UTF-8.
//! - With [`StreamLayer::websocket_ids`](crate::StreamLayer::websocket_ids), a frame is
//!   the event's id, a line feed and the data; a connection of several topics gives the
//!   stream's cursor instead of the event's id, which names the event's topic and resumes
//!   them all (`?since=`).
//! - A client that offers the protocol below in `Sec-WebSocket-Protocol` speaks it.
//!
//! # The protocol
//!
//! `fanout.v1`, negotiated with `Sec-WebSocket-Protocol: fanout.v1`. Every frame is a
//! JSON object in a text frame. The server sends events
//! (`{"type":"event","topic":"a","id":"…","event":"…","data":"…"}`, with `data_base64`
//! for data that is not UTF-8), `lost` and `lagged` notices per topic, and a reply to
//! each command. The client sends `{"type":"subscribe","topic":"a","since":"ID","req":1}`
//! and `{"type":"unsubscribe","topic":"a","req":2}`; the reply is
//! `{"type":"ok","req":1}` or `{"type":"error","req":1,"status":403,"reason":"…"}`. A
//! subscribe asks the [authorization hook](crate::StreamLayer::authorize); a refusal is
//! an error reply and the connection stays open. The connection may open with no topic
//! and subscribe later. `PROTOCOL.md` at the root of the repository is the whole
//! specification, for client authors; `client/fanout.js` is a browser client.
//!
//! `hub.disconnect(topic)` closes every connection that holds the topic, whatever else it
//! holds: its client reconnects and resumes all of them.
//!
//! # Compression
//!
//! With [`StreamLayer::compression`](crate::StreamLayer::compression), a client that
//! offers permessage-deflate (RFC 7692) gets
//! `Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;
//! client_no_context_takeover`. Neither side keeps its compression context from one
//! message to the next, which costs some ratio on small messages and buys two things:
//!
//! - an event is compressed once, on first use, and every connection that negotiated the
//!   extension sends the same bytes (kept with the event, as its SSE form is);
//! - a connection holds no compression state between messages: the client's compressed
//!   messages are inflated one at a time, and the inflater (about 40 KiB) is dropped at
//!   the end of each. The inflated size counts against the
//!   [read limit](crate::StreamLayer::read_limit): a message that inflates past it
//!   closes its connection with 1009, one that is not valid deflate with 1007.
//!
//! `client_no_context_takeover` is sent whether or not the client offered it, as the RFC
//! allows; every client must honour it. An offer that limits the server's window
//! (`server_max_window_bits` below 15) is declined, and the connection goes on without
//! compression. The client's frames are inflated in front of the WebSocket library
//! (tungstenite refuses frames with RSV1 set), which then checks them as any others.
//!
//! ```
//! use tower_fanout::{Compression, Hub, StreamLayer};
//!
//! // Events of 512 bytes or more, at deflate level 6: compressed once per event.
//! let layer = StreamLayer::new(Hub::new()).compression(Compression::new().min_size(512).level(6));
//! # let _ = layer;
//! ```

mod connection;
pub(crate) mod deflate;
mod frame;
mod handshake;
mod inflate;
mod origin;
pub(crate) mod protocol;

pub use deflate::Compression;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, HeaderValue, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tokio::sync::mpsc;

use crate::body::Prepared;
use crate::config::{Config, query_param};
use crate::hub::Subscriber;
use crate::{Hub, Rejection};

/// Frames and commands another part of the program may queue for one connection before
/// [`Connection::send`] refuses.
const DIRECT_QUEUE: usize = 64;

/// What a connection's frames carry: see [the module](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Data,
    Ids,
    Protocol,
}

/// Validates the handshake, subscribes, and answers 101; the connection itself is served
/// by a task that starts when the server hands over the upgraded socket.
pub(crate) fn accept(
    config: &Arc<Config>,
    mut parts: Parts,
) -> Result<Response<Prepared>, Rejection> {
    let answer = handshake::validate(&parts)?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()));
    if !origin::allowed(&config.origins, &parts.headers, host) {
        return Err(Rejection::new(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let framing = if protocol::offered(&parts.headers) {
        Framing::Protocol
    } else if config.websocket_ids {
        Framing::Ids
    } else {
        Framing::Data
    };
    // A client of the protocol may subscribe later.
    let topics = config.topics(&parts, framing == Framing::Protocol)?;
    let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this server does not hand over upgraded connections: serve it with upgrades \
             enabled (hyper's `with_upgrades`, hyper-util's `serve_connection_with_upgrades`)",
        )
    })?;
    // Subscribed before answering, so nothing broadcast after the 101 is missed.
    let since = query_param(&parts, "since");
    let opened = config.open(&topics, since.as_deref());
    let extensions = config
        .compression
        .and_then(|compression| Some((compression, deflate::negotiate(&parts.headers)?)));
    let peer = crate::config::peer(&parts.extensions);
    let version = parts.version;
    // Kept for the hooks that read it, and only for them: 224 bytes a connection.
    let request = (config.on_message.is_some() || config.authorize.is_some())
        .then(|| Box::new(compact(parts, config.authorize.is_some())));
    let start = Box::new(connection::Start {
        opened,
        framing,
        request,
        version,
        compression: extensions.as_ref().map(|&(compression, _)| compression),
    });
    tokio::spawn(connection::serve(
        on_upgrade,
        start,
        Arc::clone(config),
        peer,
    ));

    let mut response = Response::new(Prepared::Full(None));
    match answer {
        handshake::Answer::SwitchingProtocols(accept_key) => {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
        }
        // The stream is the connection: 200, and an empty body.
        handshake::Answer::Connected => *response.status_mut() = StatusCode::OK,
    }
    let headers = response.headers_mut();
    if framing == Framing::Protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol::NAME),
        );
    }
    if let Some((_, answer)) = extensions {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
    }
    Ok(response)
}

/// The request's head as a connection keeps it for its life: its own copy, since what
/// the server parsed (the URI, header values) are views into the connection's read
/// buffer, which would stay alive with them. Headers are kept only for the
/// authorization hook, which may read them at every subscribe.
fn compact(parts: Parts, keep_headers: bool) -> Parts {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = parts.method;
    head.version = parts.version;
    head.uri =
        http::Uri::from_maybe_shared(Bytes::copy_from_slice(parts.uri.to_string().as_bytes()))
            .unwrap_or_default();
    if keep_headers {
        for (name, value) in &parts.headers {
            let copied = (
                http::HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            );
            if let (Ok(name), Ok(value)) = copied {
                head.headers.append(name, value);
            }
        }
    }
    head.extensions = parts.extensions;
    head
}

/// What a resumed connection with ids of one topic receives first when events were lost;
/// a connection of several topics gets `\nlost TOPIC` for each.
pub(crate) const LOST: &str = "\nlost";

/// A frame or a change of topics queued through a [`Connection`].
#[derive(Debug)]
pub(crate) enum Direct {
    Frame { data: Bytes, text: bool },
    Subscribe(String),
    Unsubscribe(String),
}

/// A message a WebSocket client sent, with what an `on_message` handler needs to act.
pub struct Inbound<'a> {
    data: Bytes,
    text: bool,
    topics: &'a Subscriber,
    request: &'a Parts,
    hub: &'a Hub,
    connection: &'a Connection,
}

impl<'a> Inbound<'a> {
    /// The message's payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The payload as text, for a text message (always valid UTF-8).
    pub fn text(&self) -> Option<&str> {
        if self.text {
            std::str::from_utf8(&self.data).ok()
        } else {
            None
        }
    }

    /// The first topic the connection holds (the first of its handshake, unless it has
    /// left it); empty when it holds none.
    pub fn topic(&self) -> &'a str {
        self.topics.topics().next().unwrap_or_default()
    }

    /// Every topic the connection holds now. Changes queued with
    /// [`Connection::subscribe`] take effect once the handler returns.
    pub fn topics(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.topics.topics()
    }

    /// The extensions of the upgrade request, as layers in front of the stream layer left
    /// them (an authenticated user, for example).
    pub fn extensions(&self) -> &'a Extensions {
        &self.request.extensions
    }

    /// The hub, to broadcast in reply.
    pub fn hub(&self) -> &'a Hub {
        self.hub
    }

    /// A handle that sends to this one connection, and changes its topics; clone it to
    /// keep it.
    pub fn connection(&self) -> &'a Connection {
        self.connection
    }
}

impl fmt::Debug for Inbound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("data", &self.data)
            .field("text", &self.text)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Sends to one WebSocket connection outside of any topic, and changes its topics.
#[derive(Clone, Debug)]
pub struct Connection {
    pub(crate) direct: mpsc::Sender<Direct>,
}

/// [`Connection::send`] could not queue the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection's queue is full: the client is not reading fast enough.
    Full,
    /// The connection has closed.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "the connection's queue is full",
            Self::Closed => "the connection is closed",
        })
    }
}

impl std::error::Error for SendError {}

impl Connection {
    /// Queues `data` for this connection as a text frame, or a binary frame when it is not
    /// UTF-8; never waits.
    ///
    /// # Errors
    ///
    /// [`SendError::Full`] when 64 frames and changes already wait, [`SendError::Closed`]
    /// when the connection has ended.
    pub fn send(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        let data = data.into();
        let text = std::str::from_utf8(&data).is_ok();
        self.queue(Direct::Frame { data, text })
    }

    /// Queues a text frame; never waits. Errors as [`send`](Self::send).
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        self.queue(Direct::Frame {
            data: text.into().into(),
            text: true,
        })
    }

    /// Queues a binary frame; never waits. Errors as [`send`](Self::send).
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.queue(Direct::Frame {
            data: data.into(),
            text: false,
        })
    }

    /// Adds `topic` to the connection's topics, from its next event on; nothing changes
    /// when the connection holds it already, or holds
    /// [`max_topics`](crate::StreamLayer::max_topics). The server's own decision: the
    /// authorization hook is not asked. Never waits; errors as [`send`](Self::send).
    pub fn subscribe(&self, topic: impl Into<String>) -> Result<(), SendError> {
        self.queue(Direct::Subscribe(topic.into()))
    }

    /// Removes `topic` from the connection's topics. Never waits; errors as
    /// [`send`](Self::send).
    pub fn unsubscribe(&self, topic: impl Into<String>) -> Result<(), SendError> {
        self.queue(Direct::Unsubscribe(topic.into()))
    }

    fn queue(&self, message: Direct) -> Result<(), SendError> {
        self.direct.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }
}
