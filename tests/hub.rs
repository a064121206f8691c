//! The hub seen from outside: many subscribers, slow subscribers, concurrency, shutdown.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::timeout;
use tower_fanout::{CloseReason, Event, Hub, LagPolicy, Lagged, RecvError, Subscription};

const WAIT: Duration = Duration::from_secs(30);

/// Reads without waiting: `Pending` means nothing is there now.
fn poll_once(subscription: &mut Subscription) -> Poll<Result<Arc<Event>, RecvError>> {
    subscription.poll_recv(&mut Context::from_waker(Waker::noop()))
}

fn data(event: &Event) -> &str {
    std::str::from_utf8(event.data()).expect("test data is text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_subscribers_receive_every_broadcast_in_order() {
    const SUBSCRIBERS: usize = 10_000;
    const BROADCASTS: usize = 1_000;
    let hub = Hub::builder().buffer(BROADCASTS).build();

    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut subscription = hub.subscribe("crowd");
            tokio::spawn(async move {
                let mut received = 0;
                for expected in 0..BROADCASTS {
                    let event = subscription.recv().await.expect("no lag, no close");
                    assert_eq!(data(&event), expected.to_string(), "in order");
                    received += 1;
                }
                received
            })
        })
        .collect();

    // Published from a plain thread, outside the runtime.
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            (0..BROADCASTS)
                .map(|i| hub.broadcast("crowd", i.to_string()))
                .collect::<Vec<_>>()
        })
    };

    for reader in readers {
        let received = timeout(WAIT, reader)
            .await
            .expect("in time")
            .expect("no panic");
        assert_eq!(received, BROADCASTS);
    }
    let reached = publisher.join().expect("publisher finished");
    assert!(reached.iter().all(|&n| n == SUBSCRIBERS));
    let stats = hub.stats();
    assert_eq!(stats.broadcasts, BROADCASTS as u64);
    assert_eq!(stats.deliveries, (SUBSCRIBERS * BROADCASTS) as u64);
    assert_eq!(stats.dropped, 0);
}

/// A crowd of waiting subscribers is woken through a task of the runtime a subscriber last
/// registered from; if that runtime has shut down since, the crowd is woken all the same.
#[test]
fn a_crowd_is_woken_though_the_runtime_it_was_seen_on_has_shut_down() {
    const CROWD: usize = 64;
    let hub = Hub::new();
    let gone = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    // Kept, so that the topic is: its waker is of no task.
    let early = gone.block_on(async {
        let mut early = hub.subscribe("crowd");
        assert!(poll_once(&mut early).is_pending(), "registered from here");
        early
    });
    drop(gone);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let (waiting, waits) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..CROWD)
        .map(|_| {
            let mut subscription = hub.subscribe("crowd");
            let mut waiting = Some(waiting.clone());
            runtime.spawn(async move {
                std::future::poll_fn(|cx| {
                    let poll = subscription.poll_recv(cx);
                    if poll.is_pending()
                        && let Some(waiting) = waiting.take()
                    {
                        let _ = waiting.send(());
                    }
                    poll
                })
                .await
                .map(|event| data(&event).to_owned())
            })
        })
        .collect();
    for _ in 0..CROWD {
        waits
            .recv_timeout(WAIT)
            .expect("every reader waits within the bound");
    }

    // From this thread, outside any runtime: the crowd is handed to the runtime that is gone.
    assert_eq!(hub.broadcast("crowd", "hello"), CROWD + 1);
    runtime.block_on(async {
        for reader in readers {
            let received = timeout(WAIT, reader)
                .await
                .expect("woken in time")
                .expect("no panic");
            assert_eq!(received.expect("an event").as_str(), "hello");
        }
    });
    drop(early);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_stays_at_its_bound_and_delays_no_one() {
    const BUFFER: usize = 16;
    const BROADCASTS: usize = 10_000;
    let hub = Hub::builder().buffer(BUFFER).build();
    let mut idle = hub.subscribe("feed");
    let mut reader = hub.subscribe("feed");

    for i in 0..BROADCASTS {
        assert_eq!(hub.broadcast("feed", i.to_string()), 2);
        let event = timeout(WAIT, reader.recv())
            .await
            .expect("in time")
            .expect("kept up");
        assert_eq!(data(&event), i.to_string());
    }

    // The idle subscriber holds only the last BUFFER events and is told what it missed.
    let missed = (BROADCASTS - BUFFER) as u64;
    assert_eq!(idle.recv().await, Err(RecvError::Lagged(missed)));
    for i in BROADCASTS - BUFFER..BROADCASTS {
        let event = idle.recv().await.expect("retained");
        assert_eq!(data(&event), i.to_string());
    }
    assert!(
        poll_once(&mut idle).is_pending(),
        "nothing beyond the bound"
    );
    assert_eq!(hub.stats().dropped, missed);
}

