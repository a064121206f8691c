//! Events per second between two nodes through one Redis, in both modes of the Redis
//! backplane, beside what `redis-benchmark` reaches for the same commands against the
//! same server in the same run.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no &
//! REDIS_URL=redis://127.0.0.1:6390/ cargo run --release --features redis --example redis_throughput
//! ```
//!
//! Node A broadcasts `EVENTS` events of 64 bytes in bursts of 1 000; node B's subscriber
//! receives them through Redis. Each burst must arrive before the next goes out, so the
//! figure is delivered events per second, with nothing lost or queued without bound.
//! Then both nodes do so at once, each to a subscriber on the other, so that each
//! publishes and receives at full rate; then one event at a time, for latency.
//!
//! Each runs twice: pub/sub only (hubs without history), and with the cluster's history
//! (hubs keeping 256 events per topic, each broadcast appended to a Redis stream by a
//! script that publishes it too). `redis-benchmark` runs PUBLISH and that script.

use std::process::Command;
use std::time::{Duration, Instant};

use tower_fanout::Hub;
use tower_fanout::backplane::RedisBackplane;

const EVENTS: usize = 200_000;
const BURST: usize = 1_000;
const HISTORY: usize = 256;

/// Broadcasts `EVENTS` events to `topic` on `from` in bursts of `BURST`, each once the
/// last has reached `to`, a subscription on another node; returns how long it took.
async fn flow(
    from: Hub,
    topic: &str,
    to: &mut tower_fanout::Subscription,
    payload: bytes::Bytes,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut batch = Vec::with_capacity(BURST);
    let start = Instant::now();
    for _ in 0..EVENTS / BURST {
        for _ in 0..BURST {
            from.broadcast(topic, payload.clone());
        }
        let mut received = 0;
        while received < BURST {
            let burst =
                tokio::time::timeout(Duration::from_secs(10), to.recv_many(&mut batch, BURST));
            received += burst
                .await
                .map_err(|_| format!("events stopped arriving on {topic}"))??;
            batch.clear();
        }
    }
    Ok(start.elapsed())
}

/// Waits until both backplanes are connected and listen to `topics` topics each.
async fn listening(
    planes: [&RedisBackplane; 2],
    topics: [usize; 2],
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !planes.iter().zip(topics).all(|(plane, topics)| {
        let stats = plane.stats();
        stats.connected && stats.subscribed_topics == topics
    }) {
        if Instant::now() > deadline {
            return Err("the backplanes did not connect to Redis within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One mode: hubs keeping `history` events per topic (0: pub/sub only), on fresh topics.
async fn measure(url: &str, history: usize, run: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mode = if history == 0 { "pub/sub" } else { "history" };
    let (a_plane, b_plane) = (RedisBackplane::new(url)?, RedisBackplane::new(url)?);
    let hub = |plane: &RedisBackplane| {
        Hub::builder()
            .buffer(2 * BURST)
            .history(history)
            .backplane(plane.clone())
            .build()
    };
    let (a, b) = (hub(&a_plane), hub(&b_plane));
    let topic = |name: &str| format!("{run}-{name}");
    let payload = bytes::Bytes::from(vec![b'x'; 64]);

    let mut subscription = b.subscribe(&topic("bench"));
    listening([&a_plane, &b_plane], [0, 1]).await?;
    let elapsed = flow(
        a.clone(),
        &topic("bench"),
        &mut subscription,
        payload.clone(),
    )
    .await?;
    println!(
        "{mode:8} node A -> Redis -> node B: {EVENTS} events in {elapsed:.2?}, {:.0} events/s",
        EVENTS as f64 / elapsed.as_secs_f64()
    );

    // Both ways at once: each node publishes while it receives what the other publishes,
    // so neither may starve its receiving for its publishing.
    let (mut at_a, mut at_b) = (a.subscribe(&topic("to-a")), b.subscribe(&topic("to-b")));
    listening([&a_plane, &b_plane], [1, 2]).await?;
    let (b_topic, a_topic) = (topic("to-b"), topic("to-a"));
    let start = Instant::now();
    let (to_b, to_a) = tokio::join!(
        flow(a.clone(), &b_topic, &mut at_b, payload.clone()),
        flow(b.clone(), &a_topic, &mut at_a, payload.clone()),
    );
    let (to_b, to_a) = (to_b?, to_a?);
    println!(
        "{mode:8} both ways at once: A -> B {:.0} events/s, B -> A {:.0} events/s (together {:.2?})",
        EVENTS as f64 / to_b.as_secs_f64(),
        EVENTS as f64 / to_a.as_secs_f64(),
        start.elapsed(),
    );

    // Latency of one event at a time, to a subscriber on the same node and to one on the
    // other; with history both wait for Redis' order.
    let mut local = a.subscribe(&topic("latency"));
    let mut remote = b.subscribe(&topic("latency"));
    listening([&a_plane, &b_plane], [2, 3]).await?;
    let mut trips = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let sent = Instant::now();
        a.broadcast(&topic("latency"), payload.clone());
        local.recv().await?;
        let local_done = sent.elapsed();
        remote.recv().await?;
        trips.push((local_done, sent.elapsed()));
    }
    let percentile = |mut values: Vec<Duration>, p: usize| {
        values.sort();
        values[(values.len() * p / 100).min(values.len() - 1)]
    };
    let (locals, remotes): (Vec<_>, Vec<_>) = trips.into_iter().unzip();
    println!(
        "{mode:8} latency, same node: p50 {:?} p99 {:?}; other node: p50 {:?} p99 {:?}",
        percentile(locals.clone(), 50),
        percentile(locals, 99),
        percentile(remotes.clone(), 50),
        percentile(remotes, 99)
    );
    println!("{mode:8} A: {:?}", a_plane.stats());
    println!("{mode:8} B: {:?}", b_plane.stats());
    Ok(())
}

/// What `redis-benchmark` reaches for `command`, 50 clients, without and with pipelining
/// (the backplane pipelines).
fn benchmark(port: &str, what: &str, command: &[&str]) {
    for pipeline in ["1", "16"] {
        let requests = EVENTS.to_string();
        let mut args = vec!["-p", port, "-n", &requests, "-P", pipeline, "-q"];
        args.extend_from_slice(command);
        match Command::new("redis-benchmark").args(args).output() {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stdout);
                let last = text.rsplit('\r').next().unwrap_or_default().trim();
                let rate = last.rsplit(": ").next().unwrap_or(last);
                println!("redis-benchmark {what}, 50 clients, pipeline {pipeline}: {rate}");
            }
            Err(error) => println!("redis-benchmark not run: {error}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, e.g. redis://127.0.0.1:6379/")?;
    // Topics of their own for each run, so that a rerun starts on empty histories.
    let run = format!("run{}", std::process::id());
    measure(&url, 0, &format!("{run}-p")).await?;
    measure(&url, HISTORY, &format!("{run}-h")).await?;

    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .to_owned();
    let message = "x".repeat(64);
    benchmark(&port, "PUBLISH", &["PUBLISH", "bench", &message]);
    let script = RedisBackplane::publish_script();
    let history = HISTORY.to_string();
    // One event per call, where the backplane sends up to 256: the cost of the commands
    // themselves.
    benchmark(
        &port,
        "the history script, one event per call (EVAL)",
        &[
            "EVAL",
            script,
            "2",
            "bench-meta",
            "bench-stream",
            &history,
            "e1",
            "bench",
            &message,
        ],
    );
    Ok(())
}
