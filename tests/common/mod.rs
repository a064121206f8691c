//! Real servers and clients on 127.0.0.1 for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tower_fanout::{Event, Hub, StreamLayer};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

pub const WAIT: Duration = Duration::from_secs(10);

/// The application behind the layer: answers every request with its path.
#[derive(Clone, Debug)]
pub struct Inner;

impl<B> Service<Request<B>> for Inner {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let body = format!("inner {}", request.uri().path());
        Box::pin(async move { Ok(Response::new(body)) })
    }
}

/// A listener on 127.0.0.1 whose accepted sockets have a send buffer of `bytes` (the
/// kernel doubles it), where Linux would otherwise grow it to megabytes on loopback.
/// The kernel lets a blocked writer go on once a third of the buffer has drained, so a
/// small one shows a slow reader's progress as the reader makes it.
pub fn listener_with_send_buffer(bytes: u32) -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_send_buffer_size(bytes)
        .expect("send buffer size");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    socket.listen(1024).expect("listen")
}

/// Serves `service` with hyper-util's auto builder, upgrades enabled; returns the address.
pub async fn serve_hyper<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_hyper_on(listener, service)
}

/// Serves `service` on `listener` as [`serve_hyper`] does.
pub fn serve_hyper_on<S, B>(listener: TcpListener, service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                // HTTP/2 too, with WebSockets over it (RFC 8441).
                builder.http2().enable_connect_protocol();
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Serves `service` with `tower_fanout::serve`; returns the address.
pub async fn serve_fanout<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<tower_fanout::serve::Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_fanout_on(listener, service)
}

/// Serves `service` on `listener` as [`serve_fanout`] does.
pub fn serve_fanout_on<S, B>(listener: TcpListener, service: S) -> SocketAddr
where
    S: Service<Request<tower_fanout::serve::Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = listener.local_addr().expect("address");
    tokio::spawn(std::future::IntoFuture::into_future(tower_fanout::serve(
        listener, service,
    )));
    addr
}

/// Waits until `condition` holds, checking every few milliseconds, for at most `WAIT`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `stream` until the server closes it, for at most `WAIT`; returns what came.
pub async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    rest
}

/// Sends a raw HTTP/1.1 request and returns the status code and the whole response text.
pub async fn raw_request(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// An event as an SSE client reads it: type (or "message") and data.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

/// A Server-Sent-Events client, over a plain TCP socket unless made [`over`](Self::over)
/// another stream, reading a chunked response.
pub struct SseClient<S = TcpStream> {
    stream: S,
    raw: Vec<u8>,
    pub headers: String,
    body: Vec<u8>,
    /// The chunked body's last chunk has arrived.
    ended: bool,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        Self::connect_with(addr, path, "").await
    }

    /// Connects with extra header lines, each ending in CRLF.
    pub async fn connect_with(addr: SocketAddr, path: &str, headers: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::over(stream, &addr.to_string(), path, headers).await
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> SseClient<S> {
    /// Asks for the event stream at `path` of `host` on `stream`, with extra header lines.
    pub async fn over(mut stream: S, host: &str, path: &str, headers: &str) -> Self {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{headers}\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut client = Self {
            stream,
            raw: Vec::new(),
            headers: String::new(),
            body: Vec::new(),
            ended: false,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while !client.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            client.fill(deadline).await;
        }
        let end = client
            .raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head")
            + 4;
        client.headers = String::from_utf8_lossy(&client.raw[..end]).into_owned();
        client.raw.drain(..end);
        client
    }

    /// Reads what arrives next, by `deadline`: each loop that waits for something is
    /// bounded as a whole, however much else the server sends meanwhile.
    async fn fill(&mut self, deadline: tokio::time::Instant) {
        let mut buf = [0; 4096];
        let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        assert!(n > 0, "stream ended early");
        self.raw.extend_from_slice(&buf[..n]);
    }

    /// Moves complete chunks of the chunked encoding into the body.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.raw[..line_end]).expect("size"),
                16,
            )
            .expect("chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
                return;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
    }

    /// Waits for the end of the response body.
    pub async fn until_end(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.dechunk();
            if self.ended {
                return;
            }
            self.fill(deadline).await;
        }
    }

    /// The socket, for reading what is left.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Reads until the body so far contains `needle`.
    pub async fn body_until(&mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.dechunk();
            if self.body.windows(needle.len()).any(|w| w == needle) {
                return std::mem::take(&mut self.body);
            }
            self.fill(deadline).await;
        }
    }

    /// The next event, skipping comments.
    pub async fn next_event(&mut self) -> SseEvent {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.dechunk();
            while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.body.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("utf-8");
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                    id: None,
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        event.event = value.into();
                    } else if let Some(value) = line.strip_prefix("id: ") {
                        event.id = Some(value.into());
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                }
                if has_data {
                    return event;
                }
            }
            self.fill(deadline).await;
        }
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

