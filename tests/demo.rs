//! The demo server, `cargo run --example hyper_server`, run as its own process on a port
//! given by `ADDR`, and used over HTTP as its README describes.
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
}

impl Demo {
    fn start() -> Self {
        // target/<profile>/deps/<this test> -> target/<profile>/examples/hyper_server
        let exe = std::env::current_exe().expect("test binary path");
        let binary = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target directory")
            .join("examples")
            .join("hyper_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = Command::new(&binary)
            .env("ADDR", addr.to_string())
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.display()));
        // The demo prints one line once it listens; reading it is bounded by the
        // process: it either prints or exits.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the demo's output");
        assert!(line.contains("listening on"), "the demo said {line:?}");
        Self { child, addr }
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
