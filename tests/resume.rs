//! Nothing missed on reconnect: history, `Last-Event-ID`, `?since=`, and what a client
//! is told when the history no longer reaches back far enough.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tower_fanout::{CloseReason, Hub, RecvError, Resume, StreamLayer};
use tower_layer::Layer;

use common::{Inner, SseClient, next_text, serve_hyper, wait_until, ws_connect};

#[tokio::test]
async fn the_hub_resumes_after_an_id_from_its_history() {
    let hub = Hub::builder().history(4).build();
    let mut first = hub.subscribe("t");
    for i in 0..3 {
        hub.broadcast("t", i.to_string());
    }
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let event = first.recv().await.expect("event");
            ids.push(event.event_id().expect("the hub gave an id").to_owned());
        }
        ids
    };
    assert!(
        ids.windows(2).all(|pair| pair[0] != pair[1]),
        "unique: {ids:?}"
    );
    drop(first);
    let stats = hub.stats();
    assert_eq!(
        (stats.topics, stats.idle_topics),
        (0, 1),
        "the topic keeps its history without subscribers"
    );

    // Broadcast while nobody listens: kept for the next subscriber.
    hub.broadcast("t", "3");
    let (mut resumed, resume) = hub.resume("t", &ids[0]);
    assert_eq!(resume, Resume::Complete);
    for expected in ["1", "2", "3"] {
        assert_eq!(
            &resumed.recv().await.expect("replayed").data()[..],
            expected.as_bytes()
        );
    }

    // Two more push the first events out of a history of four.
    hub.broadcast("t", "4");
    hub.broadcast("t", "5");
    let (mut late, resume) = hub.resume("t", &ids[0]);
    assert_eq!(resume, Resume::EventsLost);
    assert_eq!(
        &late.recv().await.expect("oldest retained").data()[..],
        b"2"
    );

    let (_, resume) = hub.resume("t", "not-an-id");
    assert_eq!(resume, Resume::EventsLost);
}

#[tokio::test]
async fn idle_topics_are_bounded() {
    let hub = Hub::builder().history(8).idle_topics(2).shards(1).build();
    for topic in ["a", "b", "c"] {
        drop(hub.subscribe(topic));
    }
    assert_eq!(
        hub.stats().idle_topics,
        2,
        "the longest idle topic was forgotten"
    );
    let (_, resume) = hub.resume("a", "anything");
    assert_eq!(resume, Resume::EventsLost);
}