pub async fn ws_connect(url: &str) -> Ws {
    let (socket, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    assert_eq!(response.status(), 101);
    socket
}

pub async fn next_text(socket: &mut Ws) -> String {
    let text = async {
        loop {
            let message = socket
                .next()
                .await
                .expect("stream open")
                .expect("valid frame");
            if let Message::Text(text) = message {
                return text.to_string();
            }
        }
    };
    tokio::time::timeout(WAIT, text)
        .await
        .expect("a text frame in time")
}

/// The code of the close frame the server sends next, skipping other frames.
pub async fn close_code(socket: &mut Ws) -> Option<u16> {
    let code = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|frame| u16::from(frame.code));
                }
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, code)
        .await
        .expect("a close frame in time")
}

/// A layer on `/events` whose `on_message` records each text message and echoes it to
/// the sender.
pub fn recording_layer(hub: Hub) -> (StreamLayer, Arc<Mutex<Vec<String>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let layer = {
        let received = Arc::clone(&received);
        StreamLayer::new(hub)
            .path("/events")
            .on_message(move |inbound| {
                let text = inbound.text().unwrap_or_default().to_owned();
                let _ = inbound.connection().send(format!("echo {text}"));
                received.lock().expect("not poisoned").push(text);
            })
    };
    (layer, received)
}

/// The clients of [`assert_fan_out`], kept open until dropped.
pub struct Clients(Vec<Ws>, Vec<SseClient>);

/// Two WebSocket and two SSE clients on topic `a` and one SSE client on `b`, against a
/// server running [`recording_layer`]: broadcasts reach exactly the right clients, in
/// order; inbound messages reach `on_message` in order and its replies only the sender.
pub async fn assert_fan_out(addr: SocketAddr, hub: &Hub, received: &Mutex<Vec<String>>) -> Clients {
    let before = hub.stats().subscribers;
    let url = format!("ws://{addr}/events?topic=a");
    let mut ws1 = ws_connect(&url).await;
    let mut ws2 = ws_connect(&url).await;
    let mut sse1 = SseClient::connect(addr, "/events?topic=a").await;
    let mut sse2 = SseClient::connect(addr, "/events?topic=a").await;
    let mut other = SseClient::connect(addr, "/events?topic=b").await;
    let head = sse1.headers.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    wait_until("all five are subscribed", || {
        hub.stats().subscribers == before + 5
    })
    .await;

    for i in 0..3 {
        let event = Event::new(format!("a{i}")).event("tick").expect("valid");
        assert_eq!(hub.broadcast("a", event), 4);
    }
    assert_eq!(hub.broadcast("b", "b0"), 1);

    for socket in [&mut ws1, &mut ws2] {
        for i in 0..3 {
            assert_eq!(next_text(socket).await, format!("a{i}"));
        }
    }
    for client in [&mut sse1, &mut sse2] {
        for i in 0..3 {
            let event = client.next_event().await;
            assert_eq!(
                (event.event.as_str(), event.data),
                ("tick", format!("a{i}"))
            );
        }
    }
    assert_eq!(
        other.next_event().await.data,
        "b0",
        "b heard only its own topic"
    );

    for i in 0..3 {
        ws1.send(Message::text(format!("m{i}")))
            .await
            .expect("send");
    }
    wait_until("three messages arrived", || {
        received.lock().expect("not poisoned").len() == 3
    })
    .await;
    assert_eq!(*received.lock().expect("not poisoned"), ["m0", "m1", "m2"]);
    for i in 0..3 {
        assert_eq!(next_text(&mut ws1).await, format!("echo m{i}"));
    }
    hub.broadcast("a", "after");
    assert_eq!(
        next_text(&mut ws2).await,
        "after",
        "ws2 got no echo before the next event"
    );
    assert_eq!(next_text(&mut ws1).await, "after");
    Clients(vec![ws1, ws2], vec![sse1, sse2, other])
}

