//! WebSockets over HTTP/2 (RFC 8441) and Server-Sent Events, many streams on one HTTP/2
//! connection, with hyper's HTTP/2 client over TCP (prior knowledge, no TLS).
#![cfg(feature = "http2")]

mod common;

use http::StatusCode;
use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;

use common::h2::{
    connect, event_stream, exchange, extended_connect, next_data, next_text, websocket,
};
use common::{Inner, serve_hyper, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_event_streams_share_one_http2_connection() {
    const TOPICS: usize = 10;
    let hub = Hub::new();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut sender = connect(addr).await;
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for topic in 0..TOPICS {
        sockets.push(websocket(&mut sender, addr, &format!("/?topic=t{topic}")).await);
        streams.push((
            event_stream(&mut sender, addr, &format!("/?topic=t{topic}")).await,
            Vec::new(),
        ));
    }
    wait_until("every stream subscribed", || {
        hub.stats().subscribers == 2 * TOPICS
    })
    .await;
    for round in 0..3 {
        for topic in 0..TOPICS {
            assert_eq!(
                hub.broadcast(&format!("t{topic}"), format!("{topic}:{round}")),
                2
            );
        }
    }
    for round in 0..3 {
        for (topic, socket) in sockets.iter_mut().enumerate() {
            assert_eq!(next_text(socket).await, format!("{topic}:{round}"));
        }
        for (topic, (body, buffer)) in streams.iter_mut().enumerate() {
            assert_eq!(next_data(body, buffer).await, format!("{topic}:{round}"));
        }
    }

    // A stream the client resets is an ordinary disconnect; the others go on.
    drop(sockets.remove(0));
    drop(streams.remove(0));
    wait_until("the reset streams left", || {
        hub.stats().subscribers == 2 * (TOPICS - 1)
    })
    .await;
    hub.broadcast("t1", "after");
    assert_eq!(next_text(&mut sockets[0]).await, "after");
    let (body, buffer) = &mut streams[0];
    assert_eq!(next_data(body, buffer).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_connect_without_version_13_is_refused_with_a_reason() {
    let hub = Hub::new();
    let addr = serve_hyper(StreamLayer::new(hub).layer(Inner)).await;
    let mut sender = connect(addr).await;
    let request = extended_connect(addr, "/?topic=t", "8");
    let (status, reason) = exchange(&mut sender, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(reason.contains("13"), "{reason:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_serve_carries_websockets_over_http2_too() {
    let hub = Hub::new();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .layer(StreamLayer::new(hub.clone()).path("/events"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut sender = connect(addr).await;
    let mut socket = websocket(&mut sender, addr, "/events?topic=a").await;
    let (mut body, mut buffer) = (
        event_stream(&mut sender, addr, "/events?topic=a").await,
        Vec::new(),
    );
    wait_until("both subscribed", || hub.stats().subscribers == 2).await;
    assert_eq!(hub.broadcast("a", "over h2"), 2);
    assert_eq!(next_text(&mut socket).await, "over h2");
    assert_eq!(next_data(&mut body, &mut buffer).await, "over h2");
}
