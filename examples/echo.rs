//! An echo endpoint: every WebSocket message comes back to its sender, text as text and
//! binary as binary, compressed (permessage-deflate) for a client that offers it. The
//! Autobahn conformance suite runs against it, through `tower_fanout::serve`.
//!
//! ```sh
//! cargo run --example echo                    # ws://127.0.0.1:9001, any path
//! ADDR=127.0.0.1:9002 cargo run --example echo
//! ```

use tower_fanout::{Compression, Hub, StreamLayer};
use tower_layer::Layer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:9001".into());
    let echo = StreamLayer::new(Hub::new())
        // Every connection joins one topic that nothing publishes to.
        .topic(|_| Ok("echo".to_owned()))
        .read_limit(64 * 1024 * 1024)
        // Every message that compression makes smaller, whatever its size.
        .compression(Compression::new().min_size(0))
        .on_message(|inbound| {
            let _ = match inbound.text() {
                Some(text) => inbound.connection().send_text(text),
                None => inbound.connection().send_binary(inbound.data().clone()),
            };
        })
        .layer(NotFound);

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo on ws://{}", listener.local_addr()?);
    tower_fanout::serve(listener, echo).await;
    Ok(())
}

/// Whatever is not a WebSocket.
#[derive(Clone, Copy)]
struct NotFound;

impl<B> tower_service::Service<http::Request<B>> for NotFound {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let mut response = http::Response::new("this endpoint only speaks WebSocket\n".to_owned());
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        std::future::ready(Ok(response))
    }
}
