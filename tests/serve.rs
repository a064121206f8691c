//! `tower_fanout::serve`, over real TCP on 127.0.0.1: event streams answered on the bare
//! socket, everything else through hyper.

mod common;

use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use http::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;
use tower_service::Service;

use common::{
    Inner, SseClient, WAIT, assert_fan_out, raw_request, read_until_closed, recording_layer,
    serve_fanout, tls, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_exactly_the_topic_subscribers_over_websocket_and_sse() {
    let hub = Hub::new();
    let (layer, received) = recording_layer(hub.clone());
    let addr = serve_fanout(layer.layer(Inner)).await;
    let clients = assert_fan_out(addr, &hub, &received).await;
    drop(clients);
    wait_until("every connection unsubscribed", || {
        hub.stats().subscribers == 0
    })
    .await;
}

#[tokio::test]
async fn an_event_stream_is_chunked_and_its_end_closes_the_connection() {
    let hub = Hub::new();
    let addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut sse = SseClient::connect(addr, "/?topic=t").await;
    let head = sse.headers.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for field in [
        "content-type: text/event-stream\r\n",
        "transfer-encoding: chunked\r\n",
        "connection: close\r\n",
        "date: ",
    ] {
        assert!(head.contains(field), "{field:?} missing from {head}");
    }
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    hub.broadcast("t", "one");
    assert_eq!(sse.next_event().await.data, "one");

    hub.disconnect("t");
    sse.until_end().await;
    let rest = read_until_closed(&mut sse.into_stream()).await;
    assert_eq!(rest, b"", "nothing after the last chunk");
}

#[tokio::test]
async fn a_refused_stream_gets_its_status_and_reason_then_the_connection_closes() {
    let hub = Hub::new();
    let addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    // `raw_request` reads to the end: it returns only because the server closes.
    let (status, text) = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: close\r\n"), "{text}");
    let reason = "missing topic query parameter\n";
    assert!(text.ends_with(reason), "{text}");
    assert!(
        lower.contains(&format!("\r\ncontent-length: {}\r\n", reason.len())),
        "{text}"
    );
    assert_eq!(hub.stats().subscribers, 0);
}

#[tokio::test]
async fn other_requests_are_served_by_hyper_bodies_and_pipelines_included() {
    let hub = Hub::new();
    let app = Router::new()
        .route(
            "/publish/{topic}",
            post(
                |State(hub): State<Hub>, Path(topic): Path<String>, body: String| async move {
                    hub.broadcast(&topic, body).to_string()
                },
            ),
        )
        .with_state(hub.clone())
        .layer(
            StreamLayer::new(hub.clone())
                .path("/events/")
                .topic(|parts| Ok(parts.uri.path().trim_start_matches("/events/").to_owned())),
        );
    let addr = serve_fanout(app).await;
    let mut sse = SseClient::connect(addr, "/events/news").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    let (status, text) = raw_request(
        addr,
        "POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         POST /publish/news HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nworld",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(sse.next_event().await.data, "hello");
    assert_eq!(sse.next_event().await.data, "world");

    // An event-stream request followed at once by another goes to hyper whole, which
    // keeps the connection open.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let pipelined = "GET /events/news HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n\
                     GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(pipelined.as_bytes()).await.expect("write");
    let head = String::from_utf8(read_head(&mut stream).await).expect("text");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
}

/// Reads at least a response head.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0; 1024];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("head in time")
            .expect("read");
        assert!(n > 0, "closed early");
        head.extend_from_slice(&buf[..n]);
    }
    head
}

#[tokio::test]
async fn heads_in_pieces_large_or_malformed_are_still_answered() {
    let hub = Hub::new();
    let addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;

    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    for piece in [
        "GET /?topic=t HT",
        "TP/1.1\r\nHost: x\r\nAccept: text/eve",
        "nt-stream\r\n",
        "\r\n",
    ] {
        stream.write_all(piece.as_bytes()).await.expect("write");
    }
    let head = String::from_utf8(read_head(&mut stream).await).expect("text");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("connection: close\r\n"),
        "answered on the bare socket: {head}"
    );
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // Past the size this server reads itself, hyper takes the request.
    let padding = "p".repeat(20 * 1024);
    let mut large =
        SseClient::connect_with(addr, "/?topic=t", &format!("X-Padding: {padding}\r\n")).await;
    wait_until("subscribed", || hub.stats().subscribers == 2).await;
    hub.broadcast("t", "to both");
    assert_eq!(large.next_event().await.data, "to both");

    let (status, _) = raw_request(addr, "GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 400, "hyper's answer to a malformed head");
}

/// A connection that sends no request head, or only part of one, is closed at the head
/// timeout; one that sends its head in time is served and kept past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_head_in_time_are_closed() {
    let hub = Hub::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let service = StreamLayer::new(hub.clone()).layer(Inner);
    let head_timeout = Duration::from_millis(300);
    tokio::spawn(
        tower_fanout::serve(listener, service)
            .head_timeout(head_timeout)
            .into_future(),
    );
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(b"GET /?topic=t HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut served = SseClient::connect(addr, "/?topic=t").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    for stream in [&mut silent, &mut partial] {
        let rest = read_until_closed(stream).await;
        assert!(rest.is_empty(), "closed without an answer");
    }
    // The stream outlived the two, whose timeout had passed: it is served on.
    hub.broadcast("t", "still served");
    assert_eq!(served.next_event().await.data, "still served");
}

