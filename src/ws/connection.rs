//! The task that serves one WebSocket connection: its subscription, the client's messages,
//! direct sends and the heartbeat, in one poll loop.
//!
//! Everything the server sends goes through one outgoing buffer, in order. Event frames
//! are encoded straight into it; the WebSocket library, which reads and checks the
//! client's frames, writes its automatic replies (pong, the close reply) into it as well.
//! Whatever a wake-up gathered leaves in one write, and one timer serves the pings, the
//! silence deadline and the write deadline, so a delivery costs a hub read, a copy into
//! the buffer and a write.
//!
//! A client that is behind on its events is still read, so that its pongs keep it alive;
//! a write times out only when the socket has taken nothing for the write timeout.

use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tokio_tungstenite::tungstenite::{Error, Message, error::ProtocolError};
use tracing::Instrument;

use super::deflate::{self, Form};
use super::frame::{self, Opcode};
use super::inflate::{self, Inflate};
use super::protocol::{self, Command, Refused};
use super::{Connection, DIRECT_QUEUE, Direct, Framing, Inbound, LOST};
use crate::config::{Config, Opened};
use crate::cursor::Positions;
use crate::hub::{Item, Joined, Since, Subscriber};
use crate::outgoing::Outgoing;
use crate::scratch;
use crate::wake::{Alarm, Signal};
use crate::{CloseReason, Compression, Resume};

/// Items taken from the topics at once.
const BATCH: usize = 64;
/// What the WebSocket library keeps allocated to read into, and asks for at once. Small,
/// since every connection holds it: a read takes what the socket has through the
/// thread's buffer ([`scratch`]), and what the library has not asked for yet waits in
/// the session until it does.
const READ_BUFFER: usize = 128;
/// Rounds of reading, gathering and writing one wake-up may do before yielding.
const ROUNDS: usize = 16;
/// Client messages handled per round.
const READS: usize = 64;

/// What a connection is made of before its socket is handed over. Boxed until then: a
/// future keeps what it was given for as long as it lives, so given inline it would be
/// held twice, beside the session made of it.
pub(super) struct Start {
    pub(super) opened: Opened,
    pub(super) framing: Framing,
    /// The request's head, where an `on_message` or authorization hook may read it.
    pub(super) request: Option<Box<Parts>>,
    pub(super) version: http::Version,
    /// permessage-deflate, when negotiated.
    pub(super) compression: Option<Compression>,
}

impl Start {
    /// Takes `start` out of its box and frees the box now: moved out of in the future
    /// that holds it, the box would be freed only when the connection ends.
    #[expect(
        clippy::boxed_local,
        reason = "the box keeps the start out of the connection's long-lived future"
    )]
    fn unbox(start: Box<Self>) -> Self {
        *start
    }
}

/// Serves the connection once the server hands over the upgraded socket.
pub(super) fn serve(
    on_upgrade: OnUpgrade,
    start: Box<Start>,
    config: Arc<Config>,
    peer: Option<std::net::SocketAddr>,
) -> impl Future<Output = ()> + Send {
    let span = tracing::debug_span!(
        "stream",
        transport = "websocket",
        topic = %start.opened.subscriber.topics().collect::<Vec<_>>().join(","),
        peer = peer.map(tracing::field::display),
    );
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                return tracing::warn!(
                    %error,
                    "the server did not hand over the upgraded connection; serve it with \
                     upgrades enabled (hyper-util's serve_connection_with_upgrades, axum::serve)"
                );
            }
        };
        tracing::debug!("connection opened");
        let Start {
            opened,
            framing,
            request,
            version,
            compression,
        } = Start::unbox(start);
        let mut session = Session::new(
            TokioIo::new(upgraded),
            opened,
            framing,
            &config,
            request.as_deref(),
            version,
        );
        session.compression = compression;
        session.inflate = compression.map(|_| Box::new(Inflate::new(config.read_limit)));
        let end = poll_fn(|cx| session.poll_serve(cx)).await;
        session.finish(end).await;
    }
    .instrument(span)
}

