//! [`StreamLayer`]: configuration of the stream endpoint, applied to an inner service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use tower_layer::Layer;

use crate::config::Config;
use crate::service::StreamService;
use crate::ws::Inbound;
use crate::{Hub, Rejection};

/// Answers WebSocket upgrades and Server-Sent-Events requests from a [`Hub`]; every other
/// request passes through to the inner service untouched.
///
/// A WebSocket upgrade (a `GET` with `Upgrade: websocket`) or a `GET` whose `Accept`
/// includes `text/event-stream` is resolved to a topic and subscribed to it: each event
/// [`broadcast`](Hub::broadcast) to the topic reaches the connection, as a WebSocket frame
/// carrying the event's data, or as a complete Server-Sent event.
///
/// Each stream runs in a `tracing` span named `stream` with its transport, topic and, when
/// a layer in front put the client's `SocketAddr` in the request's extensions, its peer
/// address; opening, closing (with the close code and reason) and lag are logged at
/// debug level, and nothing is logged per delivered event.
///
/// ```
/// use http::StatusCode;
/// use tower_fanout::{Hub, Rejection, StreamLayer};
///
/// let hub = Hub::new();
/// let layer = StreamLayer::new(hub.clone())
///     .path("/events/")
///     .topic(|parts| {
///         parts
///             .uri
///             .path()
///             .strip_prefix("/events/")
///             .map(str::to_owned)
///             .ok_or_else(|| Rejection::new(StatusCode::NOT_FOUND, "no topic"))
///     })
///     .on_message(|inbound| {
///         // Echo to this one connection; never block here.
///         let _ = inbound.connection().send(inbound.data().clone());
///     });
/// // `layer` wraps any tower service: `.layer(layer)` on an axum Router, or
/// // `tower_layer::Layer::layer(&layer, service)`; see `examples/hyper_server.rs`.
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct StreamLayer {
    pub(crate) config: Arc<Config>,
}

impl StreamLayer {
    /// A layer serving streams from `hub`, with these defaults: every path; the topic from
    /// the `topic` query parameter; same-origin browsers only; 32 KiB read limit; 10 s
    /// write timeout; text frames; a ping every 30 s and 10 s more for silent clients;
    /// SSE keep-alive every 15 s, no `retry` hint.
    ///
    /// The subscriber buffer and lag policy are the hub's ([`Hub::builder`]).
    pub fn new(hub: Hub) -> Self {
        Self {
            config: Arc::new(Config::new(hub)),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.config) {
            Some(config) => f(config),
            None => {
                let mut config = Config::clone(&self.config);
                f(&mut config);
                self.config = Arc::new(config);
            }
        }
        self
    }

