//! WebSocket: the opening handshake, origin checks, and the task that serves one
//! connection from its subscription.
//!
//! Only an event's data goes into a frame: a text frame, or a binary frame with
//! [`StreamLayer::binary`](crate::StreamLayer::binary) or when the data is not UTF-8.

mod connection;
mod frame;
mod handshake;
mod origin;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, HeaderValue, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tokio::sync::mpsc;

use crate::body::Prepared;
use crate::config::{Config, query_param};
use crate::{Hub, Rejection};

/// Frames another part of the program may queue for one connection before
/// [`Connection::send`] refuses.
const DIRECT_QUEUE: usize = 64;

/// Validates the handshake, subscribes, and answers 101; the connection itself is served
/// by a task that starts when the server hands over the upgraded socket.
pub(crate) fn accept(
    config: &Arc<Config>,
    mut parts: Parts,
) -> Result<Response<Prepared>, Rejection> {
    let accept_key = handshake::validate(&parts)?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str()));
    if !origin::allowed(&config.origins, &parts.headers, host) {
        return Err(Rejection::new(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let topic = (config.topic)(&parts)?;
    let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or_else(|| {
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "this server does not hand over upgraded connections: serve it with upgrades \
             enabled (hyper's `with_upgrades`, hyper-util's `serve_connection_with_upgrades`)",
        )
    })?;
    // Subscribed before answering, so nothing broadcast after the 101 is missed.
    let since = query_param(&parts, "since");
    let (subscription, resume) = config.subscribe(&topic, since.as_deref());
    tokio::spawn(connection::serve(
        on_upgrade,
        subscription,
        resume,
        Arc::clone(config),
        parts.extensions,
    ));

    let mut response = Response::new(Prepared::Full(None));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key);
    Ok(response)
}

/// What a resumed connection with ids receives first when events were lost.
pub(crate) const LOST: &str = "\nlost";

/// A message queued with [`Connection::send`] and its kin.
#[derive(Debug)]
pub(crate) struct Direct {
    data: Bytes,
    text: bool,
}

/// A message a WebSocket client sent, with what an `on_message` handler needs to act.
pub struct Inbound<'a> {
    data: Bytes,
    text: bool,
    topic: &'a str,
    extensions: &'a Extensions,
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

    /// The topic the connection is subscribed to.
    pub fn topic(&self) -> &'a str {
        self.topic
    }

    /// The extensions of the upgrade request, as layers in front of the stream layer left
    /// them (an authenticated user, for example).
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }

    /// The hub, to broadcast in reply.
    pub fn hub(&self) -> &'a Hub {
        self.hub
    }

    /// A handle that sends to this one connection; clone it to keep it.
    pub fn connection(&self) -> &'a Connection {
        self.connection
    }
}

impl fmt::Debug for Inbound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("data", &self.data)
            .field("text", &self.text)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Sends to one WebSocket connection, outside of any topic.
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
    /// [`SendError::Full`] when 64 frames already wait, [`SendError::Closed`] when the
    /// connection has ended.
    pub fn send(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        let data = data.into();
        let text = std::str::from_utf8(&data).is_ok();
        self.queue(Direct { data, text })
    }

    /// Queues a text frame; never waits. Errors as [`send`](Self::send).
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SendError> {
        self.queue(Direct {
            data: text.into().into(),
            text: true,
        })
    }

    /// Queues a binary frame; never waits. Errors as [`send`](Self::send).
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SendError> {
        self.queue(Direct {
            data: data.into(),
            text: false,
        })
    }

    fn queue(&self, message: Direct) -> Result<(), SendError> {
        self.direct.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }
}
