//! WebSockets over HTTP/2 (RFC 8441) and Server-Sent Events, many streams on one HTTP/2
//! connection, with hyper's HTTP/2 client over TCP (prior knowledge, no TLS).
#![cfg(feature = "http2")]

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, WAIT, serve_hyper, wait_until};

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// One HTTP/2 connection to `addr`.
async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// Opens a WebSocket on a stream of `sender`'s connection: an extended CONNECT.
async fn websocket(sender: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr, path: &str) -> Ws {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::new())
        .expect("a request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
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
async fn event_stream(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> hyper::body::Incoming {
    let request = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .expect("a request");
    sender.ready().await.expect("the connection is ready");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// The data of the next event of an SSE body.
async fn next_data(body: &mut hyper::body::Incoming, buffer: &mut Vec<u8>) -> String {
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

async fn next_text(socket: &mut Ws) -> String {
    let message = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("a frame in time")
        .expect("the socket is open")
        .expect("a frame");
    message.into_text().expect("text").to_string()
}

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
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}/?topic=t"))
        .header("sec-websocket-version", "8")
        .body(Empty::new())
        .expect("a request");
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    sender.ready().await.expect("ready");
    let response = sender.send_request(request).await.expect("an answer");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("13"), "{body:?}");
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
