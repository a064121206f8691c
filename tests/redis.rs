//! Two nodes sharing topics through a real `redis-server` on a loopback port.
#![cfg(feature = "redis")]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tower_fanout::backplane::RedisBackplane;
use tower_fanout::{Event, Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, SseClient, next_text, serve_hyper, wait_until, ws_connect};

/// A redis-server of the test's own, on a port it chose; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        });
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "these tests need redis-server on PATH ({error}); install Debian's \
                     redis-server package (.ci/run does)"
                )
            });
        let deadline = std::time::Instant::now() + common::WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Node {
    hub: Hub,
    backplane: RedisBackplane,
    addr: SocketAddr,
}

async fn node(redis: &Redis) -> Node {
    let backplane = RedisBackplane::new(&redis.url()).expect("a redis URL");
    let hub = Hub::builder().backplane(backplane.clone()).build();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    Node {
        hub,
        backplane,
        addr,
    }
}

async fn wait_listening(node: &Node, topics: usize) {
    wait_until("the backplane listens", || {
        let stats = node.backplane.stats();
        stats.connected && stats.subscribed_topics == topics
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_on_either_node_reach_both_exactly_once_in_order() {
    let redis = Redis::start(None);
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut socket = ws_connect(&format!("ws://{}/?topic=t", a.addr)).await;
    let mut sse = SseClient::connect(b.addr, "/?topic=t").await;
    wait_listening(&a, 1).await;
    wait_listening(&b, 1).await;

    for i in 0..5 {
        assert_eq!(
            a.hub.broadcast("t", format!("a{i}")),
            1,
            "A's own subscriber, at once"
        );
    }
    for i in 0..5 {
        assert_eq!(next_text(&mut socket).await, format!("a{i}"));
        assert_eq!(sse.next_event().await.data, format!("a{i}"));
    }
    for i in 0..5 {
        b.hub.broadcast(
            "t",
            Event::new(format!("b{i}")).event("from-b").expect("valid"),
        );
    }
    for i in 0..5 {
        assert_eq!(next_text(&mut socket).await, format!("b{i}"));
        let event = sse.next_event().await;
        assert_eq!(
            (event.event.as_str(), event.data),
            ("from-b", format!("b{i}"))
        );
    }
    // A last event from each side: nothing was delivered twice before it.
    a.hub.broadcast("t", "end-a");
    assert_eq!(next_text(&mut socket).await, "end-a");
    assert_eq!(sse.next_event().await.data, "end-a");

    // A node that loses its last subscriber stops listening.
    drop(socket);
    wait_listening(&a, 0).await;
    let (sa, sb) = (a.backplane.stats(), b.backplane.stats());
    assert_eq!((sa.received, sb.received), (5, 6));
    assert_eq!(sa.not_delivered + sb.not_delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived() {
    let redis = Redis::start(None);
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut local = ws_connect(&format!("ws://{}/?topic=t", a.addr)).await;
    let mut remote = ws_connect(&format!("ws://{}/?topic=t", b.addr)).await;
    wait_listening(&a, 1).await;
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "before");
    assert_eq!(next_text(&mut remote).await, "before");

    // Redis goes away: local delivery goes on, and the loss to other nodes is counted.
    let port = redis.stop();
    wait_until("A notices", || !a.backplane.stats().connected).await;
    assert_eq!(a.hub.broadcast("t", "during"), 1);
    assert_eq!(next_text(&mut local).await, "before");
    assert_eq!(next_text(&mut local).await, "during");
    wait_until("the loss is counted", || {
        a.backplane.stats().not_delivered >= 1
    })
    .await;

    // Redis is back on the same port: both reconnect and subscribe again.
    let _redis = Redis::start(Some(port));
    wait_until("both reconnected", || {
        let (sa, sb) = (a.backplane.stats(), b.backplane.stats());
        sa.connected && sb.connected && sa.reconnects >= 1 && sb.reconnects >= 1
    })
    .await;
    wait_listening(&a, 1).await;
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "after");
    assert_eq!(
        next_text(&mut remote).await,
        "after",
        "B never saw 'during'"
    );
    assert_eq!(next_text(&mut local).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_and_skipped() {
    let redis = Redis::start(None);
    let b = node(&redis).await;
    let mut socket = ws_connect(&format!("ws://{}/?topic=t", b.addr)).await;
    wait_listening(&b, 1).await;

    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: i64 = redis::cmd("PUBLISH")
        .arg("fanout:t")
        .arg("not one of ours")
        .query_async(&mut connection)
        .await
        .expect("publish");
    wait_until("counted", || b.backplane.stats().malformed == 1).await;

    let a = node(&redis).await;
    a.hub.broadcast("t", "valid");
    assert_eq!(
        next_text(&mut socket).await,
        "valid",
        "the first frame after the garbage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listens_to_many_topics_and_gets_them_back_after_a_restart() {
    const TOPICS: usize = 20_000;
    let redis = Redis::start(None);
    let (a, b) = (node(&redis).await, node(&redis).await);
    let subscriptions: Vec<_> = (0..TOPICS)
        .map(|i| b.hub.subscribe(&format!("topic-{i}")))
        .collect();
    wait_listening(&b, TOPICS).await;

    let port = redis.stop();
    wait_until("B notices", || !b.backplane.stats().connected).await;
    let _redis = Redis::start(Some(port));
    wait_until("B resubscribed", || {
        let stats = b.backplane.stats();
        stats.connected && stats.reconnects >= 1 && stats.subscribed_topics == TOPICS
    })
    .await;
    wait_until("A reconnected", || a.backplane.stats().connected).await;

    let mut last = subscriptions.into_iter().last().expect("subscribed");
    a.hub.broadcast(&format!("topic-{}", TOPICS - 1), "found");
    let event = tokio::time::timeout(common::WAIT, last.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(&event.data()[..], b"found");
}