#[tokio::test]
async fn disconnect_ends_a_topics_subscriptions_and_keeps_its_history() {
    let hub = Hub::builder().history(8).build();
    let mut subscription = hub.subscribe("device");
    hub.broadcast("device", "before");
    assert_eq!(hub.disconnect("device"), 1);
    assert_eq!(
        subscription.recv().await,
        Err(RecvError::Closed(CloseReason::Disconnected))
    );
    let mut later = hub.subscribe("device");
    hub.broadcast("device", "after");
    assert_eq!(
        &later.recv().await.expect("unaffected").data()[..],
        b"after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_without_gap_or_duplicate_while_publishing() {
    const TOTAL: usize = 2_000;
    let hub = Hub::builder().history(TOTAL).build();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;

    let mut client = SseClient::connect(addr, "/?topic=feed").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // The publisher sends a first part, waits until the client is about to reconnect,
    // then sends the rest while the client reconnects and replays.
    let reconnecting = Arc::new(AtomicBool::new(false));
    let publisher = {
        let hub = hub.clone();
        let reconnecting = Arc::clone(&reconnecting);
        std::thread::spawn(move || {
            for i in 0..TOTAL {
                if i == 500 {
                    let deadline = Instant::now() + common::WAIT;
                    while !reconnecting.load(Ordering::Acquire) {
                        assert!(Instant::now() < deadline, "the client never reconnected");
                        std::thread::yield_now();
                    }
                }
                hub.broadcast("feed", i.to_string());
            }
        })
    };

    let mut seen = Vec::new();
    let mut last_id = None;
    while seen.len() < 300 {
        let event = client.next_event().await;
        last_id = event.id.clone();
        seen.push(event.data.parse::<usize>().expect("a number"));
    }
    drop(client);

    let last_id = last_id.expect("events carry ids");
    reconnecting.store(true, Ordering::Release);
    let mut client = SseClient::connect_with(
        addr,
        "/?topic=feed",
        &format!("Last-Event-ID: {last_id}\r\n"),
    )
    .await;
    while seen.len() < TOTAL {
        seen.push(client.next_event().await.data.parse().expect("a number"));
    }
    publisher.join().expect("publisher finished");
    assert_eq!(
        seen,
        (0..TOTAL).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
}

#[tokio::test]
async fn sse_is_told_when_events_were_lost() {
    let hub = Hub::builder().history(2).build();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut client = SseClient::connect(addr, "/?topic=t").await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    hub.broadcast("t", "0");
    let first = client.next_event().await.id.expect("id");
    drop(client);
    wait_until("gone", || hub.stats().subscribers == 0).await;
    for i in 1..5 {
        hub.broadcast("t", i.to_string());
    }

    // A first connection resumes through the query, as EventSource cannot set headers.
    let mut client = SseClient::connect(addr, &format!("/?topic=t&lastEventId={first}")).await;
    let lost = client.next_event().await;
    assert_eq!(lost.event, "lost");
    assert_eq!(client.next_event().await.data, "3");
    assert_eq!(client.next_event().await.data, "4");
}

#[tokio::test]
async fn websocket_resumes_with_since_and_learns_ids_when_asked() {
    let hub = Hub::builder().history(16).build();
    let addr = serve_hyper(
        StreamLayer::new(hub.clone())
            .websocket_ids(true)
            .layer(Inner),
    )
    .await;
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    hub.broadcast("t", "a");
    let frame = next_text(&mut socket).await;
    let (id, data) = frame.split_once('\n').expect("id, LF, data");
    assert_eq!(data, "a");
    drop(socket);
    wait_until("gone", || hub.stats().subscribers == 0).await;

    hub.broadcast("t", "b");
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=t&since={id}")).await;
    assert!(next_text(&mut socket).await.ends_with("\nb"));
    hub.broadcast("t", "c");
    assert!(next_text(&mut socket).await.ends_with("\nc"));

    let mut stale = ws_connect(&format!("ws://{addr}/?topic=t&since=unknown")).await;
    assert_eq!(next_text(&mut stale).await, "\nlost");
}

#[tokio::test]
async fn disconnecting_a_topic_closes_its_connections() {
    let hub = Hub::builder().history(16).build();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=device")).await;
    let mut sse = SseClient::connect(addr, "/?topic=device").await;
    wait_until("subscribed", || hub.stats().subscribers == 2).await;
    assert_eq!(hub.disconnect("device"), 2);
    // Ended at once, though their connections are still closing.
    assert_eq!(hub.broadcast("device", "too late"), 0);
    assert_eq!(hub.disconnect("device"), 0);

    assert_eq!(common::close_code(&mut socket).await, Some(1000));
    // The response ends (EventSource then reconnects by itself).
    tokio::time::timeout(common::WAIT, sse.until_end())
        .await
        .expect("the SSE response ended");
    wait_until("both unsubscribed", || hub.stats().subscribers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_again_and_again_evicts_no_other_history() {
    let hub = Hub::builder().history(8).idle_topics(4).shards(1).build();
    let addr = serve_hyper(StreamLayer::new(hub.clone()).layer(Inner)).await;
    // Three topics with history whose clients have gone.
    let mut resume_from = Vec::new();
    for topic in ["a", "b", "c"] {
        let mut client = SseClient::connect(addr, &format!("/?topic={topic}")).await;
        wait_until("subscribed", || hub.stats().subscribers == 1).await;
        hub.broadcast(topic, "first");
        hub.broadcast(topic, "second");
        let first = client.next_event().await;
        resume_from.push((topic, first.id.expect("the hub gave an id")));
        drop(client);
        wait_until("gone", || hub.stats().subscribers == 0).await;
    }
    // One client comes back to a fourth topic, many more times than topics may idle.
    for _ in 0..20 {
        let client = SseClient::connect(addr, "/?topic=d").await;
        wait_until("subscribed", || hub.stats().subscribers == 1).await;
        drop(client);
        wait_until("gone", || hub.stats().subscribers == 0).await;
    }
    let stats = hub.stats();
    assert_eq!((stats.topics, stats.idle_topics), (0, 4), "{stats:?}");

    for (topic, id) in resume_from {
        let mut client = SseClient::connect_with(
            addr,
            &format!("/?topic={topic}"),
            &format!("Last-Event-ID: {id}\r\n"),
        )
        .await;
        let event = client.next_event().await;
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("message", "second"),
            "{topic} resumed whole"
        );
    }
}
