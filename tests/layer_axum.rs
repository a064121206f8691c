//! The layer under axum 0.8: `Router::layer`, beside the application's own WebSocket route.

mod common;

use axum::Router;
use axum::extract::ws::{Message as AppMessage, WebSocketUpgrade};
use axum::routing::get;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tower_fanout::Hub;

use common::{assert_fan_out, next_text, raw_request, recording_layer, wait_until, ws_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_layer_serves_streams_beside_the_app_routes() {
    let hub = Hub::new();
    let (layer, received) = recording_layer(hub.clone());
    let app = Router::new()
        .route("/", get(|| async { "axum index" }))
        .route(
            "/app-ws",
            get(|upgrade: WebSocketUpgrade| async move {
                upgrade.on_upgrade(|mut socket| async move {
                    while let Some(Ok(AppMessage::Text(text))) = socket.recv().await {
                        let reply = AppMessage::Text(format!("app {}", text.as_str()).into());
                        if socket.send(reply).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let clients = assert_fan_out(addr, &hub, &received).await;

    // The application's own WebSocket route is untouched by the layer.
    let mut app_socket = ws_connect(&format!("ws://{addr}/app-ws")).await;
    app_socket.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_text(&mut app_socket).await, "app hi");

    let (status, text) = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.ends_with("axum index"), "{text}");

    drop(clients);
    wait_until("every stream unsubscribed", || hub.stats().subscribers == 0).await;
}
