//! The demo server, `cargo run --example hyper_server`, run as its own process on the
//! port it says it bound (`ADDR` with port 0), and used over HTTP as its README describes.
//!
//! Plain `cargo test` builds the example first; `cargo test --test demo` alone does not,
//! so run `cargo build --example hyper_server` before it after changing the example.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use common::{SseClient, raw_request};

/// The demo binary, which `cargo test` builds beside the test binaries; killed on drop.
struct Demo {
    child: Child,
    addr: SocketAddr,
    _output: BufReader<std::process::ChildStdout>,
}

impl Demo {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A demo with these environment variables set (`REDIS_URL`, `TLS_CERT`, ...).
    fn start_with(env: &[(&str, &str)]) -> Self {
        // target/<profile>/deps/<this test> -> target/<profile>/examples/hyper_server
        let exe = std::env::current_exe().expect("test binary path");
        let binary = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target directory")
            .join("examples")
            .join("hyper_server");
        // Port 0: the demo binds a free one and says which, so no other socket can take
        // it between a choice made here and the demo's bind.
        let mut command = Command::new(&binary);
        command.env("ADDR", "127.0.0.1:0").env_remove("REDIS_URL");
        command.envs(env.iter().copied());
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
        // The demo prints a line once it listens (after one about Redis, when it joins
        // it); reading is bounded by the process: it either prints or exits. The pipe
        // stays open with the demo, which would fail on a closed one.
        let mut output = BufReader::new(child.stdout.take().expect("piped"));
        let mut said = String::new();
        for _ in 0..2 {
            let mut line = String::new();
            output.read_line(&mut line).expect("read the demo's output");
            said.push_str(&line);
            if let Some((_, bound)) = line.split_once("listening on ") {
                let addr: SocketAddr = bound
                    .trim()
                    .split_once("://")
                    .and_then(|(_, addr)| addr.parse().ok())
                    .unwrap_or_else(|| panic!("the demo said {line:?}"));
                return Self {
                    child,
                    addr,
                    _output: output,
                };
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the demo said {said:?}");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn publish(addr: SocketAddr, target: &str, body: &str) -> (u16, String) {
    raw_request(
        addr,
        &format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn publish_decodes_the_event_type_and_refuses_one_with_a_line_break() {
    let demo = Demo::start();
    let mut sse = SseClient::connect(demo.addr, "/events/demo").await;

    let (status, text) = publish(demo.addr, "/publish/demo?event=a%20b", "hello").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.ends_with("\r\n\r\n1\n"),
        "one subscriber reached: {text}"
    );
    let event = sse.next_event().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("a b", "hello")
    );

    let (status, _) = publish(demo.addr, "/publish/demo?x=1&event=caf%C3%A9+noir", "2").await;
    assert_eq!(status, 200);
    assert_eq!(sse.next_event().await.event, "café noir");

    // A type that decodes to a line break would forge SSE fields: refused, with a reason.
    let (status, text) = publish(demo.addr, "/publish/demo?event=a%0Adata:%20forged", "x").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("event type must not contain"), "{text}");

    let (status, _) = publish(demo.addr, "/publish/demo", "after").await;
    assert_eq!(status, 200);
    let event = sse.next_event().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("message", "after"),
        "nothing of the refused publish arrived"
    );
}

/// Two demos on one Redis are a cluster with one history: a client that resumes on the
/// other node, with the id the first gave it, gets exactly what it missed.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_client_resumes_on_the_other_demo_node_with_the_id_the_first_gave_it() {
    let redis = common::Redis::start(None);
    let (first, second) = (
        Demo::start_with(&[("REDIS_URL", &redis.url())]),
        Demo::start_with(&[("REDIS_URL", &redis.url())]),
    );
    let mut sse = SseClient::connect(first.addr, "/events/probe").await;
    // Published on the second node, which has no subscriber of the topic; the first
    // node's stream must see each one, so the first one is published until it does.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + common::WAIT;
    let mut ones = 0;
    while seen.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes never joined up"
        );
        publish(second.addr, "/publish/probe", "one").await;
        ones += 1;
        let event =
            tokio::time::timeout(std::time::Duration::from_millis(200), sse.next_event()).await;
        if let Ok(event) = event {
            seen.push(event);
        }
    }
    // Whatever extra copies of "one" were published arrive before "two".
    publish(second.addr, "/publish/probe", "two").await;
    let mut two = None;
    // At most the copies of "one" not yet read, then "two".
    for _ in 0..ones {
        let event = sse.next_event().await;
        if event.data == "two" {
            two = Some(event);
            break;
        }
        assert_eq!(event.data, "one");
    }
    let two = two.expect("two after the copies of one");
    let id = two.id.expect("an id");
    drop(sse);

    publish(first.addr, "/publish/probe", "three").await;
    publish(second.addr, "/publish/probe", "four").await;
    let mut resumed = SseClient::connect_with(
        second.addr,
        "/events/probe",
        &format!("Last-Event-ID: {id}\r\n"),
    )
    .await;
    // Published on two nodes, neither waiting for the other: Redis orders them, either
    // way round, the same for every client.
    let mut missed = vec![
        resumed.next_event().await.data,
        resumed.next_event().await.data,
    ];
    missed.sort();
    assert_eq!(missed, ["four", "three"], "exactly what it missed");
    publish(first.addr, "/publish/probe", "five").await;
    assert_eq!(
        resumed.next_event().await.data,
        "five",
        "then live, nothing twice"
    );
}

