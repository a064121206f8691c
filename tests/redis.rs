//! Two nodes sharing topics through a real `redis-server` on a loopback port.
#![cfg(feature = "redis")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tower_fanout::backplane::RedisBackplane;
use tower_fanout::{Event, Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, Redis, SseClient, next_text, serve_hyper, wait_until, ws_connect};

struct Node {
    hub: Hub,
    backplane: RedisBackplane,
    addr: SocketAddr,
}

async fn node(redis: &Redis) -> Node {
    node_on(RedisBackplane::new(&redis.url()).expect("a redis URL")).await
}

async fn node_on(backplane: RedisBackplane) -> Node {
    node_keeping(backplane, 0).await
}

/// A node whose hub keeps `history` events per topic: the cluster's history, in Redis.
async fn node_keeping(backplane: RedisBackplane, history: usize) -> Node {
    node_built(Hub::builder().history(history), backplane).await
}

/// A node whose hub is `builder`'s, through `backplane`.
async fn node_built(builder: tower_fanout::HubBuilder, backplane: RedisBackplane) -> Node {
    let hub = builder.backplane(backplane.clone()).build();
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

/// Which way a frozen connection of the [`Proxy`] stops forwarding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frozen {
    /// Nothing reaches Redis, nothing comes back: a flow that a NAT or a load balancer
    /// dropped without telling either end.
    Both,
    /// What the client sends never reaches Redis; what Redis sends still arrives.
    ToRedis,
}

/// A TCP proxy in front of a Redis, which can stop forwarding on the connections it has
/// without closing them; connections made afterwards are forwarded as usual.
struct Proxy {
    port: u16,
    /// Connections numbered below the first are frozen, the second way.
    frozen: Arc<Mutex<(u64, Option<Frozen>)>>,
    opened: Arc<AtomicU64>,
    /// While set, new connections are closed at once.
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn start(redis: &Redis) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let upstream = redis.port;
        let frozen = Arc::new(Mutex::new((0, None)));
        let opened = Arc::new(AtomicU64::new(0));
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let proxy = Self {
            port,
            frozen: Arc::clone(&frozen),
            opened: Arc::clone(&opened),
            refusing: Arc::clone(&refusing),
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                // As Redis and its client do: a reply in several writes is not held back.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let number = opened.fetch_add(1, Ordering::SeqCst);
                let (from_client, to_client) = client.into_split();
                let (from_server, to_server) = server.into_split();
                let to_redis = Arc::clone(&frozen);
                tokio::spawn(pump(from_client, to_server, move || {
                    let (below, way) = *to_redis.lock().expect("not poisoned");
                    number < below && way.is_some()
                }));
                let from_redis = Arc::clone(&frozen);
                tokio::spawn(pump(from_server, to_client, move || {
                    let (below, way) = *from_redis.lock().expect("not poisoned");
                    number < below && way == Some(Frozen::Both)
                }));
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Closes new connections at once while `refuse` holds.
    fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }

    /// Stops forwarding, `way`, on every connection open now.
    fn freeze(&self, way: Frozen) {
        *self.frozen.lock().expect("not poisoned") =
            (self.opened.load(Ordering::SeqCst), Some(way));
    }
}

/// Copies `from` to `to` until either closes; once `frozen` says so, forwards nothing
/// more and holds both open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: impl Fn() -> bool,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen() {
            // Silently lost, the connection still open, as a dropped flow is.
            let _held = (from, to);
            return std::future::pending().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A backplane that finds a silent connection within half a second.
fn watchful_backplane(url: &str) -> RedisBackplane {
    RedisBackplane::builder(url)
        .ping_interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(300))
        .build()
        .expect("a redis URL")
}