/// Why serving stopped.
enum End {
    /// The server closes the connection with this code and reason.
    Close(CloseCode, &'static str),
    /// The client closed the connection; its close is answered.
    ClosedByClient,
    /// The connection is gone: reset, or closed without a close frame.
    Gone,
}

struct Session<'a, S> {
    io: S,
    /// Reads and checks the client's frames; its replies go to `out`.
    protocol: WebSocketContext,
    /// With permessage-deflate: what the session compresses, and what inflates the
    /// client's compressed messages before the library reads them.
    compression: Option<Compression>,
    inflate: Option<Box<Inflate>>,
    /// What the socket gave that the library has not asked for yet.
    unread: BytesMut,
    /// Says whether the socket may have something to read.
    readable: Signal,
    /// Bytes for the client.
    out: Outgoing,
    topics: Subscriber,
    framing: Framing,
    /// Whether the handshake named several topics: frames with ids then carry the
    /// stream's cursor, which these positions make.
    several: bool,
    positions: Positions,
    /// Items received and not yet encoded: those from `next` on.
    batch: Vec<Item>,
    next: usize,
    /// Whether the topics may have more than the batch took.
    more_events: bool,
    /// The handle `on_message` handlers send through, and its queue; only with a handler.
    direct: Option<(Connection, mpsc::Receiver<Direct>)>,
    config: &'a Config,
    /// The request's head, for the hooks that read it (kept whenever one is set).
    request: Option<&'a Parts>,
    /// Counts the connection as open while it lives.
    _open: crate::metrics::Open,
    next_ping: Instant,
    last_heard: Instant,
    /// Rings for the next ping, the silence deadline or the write deadline, whichever
    /// comes first.
    alarm: Alarm,
}

