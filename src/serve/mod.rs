//! A server for a stack with a [`StreamLayer`](crate::StreamLayer): HTTP/1.1 with
//! upgrades (and HTTP/2 with the `http2` feature), through hyper, except that a
//! connection which opens with a Server-Sent-Events request is answered on the bare
//! socket.
//!
//! An event stream is one response that never ends, so under a general HTTP server each
//! idle stream keeps that server's per-connection state: hyper's read and write buffers,
//! about 20 KiB. [`serve`] reads a connection's first request head itself. A `GET` that
//! accepts `text/event-stream`, has no body and is alone on the connection is passed to
//! the service like any other request, and the response (whatever the service made of
//! it) is written to the socket by a small writer that keeps no buffer while the stream
//! is quiet; the connection closes when the response ends. Everything else, WebSocket
//! handshakes included, is handed to hyper with the bytes already read, and served as
//! `hyper-util`'s `serve_connection_with_upgrades` would serve it; an event stream that
//! reaches hyper (a second request on a keep-alive connection, a head over 16 KiB) is
//! closed by the layer's write timeout too, when its client stops reading.
//!
//! `TCP_NODELAY` is set on every accepted socket, so small frames leave at once, and on
//! Linux `TCP_NOTSENT_LOWAT` (64 KiB), so that the kernel does not take megabytes of a
//! slow client's bytes and the write timeout sees such a client's progress as it reads.
//! The client's address is in each request's extensions as a
//! [`SocketAddr`], where the layer's logs find it. [`Serve::with_graceful_shutdown`]
//! stops the server and waits for its connections, which closing the hub ends.
//!
//! ```no_run
//! use axum::Router;
//! use axum::routing::post;
//! use tower_fanout::{Hub, StreamLayer};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::new();
//! let app = Router::new()
//!     .route("/publish", post(|| async { "done" }))
//!     .layer(StreamLayer::new(hub).path("/events"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! tower_fanout::serve(listener, app).await;
//! # Ok(())
//! # }
//! ```
//!
//! # TLS, or any other transport
//!
//! [`Serve::with_transport`] turns each accepted TCP connection into the IO that is
//! served, in the connection's own task: a TLS acceptor's handshake, for example. The
//! socket options above are set on the TCP stream first, and an event stream over the
//! transport is written as over plain TCP, without a buffer of this crate's between
//! events. The handshake and the first request head together have 30 s
//! ([`Serve::head_timeout`]).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tower_fanout::{Hub, StreamLayer};
//! # async fn run(config: Arc<tokio_rustls::rustls::ServerConfig>) -> std::io::Result<()> {
//! # let app = axum::Router::new().layer(StreamLayer::new(Hub::new()));
//! // `config` lists the protocols by ALPN: `h2` needs the `http2` feature.
//! let tls = tokio_rustls::TlsAcceptor::from(config);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! tower_fanout::serve(listener, app)
//!     .with_transport(move |tcp| tls.accept(tcp))
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! # HTTP/2
//!
//! With the `http2` feature, a connection that opens with HTTP/2's preface (prior
//! knowledge, or a TLS client that chose `h2` by ALPN) is served by hyper's HTTP/2, with
//! the extended CONNECT enabled, so WebSockets travel over it too (RFC 8441). Without
//! the feature such a connection is refused by hyper's HTTP/1.1 as a malformed request.

mod body;
mod head;
mod respond;
mod rewind;
mod timed;
mod waiting;

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, IntoFuture, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

pub use self::body::Body;
use self::head::Head;
use self::rewind::Rewind;
use self::timed::TimedWrites;
use self::waiting::{Ticket, Waiting};
use crate::config::WriteTimeout;

type BoxError = Box<dyn StdError + Send + Sync>;

/// How long a new connection has for its transport's handshake and its first request
/// head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections in hyper's hands have after the shutdown signal, by default.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `service` on the connections `listener` accepts, each in a task of its own,
/// once awaited; runs until dropped, or until the signal of
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown).
///
/// See [the module](self) for what is served how. Accept errors are logged; when the
/// process is out of file descriptors, accepting pauses for a second. Dropping the
/// future stops accepting; connections already open go on.
pub fn serve<S>(listener: TcpListener, service: S) -> Serve<S> {
    Serve {
        listener,
        service,
        signal: std::future::pending(),
        shutdown_timeout: SHUTDOWN_TIMEOUT,
        head_timeout: HEAD_TIMEOUT,
        transport: plain,
    }
}

/// The transport of [`serve`] unless told otherwise: the TCP stream itself.
pub type Plain = fn(TcpStream) -> std::future::Ready<io::Result<TcpStream>>;

fn plain(tcp: TcpStream) -> std::future::Ready<io::Result<TcpStream>> {
    std::future::ready(Ok(tcp))
}