/// A WebSocket client that offers the protocol, with extra headers.
pub async fn protocol_client(
    addr: std::net::SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> Ws {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/{query}"
        ))
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "fanout.v1".parse().expect("value"),
    );
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    let (socket, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"fanout.v1"[..])
    );
    socket
}

pub async fn send(socket: &mut Ws, command: serde_json::Value) {
    socket
        .send(Message::text(command.to_string()))
        .await
        .expect("send");
}

/// Sends `command` and returns the next JSON frame: its reply, where nothing else of the
/// connection's can come first.
pub async fn command(socket: &mut Ws, command: serde_json::Value) -> serde_json::Value {
    send(socket, command).await;
    next_json(socket).await
}

/// The next JSON frame the server sends.
pub async fn next_json(socket: &mut Ws) -> serde_json::Value {
    serde_json::from_str(&next_text(socket).await).expect("a JSON frame")
}

/// A server of the test's own, which `start` runs on a free port, or `None` if it exits
/// before it listens. A port chosen here can be taken before the server binds it (by
/// another test's listener, or as the ephemeral port of a connection), so another is
/// tried then, five times at most; servers that can be told port 0 are better told that.
pub fn on_a_free_port<T>(what: &str, mut start: impl FnMut(u16) -> Option<T>) -> T {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        if let Some(server) = start(port) {
            return server;
        }
    }
    panic!("{what} exited at start five times: ports taken before it bound them?");
}

