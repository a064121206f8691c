//! The hub's burst beside `tokio::sync::broadcast`, as the `fanout` group of `cargo bench
//! --bench hub` runs it (the publisher on a thread of its own), timed per burst and
//! repeated in alternating rounds: for a ratio that the machine's noise moves a lot, a
//! median over rounds, and where the time goes.
//!
//! ```sh
//! cargo run --release --example hub_burst -- subscribers=1 bursts=20000 rounds=8
//! ```
//!
//! Rounds of the hub and of tokio alternate for two seconds first, unmeasured: a new
//! process here is slow at first. Each round builds a two-worker runtime whose tasks
//! subscribe, then a thread of its own broadcasts `bursts` bursts of 64 events of 64
//! bytes, each once the last has reached every subscriber. A round of the hub by the
//! topic's name, one through a `Publisher`, then one of tokio, `rounds` times. For each
//! it prints the deliveries per second, the time of a burst from its first broadcast
//! until every subscriber holds it, the part of that the publisher spent broadcasting,
//! how many batches a subscriber read per burst (one per wake-up, or near it), and how
//! many times per burst a worker of the runtime went to sleep. At the
//! end: the median ratios, and how many rounds of each were slow (a mean burst over 1.5
//! times tokio's median), which at one subscriber is most of the difference. With
//! `per_broadcast=1` each broadcast after a burst's first is timed, and a round shows
//! their median: what a broadcast costs while the subscriber sleeps, and while it reads
//! alongside.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tower_fanout::{Event, Hub};

const BURST: u64 = 64;
const CAPACITY: usize = 256;
/// How long rounds run, alternating, before any is measured.
const WARM_UP: Duration = Duration::from_secs(2);

struct Options {
    subscribers: u64,
    bursts: u64,
    rounds: usize,
    /// Times each broadcast after a burst's first, which slows the publisher a little.
    per_broadcast: bool,
}

/// What one round measured.
struct Round {
    /// Deliveries per second, in millions.
    rate: f64,
    burst: Duration,
    publishing: Duration,
    /// Batches a subscriber took per burst.
    batches: f64,
    /// The median time of a broadcast after a burst's first, with `per_broadcast=1`.
    broadcast: Option<Duration>,
    /// Times a worker of the runtime went to sleep, per burst.
    parks: f64,
}

/// Counts deliveries and says when a burst has reached everyone.
struct Progress {
    delivered: AtomicU64,
    target: AtomicU64,
    /// Batches the subscribers took: a batch a wake-up, roughly.
    batches: AtomicU64,
    done: Mutex<mpsc::Sender<()>>,
}

impl Progress {
    fn add(&self, count: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let total = self.delivered.fetch_add(count, Ordering::AcqRel) + count;
        if total == self.target.load(Ordering::Acquire) {
            let _ = self.done.lock().expect("not poisoned").send(());
        }
    }
}

/// Runs one round: `subscribe` starts the subscriber tasks, `publish` sends one event.
fn round(
    options: &Options,
    subscribe: impl FnOnce(&tokio::runtime::Runtime, &Arc<Progress>),
    mut publish: impl FnMut(Event),
) -> Result<Round, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (done, finished) = mpsc::channel();
    let progress = Arc::new(Progress {
        delivered: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        batches: AtomicU64::new(0),
        done: Mutex::new(done),
    });
    subscribe(&runtime, &progress);
    let payload = bytes::Bytes::from_static(&[b'x'; 64]);
    let per_burst = options.subscribers * BURST;
    let mut publishing = Duration::ZERO;
    let mut broadcasts = Vec::new();
    let start = Instant::now();
    for _ in 0..options.bursts {
        progress.delivered.store(0, Ordering::Release);
        progress.target.store(per_burst, Ordering::Release);
        let burst = Instant::now();
        let mut last = burst;
        for index in 0..BURST {
            publish(Event::new(payload.clone()));
            if options.per_broadcast {
                let now = Instant::now();
                // The first wakes the subscriber, which the others do not.
                if index > 0 {
                    broadcasts.push(now - last);
                }
                last = now;
            }
        }
        publishing += burst.elapsed();
        finished
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "a burst did not reach every subscriber within 30 s")?;
    }
    let elapsed = start.elapsed();
    let metrics = runtime.metrics();
    let parks: u64 = (0..metrics.num_workers())
        .map(|worker| metrics.worker_park_count(worker))
        .sum();
    runtime.shutdown_timeout(Duration::from_secs(5));
    let bursts = u32::try_from(options.bursts)?;
    Ok(Round {
        rate: (per_burst * options.bursts) as f64 / elapsed.as_secs_f64() / 1e6,
        burst: elapsed / bursts,
        publishing: publishing / bursts,
        batches: progress.batches.load(Ordering::Relaxed) as f64
            / (options.bursts * options.subscribers) as f64,
        parks: parks as f64 / options.bursts as f64,
        broadcast: (!broadcasts.is_empty()).then(|| {
            broadcasts.sort();
            broadcasts[broadcasts.len() / 2]
        }),
    })
}

