//! A hub in one process: three subscribers on two topics, one publisher thread.
//!
//! ```sh
//! cargo run --example broadcast
//! ```

use std::time::Duration;

use tower_fanout::{Event, Hub, RecvError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::new();

    let listeners: Vec<_> = [
        ("alice", "device-42"),
        ("bob", "device-42"),
        ("carol", "device-7"),
    ]
    .into_iter()
    .map(|(name, topic)| {
        let mut subscription = hub.subscribe(topic);
        tokio::spawn(async move {
            loop {
                match subscription.recv().await {
                    Ok(event) => println!(
                        "{name} on {topic}: {} {}",
                        event.event_type().unwrap_or("message"),
                        String::from_utf8_lossy(event.data())
                    ),
                    Err(RecvError::Lagged(missed)) => println!("{name} missed {missed}"),
                    Err(RecvError::Lost) => println!("{name} missed some"),
                    Err(RecvError::Closed(reason)) => return println!("{name}: {reason}"),
                }
            }
        })
    })
    .collect();

    // Broadcasting is a plain call: any thread, no runtime needed.
    let publisher = {
        let hub = hub.clone();
        std::thread::spawn(move || -> Result<(), tower_fanout::InvalidEvent> {
            for task in 1..=3 {
                let event = Event::new(format!("{{\"task\":{task}}}")).event("task.created")?;
                let reached = hub.broadcast("device-42", event);
                println!("published task {task} to device-42, reached {reached}");
            }
            let reached = hub.broadcast("device-7", Event::new("ping").event("heartbeat")?);
            println!("published ping to device-7, reached {reached}");
            Ok(())
        })
    };
    publisher.join().map_err(|_| "publisher panicked")??;

    hub.close();
    for listener in listeners {
        tokio::time::timeout(Duration::from_secs(5), listener).await??;
    }
    println!("{:?}", hub.stats());
    Ok(())
}
