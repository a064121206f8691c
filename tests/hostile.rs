//! Slow, silent, vanished and hostile clients: each is dealt with, the server goes on
//! serving others, and the hub's subscribers return to zero.

mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tower_fanout::{Hub, LagPolicy, StreamLayer};
use tower_layer::Layer;

use common::{Inner, SseClient, WAIT, next_text, serve_hyper, wait_until, ws_connect};

const HANDSHAKE: &str = "GET /?topic=t HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

async fn serve(layer: StreamLayer) -> SocketAddr {
    serve_hyper(layer.layer(Inner)).await
}

/// A raw TCP client that has completed the opening handshake and does nothing else.
async fn raw_upgraded(addr: SocketAddr) -> TcpStream {
    upgrade(TcpStream::connect(addr).await.expect("connect")).await
}

/// A connection whose receive buffer is small, so that a client that reads little soon
/// fills the server's socket buffers as well.
async fn small_window(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    socket.connect(addr).await.expect("connect")
}

/// Completes the opening handshake on `stream`.
async fn upgrade(mut stream: TcpStream) -> TcpStream {
    stream.write_all(HANDSHAKE.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        timeout(WAIT, stream.read_exact(&mut byte))
            .await
            .expect("in time")
            .expect("read");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// The close code of the first close frame the server sends on a raw socket.
async fn close_code(stream: &mut TcpStream) -> u16 {
    let code = async {
        loop {
            let mut header = [0; 2];
            stream.read_exact(&mut header).await.expect("a frame");
            let len = match header[1] & 0x7f {
                126 => u64::from(stream.read_u16().await.expect("len")),
                127 => stream.read_u64().await.expect("len"),
                len => u64::from(len),
            };
            let mut payload = vec![0; usize::try_from(len).expect("small")];
            stream.read_exact(&mut payload).await.expect("payload");
            if header[0] & 0x0f == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    };
    timeout(WAIT, code).await.expect("a close frame in time")
}

/// A fresh client on its own topic is served while `hub`'s other subscribers are there.
async fn assert_still_serves(addr: SocketAddr, hub: &Hub) {
    let before = hub.stats().subscribers;
    let mut probe = ws_connect(&format!("ws://{addr}/?topic=probe")).await;
    wait_until("the probe is subscribed", || {
        hub.stats().subscribers == before + 1
    })
    .await;
    assert_eq!(hub.broadcast("probe", "alive"), 1);
    assert_eq!(next_text(&mut probe).await, "alive");
    drop(probe);
    wait_until("the probe left", || hub.stats().subscribers == before).await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_heartbeat() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .ping_interval(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(400));
    let addr = serve(layer).await;

    // Upgrades, then neither reads nor answers pings: a vanished phone.
    let mut silent = raw_upgraded(addr).await;
    wait_until("the silent peer is subscribed", || {
        hub.stats().subscribers == 1
    })
    .await;
    wait_until("the silent peer is dropped", || {
        hub.stats().subscribers == 0
    })
    .await;
    assert_eq!(close_code(&mut silent).await, 1001);

    // A client that reads answers the pings and stays.
    let mut alive = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    let mut pings = 0;
    while pings < 5 {
        match timeout(WAIT, alive.next()).await.expect("a ping in time") {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings, got {other:?}"),
        }
    }
    assert_eq!(hub.broadcast("t", "still here"), 1);
    assert_eq!(next_text(&mut alive).await, "still here");
    drop(alive);
    wait_until("no subscribers", || hub.stats().subscribers == 0).await;
    assert_still_serves(addr, &hub).await;
}

#[tokio::test]
async fn protocol_violations_close_only_that_connection_with_the_right_code() {
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    let mut bystander = ws_connect(&format!("ws://{addr}/?topic=t")).await;

    // Invalid UTF-8 in a text frame: 1007.
    let mut client = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    let frame = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
    client.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(common::close_code(&mut client).await, Some(1007));

    // An unmasked client frame: 1002.
    let mut raw = raw_upgraded(addr).await;
    raw.write_all(&[0x81, 0x02, b'h', b'i'])
        .await
        .expect("write");
    assert_eq!(close_code(&mut raw).await, 1002);

    // A ping flood is answered and harms no one.
    let mut flooder = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    for _ in 0..10_000 {
        flooder
            .feed(Message::Ping(bytes::Bytes::from_static(b"flood")))
            .await
            .expect("feed");
    }
    flooder.flush().await.expect("flush");
    wait_until("the violators are unsubscribed", || {
        hub.stats().subscribers == 2
    })
    .await;
    assert_eq!(hub.broadcast("t", "after the flood"), 2);
    assert_eq!(next_text(&mut bystander).await, "after the flood");
    assert_eq!(next_text(&mut flooder).await, "after the flood");

    // A client that vanishes mid-frame.
    let mut vanishing = raw_upgraded(addr).await;
    wait_until("all are subscribed", || hub.stats().subscribers == 3).await;
    vanishing
        .write_all(&[0x82, 0xfe, 0x10])
        .await
        .expect("write");
    drop(vanishing);

    drop((client, raw, flooder));
    wait_until("only the bystander is left", || {
        hub.stats().subscribers == 1
    })
    .await;
    drop(bystander);
    wait_until("no subscribers", || hub.stats().subscribers == 0).await;
    assert_still_serves(addr, &hub).await;
}

#[tokio::test]
async fn malformed_handshakes_are_refused_with_a_reason() {
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    let cases = [
        (
            HANDSHAKE.replace(
                "Sec-WebSocket-Key: ",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: ",
            ),
            400,
            "Sec-WebSocket-Key",
        ),
        (
            HANDSHAKE.replace(
                "Sec-WebSocket-Version: 13\r\n",
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 13\r\n",
            ),
            400,
            "Sec-WebSocket-Version",
        ),
        (HANDSHAKE.replace("HTTP/1.1", "HTTP/1.0"), 400, "HTTP/1.1"),
        (
            HANDSHAKE.replace("Sec-WebSocket-Version: 13\r\n", ""),
            400,
            "Sec-WebSocket-Version",
        ),
        (
            HANDSHAKE.replace(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
            400,
            "Sec-WebSocket-Key",
        ),
        (
            HANDSHAKE.replace("Upgrade: websocket\r\n", ""),
            426,
            "Upgrade: websocket",
        ),
    ];
    for (request, status, reason) in cases {
        let (code, text) = common::raw_request(
            addr,
            &request.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(code, status, "{request:?} -> {text}");
        assert!(text.contains(reason), "{request:?} -> {text}");
    }
    assert_eq!(hub.stats().subscribers, 0);
    assert_still_serves(addr, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_delays_no_one() {
    const EVENTS: usize = 100_000;
    const CHUNK: usize = 500;
    let hub = Hub::builder()
        .buffer(1024)
        .lag_policy(LagPolicy::Disconnect)
        .build();
    let layer = StreamLayer::new(hub.clone()).write_timeout(Duration::from_millis(500));
    let addr = serve(layer).await;

    let mut slow = raw_upgraded(addr).await;
    let mut fast = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    let mut sse = SseClient::connect(addr, "/?topic=t").await;
    wait_until("three subscribers", || hub.stats().subscribers == 3).await;
    let rss_before = process::rss_kib("self");

    let payload = "x".repeat(100);
    for chunk in 0..EVENTS / CHUNK {
        for i in 0..CHUNK {
            hub.broadcast("t", format!("{:06}{payload}", chunk * CHUNK + i));
        }
        // The readers keep up; the publisher never waited for the slow one.
        for i in 0..CHUNK {
            let expected = format!("{:06}", chunk * CHUNK + i);
            assert!(next_text(&mut fast).await.starts_with(&expected));
            assert!(sse.next_event().await.data.starts_with(&expected));
        }
    }
    let rss_after = process::rss_kib("self");
    println!("test process RSS: {rss_before} KiB before, {rss_after} KiB after {EVENTS} events");

    // The slow reader was cut off: by the write timeout (1013) or for lagging (1008).
    wait_until("the slow reader is gone", || hub.stats().subscribers == 2).await;
    let mut unread = Vec::new();
    let _ = timeout(WAIT, slow.read_to_end(&mut unread))
        .await
        .expect("closed in time");
    assert!(
        !unread.is_empty(),
        "the slow reader had been sent what it could take"
    );

    drop((fast, sse));
    wait_until("no subscribers", || hub.stats().subscribers == 0).await;
    assert_still_serves(addr, &hub).await;
}

#[tokio::test]
async fn an_sse_client_that_never_reads_holds_only_its_bound() {
    let hub = Hub::builder().buffer(64).build();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    sse_client_that_never_reads(addr, &hub).await;
}

#[tokio::test]
async fn an_sse_client_that_never_reads_holds_only_its_bound_under_fanout_serve() {
    let hub = Hub::builder().buffer(64).build();
    let addr = common::serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    sse_client_that_never_reads(addr, &hub).await;
}

/// One SSE client never reads while another keeps pace with 10 000 events of 1 KB.
async fn sse_client_that_never_reads(addr: SocketAddr, hub: &Hub) {
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    let mut reader = SseClient::connect(addr, "/?topic=t").await;
    wait_until("both subscribed", || hub.stats().subscribers == 2).await;

    let payload = "y".repeat(1000);
    for i in 0..10_000 {
        hub.broadcast("t", format!("{i} {payload}"));
        if i % 32 == 31 {
            // The reader keeps pace; the idle client's socket buffers fill and stay full.
            for j in i - 31..=i {
                assert!(reader.next_event().await.data.starts_with(&format!("{j} ")));
            }
        }
    }
    drop((idle, reader));
    wait_until("no subscribers", || hub.stats().subscribers == 0).await;
    assert!(
        hub.stats().dropped > 0,
        "the idle client lost events to its bound"
    );
    assert_still_serves(addr, hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_connect_and_drop_at_once() {
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    crowd_connects_and_drops(addr, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_clients_connect_and_drop_at_once_under_fanout_serve() {
    let hub = Hub::new();
    let addr = common::serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    crowd_connects_and_drops(addr, &hub).await;
}

/// 2 000 WebSocket clients connect at once, are all subscribed, and leave.
async fn crowd_connects_and_drops(addr: SocketAddr, hub: &Hub) {
    const CLIENTS: usize = 2_000;
    let wanted = 4 * CLIENTS as u64 + 256;
    assert!(
        process::raise_fd_limit(wanted) >= wanted,
        "the hard open-file limit is below {wanted}"
    );

    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        connecting.spawn(async move {
            ws_connect(&format!("ws://{addr}/?topic=crowd-{}", i % 10)).await
        });
    }
    let clients = connecting.join_all().await;
    wait_until("all subscribed", || hub.stats().subscribers == CLIENTS).await;
    assert_eq!(hub.broadcast("crowd-3", "hello"), CLIENTS / 10);
    drop(clients);
    wait_until("all gone", || hub.stats().subscribers == 0).await;
    assert_eq!(hub.stats().topics, 0);
    assert_still_serves(addr, hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_message_handler_closes_only_its_connection_with_1011() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).on_message(|inbound| {
        assert_ne!(inbound.text(), Some("boom"), "the handler refuses boom");
        let _ = inbound.connection().send(inbound.data().clone());
    });
    let addr = serve(layer).await;
    let mut bystander = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    let mut client = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    wait_until("both subscribed", || hub.stats().subscribers == 2).await;

    client.send(Message::text("boom")).await.expect("send");
    assert_eq!(common::close_code(&mut client).await, Some(1011));
    wait_until("its subscription is freed", || hub.stats().subscribers == 1).await;

    bystander.send(Message::text("hi")).await.expect("send");
    assert_eq!(next_text(&mut bystander).await, "hi");
    assert_eq!(hub.broadcast("t", "still served"), 1);
    assert_eq!(next_text(&mut bystander).await, "still served");
    drop(bystander);
    wait_until("no subscribers", || hub.stats().subscribers == 0).await;
    assert_still_serves(addr, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_together_or_larger_than_a_read_arrive_whole_and_in_order() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .read_limit(64 * 1024)
        .on_message(|inbound| {
            let _ = inbound.connection().send(inbound.data().clone());
        });
    let addr = serve(layer).await;
    let mut client = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // Queued, then flushed in one go: the server reads several frames at once, and a
    // message larger than what one read of its takes.
    let large: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let sent = [
        Message::text("first"),
        Message::text("x".repeat(300)),
        Message::binary(large.clone()),
        Message::text("last"),
    ];
    for message in &sent {
        client.feed(message.clone()).await.expect("queue");
    }
    client.flush().await.expect("send");
    for message in &sent {
        let echoed = timeout(WAIT, client.next())
            .await
            .expect("echoed in time")
            .expect("open")
            .expect("a message");
        assert_eq!(echoed.into_data(), message.clone().into_data());
    }
    assert_eq!(hub.broadcast("t", "still subscribed"), 1);
    assert_eq!(next_text(&mut client).await, "still subscribed");
}

/// What a raw WebSocket client that never answers saw: when each frame arrived.
async fn frames_until_close(stream: &mut TcpStream) -> Vec<(u8, tokio::time::Instant)> {
    let frames = async {
        let mut frames = Vec::new();
        loop {
            let mut header = [0; 2];
            stream.read_exact(&mut header).await.expect("a frame");
            let len = usize::from(header[1] & 0x7f);
            assert!(len < 126, "only control frames are expected");
            let mut payload = vec![0; len];
            stream.read_exact(&mut payload).await.expect("payload");
            let opcode = header[0] & 0x0f;
            frames.push((opcode, tokio::time::Instant::now()));
            if opcode == 0x8 {
                return frames;
            }
        }
    };
    timeout(WAIT, frames).await.expect("closed in time")
}

#[tokio::test]
async fn a_silent_peer_is_closed_within_ping_interval_plus_ping_timeout() {
    const INTERVAL: Duration = Duration::from_millis(1500);
    const GRACE: Duration = Duration::from_millis(100);
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .ping_interval(INTERVAL)
        .ping_timeout(GRACE);
    let addr = serve(layer).await;

    // Silent from its handshake on: its first ping comes one interval later, and it is
    // due to be closed a grace period after that, not at the next ping.
    let mut silent = raw_upgraded(addr).await;
    let frames = frames_until_close(&mut silent).await;
    let opcodes: Vec<u8> = frames.iter().map(|(opcode, _)| *opcode).collect();
    assert_eq!(opcodes, [0x9, 0x8], "one ping, then the close");
    let after_ping = frames[1].1 - frames[0].1;
    assert!(
        after_ping < INTERVAL / 2,
        "closed {after_ping:?} after the ping, where {GRACE:?} was due"
    );
}

/// Broadcasts `count` events of `size` bytes to `topic`, one every `every`.
fn publish_steadily(
    hub: &Hub,
    topic: &'static str,
    count: usize,
    size: usize,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let hub = hub.clone();
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        for _ in 0..count {
            ticks.tick().await;
            hub.broadcast(topic, payload.clone());
        }
    })
}

/// Reads about 40 KiB/s from `stream` for `period`, checking that the server still
/// serves it; returns how many bytes it read.
async fn read_slowly(stream: &mut TcpStream, hub: &Hub, period: Duration) -> usize {
    let until = tokio::time::Instant::now() + period;
    let mut total = 0;
    let mut buf = [0; 1024];
    while tokio::time::Instant::now() < until {
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        assert!(n > 0, "closed after {total} bytes");
        total += n;
        assert_eq!(
            hub.stats().subscribers,
            1,
            "ended while reading, after {total} bytes"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    total
}

/// The write timeout of the slow-reader tests.
const SLOW_WRITE_TIMEOUT: Duration = Duration::from_millis(1000);

/// `slow`, subscribed to `t` on `hub`, reads about 40 KiB/s while the topic produces
/// 800 KB/s for 4 s, 20 times that: it lags, and what waits for it never drains, but the
/// socket takes bytes as it reads, so no write waits the write timeout. Then it stops
/// reading, and is closed once a write has waited that long.
async fn slow_reader_is_kept_while_it_reads(mut slow: TcpStream, hub: &Hub) {
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    let publisher = publish_steadily(hub, "t", 800, 4096, Duration::from_millis(5));
    let read = read_slowly(&mut slow, hub, Duration::from_secs(4)).await;
    assert!(read > 20 * 1024, "read {read} bytes");
    publisher.await.expect("published");

    hub.broadcast("t", vec![b'y'; 1 << 20]);
    wait_until("the stopped reader is closed", || {
        hub.stats().subscribers == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_reader_slower_than_its_topic_is_not_timed_out_while_it_reads() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).write_timeout(SLOW_WRITE_TIMEOUT);
    let addr = common::serve_hyper_on(
        common::listener_with_send_buffer(16 * 1024),
        layer.layer(Inner),
    );
    let slow = upgrade(small_window(addr).await).await;
    slow_reader_is_kept_while_it_reads(slow, &hub).await;
    assert_still_serves(addr, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_reader_slower_than_its_topic_is_not_timed_out_under_fanout_serve() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).write_timeout(SLOW_WRITE_TIMEOUT);
    let addr = common::serve_fanout_on(
        common::listener_with_send_buffer(16 * 1024),
        layer.layer(Inner),
    );
    let mut slow = small_window(addr).await;
    slow.write_all(b"GET /?topic=t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("write");
    slow_reader_is_kept_while_it_reads(slow, &hub).await;
    assert_still_serves(addr, &hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_are_heard_while_the_outgoing_buffer_is_full() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .ping_interval(Duration::from_millis(200))
        .ping_timeout(Duration::from_millis(200))
        .write_timeout(Duration::from_secs(60));
    let addr = common::serve_hyper_on(
        common::listener_with_send_buffer(16 * 1024),
        layer.layer(Inner),
    );
    let mut client = upgrade(small_window(addr).await).await;
    wait_until("subscribed", || hub.stats().subscribers == 1).await;

    // The client reads nothing, so everything for it waits, but it says it is alive with
    // an unsolicited pong (masked, empty) every 100 ms.
    let publisher = publish_steadily(&hub, "t", 300, 16 * 1024, Duration::from_millis(10));
    for _ in 0..30 {
        client
            .write_all(&[0x8a, 0x80, 1, 2, 3, 4])
            .await
            .expect("write a pong");
        assert_eq!(
            hub.stats().subscribers,
            1,
            "closed though it kept sending pongs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await.expect("published");
    // Silent now: the heartbeat closes it.
    wait_until("the silent client is closed", || {
        hub.stats().subscribers == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_hold_large_events_by_reference() {
    const CLIENTS: usize = 200;
    const EVENTS: usize = 20;
    const SIZE: usize = 256 * 1024;
    let wanted = 2 * CLIENTS as u64 + 256;
    assert!(
        process::raise_fd_limit(wanted) >= wanted,
        "open-file limit too low"
    );
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone()).write_timeout(Duration::from_secs(60))).await;
    let mut stalled = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        stalled.push(raw_upgraded(addr).await);
    }
    wait_until("all subscribed", || hub.stats().subscribers == CLIENTS).await;
    let before = process::rss_kib("self");

    // The hub's ring holds the events for them: 5 MiB, once. Each connection takes what
    // its socket buffers hold and one frame more; copied, that frame alone would be
    // 256 KiB per client, 50 MiB in all.
    for i in 0..EVENTS {
        hub.broadcast("t", vec![b'a' + i as u8; SIZE]);
    }
    let mut probe = ws_connect(&format!("ws://{addr}/?topic=t")).await;
    hub.broadcast("t", "after");
    assert_eq!(
        next_text(&mut probe).await,
        "after",
        "the server went on serving"
    );
    let grown = process::rss_kib("self").saturating_sub(before);
    println!("RSS grew {grown} KiB with {CLIENTS} stalled clients of {EVENTS} events of {SIZE} B");
    let ring = (EVENTS * SIZE / 1024) as u64;
    assert!(
        grown < ring + 20 * 1024,
        "RSS grew {grown} KiB, the ring is {ring} KiB: the connections hold copies"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_from_request_bodies_do_not_keep_the_servers_read_buffers() {
    use axum::extract::{Path, State};
    use axum::routing::post;

    const EVENTS: usize = 2_000;
    // Each body is a view into hyper's read buffer for its connection; kept in history as
    // it is, each event would hold a buffer of 8 KiB or more.
    let hub = Hub::builder().history(EVENTS).build();
    let app = axum::Router::new()
        .route(
            "/publish/{topic}",
            post(
                |State(hub): State<Hub>, Path(topic): Path<String>, body: bytes::Bytes| async move {
                    hub.broadcast(&topic, body).to_string()
                },
            ),
        )
        .with_state(hub.clone());
    let addr = common::serve_fanout(app).await;
    // History starts with a first subscriber; this one reads nothing.
    let _listener = hub.subscribe("t");
    let mut publisher = TcpStream::connect(addr).await.expect("connect");
    let before = process::rss_kib("self");
    let mut answer = [0; 1024];
    for i in 0..EVENTS {
        let body = format!("{i:06}");
        let request = format!(
            "POST /publish/t HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        publisher
            .write_all(request.as_bytes())
            .await
            .expect("write");
        // One request at a time, as a publisher waiting for each answer sends them.
        let n = timeout(WAIT, publisher.read(&mut answer))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    }
    let grown = process::rss_kib("self").saturating_sub(before);
    println!("RSS grew {grown} KiB for {EVENTS} events of 6 bytes kept in history");
    assert!(
        grown < 4 * 1024,
        "RSS grew {grown} KiB: the events hold the server's read buffers"
    );
    let (mut resumed, _) = hub.resume("t", "unknown");
    let oldest = timeout(WAIT, resumed.recv())
        .await
        .expect("kept in history")
        .expect("an event");
    assert_eq!(&oldest.data()[..], b"000000");
}
