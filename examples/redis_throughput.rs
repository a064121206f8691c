//! Events per second between two nodes through one Redis, beside what `redis-benchmark`
//! reaches for PUBLISH against the same server in the same run.
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
//! publishes and receives at full rate.

use std::process::Command;
use std::time::{Duration, Instant};

use tower_fanout::Hub;
use tower_fanout::backplane::RedisBackplane;

const EVENTS: usize = 200_000;
const BURST: usize = 1_000;

/// Broadcasts `EVENTS` events to `topic` on `from` in bursts of `BURST`, each once the
/// last has reached `to`, a subscription on another node; returns how long it took.
async fn flow(
    from: Hub,
    topic: &str,
    mut to: tower_fanout::Subscription,
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url =
        std::env::var("REDIS_URL").map_err(|_| "set REDIS_URL, e.g. redis://127.0.0.1:6379/")?;
    let (a_plane, b_plane) = (RedisBackplane::new(&url)?, RedisBackplane::new(&url)?);
    let a = Hub::builder()
        .buffer(2 * BURST)
        .backplane(a_plane.clone())
        .build();
    let b = Hub::builder()
        .buffer(2 * BURST)
        .backplane(b_plane.clone())
        .build();
    let mut subscription = b.subscribe("bench");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !(b_plane.stats().connected
        && b_plane.stats().subscribed_topics == 1
        && a_plane.stats().connected)
    {
        if Instant::now() > deadline {
            return Err("the backplanes did not connect to Redis within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let mut batch = Vec::with_capacity(BURST);
    let start = Instant::now();
    for _ in 0..EVENTS / BURST {
        for _ in 0..BURST {
            a.broadcast("bench", payload.clone());
        }
        let mut received = 0;
        while received < BURST {
            let burst = tokio::time::timeout(
                Duration::from_secs(10),
                subscription.recv_many(&mut batch, BURST),
            );
            received += burst.await.map_err(|_| "events stopped arriving")??;
            batch.clear();
        }
    }
    let elapsed = start.elapsed();
    let rate = EVENTS as f64 / elapsed.as_secs_f64();
    println!(
        "tower-fanout, node A -> Redis -> node B: {EVENTS} events in {elapsed:.2?}, {rate:.0} events/s"
    );
    println!("A: {:?}", a_plane.stats());
    println!("B: {:?}", b_plane.stats());

    // Both ways at once: each node publishes while it receives what the other publishes,
    // so neither may starve its receiving for its publishing.
    let (at_a, at_b) = (a.subscribe("to-a"), b.subscribe("to-b"));
    while a_plane.stats().subscribed_topics < 1 || b_plane.stats().subscribed_topics < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = Instant::now();
    let (to_b, to_a) = tokio::join!(
        flow(a.clone(), "to-b", at_b, payload.clone()),
        flow(b.clone(), "to-a", at_a, payload.clone()),
    );
    let (to_b, to_a) = (to_b?, to_a?);
    println!(
        "both ways at once: {EVENTS} events each way, A -> B {:.0} events/s, B -> A {:.0} events/s (together {:.2?})",
        EVENTS as f64 / to_b.as_secs_f64(),
        EVENTS as f64 / to_a.as_secs_f64(),
        start.elapsed(),
    );

    // Latency of one event at a time: node A's own subscriber hears it in the broadcast
    // call; node B hears it after a trip through Redis.
    let mut local = a.subscribe("latency");
    let mut remote = b.subscribe("latency");
    while b_plane.stats().subscribed_topics < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut trips = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let sent = Instant::now();
        a.broadcast("latency", payload.clone());
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
        "latency, same node: p50 {:?} p99 {:?}; other node through Redis: p50 {:?} p99 {:?}",
        percentile(locals.clone(), 50),
        percentile(locals, 99),
        percentile(remotes.clone(), 50),
        percentile(remotes, 99)
    );

    // PUBLISH of the same 64-byte payload, without and with pipelining (we pipeline).
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .to_owned();
    let message = "x".repeat(64);
    for pipeline in ["1", "16"] {
        let requests = EVENTS.to_string();
        let args = [
            "-p", &port, "-n", &requests, "-P", pipeline, "-q", "PUBLISH", "bench", &message,
        ];
        match Command::new("redis-benchmark").args(args).output() {
            Ok(output) => {
                let text = String::from_utf8_lossy(&output.stdout);
                let last = text.rsplit('\r').next().unwrap_or_default().trim();
                let rate = last.rsplit(": ").next().unwrap_or(last);
                println!("redis-benchmark PUBLISH, 50 clients, pipeline {pipeline}: {rate}");
            }
            Err(error) => println!("redis-benchmark not run: {error}"),
        }
    }
    Ok(())
}