#[tokio::test]
async fn the_disconnect_policy_ends_only_the_lagging_subscription() {
    let hub = Hub::builder()
        .buffer(4)
        .lag_policy(LagPolicy::Disconnect)
        .build();
    let mut slow = hub.subscribe("t");
    let mut fast = hub.subscribe("t");

    for i in 0..5 {
        hub.broadcast("t", i.to_string());
        let event = fast.recv().await.expect("fast keeps up");
        assert_eq!(data(&event), i.to_string());
    }
    assert_eq!(
        slow.recv().await,
        Err(RecvError::Closed(CloseReason::Lagged))
    );
    assert_eq!(slow.close_reason(), Some(CloseReason::Lagged));
    assert_eq!(
        slow.recv().await,
        Err(RecvError::Closed(CloseReason::Lagged))
    );

    assert_eq!(
        hub.broadcast("t", "after"),
        1,
        "an ended subscription is not reached, dropped or not"
    );
    assert_eq!(hub.disconnect("t"), 1, "only the live one is ended");
    assert_eq!(hub.broadcast("t", "later"), 0);
    drop(slow);
    assert_eq!(hub.stats().subscribers, 1, "fast is still attached");
    drop(fast);
    let stats = hub.stats();
    assert_eq!(stats.lag_disconnects, 1);
    assert_eq!(stats.dropped, 1);
}

#[tokio::test]
async fn the_stream_reports_lag_as_an_item_and_ends_on_close() {
    let hub = Hub::builder().buffer(2).build();
    let mut subscription = hub.subscribe("s");
    for i in 0..5 {
        hub.broadcast("s", i.to_string());
    }
    hub.close();

    let mut items = Vec::new();
    let collect = std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut subscription).poll_next(cx) {
                Poll::Ready(Some(item)) => items.push(item.map(|event| data(&event).to_owned())),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    });
    timeout(WAIT, collect).await.expect("the stream ends");
    assert_eq!(
        items,
        [Err(Lagged(3)), Ok("3".to_owned()), Ok("4".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_waiting_subscribers_after_what_was_queued() {
    let hub = Hub::new();
    let waiting: Vec<_> = (0..100)
        .map(|i| {
            let mut subscription = hub.subscribe(&format!("topic-{}", i % 10));
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    match subscription.recv().await {
                        Ok(event) => seen.push(data(&event).to_owned()),
                        Err(error) => return (seen, error),
                    }
                }
            })
        })
        .collect();

    for i in 0..10 {
        assert_eq!(hub.broadcast(&format!("topic-{i}"), "last words"), 10);
    }
    hub.close();
    assert!(hub.is_closed());
    assert_eq!(hub.broadcast("topic-0", "too late"), 0);
    let mut late = hub.subscribe("topic-0");
    assert_eq!(
        late.recv().await,
        Err(RecvError::Closed(CloseReason::HubClosed))
    );
    drop(late);

    for task in waiting {
        let (seen, error) = timeout(WAIT, task)
            .await
            .expect("ended in time")
            .expect("no panic");
        assert_eq!(seen, ["last words"]);
        assert_eq!(error, RecvError::Closed(CloseReason::HubClosed));
    }
    let stats = hub.stats();
    assert_eq!((stats.topics, stats.subscribers), (0, 0));
}