#[tokio::test]
async fn a_quiet_stream_gets_keep_alive_comments() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).keep_alive(Duration::from_millis(50));
    let addr = serve_fanout(layer.layer(Inner)).await;
    let mut sse = SseClient::connect(addr, "/?topic=t").await;
    for _ in 0..2 {
        let body = sse.body_until(b":\n\n").await;
        assert!(!String::from_utf8_lossy(&body).contains("data:"));
    }
    hub.broadcast("t", "after the quiet");
    assert_eq!(sse.next_event().await.data, "after the quiet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stops_reading_is_closed_after_the_write_timeout() {
    // The default lag policy skips events: only the write timeout can end the stream.
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).write_timeout(Duration::from_millis(200));
    let addr = serve_fanout(layer.layer(Inner)).await;
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(b"GET /?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // Events of 1 KB until the socket buffers between the two are full and the stream's
    // writes have waited for the timeout.
    publish_until_closed(&hub).await;
    let mut sent = Vec::new();
    let read = timeout(WAIT, stalled.read_to_end(&mut sent))
        .await
        .expect("the connection ends in time");
    assert!(
        read.is_err() || sent.starts_with(b"HTTP/1.1 200 OK"),
        "what the client had been sent"
    );
}

/// Broadcasts events of 1 KB to topic `t` until its one stream is closed, within a
/// bounded count and time.
async fn publish_until_closed(hub: &Hub) {
    let payload = "z".repeat(1000);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut published = 0;
    while hub.stats().subscribers > 0 {
        assert!(
            published < 1_000_000 && tokio::time::Instant::now() < deadline,
            "the stream is still open after {published} events"
        );
        for _ in 0..100 {
            hub.broadcast("t", format!("{published} {payload}"));
            published += 1;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_is_unsubscribed() {
    let hub = Hub::new();
    let addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let clients = [
        SseClient::connect(addr, "/?topic=t").await,
        SseClient::connect(addr, "/?topic=t").await,
    ];
    wait_until("subscribed", || hub.stats().subscribers == 2).await;
    drop(clients);
    wait_until("unsubscribed", || hub.stats().subscribers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_gets_every_event_in_order() {
    const EVENTS: usize = 4_000;
    let hub = Hub::builder().buffer(4096).build();
    let addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut sse = SseClient::connect(addr, "/?topic=t").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    // 6 MB, more than the socket buffers hold: the server waits for the reader with
    // part of it written.
    let padding = "x".repeat(1500);
    for i in 0..EVENTS {
        hub.broadcast("t", format!("{i} {padding}"));
    }
    for i in 0..EVENTS {
        assert_eq!(sse.next_event().await.data, format!("{i} {padding}"));
    }
}

/// A service that always fails.
#[derive(Clone)]
struct Failing;

impl<B> Service<Request<B>> for Failing {
    type Response = Response<String>;
    type Error = std::io::Error;
    type Future = Ready<Result<Response<String>, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Err(std::io::Error::other("failed on purpose")))
    }
}

#[tokio::test]
async fn a_failing_service_gets_the_client_a_500() {
    let addr = serve_fanout(Failing).await;
    let (status, text) = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    assert_eq!(status, 500, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_events_reaches_fast_readers_whole() {
    const EVENTS: usize = 200;
    // Timers far beyond the test's wait: a connection that stopped writing while it still
    // had events would stay stopped.
    let hub = Hub::builder().buffer(2 * EVENTS).build();
    let layer = StreamLayer::new(hub.clone())
        .write_timeout(Duration::from_secs(120))
        .ping_interval(Duration::from_secs(120));
    let addr = serve_fanout(layer.layer(Inner)).await;
    let mut socket = common::ws_connect(&format!("ws://{addr}/?topic=t")).await;
    let mut sse = SseClient::connect(addr, "/?topic=t").await;
    wait_until("subscribed", || hub.stats().subscribers == 2).await;

    let filler = "x".repeat(16 * 1024);
    for i in 0..EVENTS {
        hub.broadcast("t", format!("{i:04}{filler}"));
    }
    for i in 0..EVENTS {
        let prefix = format!("{i:04}");
        assert!(
            common::next_text(&mut socket).await.starts_with(&prefix),
            "{i}"
        );
        assert!(sse.next_event().await.data.starts_with(&prefix), "{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_keep_their_streams_with_the_kernels_own_buffers() {
    // On loopback Linux grows a send buffer to megabytes and, by default, reports the
    // socket writable again only once a third of it has drained: half a minute for a
    // reader of 45 KiB/s. serve limits what the kernel holds unsent, so the reader is
    // seen to make progress as it reads.
    const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .write_timeout(WRITE_TIMEOUT)
        .ping_interval(Duration::from_secs(3600));
    let addr = serve_fanout(layer.layer(Inner)).await;
    let heads = [
        "GET /?topic=t HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    ];
    let mut readers = Vec::new();
    for head in heads {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        readers.push(stream);
    }
    wait_until("both subscribed", || hub.stats().subscribers == 2).await;

    // About 1.3 MB/s, 30 times what each reader takes, for as long as they read. Without
    // the limit, the first write that waits for good comes some 3 s in, once the send
    // buffer has grown, and the connection is closed 5 s later.
    let publisher = {
        let hub = hub.clone();
        let payload = bytes::Bytes::from(vec![b'x'; 13_000]);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            for _ in 0..1300 {
                ticks.tick().await;
                hub.broadcast("t", payload.clone());
            }
        })
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut buf = [0; 1152];
    while tokio::time::Instant::now() < until {
        for reader in &mut readers {
            let n = timeout(WAIT, reader.read(&mut buf))
                .await
                .expect("data in time")
                .expect("read");
            assert!(n > 0, "closed");
        }
        assert_eq!(hub.stats().subscribers, 2, "a slow reader was timed out");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    publisher.abort();
}

/// Serves `StreamLayer::new(hub)` over TLS offering `protocols` by ALPN, with a write
/// timeout of 200 ms; returns the address and a client for it.
async fn serve_tls(hub: &Hub, protocols: &[&str]) -> (std::net::SocketAddr, tls::TlsConnector) {
    let certified = tls::certificate();
    let acceptor = tls::acceptor(&certified, protocols);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = StreamLayer::new(hub.clone())
        .write_timeout(Duration::from_millis(200))
        .layer(Inner);
    let server = tower_fanout::serve(listener, app).with_transport(move |tcp| acceptor.accept(tcp));
    tokio::spawn(std::future::IntoFuture::into_future(server));
    (addr, tls::connector(&certified, protocols))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_websockets_and_event_streams_get_exactly_their_events() {
    let hub = Hub::new();
    let (addr, connector) = serve_tls(&hub, &["http/1.1"]).await;
    let io = tls::connect(&connector, addr).await;
    let mut sse = SseClient::over(io, "localhost", "/?topic=a", "").await;
    assert!(
        sse.headers.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        sse.headers
    );
    let io = tls::connect(&connector, addr).await;
    let (mut socket, _) = timeout(
        WAIT,
        tokio_tungstenite::client_async("wss://localhost/?topic=b", io),
    )
    .await
    .expect("a handshake in time")
    .expect("a WebSocket");
    wait_until("both subscribed", || hub.stats().subscribers == 2).await;

    hub.broadcast("a", "one for a");
    hub.broadcast("b", "one for b");
    hub.broadcast("a", "two for a");
    assert_eq!(sse.next_event().await.data, "one for a");
    assert_eq!(sse.next_event().await.data, "two for a");
    let frame = timeout(WAIT, futures_util::StreamExt::next(&mut socket))
        .await
        .expect("a frame in time")
        .expect("the socket is open")
        .expect("a frame");
    assert_eq!(frame.into_text().expect("text").as_str(), "one for b");

    // A client that does not speak TLS loses only its own connection.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /?topic=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = timeout(WAIT, plain.read_to_end(&mut rest))
        .await
        .expect("that connection is closed");
    assert_eq!(hub.stats().subscribers, 2);

    drop((sse, socket));
    wait_until("both left", || hub.stats().subscribers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_stream_whose_client_stops_reading_is_closed_after_the_write_timeout() {
    let hub = Hub::new();
    let (addr, connector) = serve_tls(&hub, &["http/1.1"]).await;
    let mut stalled = tls::connect(&connector, addr).await;
    stalled
        .write_all(b"GET /?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // TLS buffers what it encrypts: the events fill it and the socket buffers behind it,
    // then the stream's writes wait for the timeout.
    publish_until_closed(&hub).await;
}

/// HTTP/2 by ALPN, and by prior knowledge without TLS: a WebSocket and an event stream
/// on one connection to `tower_fanout::serve`.
#[cfg(feature = "http2")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_http2_serve_carries_websockets_and_event_streams_over_tls_and_prior_knowledge() {
    use common::h2;

    let hub = Hub::new();
    let (addr, connector) = serve_tls(&hub, &["h2", "http/1.1"]).await;
    let tls = tls::connect(&connector, addr).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let plain_addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let senders = [
        (h2::handshake(tls).await, addr),
        (h2::connect(plain_addr).await, plain_addr),
    ];
    for (mut sender, addr) in senders {
        let mut socket = h2::websocket(&mut sender, addr, "/?topic=h2").await;
        let mut body = h2::event_stream(&mut sender, addr, "/?topic=h2").await;
        wait_until("both subscribed", || hub.stats().subscribers == 2).await;
        assert_eq!(hub.broadcast("h2", "over HTTP/2"), 2);
        assert_eq!(h2::next_text(&mut socket).await, "over HTTP/2");
        assert_eq!(
            h2::next_data(&mut body, &mut Vec::new()).await,
            "over HTTP/2"
        );
        drop((socket, body, sender));
        wait_until("both left", || hub.stats().subscribers == 0).await;
    }
}