    /// Intercepts stream requests only at this path; a path ending in `/` is a prefix
    /// (`"/events/"` matches `/events/device-42`). Default: every path.
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.configure(|config| config.path = Some(path))
    }

    /// How a request names its topic: one topic. The resolver sees the request's head
    /// (method, URI, headers and extensions, so a layer in front can leave the
    /// authenticated user there) and returns the topic, or a [`Rejection`] that answers
    /// the request. For several topics on one connection, see [`topics`](Self::topics).
    ///
    /// Default: every `topic` query parameter (see [`topics`](Self::topics)).
    pub fn topic<F>(self, resolver: F) -> Self
    where
        F: Fn(&Parts) -> Result<String, Rejection> + Send + Sync + 'static,
    {
        self.configure(|config| config.topics = Arc::new(move |parts| Ok(vec![resolver(parts)?])))
    }

    /// How a request names the topics of its connection, as [`topic`](Self::topic) but
    /// several: one stream (WebSocket or Server-Sent Events) carries them all, each in its
    /// own order. A topic named twice counts once; more than
    /// [`max_topics`](Self::max_topics) are refused with 400, and none at all too, except
    /// for a WebSocket speaking the [protocol](crate::ws#the-protocol), which may
    /// subscribe later.
    ///
    /// Default: every `topic` query parameter, decoded as a browser's `URLSearchParams`
    /// decodes it (`?topic=a&topic=caf%C3%A9+noir` is `a` and `café noir`).
    pub fn topics<F>(self, resolver: F) -> Self
    where
        F: Fn(&Parts) -> Result<Vec<String>, Rejection> + Send + Sync + 'static,
    {
        self.configure(|config| config.topics = Arc::new(resolver))
    }

    /// The most topics one connection may hold, at its handshake and after subscribes of
    /// the [protocol](crate::ws#the-protocol); at least 1. Default: 64.
    ///
    /// A stream of several topics gives each event an id that holds a position in every
    /// topic, so that a reconnecting client resumes them all: with the hub's own ids, 64
    /// topics make ids of at most 2.3 KB, which proxies pass; set it higher only where
    /// that is known to hold.
    pub fn max_topics(self, topics: usize) -> Self {
        self.configure(|config| config.max_topics = topics.max(1))
    }

    /// Decides whether a request may read a topic: the hook sees the request's head
    /// (extensions included, where an authentication layer left the user) and one topic,
    /// and allows it or refuses it with a [`Rejection`].
    ///
    /// It runs for every topic of a handshake, where a refusal refuses the handshake with
    /// its status and reason, and for every subscribe a WebSocket client of the
    /// [protocol](crate::ws#the-protocol) sends, where a refusal is an error reply and the
    /// connection stays open. Subscribes made by the server itself (through
    /// [`Connection`](crate::ws::Connection)) do not ask it. Default: every topic allowed.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_fanout::{Hub, Rejection, StreamLayer};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// let layer = StreamLayer::new(Hub::new()).authorize(|parts, topic| {
    ///     let user = parts.extensions.get::<User>();
    ///     match user {
    ///         Some(User(name)) if topic == format!("user:{name}") || topic == "news" => Ok(()),
    ///         Some(_) => Err(Rejection::new(StatusCode::FORBIDDEN, "not your topic")),
    ///         None => Err(Rejection::new(StatusCode::UNAUTHORIZED, "sign in first")),
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn authorize<F>(self, hook: F) -> Self
    where
        F: Fn(&Parts, &str) -> Result<(), Rejection> + Send + Sync + 'static,
    {
        self.configure(|config| config.authorize = Some(Arc::new(hook)))
    }

    /// Called for each text or binary message a WebSocket client sends, in order, on the
    /// connection's read loop.
    ///
    /// It must not block: the connection reads nothing else, and writes nothing, until it
    /// returns. Hand long work to a task (`tokio::spawn`). [`Inbound`] gives the message,
    /// the topic, the request's extensions, the hub and a handle that sends to this one
    /// connection. A handler that panics closes its connection with 1011 (internal error);
    /// the others go on.
    pub fn on_message<F>(self, handler: F) -> Self
    where
        F: Fn(Inbound<'_>) + Send + Sync + 'static,
    {
        self.configure(|config| config.on_message = Some(Arc::new(handler)))
    }

    /// Which browser origins may open a WebSocket, besides the page's own host.
    ///
    /// A request without `Origin` (not from a browser) and one whose origin host equals
    /// the request's `Host` are always allowed. Otherwise the origin's host, or its
    /// `scheme://host` when the pattern contains `://`, must match a pattern: a
    /// case-insensitive glob where `*` stands for any characters; `"*"` allows every
    /// origin. Refused upgrades get 403.
    pub fn allowed_origins<I, P>(self, patterns: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        let patterns = patterns.into_iter().map(Into::into).collect();
        self.configure(|config| config.origins = patterns)
    }

    /// Compresses WebSocket messages for clients that offer permessage-deflate (RFC 7692;
    /// every browser does), and reads the messages they compress.
    ///
    /// The server answers with no context takeover either way, so each event is
    /// compressed once, on first use, and the same bytes go to every connection that
    /// negotiated it, as an event's SSE bytes do; messages under the
    /// [minimum size](crate::Compression::min_size), and those compression would not
    /// shrink, go uncompressed. A frame that carries a connection's own cursor
    /// (`websocket_ids` with several topics), and what is sent through a
    /// [`Connection`](crate::ws::Connection), is compressed for its connection alone. A
    /// client's compressed message is inflated within the [read limit](Self::read_limit),
    /// and a connection holds no inflate state between messages. See
    /// [the `ws` module](crate::ws#compression).
    ///
    /// Off by default: where a topic has one subscriber, every delivery pays for a
    /// compression (about 10 µs per KiB at level 1 on the project's machine), every
    /// client pays for inflating, and events in the history keep their compressed form
    /// beside the plain one. Where events go to many, it saves bytes and server CPU both.
    pub fn compression(self, compression: crate::Compression) -> Self {
        self.configure(|config| config.compression = Some(compression))
    }

    /// The largest message a WebSocket client may send, in bytes; a larger one closes the
    /// connection with 1009 (message too big). Default: 32 KiB.
    pub fn read_limit(self, bytes: usize) -> Self {
        self.configure(|config| config.read_limit = bytes)
    }

    /// How long bytes may wait for a WebSocket client whose socket takes none of them
    /// before the connection is closed (1013), and, under
    /// [`tower_fanout::serve`](crate::serve()), for a Server-Sent-Events client. Default:
    /// 10 s.
    ///
    /// The clock restarts whenever the socket takes bytes, so a client that keeps reading,
    /// however slowly, is not timed out: its lag policy deals with it falling behind its
    /// topic. A client that reads nothing is closed after this long.
    pub fn write_timeout(self, timeout: Duration) -> Self {
        self.configure(|config| config.write_timeout = timeout)
    }

    /// Sends event data in binary frames instead of text frames. Default: text (data that
    /// is not UTF-8 is sent in a binary frame either way).
    pub fn binary(self, binary: bool) -> Self {
        self.configure(|config| config.binary = binary)
    }

    /// How often the server pings each WebSocket client; at least 1 ms. Default: 30 s.
    ///
    /// A client that sends nothing at all, no pong and no message, for the ping interval
    /// plus the [ping timeout](Self::ping_timeout) is closed (1001) and unsubscribed: this
    /// is how a vanished peer, whose TCP connection is half open, is found. What a client
    /// sends is read even while it is behind on its events, so its pongs count.
    pub fn ping_interval(self, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        self.configure(|config| config.ping_interval = interval)
    }

    /// How long past a ping interval a silent WebSocket client is given. Default: 10 s.
    pub fn ping_timeout(self, timeout: Duration) -> Self {
        self.configure(|config| config.ping_timeout = timeout)
    }

    /// Prefixes each WebSocket frame's data with the event's id and a line feed, so that a
    /// client can resume after the last id it saw with `?since=ID`. Default: off, frames
    /// carry only the data.
    ///
    /// A resumed connection whose missed events are no longer all retained then starts
    /// with a frame holding an empty id and the data `lost`.
    pub fn websocket_ids(self, enabled: bool) -> Self {
        self.configure(|config| config.websocket_ids = enabled)
    }

    /// How long a Server-Sent-Events stream may stay quiet before a comment is sent to
    /// keep proxies from cutting it; at least 1 ms. Default: 15 s.
    pub fn keep_alive(self, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        self.configure(|config| config.keep_alive = interval)
    }

    /// The reconnection delay suggested to Server-Sent-Events clients (a `retry:` field at
    /// the start of each stream). Default: none, the browser's own (about 3 s).
    pub fn retry(self, retry: Duration) -> Self {
        self.configure(|config| config.retry = Some(retry))
    }
}

impl<S> Layer<S> for StreamLayer {
    type Service = StreamService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamService::new(inner, Arc::clone(&self.config))
    }
}

impl fmt::Debug for StreamLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamLayer")
            .field("config", &self.config)
            .finish()
    }
}
