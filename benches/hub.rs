//! Fan-out throughput of the hub beside the two things Rust users reach for today:
//! `tokio::sync::broadcast`, and a hub of broadcast senders behind one global
//! `Mutex<HashMap<..>>`.
//!
//! `cargo bench --bench hub` runs both groups:
//! - `fanout/*/{1,100,10000}`: bursts of events to one topic whose subscribers are tasks on
//!   a two-worker runtime, draining; an iteration ends when every subscriber has received
//!   the whole burst. Throughput is in deliveries. `hub` broadcasts by the topic's name,
//!   as `global_lock` does (the map below, with one topic); `hub_publisher` through a
//!   [`Publisher`](tower_fanout::Publisher) of it, as `tokio_broadcast` sends through its
//!   channel's sender. The publisher is a thread of its own.
//! - `fanout_on_runtime/*/{1,100,10000}`: the same, with the publisher a task of the
//!   subscribers' runtime, where an HTTP handler or a backplane's reader publishes from.
//! - `many_topics/idle/*/{16,256}`: two threads broadcasting round-robin over 10 000
//!   distinct topics, each with one subscriber that never reads, with rings of 16 and of
//!   256 events. Throughput is in broadcasts.
//! - `many_topics/draining/*`: the same topics, each with one subscriber task reading; an
//!   iteration is one event to every topic, ending when all are received. Throughput is in
//!   deliveries.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Bencher, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, broadcast};
use tower_fanout::{Event, Hub};

/// Events per burst; both rings hold a whole burst, so nobody lags.
const BURST: u64 = 64;
const CAPACITY: usize = 256;

/// Counts deliveries and tells the publisher when a burst has reached everyone.
struct Progress {
    delivered: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Progress {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            delivered: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    fn add(&self, count: u64) {
        let total = self.delivered.fetch_add(count, Ordering::AcqRel) + count;
        if total == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    /// Expects `deliveries` from the next burst.
    fn expect(&self, deliveries: u64) {
        self.delivered.store(0, Ordering::Release);
        self.target.store(deliveries, Ordering::Release);
    }

    async fn finished(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.done.notified())
            .await
            .expect("every subscriber receives the burst within 30 s");
    }
}

/// Where the publisher runs: its own thread, or a task of the subscribers' runtime, as an
/// HTTP handler or a backplane's reader does. Waking a task from a thread of its own goes
/// through the runtime's shared queue, and often wakes a sleeping worker; from a worker it
/// is a push onto that worker's queue.
#[derive(Clone, Copy)]
enum Placement {
    Thread,
    Task,
}

/// Times `iters` bursts: each runs `publish` from `placement`, then waits until the
/// subscribers on `rt` have received `per_burst` deliveries.
fn bursts<P>(
    b: &mut Bencher<'_>,
    rt: &Runtime,
    placement: Placement,
    progress: &Arc<Progress>,
    per_burst: u64,
    publish: P,
) where
    P: FnMut() + Send + 'static,
{
    // Moved into the publishing task and back, iteration by iteration.
    let mut publish = Some(publish);
    b.iter_custom(|iters| {
        let mut burst = publish.take().expect("returned by the last iteration");
        let progress = Arc::clone(progress);
        let (elapsed, burst) = match placement {
            Placement::Thread => {
                let start = Instant::now();
                for _ in 0..iters {
                    progress.expect(per_burst);
                    burst();
                    rt.block_on(progress.finished());
                }
                (start.elapsed(), burst)
            }
            Placement::Task => rt
                .block_on(rt.spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        progress.expect(per_burst);
                        burst();
                        progress.finished().await;
                    }
                    (start.elapsed(), burst)
                }))
                .expect("the publishing task ends"),
        };
        publish = Some(burst);
        elapsed
    });
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A subscriber task on `rt` that reads `subscription` in batches as events come, and
/// counts them in `progress`.
fn drain(rt: &Runtime, mut subscription: tower_fanout::Subscription, progress: &Arc<Progress>) {
    let progress = Arc::clone(progress);
    rt.spawn(async move {
        let mut batch = Vec::with_capacity(CAPACITY);
        while let Ok(count) = subscription.recv_many(&mut batch, CAPACITY).await {
            batch.clear();
            progress.add(count as u64);
        }
    });
}

