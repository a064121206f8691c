//! Graceful shutdown with streams open: `hub.close()` sends close 1001 to every WebSocket
//! and ends every SSE stream, so the server's graceful shutdown finishes in bounded time.

mod common;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, SseClient, WAIT, Ws, read_until_closed, wait_until, ws_connect};

struct Open {
    sockets: Vec<Ws>,
    streams: Vec<SseClient>,
}

async fn open_streams(addr: SocketAddr, hub: &Hub) -> Open {
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for topic in ["a", "b"] {
        sockets.push(ws_connect(&format!("ws://{addr}/events?topic={topic}")).await);
        streams.push(SseClient::connect(addr, &format!("/events?topic={topic}")).await);
    }
    wait_until("four streams open", || hub.stats().subscribers == 4).await;
    Open { sockets, streams }
}

/// Closes the hub, triggers the server's shutdown, and checks how every stream ended.
async fn shut_down(
    hub: &Hub,
    open: Open,
    trigger: oneshot::Sender<()>,
    server: impl Future<Output = ()>,
) {
    hub.close();
    trigger
        .send(())
        .expect("the server is listening for the signal");
    timeout(WAIT, server)
        .await
        .expect("graceful shutdown finished with streams open");

    for mut socket in open.sockets {
        assert_eq!(common::close_code(&mut socket).await, Some(1001));
    }
    for client in open.streams {
        read_until_closed(&mut client.into_stream()).await;
    }
    wait_until("no subscribers", || hub.stats().subscribers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_graceful_shutdown_finishes_with_streams_open() {
    let hub = Hub::new();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "index" }))
        .layer(StreamLayer::new(hub.clone()).path("/events"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (trigger, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = signal.await;
            })
            .await
    });

    let open = open_streams(addr, &hub).await;
    shut_down(&hub, open, trigger, async move {
        server.await.expect("no panic").expect("served");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_util_graceful_shutdown_finishes_with_streams_open() {
    let hub = Hub::new();
    let service = StreamLayer::new(hub.clone()).path("/events").layer(Inner);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (trigger, mut signal) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { break };
                    let service = TowerToHyperService::new(service.clone());
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    tokio::spawn(graceful.watch(connection));
                }
                _ = &mut signal => break,
            }
        }
        graceful.shutdown().await;
    });

    let open = open_streams(addr, &hub).await;
    shut_down(&hub, open, trigger, async move {
        server.await.expect("no panic");
    })
    .await;
}

/// Serves `service` with `tower_fanout::serve` on a free port, shutting down gracefully
/// with `shutdown_timeout` once the returned sender fires; returns the address, the
/// trigger and the server's task.
async fn fanout_serve<S, B>(
    service: S,
    shutdown_timeout: Duration,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>)
where
    S: tower_service::Service<
            http::Request<tower_fanout::serve::Body>,
            Response = http::Response<B>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (trigger, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tower_fanout::serve(listener, service)
            .with_graceful_shutdown(async move {
                let _ = signal.await;
            })
            .shutdown_timeout(shutdown_timeout)
            .into_future(),
    );
    (addr, trigger, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_serve_graceful_shutdown_finishes_with_streams_open() {
    let hub = Hub::new();
    let service = StreamLayer::new(hub.clone()).path("/events").layer(Inner);
    let (addr, trigger, server) = fanout_serve(service, Duration::from_secs(30)).await;

    let open = open_streams(addr, &hub).await;
    // A keep-alive connection that hyper serves, idle between requests, and one that
    // has sent nothing yet: both are closed. The silent one connects first: connections
    // are accepted in order, so the answer to the other shows it has been accepted (a
    // connection still in the listen backlog is reset when the listener closes).
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0; 1024];
    let n = timeout(WAIT, idle.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"));

    shut_down(&hub, open, trigger, async move {
        server.await.expect("no panic");
    })
    .await;
    for stream in [&mut idle, &mut silent] {
        read_until_closed(stream).await;
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

/// Opens an event stream that `tower_fanout::serve` leaves to hyper, in one of the ways
/// a request reaches it, and reads the response's head; the client reads nothing more.
async fn stream_through_hyper(addr: SocketAddr, how: &str) -> TcpStream {
    let stream_request = "GET /events?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n";
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    match how {
        // A second request on a keep-alive connection.
        "keep-alive" => {
            stream
                .write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let head = read_head(&mut stream).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let mut body = [0; "inner /plain".len()];
            stream.read_exact(&mut body).await.expect("body");
            stream
                .write_all(format!("{stream_request}\r\n").as_bytes())
                .await
                .expect("write");
        }
        // A head followed by a stray line break.
        "stray-crlf" => stream
            .write_all(format!("{stream_request}\r\n\r\n").as_bytes())
            .await
            .expect("write"),
        // A head over 16 KiB.
        _ => {
            let padding = "p".repeat(17 * 1024);
            stream
                .write_all(format!("{stream_request}X-Padding: {padding}\r\n\r\n").as_bytes())
                .await
                .expect("write");
        }
    }
    let head = read_head(&mut stream).await;
    assert!(head.contains("text/event-stream"), "{how}: {head}");
    stream
}

/// Reads a response head byte by byte, so that nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        timeout(WAIT, stream.read_exact(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_that_fanout_serve_leaves_to_hyper_have_the_write_timeout() {
    let hub = Hub::new();
    let service = StreamLayer::new(hub.clone())
        .path("/events")
        .write_timeout(Duration::from_millis(300))
        .layer(Inner);
    let (addr, trigger, server) = fanout_serve(service, Duration::from_secs(30)).await;

    let mut silent = Vec::new();
    for how in ["keep-alive", "stray-crlf", "large-head"] {
        silent.push(stream_through_hyper(addr, how).await);
    }
    wait_until("three streams", || hub.stats().subscribers == 3).await;
    // More than their sockets take: each is closed once its writes have waited for the
    // write timeout, as a stream answered on the bare socket is.
    let payload = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
    for _ in 0..400 {
        hub.broadcast("t", payload.clone());
    }
    wait_until("the silent streams are closed", || {
        hub.stats().subscribers == 0
    })
    .await;

    // One more that never reads, its socket full when the hub closes: the last chunk
    // cannot be written, and graceful shutdown still finishes.
    let _last = stream_through_hyper(addr, "keep-alive").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    for _ in 0..400 {
        hub.broadcast("t", payload.clone());
    }
    hub.close();
    trigger.send(()).expect("the server listens for the signal");
    timeout(WAIT, server)
        .await
        .expect("graceful shutdown finished")
        .expect("no panic");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_holds_graceful_shutdown_no_longer_than_the_shutdown_timeout() {
    let app = axum::Router::new().route(
        "/upload",
        axum::routing::post(|body: String| async move { body.len().to_string() }),
    );
    let (addr, trigger, server) = fanout_serve(app, Duration::from_millis(200)).await;
    // Half a body, then nothing: the request stays in progress.
    let mut upload = TcpStream::connect(addr).await.expect("connect");
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .expect("write");
    let mut done = TcpStream::connect(addr).await.expect("connect");
    done.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        .await
        .expect("write");
    let head = read_head(&mut done).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    trigger.send(()).expect("the server listens for the signal");
    timeout(WAIT, server)
        .await
        .expect("graceful shutdown finished")
        .expect("no panic");
    let mut rest = Vec::new();
    timeout(WAIT, upload.read_to_end(&mut rest))
        .await
        .expect("the stalled upload was closed")
        .ok();
}