/// A small deterministic generator, so that a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn concurrent_subscribe_unsubscribe_and_broadcast_leave_nothing_behind() {
    const THREADS: u64 = 4;
    const STEPS: usize = 20_000;
    const TOPICS: u64 = 8;
    let hub = Hub::builder().shards(4).buffer(8).build();

    let reached: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|seed| {
                let hub = hub.clone();
                scope.spawn(move || {
                    let mut rng = Lcg(seed);
                    let mut held: Vec<Subscription> = Vec::new();
                    let mut reached = 0;
                    for _ in 0..STEPS {
                        let topic = format!("t{}", rng.below(TOPICS));
                        match rng.below(4) {
                            0 => held.push(hub.subscribe(&topic)),
                            1 if !held.is_empty() => {
                                let index = rng.below(held.len() as u64) as usize;
                                held.swap_remove(index);
                            }
                            2 => reached += hub.broadcast(&topic, "x"),
                            _ => {
                                for subscription in &mut held {
                                    let _ = poll_once(subscription);
                                }
                            }
                        }
                    }
                    reached
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("no panic"))
            .sum()
    });

    let stats = hub.stats();
    assert_eq!((stats.topics, stats.subscribers), (0, 0), "{stats:?}");
    assert_eq!(stats.deliveries, reached as u64);
    assert!(reached > 0, "the run exercised delivery");
}

#[tokio::test]
async fn an_event_is_let_go_once_every_subscriber_has_read_it() {
    let hub = Hub::new();
    let mut first = hub.subscribe("t");
    let mut second = hub.subscribe("t");
    hub.broadcast("t", "shared");

    let a = first.recv().await.expect("delivered");
    assert_eq!(
        Arc::strong_count(&a),
        2,
        "the hub still holds it for the second reader"
    );
    let b = second.recv().await.expect("delivered");
    assert!(Arc::ptr_eq(&a, &b), "one copy shared by both");
    assert_eq!(Arc::strong_count(&a), 2, "only the two readers hold it now");

    // A subscriber that leaves without reading releases its claim as well.
    hub.broadcast("t", "unread by second");
    let c = first.recv().await.expect("delivered");
    assert_eq!(Arc::strong_count(&c), 2);
    drop(second);
    assert_eq!(Arc::strong_count(&c), 1);
}

#[tokio::test]
async fn the_last_reader_takes_each_event_from_the_ring_and_the_history_stays() {
    let hub = Hub::builder().history(2).build();
    let mut fast = hub.subscribe("t");
    let mut slow = hub.subscribe("t");
    for i in 0..5 {
        hub.broadcast("t", format!("{i}"));
    }
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(fast.recv().await.expect("delivered"));
    }
    assert!(
        first.iter().all(|event| Arc::strong_count(event) == 2),
        "the ring holds every event for the slow reader"
    );
    let mut second = Vec::new();
    for _ in 0..5 {
        second.push(slow.recv().await.expect("delivered"));
    }
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert!(Arc::ptr_eq(a, b), "one copy of event {i}");
        // The ring lets go of the first three, and keeps the last two as history.
        let holders = if i < 3 { 2 } else { 3 };
        assert_eq!(Arc::strong_count(a), holders, "holders of event {i}");
    }
    let since = first[2]
        .event_id()
        .expect("the hub gives ids with a history");
    let (mut late, _) = hub.resume("t", since);
    assert_eq!(data(&late.recv().await.expect("from the history")), "3");
    assert_eq!(data(&late.recv().await.expect("from the history")), "4");
}

/// A publisher holds nothing of its topic: it reaches the subscribers there are at each
/// broadcast, through the topic being forgotten and made again, as `Hub::broadcast` does.
#[tokio::test]
async fn a_publisher_reaches_whoever_subscribes_at_each_broadcast() {
    let hub = Hub::builder().history(2).idle_topics(0).build();
    let mut publisher = hub.publisher("t");
    assert_eq!(publisher.topic(), "t");
    assert_eq!(publisher.broadcast("before anyone"), 0);
    assert_eq!(hub.stats().topics, 0, "a publisher makes no topic");

    let mut first = hub.subscribe("t");
    assert_eq!(publisher.clone().broadcast("one"), 1);
    assert_eq!(hub.broadcast("t", "two"), 1, "the same topic by name");
    assert_eq!(data(&first.recv().await.expect("delivered")), "one");
    let two = first.recv().await.expect("delivered");
    assert_eq!(data(&two), "two");
    assert!(two.event_id().is_some(), "ids given as to any broadcast");

    // The topic is forgotten with its last subscriber, and made again by the next one.
    drop(first);
    assert_eq!(hub.stats().topics + hub.stats().idle_topics, 0);
    assert_eq!(publisher.broadcast("to no one"), 0);
    let mut second = hub.subscribe("t");
    let mut other = hub.subscribe("u");
    assert_eq!(publisher.broadcast("three"), 1, "only t's subscriber");
    assert_eq!(data(&second.recv().await.expect("delivered")), "three");
    assert!(poll_once(&mut other).is_pending(), "nothing for u");
    assert_eq!(hub.stats().broadcasts, 5, "counted as broadcasts");

    // Forgotten and made again between two of its broadcasts.
    drop(second);
    let mut third = hub.subscribe("t");
    assert_eq!(publisher.broadcast("four"), 1, "the topic made again");
    assert_eq!(data(&third.recv().await.expect("delivered")), "four");
    assert_eq!(hub.stats().broadcasts, 6);

    hub.close();
    assert_eq!(publisher.broadcast("after close"), 0);
}