/// The same for a tokio receiver: one `recv`, then what else is there.
fn drain_receiver(
    rt: &Runtime,
    mut receiver: broadcast::Receiver<Arc<Event>>,
    progress: &Arc<Progress>,
) {
    let progress = Arc::clone(progress);
    rt.spawn(async move {
        while receiver.recv().await.is_ok() {
            let mut count = 1;
            while receiver.try_recv().is_ok() {
                count += 1;
            }
            progress.add(count);
        }
    });
}

/// One burst: `publish` with `BURST` events of 64 bytes.
fn burst_of(mut publish: impl FnMut(Event) + Send + 'static) -> impl FnMut() + Send + 'static {
    let payload = bytes::Bytes::from_static(&[b'x'; 64]);
    move || {
        for _ in 0..BURST {
            publish(Event::new(payload.clone()));
        }
    }
}

/// The burst bench of a baseline built on tokio's channel: `subscribe` makes each
/// subscriber's receiver from `source`, `publish` sends one event through it. Dropping
/// `source` at the end ends the receivers.
fn tokio_burst<S: Send + Sync + 'static>(
    b: &mut Bencher<'_>,
    placement: Placement,
    subscribers: u64,
    source: S,
    subscribe: impl Fn(&S) -> broadcast::Receiver<Arc<Event>>,
    publish: impl Fn(&S, Event) + Send + 'static,
) {
    let rt = runtime();
    let progress = Progress::new();
    for _ in 0..subscribers {
        drain_receiver(&rt, subscribe(&source), &progress);
    }
    let source = Arc::new(source);
    let publishing = Arc::clone(&source);
    let burst = burst_of(move |event| publish(&publishing, event));
    bursts(b, &rt, placement, &progress, subscribers * BURST, burst);
    drop(source);
    rt.shutdown_timeout(Duration::from_secs(5));
}

fn fanout(c: &mut Criterion) {
    for (group, placement) in [
        ("fanout", Placement::Thread),
        ("fanout_on_runtime", Placement::Task),
    ] {
        let mut group = c.benchmark_group(group);
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(5));
        for subscribers in [1u64, 100, 10_000] {
            fanout_to(&mut group, placement, subscribers);
        }
        group.finish();
    }
}

fn fanout_to(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    placement: Placement,
    subscribers: u64,
) {
    group.throughput(Throughput::Elements(subscribers * BURST));

    // By the topic's name, and through a publisher of the topic, the counterpart of
    // tokio's sender.
    for by_publisher in [false, true] {
        let name = if by_publisher { "hub_publisher" } else { "hub" };
        group.bench_function(BenchmarkId::new(name, subscribers), |b| {
            let rt = runtime();
            let hub = Hub::builder().buffer(CAPACITY).build();
            let progress = Progress::new();
            for _ in 0..subscribers {
                drain(&rt, hub.subscribe("bench"), &progress);
            }
            let mut publisher = hub.publisher("bench");
            let publishing = hub.clone();
            let burst = burst_of(move |event| {
                black_box(if by_publisher {
                    publisher.broadcast(event)
                } else {
                    publishing.broadcast("bench", event)
                });
            });
            bursts(b, &rt, placement, &progress, subscribers * BURST, burst);
            hub.close();
            rt.shutdown_timeout(Duration::from_secs(5));
        });
    }

    group.bench_function(BenchmarkId::new("tokio_broadcast", subscribers), |b| {
        let (sender, _) = broadcast::channel::<Arc<Event>>(CAPACITY);
        tokio_burst(
            b,
            placement,
            subscribers,
            sender,
            broadcast::Sender::subscribe,
            |sender, event| {
                black_box(sender.send(Arc::new(event)).ok());
            },
        );
    });

    // By name, as a hand-rolled hub does: the counterpart of the hub's `broadcast`.
    group.bench_function(BenchmarkId::new("global_lock", subscribers), |b| {
        tokio_burst(
            b,
            placement,
            subscribers,
            GlobalLockHub::new(CAPACITY),
            |hub| hub.subscribe("bench"),
            |hub, event| {
                black_box(hub.broadcast("bench", event));
            },
        );
    });
}

/// What most hand-rolled hubs are: one broadcast sender per topic behind one global lock.
struct GlobalLockHub {
    topics: Mutex<HashMap<String, broadcast::Sender<Arc<Event>>>>,
    capacity: usize,
}

