//! The stream layer on an axum 0.8 router: one `.layer(..)`.
//!
//! ```sh
//! cargo run --example axum        # ADDR overrides 127.0.0.1:3000
//! curl -N -H 'Accept: text/event-stream' 'localhost:3000/events?topic=demo'
//! curl -d hello localhost:3000/publish/demo
//! ```

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use bytes::Bytes;
use tower_fanout::{Hub, StreamLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let hub = Hub::new();

    let app = Router::new()
        .route(
            "/",
            get(|| async { "GET /events?topic=NAME streams; POST /publish/NAME publishes\n" }),
        )
        .route("/publish/{topic}", post(publish))
        .with_state(hub.clone())
        // WebSocket and SSE requests to /events; everything else reaches the router.
        .layer(StreamLayer::new(hub).path("/events"));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn publish(State(hub): State<Hub>, Path(topic): Path<String>, body: Bytes) -> String {
    format!("{}\n", hub.broadcast(&topic, body))
}