/// A topic kept for its history is the same topic to a publisher, until it is evicted for
/// another idle one.
#[tokio::test]
async fn a_publisher_keeps_an_idle_topics_history_and_finds_it_made_again_after_eviction() {
    let hub = Hub::builder().shards(1).history(4).idle_topics(1).build();
    let mut publisher = hub.publisher("t");
    let first = hub.subscribe("t");
    assert_eq!(publisher.broadcast("one"), 1);
    drop(first);
    assert_eq!(publisher.broadcast("while idle"), 0);
    let (mut back, resume) = hub.resume("t", "unknown");
    assert_eq!(resume, tower_fanout::Resume::EventsLost);
    assert_eq!(data(&back.recv().await.expect("history")), "one");
    assert_eq!(data(&back.recv().await.expect("history")), "while idle");
    drop(back);

    // Another idle topic evicts t, whose history goes with it.
    drop(hub.subscribe("u"));
    assert_eq!(hub.stats().idle_topics, 1);
    assert_eq!(publisher.broadcast("to no one"), 0);
    let (mut again, _) = hub.resume("t", "unknown");
    assert_eq!(publisher.broadcast("two"), 1);
    assert_eq!(
        data(&again.recv().await.expect("live")),
        "two",
        "nothing of the evicted topic's history"
    );
    assert_eq!(hub.stats().broadcasts, 4);
    assert_eq!(hub.stats().deliveries, 2);
}