async fn recv_data(subscription: &mut tower_fanout::Subscription) -> String {
    let event = tokio::time::timeout(common::WAIT, subscription.recv())
        .await
        .expect("an event in time")
        .expect("an event");
    String::from_utf8(event.data().to_vec()).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_silently_stops_is_found_and_replaced() {
    let redis = Redis::start(None);
    let proxy = Proxy::start(&redis).await;
    let a = node(&redis).await;
    let b = node_on(watchful_backplane(&proxy.url())).await;
    let mut subscription = b.hub.subscribe("t");
    wait_listening(&b, 1).await;
    wait_until("A connected", || a.backplane.stats().connected).await;
    a.hub.broadcast("t", "before");
    assert_eq!(recv_data(&mut subscription).await, "before");

    // B's connections go silent, open but forwarding nothing either way.
    proxy.freeze(Frozen::Both);
    wait_until("B found the silent connections and reconnected", || {
        let stats = b.backplane.stats();
        stats.reconnects >= 1 && stats.connected && stats.subscribed_topics == 1
    })
    .await;
    a.hub.broadcast("t", "after");
    assert_eq!(recv_data(&mut subscription).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiving_goes_on_while_a_publish_waits_for_redis() {
    let redis = Redis::start(None);
    let proxy = Proxy::start(&redis).await;
    // A's checks are far apart: the window below is its publish waiting, not a reconnect.
    let a = node_on(
        RedisBackplane::builder(&proxy.url())
            .ping_interval(Duration::from_secs(60))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("a redis URL"),
    )
    .await;
    let b = node(&redis).await;
    let mut from_b = a.hub.subscribe("from-b");
    wait_listening(&a, 1).await;
    wait_until("B connected", || b.backplane.stats().connected).await;

    // What A sends no longer reaches Redis, so its next publish waits for a reply that
    // does not come; what Redis sends A still arrives.
    proxy.freeze(Frozen::ToRedis);
    a.hub.broadcast("from-a", "stuck");
    for i in 0..100 {
        b.hub.broadcast("from-b", i.to_string());
    }
    for i in 0..100 {
        assert_eq!(recv_data(&mut from_b).await, i.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_receive_queue_drops_and_counts_what_does_not_fit() {
    const EVENTS: u64 = 20_000;
    const CHUNK: u64 = 1_000;
    let redis = Redis::start(None);
    let a = node(&redis).await;
    let b = node_on(
        RedisBackplane::builder(&redis.url())
            .receive_queue(1)
            .build()
            .expect("a redis URL"),
    )
    .await;
    let _subscription = b.hub.subscribe("t");
    wait_listening(&b, 1).await;
    wait_until("A connected", || a.backplane.stats().connected).await;

    for chunk in 0..EVENTS / CHUNK {
        for i in 0..CHUNK {
            a.hub.broadcast("t", (chunk * CHUNK + i).to_string());
        }
        // Within A's publish queue, so that every event reaches Redis.
        wait_until("A published the chunk", || {
            a.backplane.stats().published == (chunk + 1) * CHUNK
        })
        .await;
    }
    wait_until("B accounted for every event", || {
        let stats = b.backplane.stats();
        stats.received + stats.dropped == EVENTS
    })
    .await;
    let stats = b.backplane.stats();
    assert!(
        stats.dropped > 0,
        "a queue of one message overflowed: {stats:?}"
    );
    assert!(stats.received > 0, "{stats:?}");
}

/// The clients connected to `redis` besides the one asking.
async fn clients(redis: &Redis) -> usize {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .expect("client list");
    list.lines().count() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_lets_go_of_redis_when_its_hub_is_dropped() {
    let redis = Redis::start(None);
    let backplane = RedisBackplane::new(&redis.url()).expect("a redis URL");
    let hub = Hub::builder().backplane(backplane.clone()).build();
    let subscription = hub.subscribe("t");
    wait_until("listening", || {
        let stats = backplane.stats();
        stats.connected && stats.subscribed_topics == 1
    })
    .await;
    assert_eq!(
        clients(&redis).await,
        2,
        "a publishing and a subscribing connection"
    );

    // The handle on the backplane is kept, as one kept for its stats would be.
    drop((subscription, hub));
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while clients(&redis).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backplane still holds its connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!backplane.stats().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_subscribe_on_one_node_receives_what_another_publishes() {
    use serde_json::json;

    let redis = Redis::start(None);
    let (a, b) = (node(&redis).await, node(&redis).await);
    wait_until("A connected", || a.backplane.stats().connected).await;
    // A client of the protocol on B, with no topic until it subscribes.
    let mut client = common::protocol_client(b.addr, "", &[]).await;
    wait_listening(&b, 0).await;
    let reply = common::command(
        &mut client,
        json!({"type": "subscribe", "topic": "room", "req": 1}),
    );
    assert_eq!(reply.await, json!({"type": "ok", "req": 1, "position": ""}));
    wait_listening(&b, 1).await;

    a.hub.broadcast("room", "from A");
    let event = common::next_json(&mut client).await;
    assert_eq!(
        (event["topic"].as_str(), event["data"].as_str()),
        (Some("room"), Some("from A"))
    );

    // Its unsubscribe takes the node's interest in Redis with it.
    let reply = common::command(
        &mut client,
        json!({"type": "unsubscribe", "topic": "room", "req": 2}),
    );
    assert_eq!(reply.await, json!({"type": "ok", "req": 2}));
    wait_listening(&b, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reaches_the_subscribers_of_every_node() {
    let redis = Redis::start(None);
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut here = a.hub.subscribe("t");
    let mut sse = SseClient::connect(b.addr, "/?topic=t").await;
    wait_listening(&a, 1).await;
    wait_listening(&b, 1).await;

    let mut publisher = a.hub.publisher("t");
    for i in 0..3 {
        assert_eq!(
            publisher.broadcast(format!("p{i}")),
            1,
            "A's own subscriber"
        );
    }
    for i in 0..3 {
        assert_eq!(recv_data(&mut here).await, format!("p{i}"));
        assert_eq!(sse.next_event().await.data, format!("p{i}"));
    }
}

/// A node of a cluster with its history in `redis`, `history` events per topic.
async fn history_node(redis: &Redis, history: usize) -> Node {
    node_keeping(
        RedisBackplane::new(&redis.url()).expect("a redis URL"),
        history,
    )
    .await
}

/// What a subscription received next: `data@id`, or `lost`.
async fn next_item(subscription: &mut tower_fanout::Subscription) -> String {
    match tokio::time::timeout(common::WAIT, subscription.recv())
        .await
        .expect("something in time")
    {
        Ok(event) => format!(
            "{}@{}",
            String::from_utf8_lossy(event.data()),
            event.event_id().unwrap_or_default()
        ),
        Err(tower_fanout::RecvError::Lost) => "lost".to_owned(),
        Err(other) => panic!("unexpected {other}"),
    }
}

/// A node that starts following a topic as another publishes the topic's first event
/// says nothing is lost: the event arriving while it asks Redis where the topic stands
/// is not taken for Redis having lost what the node holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_topic_joined_as_its_first_event_comes_loses_nothing() {
    let redis = Redis::start(None);
    let (a, b) = (
        history_node(&redis, 16).await,
        history_node(&redis, 16).await,
    );
    wait_until("both connected", || {
        a.backplane.stats().connected && b.backplane.stats().connected
    })
    .await;
    for round in 0..60u32 {
        let topic = format!("fresh-{round}");
        let mut joined = b.hub.subscribe(&topic);
        // The topic's first event, at a different moment of B's joining each round (a
        // spread of moments, not a wait for anything): some rounds land it while B asks
        // Redis where the topic stands, whichever the machine's speed.
        tokio::time::sleep(Duration::from_micros(u64::from(round % 30) * 50)).await;
        a.hub.broadcast(&topic, "first");
        // A node keeping history goes on following the topics of earlier rounds.
        wait_listening(&b, round as usize + 1).await;
        a.hub.broadcast(&topic, "end");
        let mut received = Vec::new();
        while received
            .last()
            .is_none_or(|item: &String| !item.starts_with("end@"))
        {
            assert!(received.len() < 3, "round {round}: {received:?}");
            received.push(next_item(&mut joined).await);
        }
        // Before B joined, or after: the first event, or not; never a loss.
        let data: Vec<&str> = received
            .iter()
            .map(|item| item.split('@').next().unwrap_or_default())
            .collect();
        assert!(
            data == ["end"] || data == ["first", "end"],
            "round {round}: {received:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_every_node_gives_an_event_the_same_id_and_a_client_resumes_on_any() {
    let redis = Redis::start(None);
    let a = history_node(&redis, 16).await;
    let (b, c) = (
        history_node(&redis, 16).await,
        history_node(&redis, 16).await,
    );
    // A, which publishes, has no subscriber of the topic; B and C do.
    let mut on_b = SseClient::connect(b.addr, "/?topic=t").await;
    let mut on_c = SseClient::connect(c.addr, "/?topic=t").await;
    wait_listening(&b, 1).await;
    wait_listening(&c, 1).await;
    wait_until("A connected", || a.backplane.stats().connected).await;

    for i in 0..3 {
        assert_eq!(a.hub.broadcast("t", format!("e{i}")), 0, "none on A");
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        let (from_b, from_c) = (on_b.next_event().await, on_c.next_event().await);
        assert_eq!(
            (from_b.data.as_str(), from_c.data.as_str()),
            (&*format!("e{i}"), &*format!("e{i}"))
        );
        let id = from_b.id.expect("an id");
        assert_eq!(
            from_c.id.as_deref(),
            Some(id.as_str()),
            "the same id on B and C"
        );
        assert!(
            id.ends_with(&format!("-{}", i + 1)),
            "{id}: the position in the history"
        );
        ids.push(id);
    }

    // The client on B leaves after the second event; two more are published, from B
    // this time; it comes back on C with the id B gave it, and gets exactly what it missed.
    drop(on_b);
    b.hub.broadcast("t", "e3");
    b.hub.broadcast("t", "e4");
    assert_eq!(on_c.next_event().await.data, "e3");
    assert_eq!(on_c.next_event().await.data, "e4");
    let mut resumed = SseClient::connect_with(
        c.addr,
        "/?topic=t",
        &format!("Last-Event-ID: {}\r\n", ids[1]),
    )
    .await;
    for expected in ["e2", "e3", "e4"] {
        let event = resumed.next_event().await;
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("message", expected)
        );
    }
    c.hub.broadcast("t", "e5");
    assert_eq!(
        resumed.next_event().await.data,
        "e5",
        "then live, nothing twice"
    );

    // On A, which has never had a subscriber of the topic, the resume is served from
    // Redis, then live, while publishers go on.
    let mut on_a = SseClient::connect_with(
        a.addr,
        "/?topic=t",
        &format!("Last-Event-ID: {}\r\n", ids[0]),
    )
    .await;
    b.hub.broadcast("t", "e6");
    for expected in ["e1", "e2", "e3", "e4", "e5", "e6"] {
        assert_eq!(on_a.next_event().await.data, expected);
    }
    a.hub.broadcast("t", "e7");
    let last = on_a.next_event().await;
    assert_eq!(last.data, "e7", "then live, nothing twice");
    assert!(last.id.expect("an id").ends_with("-8"));

    // An id beyond the history, or of another epoch, is told as lost.
    let (mut unknown, _) = a.hub.resume("t", "0-1");
    assert_eq!(next_item(&mut unknown).await, "lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_publishers_on_every_node_give_every_subscriber_one_order() {
    let redis = Redis::start(None);
    let nodes = [
        history_node(&redis, 64).await,
        history_node(&redis, 64).await,
        history_node(&redis, 64).await,
    ];
    let mut subscriptions: Vec<_> = nodes.iter().map(|node| node.hub.subscribe("t")).collect();
    for node in &nodes {
        wait_listening(node, 1).await;
    }
    // Three threads on three nodes at once, and two on the first: local delivery waits for
    // Redis' order too.
    const EACH: usize = 40;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let hub = nodes[p % 3].hub.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    hub.broadcast("t", format!("p{p}-{i}"));
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().expect("a publisher");
    }
    let mut orders = Vec::new();
    for subscription in &mut subscriptions {
        let mut order = Vec::new();
        for _ in 0..4 * EACH {
            order.push(next_item(subscription).await);
        }
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1], "A and B");
    assert_eq!(orders[0], orders[2], "A and C");
    // Every event once, each publisher's in its own order, numbered 1, 2, 3, ...
    for (n, item) in orders[0].iter().enumerate() {
        assert!(item.ends_with(&format!("-{}", n + 1)), "{item} at {n}");
    }
    for p in 0..4 {
        let own: Vec<&String> = orders[0]
            .iter()
            .filter(|item| item.starts_with(&format!("p{p}-")))
            .collect();
        assert_eq!(own.len(), EACH);
        for (i, item) in own.iter().enumerate() {
            assert!(item.starts_with(&format!("p{p}-{i}@")), "{item}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_node_cut_off_fetches_what_it_missed_and_says_what_is_gone() {
    let (redis, proxy, a, b) = a_and_b_behind_a_proxy(4).await;
    let mut subscription = b.hub.subscribe("t");
    wait_listening(&b, 1).await;
    wait_until("A connected", || a.backplane.stats().connected).await;
    a.hub.broadcast("t", "before");
    let before = next_item(&mut subscription).await;
    assert!(before.starts_with("before@"), "{before}");

    // B is cut off while A publishes three events: within the history of four.
    proxy.freeze(Frozen::Both);
    wait_until("B noticed", || !b.backplane.stats().connected).await;
    for i in 0..3 {
        a.hub.broadcast("t", format!("missed{i}"));
    }
    wait_until("B is back", || b.backplane.stats().connected).await;
    for i in 0..3 {
        let item = next_item(&mut subscription).await;
        assert!(
            item.starts_with(&format!("missed{i}@")),
            "{item}: fetched, in order"
        );
    }
    assert_eq!(b.backplane.stats().lost, 0);

    // Cut off again, and kept away, while six are published in two rounds, and the
    // stream loses the first round (as trimming would): B says that events are gone,
    // then delivers the second round.
    proxy.refuse(true);
    proxy.freeze(Frozen::Both);
    wait_until("B noticed again", || !b.backplane.stats().connected).await;
    for round in 0..2 {
        let published = a.backplane.stats().published;
        for i in 0..3 {
            a.hub.broadcast("t", format!("later{}", 3 * round + i));
        }
        wait_until("the round is in Redis", || {
            a.backplane.stats().published == published + 3
        })
        .await;
    }
    // Positions: 1 before, 2-4 the missed ones, 5-7 the first round, 8-10 the second.
    let mut redis_connection = redis::Client::open(redis.url())
        .expect("a redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let _: i64 = redis::cmd("XTRIM")
        .arg("fanout:s:t")
        .arg("MINID")
        .arg(8)
        .query_async(&mut redis_connection)
        .await
        .expect("trimmed");
    proxy.refuse(false);
    assert_eq!(next_item(&mut subscription).await, "lost");
    for i in 3..6 {
        let item = next_item(&mut subscription).await;
        assert!(item.starts_with(&format!("later{i}@")), "{item}");
    }
    assert_eq!(b.backplane.stats().lost, 1);
    a.hub.broadcast("t", "live");
    assert!(next_item(&mut subscription).await.starts_with("live@"));
}

/// A Redis of the test's own and two nodes keeping `history` events per topic in it: A on
/// Redis itself, B through a proxy that can cut it off, with a backplane that notices.
async fn a_and_b_behind_a_proxy(history: usize) -> (Redis, Proxy, Node, Node) {
    let redis = Redis::start(None);
    let proxy = Proxy::start(&redis).await;
    let a = history_node(&redis, history).await;
    let b = node_keeping(watchful_backplane(&proxy.url()), history).await;
    (redis, proxy, a, b)
}

/// Cuts `node` off from Redis behind `proxy`, and keeps it away until `proxy.refuse(false)`.
async fn cut_off(proxy: &Proxy, node: &Node) {
    proxy.refuse(true);
    proxy.freeze(Frozen::Both);
    wait_until("the node noticed", || !node.backplane.stats().connected).await;
}

/// A node cut off from Redis while many of its topics gain events fetches what each
/// missed once it is back, more topics than one round trip reads: every subscriber gets
/// its own, in order, once, and nothing is said to be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_node_cut_off_from_many_topics_fetches_what_each_missed() {
    const TOPICS: usize = 150;
    let (_redis, proxy, a, b) = a_and_b_behind_a_proxy(16).await;
    let mut subscriptions: Vec<_> = (0..TOPICS)
        .map(|n| b.hub.subscribe(&format!("t{n}")))
        .collect();
    wait_listening(&b, TOPICS).await;
    wait_until("A connected", || a.backplane.stats().connected).await;

    cut_off(&proxy, &b).await;
    let published = a.backplane.stats().published;
    for round in 0..2 {
        for n in 0..TOPICS {
            a.hub.broadcast(&format!("t{n}"), format!("t{n} e{round}"));
        }
    }
    wait_until("all in Redis", || {
        a.backplane.stats().published == published + 2 * TOPICS as u64
    })
    .await;
    proxy.refuse(false);
    for (n, subscription) in subscriptions.iter_mut().enumerate() {
        for round in 0..2 {
            let item = next_item(subscription).await;
            assert!(
                item.starts_with(&format!("t{n} e{round}@")),
                "{item}: t{n}'s, in order"
            );
        }
    }
    // Nothing twice: the next thing each gets is what comes next.
    for n in 0..TOPICS {
        a.hub.broadcast(&format!("t{n}"), format!("t{n} live"));
    }
    for (n, subscription) in subscriptions.iter_mut().enumerate() {
        let item = next_item(subscription).await;
        assert!(item.starts_with(&format!("t{n} live@")), "{item}");
    }
    assert_eq!(b.backplane.stats().lost, 0);
}

/// A resume that reaches a node cut off from Redis, from an event the node has not
/// received, waits for Redis rather than being told of a loss: once the node is back, it
/// gets what followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_resume_asked_while_redis_is_away_is_answered_once_it_is_back() {
    let (_redis, proxy, a, b) = a_and_b_behind_a_proxy(16).await;
    let mut on_a = a.hub.subscribe("t");
    wait_listening(&a, 1).await;
    wait_until("B connected", || b.backplane.stats().connected).await;

    cut_off(&proxy, &b).await;
    a.hub.broadcast("t", "one");
    a.hub.broadcast("t", "two");
    let one = next_item(&mut on_a).await;
    let two = next_item(&mut on_a).await;
    let id = one.strip_prefix("one@").expect("one");
    let (mut resumed, _) = b.hub.resume("t", id);
    wait_until("the resume waits for Redis", || {
        b.backplane.stats().waiting_resumes == 1
    })
    .await;
    proxy.refuse(false);
    assert_eq!(next_item(&mut resumed).await, two, "no loss, nothing twice");
    a.hub.broadcast("t", "three");
    let three = next_item(&mut resumed).await;
    assert!(three.starts_with("three@"), "{three}");
    let stats = b.backplane.stats();
    assert_eq!((stats.lost, stats.waiting_resumes), (0, 0));
}

/// Resumes that pile up while a node is cut off from Redis, more than one round trip
/// answers, are each answered from where they stood once it is back: from an event of
/// the history, or from an id of an epoch Redis no longer has (`lost`, then all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_many_resumes_waiting_for_redis_are_each_answered_from_where_they_stood() {
    let (_redis, proxy, a, b) = a_and_b_behind_a_proxy(16).await;
    let mut on_a = a.hub.subscribe("t");
    wait_listening(&a, 1).await;
    wait_until("B connected", || b.backplane.stats().connected).await;

    cut_off(&proxy, &b).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        a.hub.broadcast("t", format!("e{i}"));
        sent.push(next_item(&mut on_a).await);
    }
    const RESUMES: usize = 150;
    let mut resumed = Vec::with_capacity(RESUMES);
    for r in 0..RESUMES {
        // Every fifth from an epoch Redis does not have; the others from an event.
        let (from, expected) = if r % 5 == 4 {
            let mut all = vec!["lost".to_owned()];
            all.extend(sent.iter().cloned());
            ("0dd-3".to_owned(), all)
        } else {
            let k = r % sent.len();
            let id = sent[k].split_once('@').expect("an id").1.to_owned();
            (id, sent[k + 1..].to_vec())
        };
        resumed.push((b.hub.resume("t", &from).0, expected));
    }
    wait_until("the resumes wait for Redis", || {
        b.backplane.stats().waiting_resumes == RESUMES
    })
    .await;
    proxy.refuse(false);
    a.hub.broadcast("t", "after");
    let after = next_item(&mut on_a).await;
    for (r, (subscription, expected)) in resumed.iter_mut().enumerate() {
        let mut got = Vec::with_capacity(expected.len() + 1);
        for _ in 0..=expected.len() {
            got.push(next_item(subscription).await);
        }
        let mut want = expected.clone();
        want.push(after.clone());
        assert_eq!(got, want, "resume {r}");
    }
    wait_until("none waits any more", || {
        b.backplane.stats().waiting_resumes == 0
    })
    .await;
}

/// A topic that a node's hub asks for while the node is cut off from Redis is followed as
/// any other once it is back: what is published during the node's next outage is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_topic_joined_while_redis_is_away_is_caught_up_after_the_next_outage() {
    let (_redis, proxy, a, b) = a_and_b_behind_a_proxy(16).await;
    wait_until("both connected", || {
        a.backplane.stats().connected && b.backplane.stats().connected
    })
    .await;

    cut_off(&proxy, &b).await;
    let mut subscription = b.hub.subscribe("t");
    proxy.refuse(false);
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "one");
    let one = next_item(&mut subscription).await;
    assert!(one.starts_with("one@"), "{one}");

    cut_off(&proxy, &b).await;
    let published = a.backplane.stats().published;
    a.hub.broadcast("t", "two");
    wait_until("two is in Redis", || {
        a.backplane.stats().published == published + 1
    })
    .await;
    proxy.refuse(false);
    let two = next_item(&mut subscription).await;
    assert!(two.starts_with("two@"), "{two}: fetched once B was back");
    a.hub.broadcast("t", "three");
    let three = next_item(&mut subscription).await;
    assert!(three.starts_with("three@"), "{three}");
    assert_eq!(b.backplane.stats().lost, 0);
}

/// A topic that a node's hub forgets and takes up again while the node is cut off from
/// Redis starts afresh once the node is back: its new subscriber gets nothing published
/// before it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_topic_left_and_joined_again_while_redis_is_away_starts_afresh() {
    let redis = Redis::start(None);
    let proxy = Proxy::start(&redis).await;
    let a = history_node(&redis, 16).await;
    // B keeps no idle topic: one without subscribers is forgotten at once.
    let b = node_built(
        Hub::builder().history(16).idle_topics(0),
        watchful_backplane(&proxy.url()),
    )
    .await;
    let first = b.hub.subscribe("t");
    wait_listening(&b, 1).await;
    wait_until("A connected", || a.backplane.stats().connected).await;

    cut_off(&proxy, &b).await;
    drop(first);
    let published = a.backplane.stats().published;
    a.hub.broadcast("t", "before the join");
    wait_until("it is in Redis", || {
        a.backplane.stats().published == published + 1
    })
    .await;
    let mut joined = b.hub.subscribe("t");
    proxy.refuse(false);
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "after");
    let item = next_item(&mut joined).await;
    assert!(
        item.starts_with("after@"),
        "{item}: nothing from before the join"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_redis_that_lost_its_data_starts_a_new_epoch_and_says_lost() {
    let redis = Redis::start(None);
    let (a, b) = (
        history_node(&redis, 16).await,
        history_node(&redis, 16).await,
    );
    let mut subscription = b.hub.subscribe("t");
    wait_listening(&b, 1).await;
    wait_until("A connected", || a.backplane.stats().connected).await;
    a.hub.broadcast("t", "one");
    let one = next_item(&mut subscription).await;
    let old_id = one.split_once('@').expect("an id").1.to_owned();

    // Redis restarts without persistence: its history is gone.
    let port = redis.stop();
    wait_until("both noticed", || {
        !a.backplane.stats().connected && !b.backplane.stats().connected
    })
    .await;
    let _redis = Redis::start(Some(port));
    wait_until("both are back", || {
        a.backplane.stats().connected && b.backplane.stats().connected
    })
    .await;
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "two");
    assert_eq!(next_item(&mut subscription).await, "lost");
    let two = next_item(&mut subscription).await;
    let new_id = two.strip_prefix("two@").expect("two").to_owned();
    let epoch = |id: &str| id.rsplit_once('-').expect("epoch-position").0.to_owned();
    assert_ne!(epoch(&new_id), epoch(&old_id), "a new epoch");
    assert!(
        new_id.ends_with("-1"),
        "{new_id}: numbered from the start again"
    );
    assert!(b.backplane.stats().lost >= 1);

    // A client resuming with the old id replays the gap too: `lost`, then what follows.
    let (mut resumed, _) = b.hub.resume("t", &old_id);
    assert_eq!(next_item(&mut resumed).await, "lost");
    assert_eq!(next_item(&mut resumed).await, format!("two@{new_id}"));
}

/// Redis restarting from a snapshot older than what it had stored goes back to a position
/// the nodes have passed. The events after it are gone, and the positions would name new
/// ones: the history starts again in a new epoch, and every node says `lost`, rather
/// than skipping the new events as delivered already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_redis_back_from_an_older_snapshot_starts_a_new_epoch_and_says_lost() {
    let dir = std::env::temp_dir().join(format!("fanout-redis-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let redis = Redis::start_snapshotting(None, &dir);
    let (a, b) = (
        history_node(&redis, 16).await,
        history_node(&redis, 16).await,
    );
    let mut here = a.hub.subscribe("t");
    let mut there = b.hub.subscribe("t");
    wait_listening(&a, 1).await;
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "one");
    assert!(next_item(&mut here).await.starts_with("one@"));
    assert!(next_item(&mut there).await.starts_with("one@"));
    redis.save().await;
    // Stored after the snapshot, and delivered on both nodes.
    let mut old_id = String::new();
    for event in ["two", "three"] {
        b.hub.broadcast("t", event);
        assert!(next_item(&mut here).await.starts_with(event));
        let item = next_item(&mut there).await;
        old_id = item.split_once('@').expect("an id").1.to_owned();
    }

    // Redis dies and comes back with the snapshot: its last position is one again.
    let port = redis.stop();
    wait_until("both noticed", || {
        !a.backplane.stats().connected && !b.backplane.stats().connected
    })
    .await;
    let _redis = Redis::start_snapshotting(Some(port), &dir);
    wait_until("both are back", || {
        a.backplane.stats().connected && b.backplane.stats().connected
    })
    .await;
    wait_listening(&a, 1).await;
    wait_listening(&b, 1).await;
    a.hub.broadcast("t", "four");
    let epoch = |id: &str| id.rsplit_once('-').expect("epoch-position").0.to_owned();
    for subscription in [&mut here, &mut there] {
        assert_eq!(next_item(subscription).await, "lost");
        let four = next_item(subscription).await;
        let new_id = four.strip_prefix("four@").expect("four, not skipped");
        assert_ne!(epoch(new_id), epoch(&old_id), "a new epoch");
        assert!(
            new_id.ends_with("-1"),
            "{new_id}: numbered from the start again"
        );
    }
    a.hub.broadcast("t", "five");
    assert!(next_item(&mut here).await.starts_with("five@"));
    assert!(
        next_item(&mut there).await.starts_with("five@"),
        "told once"
    );

    // A client resuming with an id of the old epoch is told too, then gets the new one.
    let (mut resumed, _) = b.hub.resume("t", &old_id);
    assert_eq!(next_item(&mut resumed).await, "lost");
    assert!(next_item(&mut resumed).await.starts_with("four@"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A resume that waits for Redis through a restart that lost Redis' data is told of the
/// loss once: by the history's answer, not again by the gap that the node marks for its
/// own subscribers as it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_a_resume_waiting_through_a_restart_that_lost_data_is_told_once() {
    for published_before_the_answer in [false, true] {
        let redis = Redis::start(None);
        let proxy = Proxy::start(&redis).await;
        let a = history_node(&redis, 16).await;
        // B holds the last two events of a topic, so an older id needs Redis.
        let b = node_built(
            Hub::builder().history(2).buffer(2),
            RedisBackplane::new(&proxy.url()).expect("a redis URL"),
        )
        .await;
        let mut staying = b.hub.subscribe("t");
        wait_listening(&b, 1).await;
        wait_until("A connected", || a.backplane.stats().connected).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            a.hub.broadcast("t", format!("e{i}"));
            let item = next_item(&mut staying).await;
            let id = item.strip_prefix(&format!("e{i}@")).expect("in order");
            ids.push(id.to_owned());
        }
        let old_id = &ids[0];

        let port = redis.stop();
        wait_until("both noticed", || {
            !a.backplane.stats().connected && !b.backplane.stats().connected
        })
        .await;
        let (mut resumed, _) = b.hub.resume("t", old_id);
        // The new epoch's first event reaches Redis before B is back, or after.
        let a_back = || a.backplane.stats().connected;
        proxy.refuse(published_before_the_answer);
        let _redis = Redis::start(Some(port));
        if published_before_the_answer {
            wait_until("A is back", a_back).await;
            let published = a.backplane.stats().published;
            a.hub.broadcast("t", "new");
            wait_until("it is in Redis", || {
                a.backplane.stats().published == published + 1
            })
            .await;
            proxy.refuse(false);
        }
        wait_until("both are back", || {
            a_back() && b.backplane.stats().connected
        })
        .await;
        wait_listening(&b, 1).await;
        if !published_before_the_answer {
            a.hub.broadcast("t", "new");
        }
        assert_eq!(next_item(&mut staying).await, "lost");
        assert!(next_item(&mut staying).await.starts_with("new@"));
        assert_eq!(next_item(&mut resumed).await, "lost");
        let next = next_item(&mut resumed).await;
        assert!(
            next.starts_with("new@"),
            "{next}: one loss, then what followed"
        );
        a.hub.broadcast("t", "newer");
        let newer = next_item(&mut resumed).await;
        assert!(newer.starts_with("newer@"), "{newer}: nothing twice");
    }
}

/// A client that hops from node to node, each time resuming with the last id it got:
/// `Sse` by `Last-Event-ID`, `Protocol` by a subscribe's `since`.
#[derive(Clone, Copy)]
enum Hopper {
    Sse,
    Protocol,
}

/// Reads the events of topic `t`, moving to the next of `nodes` after every `per_visit`
/// events, until none has come for a while after `done` is set; returns their data, and
/// `lost` where a loss was announced.
async fn hop(
    kind: Hopper,
    nodes: Vec<SocketAddr>,
    per_visit: usize,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    for visit in 0..1_000 {
        let addr = nodes[visit % nodes.len()];
        let mut got = 0;
        match kind {
            Hopper::Sse => {
                let header = last
                    .as_ref()
                    .map(|id| format!("Last-Event-ID: {id}\r\n"))
                    .unwrap_or_default();
                let mut sse = SseClient::connect_with(addr, "/?topic=t", &header).await;
                while got < per_visit {
                    let Ok(event) =
                        tokio::time::timeout(Duration::from_millis(1_500), sse.next_event()).await
                    else {
                        break;
                    };
                    if event.event == "lost" {
                        seen.push("lost".to_owned());
                        continue;
                    }
                    seen.push(event.data);
                    last = event.id;
                    got += 1;
                }
            }
            Hopper::Protocol => {
                let mut socket = common::protocol_client(addr, "", &[]).await;
                let mut subscribe =
                    serde_json::json!({"type": "subscribe", "topic": "t", "req": 1});
                if let Some(id) = &last {
                    subscribe["since"] = id.clone().into();
                }
                let reply = common::command(&mut socket, subscribe).await;
                assert_eq!(reply["type"], "ok", "{reply}");
                while got < per_visit {
                    let Ok(text) =
                        tokio::time::timeout(Duration::from_millis(1_500), next_text(&mut socket))
                            .await
                    else {
                        break;
                    };
                    let frame: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                    match frame["type"].as_str() {
                        Some("lost") => seen.push("lost".to_owned()),
                        Some("event") => {
                            seen.push(frame["data"].as_str().expect("text").to_owned());
                            last = frame["id"].as_str().map(str::to_owned);
                            got += 1;
                        }
                        other => panic!("unexpected {other:?}: {frame}"),
                    }
                }
            }
        }
        if got < per_visit && done.load(Ordering::SeqCst) {
            return seen;
        }
    }
    panic!("the hops never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hopping_over_three_nodes_through_a_redis_restart_miss_nothing() {
    hop_through_a_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hopping_through_a_restart_that_lost_redis_data_are_told_exactly_there() {
    hop_through_a_restart(false).await;
}

/// Three clients hop over three nodes while publishers on all three run and Redis
/// restarts, keeping its data or not: every client ends with what every node's staying
/// subscriber got, in its order, `lost` included where Redis lost its data.
async fn hop_through_a_restart(persistent: bool) {
    let dir =
        std::env::temp_dir().join(format!("fanout-redis-{}-{persistent}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let keep = persistent.then_some(dir.as_path());
    let redis = Redis::start_in(None, keep);
    let nodes = [
        history_node(&redis, 1_024).await,
        history_node(&redis, 1_024).await,
        history_node(&redis, 1_024).await,
    ];
    // A subscriber on every node that never moves: the order every client must share.
    let mut staying: Vec<_> = nodes.iter().map(|node| node.hub.subscribe("t")).collect();
    for node in &nodes {
        wait_listening(node, 1).await;
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hoppers = [Hopper::Sse, Hopper::Protocol, Hopper::Sse].map(|kind| {
        let (addrs, done) = (addrs.clone(), Arc::clone(&done));
        tokio::spawn(hop(kind, addrs, 15, done))
    });
    // The three start on the first node, beside its staying subscriber.
    wait_until("the hoppers subscribed", || {
        nodes[0].hub.stats().subscribers == 4
    })
    .await;

    // Publishers on all three nodes, 5 ms apart, while Redis restarts in the middle.
    const EACH: usize = 80;
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let hub = node.hub.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(5));
                for i in 0..EACH {
                    ticks.tick().await;
                    hub.broadcast("t", format!("n{n}-{i}"));
                }
            })
        })
        .collect();
    // Redis goes away once a third of the events are out.
    wait_until("a third published", || {
        nodes
            .iter()
            .map(|node| node.backplane.stats().published)
            .sum::<u64>()
            >= EACH as u64
    })
    .await;
    let port = redis.stop();
    wait_until("the nodes noticed", || {
        nodes.iter().all(|node| !node.backplane.stats().connected)
    })
    .await;
    let _redis = Redis::start_in(Some(port), keep);
    for publisher in publishers {
        publisher.await.expect("a publisher");
    }
    wait_until("the nodes are back", || {
        nodes.iter().all(|node| node.backplane.stats().connected)
    })
    .await;
    // What reached the history: the first staying subscriber's, once it has settled.
    let order = settled(&mut staying[0]).await;
    let losses = order.iter().filter(|item| *item == "lost").count();
    assert_eq!(losses, usize::from(!persistent), "{order:?}");
    done.store(true, Ordering::SeqCst);
    assert!(
        order.len() > EACH,
        "most events got through: {}",
        order.len()
    );
    let mut everyone = vec![order];
    for subscription in &mut staying[1..] {
        everyone.push(settled(subscription).await);
    }
    for hopper in hoppers {
        everyone.push(hopper.await.expect("a hopper"));
    }
    if persistent {
        for seen in &everyone[1..] {
            assert_eq!(
                seen, &everyone[0],
                "every event once, in the same order, on every node and across hops"
            );
        }
    } else {
        one_history_through_a_loss(&everyone);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `subscription` receives until nothing more comes for a second: each event's
/// data, and `lost` where a loss was announced.
async fn settled(subscription: &mut tower_fanout::Subscription) -> Vec<String> {
    let mut items = Vec::new();
    for _ in 0..10_000 {
        let Ok(received) =
            tokio::time::timeout(Duration::from_millis(1_000), subscription.recv()).await
        else {
            return items;
        };
        items.push(match received {
            Ok(event) => String::from_utf8_lossy(event.data()).into_owned(),
            Err(tower_fanout::RecvError::Lost) => "lost".to_owned(),
            Err(other) => panic!("unexpected {other}"),
        });
    }
    panic!("events never stopped coming");
}

/// Checks what clients saw through a restart of Redis that lost its data: each saw part
/// of the old history, one `lost`, then the whole new one. The old parts may end apart:
/// the messages Redis was sending as it stopped reached some nodes and not others, and
/// went with its data. Each is the start of one order, and the new parts are the same.
fn one_history_through_a_loss(everyone: &[Vec<String>]) {
    let split: Vec<(&[String], &[String])> = everyone
        .iter()
        .map(|seen| {
            let at = seen.iter().position(|item| item == "lost");
            let at = at.unwrap_or_else(|| panic!("a loss announced: {seen:?}"));
            (&seen[..at], &seen[at + 1..])
        })
        .collect();
    let longest = split
        .iter()
        .map(|(old, _)| *old)
        .max_by_key(|old| old.len());
    let longest = longest.expect("someone");
    for (old, new) in &split {
        assert!(
            longest.starts_with(old),
            "one order before the loss: {old:?} against {longest:?}"
        );
        assert_eq!(
            new, &split[0].1,
            "one order after the loss, every event once"
        );
    }
}
