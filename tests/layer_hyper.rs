//! The layer under a bare hyper-util server, over real TCP on 127.0.0.1.

mod common;

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tower_fanout::{Event, Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, SseClient, WAIT, raw_request, serve_hyper, wait_until};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str) -> Ws {
    let (socket, response) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    assert_eq!(response.status(), 101);
    socket
}

async fn next_text(socket: &mut Ws) -> String {
    loop {
        let message = timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("valid frame");
        if let Message::Text(text) = message {
            return text.to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_exactly_the_topic_subscribers_over_websocket_and_sse() {
    let hub = Hub::new();
    let received = Arc::new(Mutex::new(Vec::new()));
    let layer = {
        let received = Arc::clone(&received);
        StreamLayer::new(hub.clone())
            .path("/events")
            .on_message(move |inbound| {
                received
                    .lock()
                    .expect("not poisoned")
                    .push(inbound.text().unwrap_or_default().to_owned());
                let _ = inbound
                    .connection()
                    .send(format!("echo {}", inbound.text().unwrap_or_default()));
            })
    };
    let addr = serve_hyper(layer.layer(Inner)).await;

    let url = format!("ws://{addr}/events?topic=a");
    let mut ws1 = ws_connect(&url).await;
    let mut ws2 = ws_connect(&url).await;
    let mut sse1 = SseClient::connect(addr, "/events?topic=a").await;
    let mut sse2 = SseClient::connect(addr, "/events?topic=a").await;
    let mut other = SseClient::connect(addr, "/events?topic=b").await;
    assert!(sse1.headers.starts_with("HTTP/1.1 200"), "{}", sse1.headers);
    assert!(
        sse1.headers
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream")
    );
    assert!(
        sse1.headers
            .to_ascii_lowercase()
            .contains("cache-control: no-cache")
    );
    wait_until("all five are subscribed", || hub.stats().subscribers == 5).await;

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

    // Inbound messages reach on_message in order, and replies reach only the sender.
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

    drop((ws1, ws2, sse1, sse2, other));
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