/// The future of [`serve`]: await it (it implements [`IntoFuture`]).
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve<S, F = std::future::Pending<()>, T = Plain> {
    listener: TcpListener,
    service: S,
    signal: F,
    shutdown_timeout: Duration,
    head_timeout: Duration,
    transport: T,
}

impl<S, T> Serve<S, std::future::Pending<()>, T> {
    /// Shuts down gracefully once `signal` completes: stops accepting, lets each request
    /// in progress finish (for at most the [shutdown timeout](Self::shutdown_timeout))
    /// and closes connections as they go idle, then waits until every connection it
    /// serves has ended.
    ///
    /// Streams end when their [`Hub`](crate::Hub) is closed: call
    /// [`Hub::close`](crate::Hub::close) as the signal fires, or the wait lasts as long
    /// as the longest stream. A stream whose client does not read its last bytes is closed
    /// by the layer's write timeout, so whatever the clients do, the wait is bounded.
    /// Upgraded WebSocket connections are the layer's, not the server's; closing the hub
    /// ends them with 1001.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> Serve<S, F, T>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            service: self.service,
            signal,
            shutdown_timeout: self.shutdown_timeout,
            head_timeout: self.head_timeout,
            transport: self.transport,
        }
    }
}

impl<S, F> Serve<S, F> {
    /// Serves the IO that `transport` makes of each accepted TCP stream, a TLS stream for
    /// example, instead of the stream itself.
    ///
    /// `transport` is called in the accept loop; the future it returns runs in the
    /// connection's task, so a slow handshake holds up only its own connection. A
    /// handshake that fails closes the connection (logged at debug level).
    pub fn with_transport<T, H, Io>(self, transport: T) -> Serve<S, F, T>
    where
        T: FnMut(TcpStream) -> H,
        H: Future<Output = io::Result<Io>>,
        Io: AsyncRead + AsyncWrite + Unpin,
    {
        Serve {
            listener: self.listener,
            service: self.service,
            signal: self.signal,
            shutdown_timeout: self.shutdown_timeout,
            head_timeout: self.head_timeout,
            transport,
        }
    }
}

impl<S, F, T> Serve<S, F, T> {
    /// How long, after the shutdown signal, a connection served by hyper may take to
    /// finish what it is doing before it is closed: a client that sends its request body
    /// slowly, or not at all, cannot hold the shutdown longer. Default: 30 s.
    ///
    /// Event streams are not cut by it: they end when their hub is closed, and a client
    /// that does not read their last bytes is closed by the layer's write timeout.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a new connection has for its transport's handshake (TLS) and its first
    /// request head before it is closed; checked a few times per timeout, at most every
    /// second. Default: 30 s.
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = timeout;
        self
    }
}

impl<S, F, T> fmt::Debug for Serve<S, F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl<S, B, F, T, H, Io> IntoFuture for Serve<S, F, T>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
    T: FnMut(TcpStream) -> H + Send + 'static,
    H: Future<Output = io::Result<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let Self {
                listener,
                service,
                signal,
                shutdown_timeout,
                head_timeout,
                mut transport,
            } = self;
            let waiting = Waiting::default();
            tokio::spawn(waiting::sweep(waiting.clone(), head_timeout));
            let (shutdown, open) = watch::channel(Shared {
                shutdown_timeout,
                waiting: waiting.clone(),
            });
            let mut signal = pin!(signal);
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = accept(&listener) => accepted,
                    () = &mut signal => break,
                };
                let _ = stream.set_nodelay(true);
                limit_unsent(&stream);
                let connection = Connection {
                    peer,
                    service: service.clone(),
                    shutdown: open.clone(),
                };
                let ticket = waiting.enter(tokio::time::Instant::now() + head_timeout);
                let task = tokio::spawn(Connected::Opening {
                    opening: connection.open(ticket, transport(stream)),
                });
                waiting.started(ticket, task.abort_handle());
            }
            // A connection that has not asked for anything yet is simply closed.
            waiting.close_all();
            drop(waiting);
            drop(listener);
            shutdown.send_modify(|_| {});
            drop(open);
            shutdown.closed().await;
        })
    }
}

/// Unsent bytes the kernel takes per connection before a write waits; see
/// [`limit_unsent`].
#[cfg(any(target_os = "linux", target_os = "android"))]
const UNSENT_LIMIT: u32 = 64 * 1024;