/// A round of the hub, broadcasting by the topic's name or through a [`Publisher`].
///
/// [`Publisher`]: tower_fanout::Publisher
fn hub_round(options: &Options, by_publisher: bool) -> Result<Round, Box<dyn std::error::Error>> {
    let hub = Hub::builder().buffer(CAPACITY).build();
    let mut publisher = hub.publisher("bench");
    let round = round(
        options,
        |runtime, progress| {
            for _ in 0..options.subscribers {
                let mut subscription = hub.subscribe("bench");
                let progress = Arc::clone(progress);
                runtime.spawn(async move {
                    let mut batch = Vec::with_capacity(CAPACITY);
                    while let Ok(count) = subscription.recv_many(&mut batch, CAPACITY).await {
                        batch.clear();
                        progress.add(count as u64);
                    }
                });
            }
        },
        |event| {
            std::hint::black_box(if by_publisher {
                publisher.broadcast(event)
            } else {
                hub.broadcast("bench", event)
            });
        },
    );
    hub.close();
    round
}

fn tokio_round(options: &Options) -> Result<Round, Box<dyn std::error::Error>> {
    let (sender, _) = broadcast::channel::<Arc<Event>>(CAPACITY);
    round(
        options,
        |runtime, progress| {
            for _ in 0..options.subscribers {
                let mut receiver = sender.subscribe();
                let progress = Arc::clone(progress);
                runtime.spawn(async move {
                    while receiver.recv().await.is_ok() {
                        let mut count = 1;
                        while receiver.try_recv().is_ok() {
                            count += 1;
                        }
                        progress.add(count);
                    }
                });
            }
        },
        |event| {
            std::hint::black_box(sender.send(Arc::new(event)).ok());
        },
    )
}

impl Round {
    fn describe(&self) -> String {
        let broadcast = self.broadcast.map_or(String::new(), |broadcast| {
            format!(", {} ns a broadcast", broadcast.as_nanos())
        });
        format!(
            "{:.2} M/s (burst {:.1} µs, publishing {:.1} µs, {:.2} batches, {:.2} parks{broadcast})",
            self.rate,
            self.burst.as_secs_f64() * 1e6,
            self.publishing.as_secs_f64() * 1e6,
            self.batches,
            self.parks
        )
    }
}

fn median(ratios: &mut [f64]) -> f64 {
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn parse() -> Result<Options, Box<dyn std::error::Error>> {
    let mut options = Options {
        subscribers: 1,
        bursts: 20_000,
        rounds: 8,
        per_broadcast: false,
    };
    for argument in std::env::args().skip(1) {
        let (name, value) = argument
            .split_once('=')
            .ok_or_else(|| format!("{argument}: expected name=value"))?;
        match name {
            "subscribers" => options.subscribers = value.parse()?,
            "bursts" => options.bursts = value.parse()?,
            "rounds" => options.rounds = value.parse()?,
            "per_broadcast" => options.per_broadcast = value == "1",
            _ => return Err(format!("unknown option {name}").into()),
        }
    }
    if options.subscribers == 0 || options.bursts == 0 || options.rounds == 0 {
        return Err("subscribers, bursts and rounds must be at least 1".into());
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse()?;
    println!(
        "{} subscriber(s), {} bursts of {BURST} per round",
        options.subscribers, options.bursts
    );
    // On this project's host the first second or so of a process runs every wake-up
    // several times slower; whatever round came first paid for it.
    let warm_up = Instant::now();
    let mut discarded = 0;
    while warm_up.elapsed() < WARM_UP && discarded < 20 {
        hub_round(&options, false)?;
        hub_round(&options, true)?;
        tokio_round(&options)?;
        discarded += 3;
    }
    println!(
        "warm-up: {discarded} rounds in {:.1?}, discarded",
        warm_up.elapsed()
    );
    let mut by_name = Vec::with_capacity(options.rounds);
    let mut by_publisher = Vec::with_capacity(options.rounds);
    let mut bursts: [Vec<Duration>; 3] = Default::default();
    for number in 1..=options.rounds {
        let hub = hub_round(&options, false)?;
        let publisher = hub_round(&options, true)?;
        let tokio = tokio_round(&options)?;
        println!(
            "round {number}: hub {}  publisher {}  tokio {}  {:.2}x / {:.2}x",
            hub.describe(),
            publisher.describe(),
            tokio.describe(),
            hub.rate / tokio.rate,
            publisher.rate / tokio.rate,
        );
        by_name.push(hub.rate / tokio.rate);
        by_publisher.push(publisher.rate / tokio.rate);
        for (times, round) in bursts.iter_mut().zip([&hub, &publisher, &tokio]) {
            times.push(round.burst);
        }
    }
    let mut tokio_bursts = bursts[2].clone();
    tokio_bursts.sort();
    let slow = tokio_bursts[tokio_bursts.len() / 2].mul_f64(1.5);
    let [name, publisher, tokio] =
        bursts.map(|times| times.iter().filter(|&&burst| burst > slow).count());
    let rounds = options.rounds;
    println!(
        "slow rounds (mean burst over {:.1} µs): by name {name}/{rounds}, through a publisher \
         {publisher}/{rounds}, tokio {tokio}/{rounds}",
        slow.as_secs_f64() * 1e6
    );
    println!(
        "median ratio to tokio: by name {:.2}x, through a publisher {:.2}x",
        median(&mut by_name),
        median(&mut by_publisher)
    );
    Ok(())
}