/// Whether a Redis server answers on `port`: a PING, not just a connection, since
/// something else may listen there.
fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// A redis-server of the test's own, on a port it chose; killed when dropped.
pub struct Redis {
    child: std::process::Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: Option<u16>) -> Self {
        Self::start_in(port, None)
    }

    /// A redis-server that keeps its data in `dir`, when given (an append-only file
    /// synced on every write), so that a restart on the same port and directory has it
    /// all; without, a restart has lost everything.
    pub fn start_in(port: Option<u16>, dir: Option<&std::path::Path>) -> Self {
        match dir.map(|dir| dir.display().to_string()) {
            Some(dir) => Self::spawn(
                port,
                &[
                    "--dir",
                    &dir,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ],
            ),
            None => Self::spawn(port, &["--appendonly", "no"]),
        }
    }

    /// A redis-server that keeps in `dir` only the snapshots it is told to take
    /// ([`save`](Self::save)): a restart on the same port and directory has what the
    /// last one held, and nothing stored after it.
    pub fn start_snapshotting(port: Option<u16>, dir: &std::path::Path) -> Self {
        let dir = dir.display().to_string();
        Self::spawn(port, &["--dir", &dir, "--appendonly", "no"])
    }

    fn spawn(port: Option<u16>, persistence: &[&str]) -> Self {
        let start = |port: u16| Self::spawn_on(port, persistence);
        match port {
            // A given port is the test's to keep.
            Some(port) => start(port).expect("redis-server exited at start"),
            None => on_a_free_port("redis-server", start),
        }
    }

    /// redis-server on `port`; `None` if it exits before it answers.
    fn spawn_on(port: u16, persistence: &[&str]) -> Option<Self> {
        let port_arg = port.to_string();
        let mut args = vec!["--port", &port_arg, "--bind", "127.0.0.1", "--save", ""];
        args.extend(persistence);
        let mut child = std::process::Command::new("redis-server")
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "these tests need redis-server on PATH ({error}); install Debian's \
                     redis-server package (.ci/run does)"
                )
            });
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if answers_ping(port) {
                return Some(Self { child, port });
            }
            if child.try_wait().expect("redis-server's status").is_some() {
                return None;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes a snapshot of everything Redis holds now, as a restart will find it.
    pub async fn save(&self) {
        let client = redis::Client::open(self.url()).expect("a redis URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connected to redis");
        redis::cmd("SAVE")
            .query_async::<()>(&mut connection)
            .await
            .expect("a snapshot");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/2 client for WebSockets (RFC 8441) and event streams.
pub mod h2 {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::{Method, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http2::SendRequest;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::WAIT;
    pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

    /// One HTTP/2 connection to `addr`, over TCP with prior knowledge.
    pub async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        handshake(stream).await
    }

    /// An HTTP/2 connection over `io`, driven by a task of its own.
    pub async fn handshake<I>(io: I) -> SendRequest<Full<Bytes>>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .expect("an HTTP/2 handshake");
        tokio::spawn(connection);
        sender
    }

    /// An extended CONNECT for a WebSocket at `path`, with this `Sec-WebSocket-Version`.
    pub fn extended_connect(addr: SocketAddr, path: &str, version: &str) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("http://{addr}{path}"))
            .header("sec-websocket-version", version)
            .body(Full::default())
            .expect("a request");
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        request
    }

    /// Sends `request` on a stream of `sender`'s connection: the answer's status and text.
    pub async fn exchange(
        sender: &mut SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, String) {
        sender.ready().await.expect("the connection is ready");
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Opens a WebSocket on a stream of `sender`'s connection: an extended CONNECT.
    pub async fn websocket(
        sender: &mut SendRequest<Full<Bytes>>,
        addr: SocketAddr,
        path: &str,
    ) -> Ws {
        let request = extended_connect(addr, path, "13");
        sender.ready().await.expect("the connection is ready");
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.headers()
        );
        let upgraded = hyper::upgrade::on(response).await.expect("the stream");
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await
    }

    /// Opens an event stream on a stream of `sender`'s connection.
    pub async fn event_stream(
        sender: &mut SendRequest<Full<Bytes>>,
        addr: SocketAddr,
        path: &str,
    ) -> hyper::body::Incoming {
        let request = Request::builder()
            .uri(format!("http://{addr}{path}"))
            .header("accept", "text/event-stream")
            .body(Full::default())
            .expect("a request");
        sender.ready().await.expect("the connection is ready");
        let response = sender.send_request(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body()
    }

    /// The data of the next event of an SSE body.
    pub async fn next_data(body: &mut hyper::body::Incoming, buffer: &mut Vec<u8>) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = String::from_utf8_lossy(buffer).into_owned();
            if let Some(end) = text.find("\n\n") {
                buffer.drain(..end + 2);
                let data: Vec<&str> = text[..end]
                    .lines()
                    .filter_map(|line| line.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    return data.join("\n");
                }
                continue;
            }
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .expect("an event in time")
                .expect("the stream goes on")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
            }
        }
    }

    pub async fn next_text(socket: &mut Ws) -> String {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        message.into_text().expect("text").to_string()
    }
}

/// TLS with a self-signed certificate for `localhost`, made by the test.
pub mod tls {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use rcgen::{CertifiedKey, KeyPair};
    use tokio::net::TcpStream;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, ServerName};
    pub use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

    use super::WAIT;

    pub fn certificate() -> CertifiedKey<KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("a certificate")
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn alpn(protocols: &[&str]) -> Vec<Vec<u8>> {
        protocols.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    /// A server that offers `protocols` by ALPN.
    pub fn acceptor(certified: &CertifiedKey<KeyPair>, protocols: &[&str]) -> TlsAcceptor {
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).expect("a key");
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .expect("a server configuration");
        config.alpn_protocols = alpn(protocols);
        TlsAcceptor::from(Arc::new(config))
    }

    /// A client that trusts `certified` and asks for `protocols` by ALPN.
    pub fn connector(certified: &CertifiedKey<KeyPair>, protocols: &[&str]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("a root");
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn(protocols);
        TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to `localhost` at `addr`.
    pub async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("a name");
        tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("a handshake in time")
            .expect("a TLS handshake")
    }
}
