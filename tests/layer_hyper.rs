//! The layer under a bare hyper-util server, over real TCP on 127.0.0.1.

mod common;

use std::time::Duration;

use tokio::time::timeout;
use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, WAIT, assert_fan_out, raw_request, recording_layer, serve_hyper, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_exactly_the_topic_subscribers_over_websocket_and_sse() {
    let hub = Hub::new();
    let (layer, received) = recording_layer(hub.clone());
    let addr = serve_hyper(layer.layer(Inner)).await;
    let clients = assert_fan_out(addr, &hub, &received).await;

    // Ordinary requests reach the inner service.
    let (status, text) = raw_request(
        addr,
        "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.ends_with("inner /hello"), "{text}");
    let (_, text) = raw_request(addr, "GET /elsewhere HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n").await;
    assert!(
        text.ends_with("inner /elsewhere"),
        "outside the path: {text}"
    );

    drop(clients);
    wait_until("every connection unsubscribed", || {
        hub.stats().subscribers == 0
    })
    .await;
}

#[tokio::test]
async fn malformed_requests_get_a_status_and_a_reason() {
    let hub = Hub::new();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        (format!("POST /?topic=a HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"), 405, "must use GET"),
        (format!("GET /?topic=a HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 8\r\n\r\n"), 400, "Sec-WebSocket-Version"),
        ("GET /?topic=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_owned(), 426, "Connection: upgrade"),
        ("GET /?topic=a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n".to_owned(), 400, "Sec-WebSocket-Key"),
        (format!("GET /?topic=a HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\nOrigin: https://evil.test\r\n\r\n"), 403, "origin not allowed"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\n{upgrade}Sec-WebSocket-Version: 13\r\n\r\n"), 400, "missing topic"),
        ("GET / HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n".to_owned(), 400, "missing topic"),
    ];
    for (request, status, reason) in cases {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .expect("write");
        let mut buf = vec![0; 4096];
        let n = timeout(WAIT, tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
            .await
            .expect("in time")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?} -> {text}"
        );
        assert!(text.contains(reason), "{request:?} -> {text}");
    }
    assert_eq!(hub.stats().subscribers, 0);
}

#[tokio::test]
async fn options_shape_the_streams() {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .read_limit(1024)
        .binary(true)
        .keep_alive(Duration::from_millis(20))
        .retry(Duration::from_millis(2500))
        .allowed_origins(["https://*.example.com"]);
    let addr = serve_hyper(layer.layer(Inner)).await;

    // Binary frames carry the data.
    let mut socket = common::ws_connect(&format!("ws://{addr}/?topic=t")).await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    hub.broadcast("t", "payload");
    let frame = timeout(WAIT, socket.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("frame");
    assert_eq!(frame, Message::binary(&b"payload"[..]));

    // A message over the read limit closes that connection with 1009.
    socket
        .send(Message::binary(vec![0; 2048]))
        .await
        .expect("send");
    assert_eq!(common::close_code(&mut socket).await, Some(1009));
    wait_until("the closed connection unsubscribed", || {
        hub.stats().subscribers == 0
    })
    .await;

    // An allowed cross-site origin may connect.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/?topic=t"
        ))
        .expect("request");
    request.headers_mut().insert(
        "origin",
        http::HeaderValue::from_static("https://app.example.com"),
    );
    let (allowed, _) = timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("in time")
        .expect("allowed");
    drop(allowed);

    // The SSE stream opens with the retry hint and keeps quiet streams alive.
    let mut sse = common::SseClient::connect(addr, "/?topic=quiet").await;
    let body = sse.body_until(b":\n\n").await;
    let body = String::from_utf8(body).expect("text");
    assert!(body.starts_with(":ok\nretry: 2500\n\n"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_keep_alive_comments_only_fill_quiet_stretches() {
    const EVENTS: usize = 80;
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).keep_alive(Duration::from_secs(1));
    let addr = serve_hyper(layer.layer(Inner)).await;
    let mut sse = common::SseClient::connect(addr, "/?topic=t").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // Events 25 ms apart for two keep-alive intervals: the stream is
    // never quiet, so no comment goes between them.
    let publisher = tokio::spawn({
        let hub = hub.clone();
        async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(25));
            for i in 0..EVENTS {
                ticks.tick().await;
                hub.broadcast("t", format!("event {i}"));
            }
        }
    });
    let body = sse
        .body_until(format!("event {}\n", EVENTS - 1).as_bytes())
        .await;
    publisher.await.expect("published");
    let body = String::from_utf8(body).expect("utf-8");
    let first = body.find("data: event 0\n").expect("the first event");
    assert!(
        !body[first..].contains(":\n\n"),
        "a keep-alive comment between events: {body:?}"
    );

    // Then the stream is quiet, and a comment comes after the interval.
    let quiet = sse.body_until(b":\n\n").await;
    assert!(!String::from_utf8_lossy(&quiet).contains("data:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_reach_every_connection_whole_and_in_order() {
    const BURSTS: usize = 200;
    const EVENTS: usize = 100;
    let hub = Hub::new();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..3 {
        sockets.push(common::ws_connect(&format!("ws://{addr}/?topic=t")).await);
        streams.push(common::SseClient::connect(addr, "/?topic=t").await);
    }
    wait_until("six subscribers", || hub.stats().subscribers == 6).await;

    // The readers stand at different points of one ring, which frees what all have read
    // as they go; each burst ends with nothing more to wake them. Every connection gets
    // every event of every burst.
    for burst in 0..BURSTS {
        let first = burst * EVENTS;
        for i in first..first + EVENTS {
            hub.broadcast("t", i.to_string());
        }
        for socket in &mut sockets {
            for i in first..first + EVENTS {
                assert_eq!(common::next_text(socket).await, i.to_string());
            }
        }
        for sse in &mut streams {
            for i in first..first + EVENTS {
                assert_eq!(sse.next_event().await.data, i.to_string());
            }
        }
    }
}

#[tokio::test]
async fn query_parameters_are_decoded_as_a_browser_encodes_them() {
    let hub = Hub::builder().history(8).build();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut socket = common::ws_connect(&format!("ws://{addr}/?topic=caf%C3%A9+noir")).await;
    let mut sse = common::SseClient::connect(addr, "/?x=%26&topic=caf%C3%A9%20noir").await;
    wait_until("both subscribed", || hub.stats().subscribers == 2).await;
    let first = tower_fanout::Event::new("one")
        .id("a b&c")
        .expect("valid id");
    assert_eq!(hub.broadcast("café noir", first), 2);
    hub.broadcast("café noir", "two");
    assert_eq!(common::next_text(&mut socket).await, "one");
    assert_eq!(sse.next_event().await.data, "one");

    // Resuming after a publisher's id that needs escaping, by `lastEventId` and `since`.
    let mut resumed =
        common::SseClient::connect(addr, "/?topic=caf%C3%A9+noir&lastEventId=a+b%26c").await;
    assert_eq!(resumed.next_event().await.data, "two");
    let mut socket = common::ws_connect(&format!(
        "ws://{addr}/?topic=caf%C3%A9+noir&since=a%20b%26c"
    ))
    .await;
    assert_eq!(common::next_text(&mut socket).await, "two");
}