/// The next thing `subscriber` receives, as text: `topic data`, `topic lagged N`, or
/// `topic closed`.
async fn next(subscriber: &mut tower_fanout::Subscriber) -> String {
    use tower_fanout::hub::Received;
    let received = timeout(WAIT, subscriber.recv())
        .await
        .expect("in time")
        .expect("the set is not empty");
    match received {
        Received::Event { topic, event } => format!("{topic} {}", data(&event)),
        Received::Lagged { topic, missed } => format!("{topic} lagged {missed}"),
        Received::Closed { topic, .. } => format!("{topic} closed"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_subscriber_receives_each_topic_in_order_and_follows_its_set() {
    let hub = Hub::builder().history(8).build();
    let mut subscriber = hub.subscriber();
    assert!(subscriber.subscribe("a"));
    assert!(subscriber.subscribe("b"));
    assert!(!subscriber.subscribe("a"), "already in the set");
    for i in 0..3 {
        hub.broadcast("a", format!("a{i}"));
        hub.broadcast("b", format!("b{i}"));
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next(&mut subscriber).await);
    }
    let of = |topic: &str| -> Vec<String> {
        seen.iter()
            .filter(|s| s.starts_with(topic))
            .cloned()
            .collect()
    };
    assert_eq!(of("a "), ["a a0", "a a1", "a a2"]);
    assert_eq!(of("b "), ["b b0", "b b1", "b b2"]);

    // Out of the set: nothing more of it. Back in, from where it was left.
    let last_b = hub.subscribe("b");
    assert!(subscriber.unsubscribe("b"));
    hub.broadcast("b", "b3");
    hub.broadcast("a", "a3");
    assert_eq!(next(&mut subscriber).await, "a a3");
    drop(last_b);
    let mut probe = hub.subscribe("b");
    hub.broadcast("b", "b4");
    let id = probe
        .recv()
        .await
        .expect("b4")
        .event_id()
        .expect("an id")
        .to_owned();
    hub.broadcast("b", "b5");
    assert_eq!(
        subscriber.resume("b", &id),
        Some(tower_fanout::Resume::Complete)
    );
    assert_eq!(next(&mut subscriber).await, "b b5");
    assert_eq!(subscriber.topics().collect::<Vec<_>>(), ["a", "b"]);
}

#[tokio::test]
async fn a_busy_topic_does_not_starve_a_quiet_one() {
    let hub = Hub::builder().buffer(20_000).build();
    let mut subscriber = hub.subscriber();
    subscriber.subscribe("busy");
    subscriber.subscribe("quiet");
    for i in 0..10_000 {
        hub.broadcast("busy", i.to_string());
    }
    hub.broadcast("quiet", "news");
    // The quiet topic's turn comes after one turn of the busy one, not 10 000 events.
    let mut before = 0;
    while next(&mut subscriber).await != "quiet news" {
        before += 1;
        assert!(before < 100, "the quiet topic waited behind the busy one");
    }
}

#[tokio::test]
async fn lag_is_per_topic() {
    let hub = Hub::builder().buffer(4).build();
    let mut subscriber = hub.subscriber();
    subscriber.subscribe("fast");
    subscriber.subscribe("flood");
    for i in 0..10 {
        hub.broadcast("flood", i.to_string());
    }
    hub.broadcast("fast", "one");
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next(&mut subscriber).await);
    }
    assert!(seen.contains(&"flood lagged 6".to_owned()), "{seen:?}");
    assert!(seen.contains(&"fast one".to_owned()), "{seen:?}");
    let flood: Vec<&String> = seen
        .iter()
        .filter(|s| s.starts_with("flood ") && !s.contains("lagged"))
        .collect();
    assert_eq!(
        flood,
        ["flood 6", "flood 7", "flood 8", "flood 9"],
        "{seen:?}"
    );

    // Under Disconnect, the lagging topic leaves the set; the others stay.
    let hub = Hub::builder()
        .buffer(2)
        .lag_policy(LagPolicy::Disconnect)
        .build();
    let mut subscriber = hub.subscriber();
    subscriber.subscribe("fast");
    subscriber.subscribe("flood");
    for i in 0..5 {
        hub.broadcast("flood", i.to_string());
    }
    assert_eq!(next(&mut subscriber).await, "flood closed");
    assert_eq!(subscriber.topics().collect::<Vec<_>>(), ["fast"]);
    hub.broadcast("fast", "still");
    assert_eq!(next(&mut subscriber).await, "fast still");
    assert_eq!(hub.stats().lag_disconnects, 1);
}

/// A backplane that keeps the cluster's history as the test scripts it: the test
/// delivers events and marks gaps through the hub's [`Remote`], and answers each resume
/// that asks for the history when it chooses.
#[derive(Clone, Default)]
struct Scripted {
    remote: Arc<std::sync::Mutex<Option<tower_fanout::backplane::Remote>>>,
    asked:
        Arc<std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<tower_fanout::backplane::History>>>>,
}

impl tower_fanout::backplane::Backplane for Scripted {
    fn start(&self, remote: tower_fanout::backplane::Remote) {
        *self.remote.lock().expect("not poisoned") = Some(remote);
    }
    fn publish(&self, _: &str, _: &Arc<Event>) {}
    fn subscribe(&self, _: &str) {}
    fn unsubscribe(&self, _: &str) {}
    fn history(
        &self,
        _: &str,
        _: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<tower_fanout::backplane::History>> {
        let (answer, asked) = tokio::sync::oneshot::channel();
        self.asked.lock().expect("not poisoned").push(answer);
        Some(asked)
    }
    fn delivers_own(&self) -> bool {
        true
    }
}

impl Scripted {
    /// A hub keeping history through a new scripted backplane, a subscription resuming
    /// there after `e1-1`, which waits for the answer, and the hub's remote.
    fn resumed() -> (Self, Hub, Subscription, tower_fanout::backplane::Remote) {
        let backplane = Self::default();
        let hub = Hub::builder()
            .history(16)
            .backplane(backplane.clone())
            .build();
        let (resumed, _) = hub.resume("t", "e1-1");
        let remote = backplane.remote.lock().expect("not poisoned").clone();
        (backplane, hub, resumed, remote.expect("started"))
    }