impl GlobalLockHub {
    fn new(capacity: usize) -> Self {
        Self {
            topics: Mutex::default(),
            capacity,
        }
    }

    fn subscribe(&self, topic: &str) -> broadcast::Receiver<Arc<Event>> {
        let mut topics = self.topics.lock().expect("not poisoned");
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    fn broadcast(&self, topic: &str, event: Event) -> usize {
        let event = Arc::new(event);
        let topics = self.topics.lock().expect("not poisoned");
        topics
            .get(topic)
            .and_then(|sender| sender.send(event).ok())
            .unwrap_or(0)
    }
}

const TOPICS: usize = 10_000;
const THREADS: usize = 2;

/// Each of two threads publishes `per_thread` events round-robin over its half of the
/// topics.
fn two_threads(per_thread: u64, names: &[String], publish: &(impl Fn(&str) -> usize + Sync)) {
    std::thread::scope(|scope| {
        for half in names.chunks(names.len() / THREADS) {
            scope.spawn(move || {
                for (_, topic) in (0..per_thread).zip(half.iter().cycle()) {
                    black_box(publish(topic));
                }
            });
        }
    });
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn many_topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_topics");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let names: Arc<[String]> = (0..TOPICS).map(|i| format!("topic-{i}")).collect();
    let payload = bytes::Bytes::from_static(&[b'x'; 64]);

    // Publishing alone: every topic has one subscriber that never reads, so both rings
    // stay full and every broadcast evicts the oldest event. With 16-event rings the
    // retained events fit in cache; with 256 they do not, and memory latency dominates.
    group.throughput(Throughput::Elements(THREADS as u64));
    for capacity in [16, CAPACITY] {
        group.bench_function(BenchmarkId::new("idle/hub", capacity), |b| {
            let hub = Hub::builder().buffer(capacity).build();
            let _subscriptions: Vec<_> = names.iter().map(|name| hub.subscribe(name)).collect();
            b.iter_custom(|iters| {
                timed(|| {
                    two_threads(iters, &names, &|topic| {
                        hub.broadcast(topic, Event::new(payload.clone()))
                    })
                })
            });
        });
        group.bench_function(BenchmarkId::new("idle/global_lock", capacity), |b| {
            let hub = GlobalLockHub::new(capacity);
            let _receivers: Vec<_> = names.iter().map(|name| hub.subscribe(name)).collect();
            b.iter_custom(|iters| {
                timed(|| {
                    two_threads(iters, &names, &|topic| {
                        hub.broadcast(topic, Event::new(payload.clone()))
                    })
                })
            });
        });
    }

    // Publishing and delivering: every topic has one subscriber task reading as events
    // come; an iteration is one event to each topic, received by all.
    group.throughput(Throughput::Elements(TOPICS as u64));
    group.bench_function("draining/hub", |b| {
        let rt = runtime();
        let hub = Hub::builder().buffer(CAPACITY).build();
        let progress = Progress::new();
        for name in names.iter() {
            drain(&rt, hub.subscribe(name), &progress);
        }
        let (publishing, names, payload) = (hub.clone(), Arc::clone(&names), payload.clone());
        bursts(
            b,
            &rt,
            Placement::Thread,
            &progress,
            TOPICS as u64,
            move || {
                two_threads((TOPICS / THREADS) as u64, &names, &|topic| {
                    publishing.broadcast(topic, Event::new(payload.clone()))
                });
            },
        );
        hub.close();
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    group.bench_function("draining/global_lock", |b| {
        let rt = runtime();
        let hub = Arc::new(GlobalLockHub::new(CAPACITY));
        let progress = Progress::new();
        for name in names.iter() {
            drain_receiver(&rt, hub.subscribe(name), &progress);
        }
        let (publishing, names, payload) = (Arc::clone(&hub), Arc::clone(&names), payload.clone());
        bursts(
            b,
            &rt,
            Placement::Thread,
            &progress,
            TOPICS as u64,
            move || {
                two_threads((TOPICS / THREADS) as u64, &names, &|topic| {
                    publishing.broadcast(topic, Event::new(payload.clone()))
                });
            },
        );
        hub.topics.lock().expect("not poisoned").clear();
        rt.shutdown_timeout(Duration::from_secs(5));
    });
    group.finish();
}

criterion_group!(benches, fanout, many_topics);
criterion_main!(benches);