/// The value of the sample `series` (a name and its labels as Prometheus writes them) in
/// a scrape; `None` when absent.
#[cfg(feature = "metrics")]
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[cfg(feature = "metrics")]
async fn scrape(addr: SocketAddr) -> String {
    let (status, text) = raw_request(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    text
}

/// `GET /metrics` of the demo, scraped over HTTP, follows connections, events and
/// refusals as they happen.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_demo_metrics_move_as_clients_come_events_flow_and_clients_leave() {
    const SSE: &str = r#"fanout_connections{transport="sse",version="HTTP/1.1"}"#;
    const WS: &str = r#"fanout_connections{transport="websocket",version="HTTP/1.1"}"#;
    let demo = Demo::start();
    let before = scrape(demo.addr).await;
    assert_eq!(
        sample(&before, "fanout_deliveries_total"),
        Some(0.0),
        "{before}"
    );

    let mut sse = SseClient::connect(demo.addr, "/events/metrics").await;
    let socket = common::ws_connect(&format!("ws://{}/events/metrics", demo.addr)).await;
    for i in 0..3 {
        publish(demo.addr, "/publish/metrics", &format!("e{i}")).await;
    }
    for _ in 0..3 {
        sse.next_event().await;
    }
    let during = scrape(demo.addr).await;
    assert_eq!(sample(&during, SSE), Some(1.0), "{during}");
    assert_eq!(sample(&during, WS), Some(1.0), "{during}");
    assert_eq!(sample(&during, "fanout_broadcasts_total"), Some(3.0));
    assert_eq!(sample(&during, "fanout_deliveries_total"), Some(6.0));
    assert_eq!(sample(&during, "fanout_subscriptions"), Some(2.0));
    assert_eq!(sample(&during, "fanout_topics"), Some(1.0));

    // A refused handshake is counted by its status.
    let (status, _) = raw_request(
        demo.addr,
        "GET /events/a/b HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);

    // The clients leave, and the server's close is counted by its code.
    drop(sse);
    drop(socket);
    publish(demo.addr, "/disconnect/metrics", "").await;
    let deadline = std::time::Instant::now() + common::WAIT;
    let after = loop {
        let after = scrape(demo.addr).await;
        if sample(&after, SSE) == Some(0.0) && sample(&after, WS) == Some(0.0) {
            break after;
        }
        assert!(std::time::Instant::now() < deadline, "still open: {after}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&after, r#"fanout_refused_total{status="404"}"#),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "fanout_subscriptions"), Some(0.0));
}

/// The demo over HTTPS with a certificate the test makes, HTTP/2 chosen by ALPN: a
/// WebSocket and an event stream share the one TLS connection.
#[cfg(feature = "http2")]
#[tokio::test]
async fn the_demo_serves_websockets_and_event_streams_over_https_and_http2() {
    let certified = common::tls::certificate();
    let dir = std::env::temp_dir().join(format!("fanout-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("written");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("written");
    let demo = Demo::start_with(&[
        ("TLS_CERT", cert.to_str().expect("a path")),
        ("TLS_KEY", key.to_str().expect("a path")),
    ]);

    let connector = common::tls::connector(&certified, &["h2"]);
    let tls = common::tls::connect(&connector, demo.addr).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "HTTP/2 by ALPN"
    );

    let mut sender = common::h2::handshake(tls).await;
    let mut socket = common::h2::websocket(&mut sender, demo.addr, "/events/secure").await;
    let mut body = common::h2::event_stream(&mut sender, demo.addr, "/events/secure").await;
    let mut buffer = Vec::new();
    // Both subscribed before their answers came: the publish reaches both.
    let (status, text) = publish_tls(&mut sender, "/publish/secure", "hello").await;
    assert_eq!((status, text.trim()), (200, "2"));
    // The demo's WebSocket frames are `id LF data`.
    let frame = common::h2::next_text(&mut socket).await;
    assert!(frame.ends_with("\nhello"), "{frame:?}");
    assert_eq!(common::h2::next_data(&mut body, &mut buffer).await, "hello");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes over the HTTP/2 connection of `sender`: the status and the answer's text.
#[cfg(feature = "http2")]
async fn publish_tls(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
    body: &str,
) -> (u16, String) {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://localhost{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_owned(),
        )))
        .expect("a request");
    let (status, text) = common::h2::exchange(sender, request).await;
    (status.as_u16(), text)
}
