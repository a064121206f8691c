//! The stream layer beside gRPC on one port, with tonic 0.14.
//!
//! Tonic's own server does not hand over upgraded HTTP/1.1 connections, so WebSockets
//! need the routes served by axum (or hyper-util with upgrades), as here; with
//! `tonic::transport::Server::builder().accept_http1(true).layer(layer)` Server-Sent
//! Events work as well, WebSockets do not.
//!
//! ```sh
//! cargo run --example tonic       # ADDR overrides 127.0.0.1:3000
//! curl -N -H 'Accept: text/event-stream' 'localhost:3000/events?topic=demo'
//! ```
//!
//! Real services come from `tonic-build`; the health-like service here is written by hand
//! so that the example needs no code generation: `demo.Clock/Tick` broadcasts its request
//! message to the topic `demo` and answers with the number of subscribers reached.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::Status;
use tonic::body::Body;
use tonic::server::{NamedService, UnaryService};
use tower_fanout::{Hub, StreamLayer};
use tower_service::Service;

#[path = "support/raw_codec.rs"]
mod raw_codec;
use raw_codec::RawCodec;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let hub = Hub::new();

    let app = tonic::service::Routes::new(Clock { hub: hub.clone() })
        .prepare()
        .into_axum_router()
        .layer(StreamLayer::new(hub).path("/events"));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("gRPC and streams on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Clone)]
struct Clock {
    hub: Hub,
}

impl NamedService for Clock {
    const NAME: &'static str = "demo.Clock";
}

impl Service<http::Request<Body>> for Clock {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let tick = Tick {
            hub: self.hub.clone(),
        };
        Box::pin(async move {
            if request.uri().path() != "/demo.Clock/Tick" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            Ok(tonic::server::Grpc::new(RawCodec)
                .unary(tick, request)
                .await)
        })
    }
}

struct Tick {
    hub: Hub,
}

impl UnaryService<Bytes> for Tick {
    type Response = Bytes;
    type Future = Ready<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let reached = self.hub.broadcast("demo", request.into_inner());
        ready(Ok(tonic::Response::new(Bytes::from(reached.to_string()))))
    }
}
