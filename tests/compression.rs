//! permessage-deflate (RFC 7692) over real TCP, with a client of the test's own that
//! offers it as browsers do: a broadcast compressed once for every client that
//! negotiated it, clients that did not get it plain, and a client's compressed messages
//! inflated within the read limit.

mod common;

use std::net::SocketAddr;

use flate2::{Compress, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_fanout::{Compression, Hub, StreamLayer};
use tower_layer::Layer;

use common::{Inner, WAIT, next_text, serve_fanout, wait_until, ws_connect};

/// What Chromium offers.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A WebSocket client that reads whole frames, inflates compressed ones, and can send
/// compressed messages.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` answer, if any.
    extensions: Option<String>,
}

/// A frame as it came: opcode, RSV1, and the payload (inflated when compressed), with the
/// payload as it was on the wire.
struct Frame {
    opcode: u8,
    compressed: bool,
    payload: Vec<u8>,
    wire: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr, path: &str, offer: Option<&str>) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let extensions = offer
            .map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             {extensions}\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut client = Self {
            stream,
            read: Vec::new(),
            extensions: None,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        let end = loop {
            if let Some(at) = client.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            client.fill(deadline).await;
        };
        let head = String::from_utf8_lossy(&client.read[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        client.read.drain(..end);
        client
    }

    async fn fill(&mut self, deadline: tokio::time::Instant) {
        let mut buf = [0; 8192];
        let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
            .await
            .expect("data in time")
            .expect("read");
        assert!(n > 0, "the connection ended");
        self.read.extend_from_slice(&buf[..n]);
    }

    /// The next frame the server sends (server frames are final and unmasked here).
    async fn next_frame(&mut self) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some((first, start, len)) = header(&self.read)
                && self.read.len() >= start + len
            {
                let wire = self.read[start..start + len].to_vec();
                self.read.drain(..start + len);
                assert!(first & 0x80 != 0, "a final frame");
                let compressed = first & 0x40 != 0;
                let payload = if compressed {
                    inflate(&wire)
                } else {
                    wire.clone()
                };
                return Frame {
                    opcode: first & 0x0f,
                    compressed,
                    payload,
                    wire,
                };
            }
            self.fill(deadline).await;
        }
    }

    /// Sends one masked frame, its payload compressed (RSV1) when `compress`.
    async fn send(&mut self, opcode: u8, payload: &[u8], compress: bool) {
        let payload = if compress {
            deflate(payload)
        } else {
            payload.to_vec()
        };
        let mask = [0x0b, 0xad, 0xf0, 0x0d];
        let mut frame = vec![0x80 | if compress { 0x40 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("write");
    }
}

/// A server frame's first byte, where its payload starts and its length.
fn header(read: &[u8]) -> Option<(u8, usize, usize)> {
    let (&first, &second) = (read.first()?, read.get(1)?);
    assert!(second & 0x80 == 0, "server frames are not masked");
    Some(match second & 0x7f {
        126 => (
            first,
            4,
            u16::from_be_bytes(read.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            first,
            10,
            u64::from_be_bytes(read.get(2..10)?.try_into().ok()?) as usize,
        ),
        len => (first, 2, len as usize),
    })
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    compressor
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("compressed");
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// A message's payload inflated on its own: the server takes over no context.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate");
    out
}

/// A JSON-like event of about `len` bytes.
fn json(len: usize) -> String {
    let mut json = String::from("[");
    let mut i = 0;
    while json.len() < len {
        json.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","action":"update","price":{}.{:02}}},"#,
            i % 37,
            1000 + i * 7,
            i % 100
        ));
        i += 1;
    }
    json.push_str("{}]");
    json
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_compressed_once_for_every_client_that_offered_it() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).compression(Compression::new());
    let addr = serve_fanout(layer.layer(Inner)).await;
    let mut compressed = Vec::new();
    for _ in 0..3 {
        let client = Client::connect(addr, "/?topic=prices", Some(BROWSER_OFFER)).await;
        assert_eq!(client.extensions.as_deref(), Some(ACCEPTED));
        compressed.push(client);
    }
    // A client that offers nothing, and one whose only offer limits the server's window.
    let mut plain = ws_connect(&format!("ws://{addr}/?topic=prices")).await;
    let mut declined = Client::connect(
        addr,
        "/?topic=prices",
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await;
    assert_eq!(declined.extensions, None);
    wait_until("all subscribed", || hub.stats().subscribers == 5).await;

    let large = json(2048);
    assert_eq!(hub.broadcast("prices", large.clone()), 5);
    assert_eq!(hub.broadcast("prices", "small"), 5);
    let mut wire = Vec::new();
    for client in &mut compressed {
        let frame = client.next_frame().await;
        assert_eq!((frame.opcode, frame.compressed), (0x1, true));
        assert_eq!(frame.payload, large.as_bytes());
        assert!(
            frame.wire.len() * 2 < large.len(),
            "{} bytes on the wire for {}",
            frame.wire.len(),
            large.len()
        );
        wire.push(frame.wire);
        // Under the minimum size: as it is.
        let frame = client.next_frame().await;
        assert_eq!(
            (frame.compressed, &frame.payload[..]),
            (false, &b"small"[..])
        );
    }
    assert!(
        wire.windows(2).all(|pair| pair[0] == pair[1]),
        "one compression"
    );
    assert_eq!(next_text(&mut plain).await, large);
    assert_eq!(next_text(&mut plain).await, "small");
    let frame = declined.next_frame().await;
    assert_eq!(
        (frame.compressed, frame.payload),
        (false, large.into_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_option_an_offer_is_declined() {
    let hub = Hub::new();
    let addr = serve_fanout(StreamLayer::new(hub.clone()).layer(Inner)).await;
    let mut client = Client::connect(addr, "/?topic=t", Some(BROWSER_OFFER)).await;
    assert_eq!(client.extensions, None);
    wait_until("subscribed", || hub.stats().subscribers == 1).await;
    let large = json(2048);
    hub.broadcast("t", large.clone());
    let frame = client.next_frame().await;
    assert_eq!(
        (frame.compressed, frame.payload),
        (false, large.into_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_client_messages_are_read_and_a_bomb_closes_only_its_connection_with_1009() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone())
        .compression(Compression::new())
        .read_limit(64 * 1024)
        .on_message(|inbound| {
            let _ = inbound
                .connection()
                .send_text(format!("got {} bytes", inbound.data().len()));
        });
    let addr = serve_fanout(layer.layer(Inner)).await;
    let mut bystander = Client::connect(addr, "/?topic=t", Some(BROWSER_OFFER)).await;
    let mut client = Client::connect(addr, "/?topic=t", Some(BROWSER_OFFER)).await;
    wait_until("subscribed", || hub.stats().subscribers == 2).await;

    let message = json(40_000);
    client.send(0x1, message.as_bytes(), true).await;
    let reply = client.next_frame().await;
    assert_eq!(
        String::from_utf8(reply.payload).expect("text"),
        format!("got {} bytes", message.len())
    );
    client.send(0x1, b"plain works too", false).await;
    let reply = client.next_frame().await;
    assert_eq!(reply.payload, b"got 15 bytes");

    // 1 MiB inflated from about a kilobyte, past the 64 KiB read limit.
    let bomb = vec![b'a'; 1 << 20];
    client.send(0x2, &bomb, true).await;
    let close = client.next_frame().await;
    assert_eq!(close.opcode, 0x8);
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1009
    );
    wait_until("only that one left", || hub.stats().subscribers == 1).await;

    hub.broadcast("t", json(1024));
    let frame = bystander.next_frame().await;
    assert!(frame.compressed);
    assert_eq!(frame.payload, json(1024).into_bytes());
}
