//! The configuration of a [`StreamLayer`](crate::StreamLayer), shared by every part that
//! serves a stream (the service, WebSocket connections, Server-Sent-Events bodies and
//! [`serve`](crate::serve())), and what they read from requests and leave on responses.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::ws::Inbound;
use crate::{Hub, Rejection, Resume, Subscription};

pub(crate) type TopicResolver = dyn Fn(&Parts) -> Result<String, Rejection> + Send + Sync;
pub(crate) type MessageHandler = dyn Fn(Inbound<'_>) + Send + Sync;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) hub: Hub,
    pub(crate) path: Option<String>,
    pub(crate) topic: Arc<TopicResolver>,
    pub(crate) on_message: Option<Arc<MessageHandler>>,
    pub(crate) origins: Vec<String>,
    pub(crate) read_limit: usize,
    pub(crate) write_timeout: Duration,
    pub(crate) binary: bool,
    pub(crate) keep_alive: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) retry: Option<Duration>,
    pub(crate) websocket_ids: bool,
}

/// In a response's extensions: how long the bytes of its body may wait for the client
/// before the connection is closed. The layer's event streams carry its
/// `write_timeout`, and [`serve`](crate::serve()) applies it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteTimeout(pub(crate) Duration);

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("origins", &self.origins)
            .field("read_limit", &self.read_limit)
            .field("write_timeout", &self.write_timeout)
            .field("binary", &self.binary)
            .field("keep_alive", &self.keep_alive)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("retry", &self.retry)
            .field("websocket_ids", &self.websocket_ids)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The defaults of [`StreamLayer::new`](crate::StreamLayer::new).
    pub(crate) fn new(hub: Hub) -> Self {
        Self {
            hub,
            path: None,
            topic: Arc::new(topic_from_query),
            on_message: None,
            origins: Vec::new(),
            read_limit: 32 * 1024,
            write_timeout: Duration::from_secs(10),
            binary: false,
            keep_alive: Duration::from_secs(15),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            retry: None,
            websocket_ids: false,
        }
    }
    /// Subscribes a stream to `topic`, resuming after `last_event_id` when the client
    /// gave one.
    pub(crate) fn subscribe(
        &self,
        topic: &str,
        last_event_id: Option<&str>,
    ) -> (Subscription, Resume) {
        match last_event_id {
            Some(last) => self.hub.resume(topic, last),
            None => (self.hub.subscribe(topic), Resume::Complete),
        }
    }

    pub(crate) fn intercepts(&self, path: &str) -> bool {
        match &self.path {
            None => true,
            Some(prefix) if prefix.ends_with('/') => path.starts_with(prefix.as_str()),
            Some(exact) => path == exact,
        }
    }
}

/// The default topic resolver: the `topic` query parameter, decoded.
fn topic_from_query(parts: &Parts) -> Result<String, Rejection> {
    query_param(parts, "topic")
        .filter(|topic| !topic.is_empty())
        .ok_or_else(|| {
            Rejection::new(
                http::StatusCode::BAD_REQUEST,
                "missing topic query parameter",
            )
        })
}

/// The first value of the query parameter `name`, decoded as a browser's
/// `URLSearchParams` decodes it (`application/x-www-form-urlencoded`: `+` is a space,
/// `%XX` a byte, bytes that are not UTF-8 become U+FFFD).
pub(crate) fn query_param(parts: &Parts, name: &str) -> Option<String> {
    form_urlencoded::parse(parts.uri.query()?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The client's address, when the server put a `SocketAddr` in the request's extensions
/// (hyper does not; a small layer or `map_request` in front can, and
/// [`serve`](crate::serve()) does).
pub(crate) fn peer(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions.get().copied()
}