    /// Answers the oldest resume waiting for the history.
    fn answer(&self, events: &[&str], lost: bool) {
        let events = events.iter().map(|id| event_at(id)).collect();
        let answer = self.asked.lock().expect("not poisoned").remove(0);
        let _ = answer.send(tower_fanout::backplane::History::new(events, lost));
    }
}

/// An event whose data is its id, `EPOCH-POSITION`.
fn event_at(id: &str) -> Event {
    Event::new(id.to_owned()).id(id).expect("a valid id")
}

/// What `subscription` holds now, in order, until nothing more is there: each event's
/// data, `lost` for a loss.
fn drain_now(subscription: &mut Subscription) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..1_000 {
        match poll_once(subscription) {
            Poll::Ready(Ok(event)) => seen.push(data(&event).to_owned()),
            Poll::Ready(Err(RecvError::Lost)) => seen.push("lost".to_owned()),
            Poll::Ready(Err(other)) => panic!("unexpected {other}"),
            Poll::Pending => return seen,
        }
    }
    panic!("more than 1 000 items");
}

/// A resume served from the cluster's history meets, in the node's ring, a gap the node
/// marked itself: skipped when what follows it follows the history's answer (the loss, if
/// any, was told by the answer), told when events after the answer are missing.
#[test]
fn a_gap_the_history_answer_covers_is_not_told_twice_and_one_it_does_not_is_told() {
    /// What the history answers, what the node's ring holds past the resume, and what
    /// the resumed subscription must get.
    struct Case {
        name: &'static str,
        answer: &'static [&'static str],
        lost: bool,
        ring: &'static [&'static str],
        expected: &'static [&'static str],
    }
    let cases = [
        // A new epoch, the answer holding nothing of it: the gap is the loss it told.
        Case {
            name: "new epoch, answer empty",
            answer: &[],
            lost: true,
            ring: &["gap", "e2-1"],
            expected: &["lost", "e2-1"],
        },
        // The answer holds the new epoch's start; the ring repeats it after its gap.
        Case {
            name: "new epoch, answer holds its start",
            answer: &["e2-1", "e2-2"],
            lost: true,
            ring: &["gap", "e2-1", "e2-2", "e2-3"],
            expected: &["lost", "e2-1", "e2-2", "e2-3"],
        },
        // No loss in the answer, and the gap hides e1-3 and e1-4, which follow it.
        Case {
            name: "events after the answer missing",
            answer: &["e1-2"],
            lost: false,
            ring: &["gap", "e1-5"],
            expected: &["e1-2", "lost", "e1-5"],
        },
        // The answer told of a loss and ends at e2-1; the gap hides e2-2.
        Case {
            name: "a later gap after a loss",
            answer: &["e2-1"],
            lost: true,
            ring: &["gap", "e2-3"],
            expected: &["lost", "e2-1", "lost", "e2-3"],
        },
    ];
    for case in cases {
        let (backplane, _hub, mut resumed, remote) = Scripted::resumed();
        for item in case.ring {
            if *item == "gap" {
                remote.lost("t");
            } else {
                remote.deliver("t", event_at(item));
            }
        }
        backplane.answer(case.answer, case.lost);
        assert_eq!(drain_now(&mut resumed), case.expected, "{}", case.name);
    }
}

/// A gap with nothing after it yet, once the answer has told of a loss: what follows
/// decides, so nothing more is told until it comes.
#[test]
fn a_gap_after_a_told_loss_waits_for_what_follows() {
    let (backplane, _hub, mut resumed, remote) = Scripted::resumed();
    remote.lost("t");
    backplane.answer(&[], true);
    assert_eq!(drain_now(&mut resumed), ["lost"]);
    remote.deliver("t", event_at("e2-1"));
    assert_eq!(
        drain_now(&mut resumed),
        ["e2-1"],
        "the gap was the loss told"
    );
    remote.deliver("t", event_at("e2-2"));
    assert_eq!(drain_now(&mut resumed), ["e2-2"]);
}
