//! The configuration of a [`StreamLayer`](crate::StreamLayer), shared by every part that
//! serves a stream (the service, WebSocket connections, Server-Sent-Events bodies and
//! [`serve`](crate::serve())), and what they read from requests and leave on responses.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::request::Parts;

use crate::cursor::{self, Positions};
use crate::hub::{Joined, Since, Subscriber};
use crate::ws::Inbound;
use crate::{Hub, Rejection, Resume};

pub(crate) type TopicResolver = dyn Fn(&Parts) -> Result<Vec<String>, Rejection> + Send + Sync;
pub(crate) type Authorizer = dyn Fn(&Parts, &str) -> Result<(), Rejection> + Send + Sync;
pub(crate) type MessageHandler = dyn Fn(Inbound<'_>) + Send + Sync;

/// The most topics a connection may hold, by default.
const MAX_TOPICS: usize = 64;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) hub: Hub,
    pub(crate) path: Option<String>,
    pub(crate) topics: Arc<TopicResolver>,
    pub(crate) authorize: Option<Arc<Authorizer>>,
    pub(crate) max_topics: usize,
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
    /// permessage-deflate for clients that offer it; none by default.
    pub(crate) compression: Option<crate::Compression>,
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
            .field("max_topics", &self.max_topics)
            .field("origins", &self.origins)
            .field("read_limit", &self.read_limit)
            .field("write_timeout", &self.write_timeout)
            .field("binary", &self.binary)
            .field("keep_alive", &self.keep_alive)
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("retry", &self.retry)
            .field("websocket_ids", &self.websocket_ids)
            .field("compression", &self.compression)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The defaults of [`StreamLayer::new`](crate::StreamLayer::new).
    pub(crate) fn new(hub: Hub) -> Self {
        Self {
            hub,
            path: None,
            topics: Arc::new(topics_from_query),
            authorize: None,
            max_topics: MAX_TOPICS,
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
            compression: None,
        }
    }

    /// The topics `parts` asks for, each once, in the order first named, and each allowed
    /// by the authorization hook. A set that is empty (unless `empty_allowed`) or larger
    /// than `max_topics` is refused with 400; a refused topic refuses with its status.
    pub(crate) fn topics(
        &self,
        parts: &Parts,
        empty_allowed: bool,
    ) -> Result<Vec<String>, Rejection> {
        let mut topics = (self.topics)(parts)?;
        let mut seen = std::collections::HashSet::with_capacity(topics.len());
        topics.retain(|topic| seen.insert(topic.clone()));
        if topics.is_empty() && !empty_allowed {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                "missing topic query parameter",
            ));
        }
        if topics.len() > self.max_topics {
            return Err(Rejection::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "too many topics: at most {} on one connection",
                    self.max_topics
                ),
            ));
        }
        for topic in &topics {
            self.authorized(parts, topic)?;
        }
        Ok(topics)
    }

    /// Whether the authorization hook allows the request of `parts` to read `topic`.
    pub(crate) fn authorized(&self, parts: &Parts, topic: &str) -> Result<(), Rejection> {
        match &self.authorize {
            Some(authorize) => authorize(parts, topic),
            None => Ok(()),
        }
    }

    /// Subscribes a stream to `topics`, resuming where `cursor` says when the client gave
    /// one: the event's own id for a single topic, a [`cursor`] for several.
    pub(crate) fn open(&self, topics: &[String], cursor: Option<&str>) -> Opened {
        let since: Vec<Option<String>> = match cursor {
            None => vec![None; topics.len()],
            Some(id) if topics.len() == 1 => vec![Some(id.to_owned())],
            // One not of ours is tried on every topic: a publisher's id may be known.
            Some(id) => cursor::decode(id, topics.len())
                .unwrap_or_else(|| vec![Some(id.to_owned()); topics.len()]),
        };
        let mut subscriber = Subscriber::with_capacity(self.hub.clone(), topics.len());
        let mut lost = Vec::new();
        let mut start = Vec::with_capacity(topics.len());
        for (topic, since) in topics.iter().zip(&since) {
            let since = match (cursor, since) {
                (None, _) => Since::Now,
                (Some(_), Some(id)) => Since::After(id),
                (Some(_), None) => Since::Start,
            };
            if let Some(Joined {
                key,
                resume,
                position,
            }) = subscriber.join(topic, since)
            {
                if resume == Resume::EventsLost {
                    lost.push(key);
                }
                start.push(position);
            }
        }
        Opened {
            subscriber,
            lost,
            // Only a stream of several topics makes a cursor of them.
            positions: if topics.len() > 1 {
                Positions::new(start)
            } else {
                Positions::default()
            },
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

/// A stream's topics, subscribed: the keys of the topics in the order the request named
/// them, the ones whose resume was not complete, and where the stream stands in each.
pub(crate) struct Opened {
    pub(crate) subscriber: Subscriber,
    pub(crate) lost: Vec<usize>,
    pub(crate) positions: Positions,
}

/// The default topic resolver: every `topic` query parameter, decoded; empty ones are
/// no topic.
fn topics_from_query(parts: &Parts) -> Result<Vec<String>, Rejection> {
    let Some(query) = parts.uri.query() else {
        return Ok(Vec::new());
    };
    Ok(form_urlencoded::parse(query.as_bytes())
        .filter(|(key, value)| key == "topic" && !value.is_empty())
        .map(|(_, value)| value.into_owned())
        .collect())
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