impl<'a, S> Session<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(
        io: S,
        opened: Opened,
        framing: Framing,
        config: &'a Config,
        request: Option<&'a Parts>,
        version: http::Version,
    ) -> Self {
        // The library's defaults buffer 128 KiB per connection; an idle push connection
        // needs little: the library keeps a read buffer of [`READ_BUFFER`] bytes, and
        // larger messages are still read whole. Its writes go straight through to `out`.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(config.read_limit))
            .max_frame_size(Some(config.read_limit));
        let direct = config.on_message.is_some().then(|| {
            let (direct, queue) = mpsc::channel(DIRECT_QUEUE);
            (Connection { direct }, queue)
        });
        let now = Instant::now();
        let Opened {
            subscriber,
            lost,
            positions,
        } = opened;
        let mut session = Self {
            io,
            protocol: WebSocketContext::new(Role::Server, Some(ws_config)),
            compression: None,
            inflate: None,
            unread: BytesMut::new(),
            readable: Signal::new(),
            out: Outgoing::default(),
            several: subscriber.len() > 1,
            topics: subscriber,
            framing,
            positions,
            batch: Vec::new(),
            next: 0,
            more_events: false,
            direct,
            config,
            request,
            _open: crate::metrics::Open::new("websocket", version),
            next_ping: now + config.ping_interval,
            last_heard: now,
            alarm: Alarm::new(now + config.ping_interval),
        };
        for key in lost {
            session.put_lost(key);
        }
        session
    }

    /// Tells the client that events of the topic of `key` after its resume point are no
    /// longer retained; frames of data alone carry no such notice.
    fn put_lost(&mut self, key: usize) {
        let topic = self.topics.topic(key);
        match self.framing {
            Framing::Data => {}
            Framing::Ids if self.several => {
                frame::put(
                    self.out.bytes(),
                    Opcode::Text,
                    &[LOST.as_bytes(), b" ", topic.as_bytes()],
                );
            }
            Framing::Ids => frame::put(self.out.bytes(), Opcode::Text, &[LOST.as_bytes()]),
            Framing::Protocol => {
                frame::put(self.out.bytes(), Opcode::Text, &[&protocol::lost(topic)]);
            }
        }
    }

    /// Serves until the connection ends, and says why it did.
    ///
    /// Each round reads what the socket signalled, encodes what the subscription and the
    /// direct queue hold, and writes; another round follows only while a source may
    /// have more, and a wake-up does at most `ROUNDS` before yielding.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..ROUNDS {
            while self.alarm.poll_rung(cx) {
                if let Some(end) = self.on_alarm() {
                    return Poll::Ready(end);
                }
                self.alarm.set(self.next_deadline());
            }
            let mut more = false;
            // What is left for lack of room must be taken once the write makes room,
            // without waiting for a wake-up that no source owes the task.
            let starved = !self.has_room();
            if self.out.has_room_for_replies() {
                match self.read_messages(cx) {
                    Ok(unread) => more |= unread,
                    Err(end) => return Poll::Ready(end),
                }
            }
            if self.has_room() {
                match self.take_events(cx) {
                    Ok(pending) => more |= pending,
                    Err(end) => return Poll::Ready(end),
                }
            }
            more |= self.take_direct(cx);
            match self.poll_flush(cx) {
                Poll::Ready(Ok(())) => more |= starved,
                Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                Poll::Pending => {
                    // A deadline that moved later, as the socket took bytes, needs no new
                    // timer: the alarm rings early, finds it not due, and is set again.
                    if let Some(deadline) = self.write_deadline()
                        && deadline < self.alarm.deadline()
                    {
                        self.alarm.set(deadline);
                        // Polled on the next round, which registers it.
                        more = true;
                    }
                }
            }
            if !more {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The alarm rang: a ping is due, the client has been silent too long, or the socket
    /// has taken nothing for too long.
    fn on_alarm(&mut self) -> Option<End> {
        let now = Instant::now();
        if self
            .write_deadline()
            .is_some_and(|deadline| now >= deadline)
        {
            crate::metrics::write_timeout("websocket");
            return Some(End::Close(CloseCode::Again, "write timed out"));
        }
        if now >= self.silence_deadline() {
            return Some(End::Close(CloseCode::Away, "ping timeout"));
        }
        if now >= self.next_ping {
            frame::put(self.out.bytes(), Opcode::Ping, &[]);
            self.next_ping = now + self.config.ping_interval;
            // A topic quiet since the last ping, of this connection or another, lets
            // go of its ring.
            self.topics.compact();
        }
        None
    }

    /// When the alarm must ring next.
    fn next_deadline(&self) -> Instant {
        let heartbeat = self.next_ping.min(self.silence_deadline());
        self.write_deadline()
            .map_or(heartbeat, |deadline| deadline.min(heartbeat))
    }

    /// When a client that has not been heard from since `last_heard` is given up. The
    /// alarm is not moved each time the client is heard: it rings, finds the deadline
    /// moved, and is set again.
    fn silence_deadline(&self) -> Instant {
        self.last_heard + self.config.ping_interval + self.config.ping_timeout
    }

    /// When the bytes waiting for the client are overdue: the write timeout after the
    /// socket last took any.
    fn write_deadline(&self) -> Option<Instant> {
        self.out
            .stalled_since()
            .map(|since| since + self.config.write_timeout)
    }

    /// Whether the client has read enough that more events may be queued for it: past
    /// that, the connection takes no more, and the hub's ring holds what follows.
    fn has_room(&self) -> bool {
        self.out.has_room()
    }

    /// Reads and handles what the client sent, if the socket said it has something; true
    /// when it stopped before the socket ran dry.
    fn read_messages(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        if !self.readable.take(cx.waker()) {
            return Ok(false);
        }
        let read_waker = self.readable.waker().clone();
        let mut read_cx = Context::from_waker(&read_waker);
        for _ in 0..READS {
            if !self.out.has_room_for_replies() {
                break;
            }
            let mut stream = Stream {
                io: &mut self.io,
                cx: &mut read_cx,
                out: &mut self.out,
                inflate: self.inflate.as_deref_mut(),
                unread: &mut self.unread,
            };
            let message = match self.protocol.read(&mut stream) {
                Ok(message) => message,
                // The socket has registered the signal's waker.
                Err(Error::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(false);
                }
                // A compressed message refused; any other I/O error: the connection is gone.
                Err(Error::Io(error)) => {
                    return Err(match inflate::Refused::of(&error) {
                        Some(inflate::Refused::TooBig) => {
                            End::Close(CloseCode::Size, "message too big")
                        }
                        Some(inflate::Refused::Invalid) => {
                            End::Close(CloseCode::Invalid, "invalid compressed data")
                        }
                        None => End::Gone,
                    });
                }
                Err(Error::Capacity(_)) => {
                    return Err(End::Close(CloseCode::Size, "message too big"));
                }
                Err(Error::Utf8(_)) => return Err(End::Close(CloseCode::Invalid, "invalid UTF-8")),
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Err(End::Gone);
                }
                Err(Error::Protocol(_)) => {
                    return Err(End::Close(CloseCode::Protocol, "protocol error"));
                }
                // The connection is gone.
                Err(_) => return Err(End::Gone),
            };
            self.last_heard = Instant::now();
            match message {
                Message::Text(text) if self.framing == Framing::Protocol => self.command(&text),
                Message::Binary(_) if self.framing == Framing::Protocol => {
                    self.reply_refused(&Refused::new(
                        serde_json::Value::Null,
                        StatusCode::BAD_REQUEST,
                        "commands are JSON in text frames",
                    ));
                }
                Message::Text(text) => self.deliver(Bytes::from(text), true)?,
                Message::Binary(data) => self.deliver(data, false)?,
                // The library has queued the pong; move it to `out` now.
                Message::Ping(_) => {
                    let _ = self.protocol.flush(&mut stream);
                }
                Message::Close(_) => {
                    // The library has queued the close reply; it goes out in `finish`.
                    return Err(End::ClosedByClient);
                }
                Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        // Stopped before the socket ran dry: read again on the next round.
        self.readable.raise();
        Ok(true)
    }

    /// Hands a message to the `on_message` handler and queues its replies at once, so a
    /// client that sends faster than it reads cannot fill the direct queue. A handler
    /// that panics ends its connection (1011), and only its connection.
    fn deliver(&mut self, data: Bytes, text: bool) -> Result<(), End> {
        let (Some(handler), Some((connection, _)), Some(request)) =
            (&self.config.on_message, &self.direct, self.request)
        else {
            return Ok(());
        };
        let inbound = Inbound {
            data,
            text,
            topics: &self.topics,
            request,
            hub: &self.config.hub,
            connection,
        };
        if catch_unwind(AssertUnwindSafe(|| handler(inbound))).is_err() {
            tracing::error!("the on_message handler panicked; closing its connection");
            return Err(End::Close(CloseCode::Error, "internal error"));
        }
        while let Some(direct) = self
            .direct
            .as_mut()
            .and_then(|(_, queue)| queue.try_recv().ok())
        {
            self.apply(direct);
        }
        Ok(())
    }

    /// Carries out what came through the connection's handle: a frame, or a change of
    /// topics the server decided on.
    fn apply(&mut self, direct: Direct) {
        match direct {
            Direct::Frame { data, text } => {
                let opcode = if text { Opcode::Text } else { Opcode::Binary };
                put_message(&mut self.out, self.compression, opcode, None, &[], &data);
            }
            Direct::Subscribe(topic) => {
                if self.topics.len() < self.config.max_topics {
                    self.join(&topic, Since::Now);
                } else {
                    tracing::warn!(%topic, "not subscribed: the connection holds max_topics");
                }
            }
            Direct::Unsubscribe(topic) => {
                self.topics.unsubscribe(&topic);
            }
        }
    }

    /// Adds `topic` as `since` says, telling the client when the resume is incomplete.
    /// Returns where the stream stands in the topic.
    fn join(&mut self, topic: &str, since: Since<'_>) -> Option<Joined> {
        let joined = self.topics.join(topic, since)?;
        if joined.resume == Resume::EventsLost && !matches!(since, Since::Now) {
            self.put_lost(joined.key);
        }
        Some(joined)
    }

    /// Carries out a command of the protocol and replies.
    fn command(&mut self, text: &str) {
        match protocol::parse(text) {
            Err(refused) => self.reply_refused(&refused),
            Ok(Command::Subscribe { topic, since, req }) => {
                let refused = |status, reason: String| Refused::new(req.clone(), status, reason);
                if self.topics.contains(&topic) {
                    return self.reply_refused(&refused(
                        StatusCode::CONFLICT,
                        format!("already subscribed to `{topic}`"),
                    ));
                }
                if self.topics.len() >= self.config.max_topics {
                    return self.reply_refused(&refused(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "too many topics: at most {} on one connection",
                            self.config.max_topics
                        ),
                    ));
                }
                // The head is kept whenever there is a hook to read it.
                if let Some(request) = self.request
                    && let Err(rejection) = self.config.authorized(request, &topic)
                {
                    return self.reply_refused(&refused(
                        rejection.status(),
                        rejection.reason().to_owned(),
                    ));
                }
                let since = match since.as_deref() {
                    None => Since::Now,
                    Some("") => Since::Start,
                    Some(id) => Since::After(id),
                };
                // The reply goes before the lost notice and the events.
                let at = self.out.bytes().len();
                let position = self.join(&topic, since).and_then(|joined| joined.position);
                let reply = protocol::subscribed(&req, position.as_deref());
                let notices = self.out.bytes().split_off(at);
                frame::put(self.out.bytes(), Opcode::Text, &[&reply]);
                self.out.bytes().extend_from_slice(&notices);
            }
            Ok(Command::Unsubscribe { topic, req }) => {
                if self.topics.unsubscribe(&topic) {
                    frame::put(self.out.bytes(), Opcode::Text, &[&protocol::ok(&req)]);
                } else {
                    self.reply_refused(&Refused::new(
                        req,
                        StatusCode::NOT_FOUND,
                        format!("not subscribed to `{topic}`"),
                    ));
                }
            }
        }
    }

    fn reply_refused(&mut self, refused: &Refused) {
        frame::put(self.out.bytes(), Opcode::Text, &[&protocol::error(refused)]);
    }

    /// Encodes what the topics hold into `out`; true unless they are known to have
    /// nothing more until they wake the task.
    fn take_events(&mut self, cx: &mut Context<'_>) -> Result<bool, End> {
        let fresh = self.next == self.batch.len();
        if fresh {
            self.batch.clear();
            self.next = 0;
            self.more_events = match self.topics.poll_batch(cx, &mut self.batch, BATCH) {
                Poll::Ready(more) => more,
                // The topics hold the task's waker.
                Poll::Pending => false,
            };
        }
        while self.next < self.batch.len() && self.has_room() {
            match &self.batch[self.next] {
                Item::Event(key, event) => {
                    let id = match self.framing {
                        Framing::Data | Framing::Protocol => None,
                        Framing::Ids if self.several => {
                            self.positions.advance(*key, event.event_id())
                        }
                        Framing::Ids => Some(event.event_id().unwrap_or_default().to_owned()),
                    };
                    let (out, compression) = (&mut self.out, self.compression);
                    match self.framing {
                        Framing::Protocol => {
                            let payload = event.protocol_frame(self.topics.topic(*key));
                            let shared = Some((&**event, Form::Protocol));
                            put_message(out, compression, Opcode::Text, shared, &[], payload);
                        }
                        Framing::Data => {
                            let opcode = frame::data_opcode(event, self.config.binary);
                            let shared = Some((&**event, Form::Data));
                            put_message(out, compression, opcode, shared, &[], event.data());
                        }
                        Framing::Ids => {
                            let opcode = frame::data_opcode(event, self.config.binary);
                            // A cursor is the connection's own; an event's id is everyone's.
                            let shared = (!self.several).then_some((&**event, Form::WithId));
                            let id = id.unwrap_or_default();
                            let prefix = [id.as_bytes(), b"\n"];
                            put_message(out, compression, opcode, shared, &prefix, event.data());
                        }
                    }
                }
                Item::Lagged(key, missed) => {
                    tracing::debug!(
                        missed,
                        topic = self.topics.topic(*key),
                        "lagged: events skipped"
                    );
                    if self.framing == Framing::Protocol {
                        let notice = protocol::lagged(self.topics.topic(*key), *missed);
                        frame::put(self.out.bytes(), Opcode::Text, &[&notice]);
                    }
                }
                Item::Lost(key) => {
                    tracing::debug!(
                        topic = self.topics.topic(*key),
                        "lost: events missing from the history"
                    );
                    self.put_lost(*key);
                }
                Item::Closed(_, reason) => return Err(closed_by_hub(*reason)),
            }
            self.next += 1;
        }
        // A batch finished in a later call than the one that took it may have seen the
        // topics wake the task meanwhile, a wake spent on a round that had no room to
        // take anything: `more_events` is stale then, and only a new read registers the
        // task again.
        let more = self.next < self.batch.len() || self.more_events || !fresh;
        if !more {
            // Quiet until the topics wake the task: the batch's memory is let go, as
            // most connections are quiet most of the time.
            self.batch = Vec::new();
            self.next = 0;
        }
        Ok(more)
    }

    /// Encodes what was sent through the connection's handle; true when there was any.
    fn take_direct(&mut self, cx: &mut Context<'_>) -> bool {
        let mut taken = false;
        while self.has_room() {
            let Some((_, queue)) = &mut self.direct else {
                break;
            };
            match queue.poll_recv(cx) {
                Poll::Ready(Some(direct)) => {
                    self.apply(direct);
                    taken = true;
                }
                // The session holds a sender itself: the queue never ends while it runs.
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        taken
    }

    /// Writes `out` to the client.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.poll_write(&mut self.io, cx)
    }

    /// Closes the connection as `end` says, sending what is due within the write timeout.
    async fn finish(&mut self, end: End) {
        // Nothing more is read from the hub: the topics are let go at once, not once the
        // last bytes have gone to a client that may not read them.
        self.topics.detach();
        match end {
            End::Close(code, reason) => {
                crate::metrics::closed(code.into());
                frame::put_close(self.out.bytes(), code.into(), reason);
                if code == CloseCode::Again {
                    // A client that stopped reading gets one try, without waiting again.
                    let _ = poll_fn(|cx| Poll::Ready(self.poll_flush(cx))).await;
                } else {
                    self.drain().await;
                }
                tracing::debug!(code = u16::from(code), reason, "connection closed");
            }
            End::ClosedByClient => {
                poll_fn(|cx| {
                    let mut stream = Stream {
                        io: &mut self.io,
                        cx,
                        out: &mut self.out,
                        inflate: None,
                        unread: &mut self.unread,
                    };
                    // Writes the close reply; then reports the closing as an error.
                    let _ = self.protocol.flush(&mut stream);
                    Poll::Ready(())
                })
                .await;
                self.drain().await;
                tracing::debug!("connection closed by the client");
            }
            End::Gone => tracing::debug!("connection lost"),
        }
    }

    /// Best effort: a peer that stopped reading cannot receive it anyway.
    async fn drain(&mut self) {
        // The session's alarm keeps time: a timer of its own would make every
        // connection's task larger, since the task has room for its largest state.
        self.alarm.set(Instant::now() + self.config.write_timeout);
        poll_fn(|cx| {
            if self.poll_flush(cx).is_ready() || self.alarm.poll_rung(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// Appends a message of `prefix` (at most two parts) then `payload`, compressed when the
/// connection negotiated `compression` and the message is large enough; an event's
/// compressed form (`shared`) is made once and kept for every connection that sends it.
fn put_message(
    out: &mut Outgoing,
    compression: Option<Compression>,
    opcode: Opcode,
    shared: Option<(&crate::Event, Form)>,
    prefix: &[&[u8]],
    payload: &Bytes,
) {
    let len = prefix.iter().map(|part| part.len()).sum::<usize>() + payload.len();
    if let Some(compression) = compression.filter(|c| len >= c.min_size) {
        let compress = || {
            let mut parts = [&[][..]; 3];
            parts[..prefix.len()].copy_from_slice(prefix);
            parts[prefix.len()] = payload;
            deflate::compress(&parts[..=prefix.len()], compression.level)
        };
        let compressed = match shared {
            Some((event, form)) => event.deflated(form, compress),
            None => compress(),
        };
        if let Some(compressed) = compressed {
            return frame::put_compressed(out, opcode, &compressed);
        }
    }
    frame::put_shared(out, opcode, prefix, payload);
}

/// How the connection closes when its subscription ended for `reason`.
fn closed_by_hub(reason: CloseReason) -> End {
    match reason {
        CloseReason::Lagged => End::Close(CloseCode::Policy, "too slow to keep up"),
        CloseReason::Disconnected => End::Close(CloseCode::Normal, "disconnected by the server"),
        _ => End::Close(CloseCode::Away, "server shutting down"),
    }
}

/// The connection as the WebSocket library sees it: reads come from the client, and
/// writes join the outgoing buffer behind the frames already there.
struct Stream<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
    out: &'a mut Outgoing,
    /// Inflates compressed messages on their way to the library, when negotiated.
    inflate: Option<&'a mut Inflate>,
    /// What the socket gave that the library has not asked for yet.
    unread: &'a mut BytesMut,
}

impl<S: AsyncRead + Unpin> Read for Stream<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (io, cx, unread) = (&mut *self.io, &mut *self.cx, &mut *self.unread);
        // The library asks for a little at a time ([`READ_BUFFER`]): what the socket gave
        // beyond that waits in `unread`, which is empty, and holds nothing, once taken.
        let read = |into: &mut [u8]| {
            if into.is_empty() {
                return Ok(0);
            }
            if !unread.is_empty() {
                let len = unread.len().min(into.len());
                into[..len].copy_from_slice(&unread[..len]);
                unread.advance(len);
                if unread.is_empty() {
                    *unread = BytesMut::new();
                }
                return Ok(len);
            }
            let read = scratch::poll_read(Pin::new(&mut *io), cx, |filled| {
                let len = filled.len().min(into.len());
                into[..len].copy_from_slice(&filled[..len]);
                unread.extend_from_slice(&filled[len..]);
                len
            });
            match read {
                Poll::Ready(result) => result,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            }
        };
        match &mut self.inflate {
            Some(inflate) => inflate.read(buf, read),
            None => {
                let mut read = read;
                read(buf)
            }
        }
    }
}

impl<S> Write for Stream<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.bytes().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use super::*;
    use crate::Hub;

    /// A client's socket whose kernel buffers take `room` more bytes, and which has
    /// nothing to read.
    #[derive(Default)]
    struct Pipe {
        room: usize,
        written: Vec<u8>,
        waker: Option<Waker>,
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Pipe>>);

    impl AsyncRead for Shared {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Shared {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut pipe = self.0.lock().expect("not poisoned");
            let n = pipe.room.min(buf.len());
            if n == 0 {
                pipe.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            pipe.room -= n;
            pipe.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A session of the topic `t` over a pipe that takes `room` bytes.
    fn session_of_t(config: &Config, room: usize) -> (Session<'_, Shared>, Shared) {
        let pipe = Shared::default();
        pipe.0.lock().expect("not poisoned").room = room;
        let session = Session::new(
            pipe.clone(),
            config.open(&["t".to_owned()], None),
            Framing::Data,
            config,
            None,
            http::Version::HTTP_11,
        );
        (session, pipe)
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The hub wakes a connection for an event while it has no room to take it; the
    /// wake is spent. Once the client has read everything, the event must still go out,
    /// though nothing else will wake the connection.
    #[tokio::test]
    async fn an_event_that_came_while_there_was_no_room_goes_out_once_there_is() {
        let hub = Hub::new();
        let mut config = Config::new(hub.clone());
        config.ping_interval = Duration::from_secs(600);
        let (mut session, pipe) = session_of_t(&config, 0);
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);

        // One batch, more than the connection takes before it has no room.
        for i in 0..48 {
            hub.broadcast("t", format!("{i:02}{}", "x".repeat(2046)));
        }
        assert!(session.poll_serve(&mut cx).is_pending());
        // The client reads nothing; the event comes, and its wake finds no room.
        hub.broadcast("t", "last");
        let woken = count.0.load(Ordering::SeqCst);
        assert!(woken > 0, "the hub woke the connection");
        assert!(session.poll_serve(&mut cx).is_pending());
        assert!(
            !pipe
                .0
                .lock()
                .expect("not poisoned")
                .written
                .ends_with(b"last")
        );

        // The client reads everything from now on.
        pipe.0.lock().expect("not poisoned").room = usize::MAX;
        let woken = count.0.load(Ordering::SeqCst);
        assert!(session.poll_serve(&mut cx).is_pending());
        let written = std::mem::take(&mut pipe.0.lock().expect("not poisoned").written);
        let again = count.0.load(Ordering::SeqCst) > woken;
        assert!(
            written.ends_with(b"last") || again,
            "the event neither went out nor will: {} bytes written",
            written.len()
        );
    }

    /// A burst grows the topic's ring; the connection's pings let it go once the topic
    /// has been quiet from one ping to the next.
    #[tokio::test]
    async fn a_quiet_topic_lets_go_of_its_ring_at_the_pings() {
        let hub = Hub::new();
        let mut config = Config::new(hub.clone());
        config.ping_interval = Duration::from_millis(20);
        let (mut session, pipe) = session_of_t(&config, usize::MAX);
        for i in 0..64 {
            hub.broadcast("t", format!("event {i}"));
        }
        let grown = hub.ring_capacity("t").expect("the topic is known");
        assert!(grown >= 64, "{grown} slots");

        let freed = async {
            while hub.ring_capacity("t") != Some(0) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = poll_fn(|cx| session.poll_serve(cx)) => panic!("the session ended"),
            freed = tokio::time::timeout(Duration::from_secs(10), freed) => {
                freed.expect("the ring is freed within 10 s of pings");
            }
        }
        let written = std::mem::take(&mut pipe.0.lock().expect("not poisoned").written);
        assert!(
            written.windows(8).any(|window| window == b"event 63"),
            "the burst went out before its ring was freed"
        );
    }
}
