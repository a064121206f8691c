//! The layer beside a gRPC service of tonic 0.14 on one port.
//!
//! Tonic's own server speaks HTTP/1.1 only with `accept_http1(true)` and never hands over
//! upgraded connections: Server-Sent Events work there, but a WebSocket handshake, answered
//! 101, ends with the connection closed (hyper tells the request nothing of that in
//! advance). Served by axum (or hyper-util with upgrades), the same tonic routes get the
//! whole set.

mod common;
#[path = "../examples/support/raw_codec.rs"]
mod raw_codec;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::server::{NamedService, UnaryService};
use tonic::{Status, body::Body};
use tower_fanout::{Event, Hub};
use tower_service::Service;

use raw_codec::RawCodec;

use common::{SseClient, WAIT, assert_fan_out, recording_layer, wait_until};

/// `demo.Echo/Say`: answers "said " and the request.
#[derive(Clone)]
struct Echo;

struct Say;

impl UnaryService<Bytes> for Say {
    type Response = Bytes;
    type Future = Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let mut reply = b"said ".to_vec();
        reply.extend_from_slice(request.get_ref());
        ready(Ok(tonic::Response::new(reply.into())))
    }
}

impl NamedService for Echo {
    const NAME: &'static str = "demo.Echo";
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != "/demo.Echo/Say" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            Ok(tonic::server::Grpc::new(RawCodec).unary(Say, request).await)
        })
    }
}

/// Calls `demo.Echo/Say` over HTTP/2 with prior knowledge, as a gRPC client does.
async fn say(addr: SocketAddr, message: &str) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let mut frame = vec![0];
    frame.put_u32(message.len() as u32);
    frame.extend_from_slice(message.as_bytes());
    let request = http::Request::post(format!("http://{addr}/demo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(frame)))
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.expect("body");
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .cloned();
    assert_eq!(
        status.as_ref().map(|s| s.as_bytes()),
        Some(&b"0"[..]),
        "gRPC OK"
    );
    let body = collected.to_bytes();
    assert!(body.len() >= 5, "one length-prefixed message");
    String::from_utf8(body[5..].to_vec()).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_server_carries_grpc_and_sse_on_one_port() {
    let hub = Hub::new();
    let (layer, _received) = recording_layer(hub.clone());
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
    let addr = incoming.local_addr().expect("address");
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(layer)
        .add_service(Echo)
        .serve_with_incoming(incoming);
    tokio::spawn(server);

    assert_eq!(say(addr, "hello").await, "said hello");

    let mut first = SseClient::connect(addr, "/events?topic=a").await;
    let mut second = SseClient::connect(addr, "/events?topic=a").await;
    let mut other = SseClient::connect(addr, "/events?topic=b").await;
    wait_until("three SSE subscribers", || hub.stats().subscribers == 3).await;
    for i in 0..3 {
        assert_eq!(hub.broadcast("a", Event::new(format!("a{i}"))), 2);
    }
    hub.broadcast("b", "b0");
    for client in [&mut first, &mut second] {
        for i in 0..3 {
            assert_eq!(client.next_event().await.data, format!("a{i}"));
        }
    }
    assert_eq!(other.next_event().await.data, "b0");

    // No upgrades under tonic's server: the connection closes right after the 101, and
    // the subscription made for it is released.
    let (status, text) = common::raw_request(
        addr,
        "GET /events?topic=a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(status, 101, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no frame follows: {text:?}");
    wait_until("the failed WebSocket unsubscribed", || {
        hub.stats().subscribers == 3
    })
    .await;
    assert_eq!(hub.broadcast("a", "still streaming"), 2);
    assert_eq!(first.next_event().await.data, "still streaming");

    drop((first, second, other));
    wait_until("every stream unsubscribed", || hub.stats().subscribers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_routes_under_axum_get_websockets_too() {
    let hub = Hub::new();
    let (layer, received) = recording_layer(hub.clone());
    let app = tonic::service::Routes::new(Echo)
        .prepare()
        .into_axum_router()
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(say(addr, "over axum").await, "said over axum");
    let clients = assert_fan_out(addr, &hub, &received).await;
    assert_eq!(
        say(addr, "still").await,
        "said still",
        "gRPC beside open streams"
    );
    drop(clients);
    wait_until("every stream unsubscribed", || hub.stats().subscribers == 0).await;
}