/// Keeps the bytes the kernel holds unsent for a connection under [`UNSENT_LIMIT`]
/// (`TCP_NOTSENT_LOWAT`), where Linux would otherwise take megabytes of them and report
/// the socket writable again only once a third of that has drained. So a client that
/// reads slowly is seen to make progress as it reads, and is not closed by the write
/// timeout; what it has not taken waits in the connection's own bounded buffer or in the
/// hub's ring, where the lag policy sees it.
fn limit_unsent(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LIMIT);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// The next connection; accept errors are logged and waited out.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            // A connection reset before it was accepted says nothing about the listener.
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                // Running out of descriptors clears only as other connections close.
                tracing::error!(%error, "accept failed; pausing for 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection, before it is known who serves it.
struct Connection<S> {
    peer: SocketAddr,
    service: S,
    /// Changes when the server shuts down; dropped when the connection ends.
    shutdown: Open,
}

/// What the connections of one server share: the value of the channel whose receivers
/// they hold. A change of it is the shutdown signal, and the server knows a connection
/// has ended when its receiver is dropped.
struct Shared {
    /// How long hyper may go on after the shutdown signal.
    shutdown_timeout: Duration,
    waiting: Waiting,
}

/// A connection's receiver of [`Shared`].
type Open = watch::Receiver<Shared>;

impl<S, B> Connection<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Serves the connection once `handshake` has made its IO and the first request head
    /// is read, while `ticket` holds its place among those waiting for one; for an event
    /// stream, returns what writes the response, which the connection's task goes on with.
    async fn open<H, Io>(self, ticket: Ticket, handshake: H) -> Option<respond::Streaming<B, Io>>
    where
        H: Future<Output = io::Result<Io>>,
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opened = async {
            let mut io = handshake.await?;
            let head = head::read(&mut io).await?;
            Ok::<_, io::Error>((io, head))
        };
        let opened = opened.await;
        // Asked in time: no longer closed at the head timeout, nor at shutdown, which
        // from here on is hyper's or the stream's to hear.
        self.shutdown.borrow().waiting.leave(ticket);
        match opened {
            // Boxed: what serves the connection from here on is larger than what waited.
            Ok((io, head)) => Box::pin(self.serve_opened(io, head)).await,
            Err(error) => {
                tracing::debug!(%error, peer = %self.peer, "connection lost");
                None
            }
        }
    }

    /// Serves the connection once its first request head is read; for an event stream,
    /// returns what writes the response.
    async fn serve_opened<Io>(self, io: Io, head: Head) -> Option<respond::Streaming<B, Io>>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match head {
            Head::EventStream(request) => {
                let mut request = *request;
                request.extensions_mut().insert(self.peer);
                respond::respond(io, self.service, request, self.shutdown).await
            }
            Head::Other(read) => {
                self.serve_with_hyper(Rewind::new(read, io)).await;
                None
            }
            Head::Closed => None,
        }
    }

    /// Serves the connection with hyper. A response that carries a [`WriteTimeout`] sets
    /// it for the connection's writes.
    async fn serve_with_hyper<Io>(self, io: Io)
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            service,
            mut shutdown,
        } = self;
        let shutdown_timeout = shutdown.borrow().shutdown_timeout;
        let (io, write_timeout) = TimedWrites::new(io);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(Body::incoming);
            request.extensions_mut().insert(peer);
            let response = call(service.clone(), request);
            let write_timeout = write_timeout.clone();
            async move {
                let response = response.await?;
                if let Some(&WriteTimeout(timeout)) = response.extensions().get() {
                    write_timeout.set(timeout);
                }
                Ok::<_, S::Error>(response)
            }
        });
        let io = TokioIo::new(io);
        #[cfg(not(feature = "http2"))]
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, service)
            .with_upgrades();
        #[cfg(feature = "http2")]
        let builder = {
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol();
            builder
        };
        #[cfg(feature = "http2")]
        let connection = builder.serve_connection_with_upgrades(io, service);
        let mut connection = pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = shut_down(&mut shutdown) => {
                connection.as_mut().graceful_shutdown();
                match tokio::time::timeout(shutdown_timeout, connection).await {
                    Ok(served) => served,
                    Err(_) => return tracing::debug!(%peer, "closed at the shutdown timeout"),
                }
            }
        };
        if let Err(error) = served {
            tracing::debug!(%error, %peer, "connection ended with an error");
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: it waits for the request head and serves the connection,
    /// then, for an event stream, writes the response in the same room. The task is as
    /// large as the larger of the two, not their sum, and a stream needs no task of its
    /// own: connections that arrive all at once leave no freed tasks between the streams
    /// that outlive them, which the allocator's per-thread arenas would keep.
    #[project = ConnectedProj]
    enum Connected<O, S> {
        Opening { #[pin] opening: O },
        Streaming { #[pin] streaming: S },
    }
}

impl<O, S> Future for Connected<O, S>
where
    O: Future<Output = Option<S>>,
    S: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        loop {
            match self.as_mut().project() {
                ConnectedProj::Opening { opening } => match std::task::ready!(opening.poll(cx)) {
                    Some(streaming) => self.set(Self::Streaming { streaming }),
                    None => return std::task::Poll::Ready(()),
                },
                ConnectedProj::Streaming { streaming } => return streaming.poll(cx),
            }
        }
    }
}

/// Completes when the server shuts down gracefully; never when it is merely dropped.
async fn shut_down(shutdown: &mut Open) {
    if shutdown.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Calls `service` once it is ready.
async fn call<S, R>(mut service: S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(request).await
}
