//! What the load tools (`examples/loadtest.rs`, `examples/soak.rs`) share: a server
//! under test in a child process of the running example, so that its CPU time, memory and
//! descriptors can be read from `/proc` apart from the clients' (started on a free
//! loopback port, asked over plain HTTP, killed when dropped), and a reader of the
//! WebSocket frames it sends.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a control request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Runs this example again with the arguments `args` makes of a free port's address,
    /// and waits until it accepts connections.
    pub async fn start(
        args: impl FnOnce(&str) -> Vec<String>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(std::env::current_exe()?)
            .args(args(&addr.to_string()))
            .stdout(Stdio::null())
            .spawn()?;
        let server = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                return Err("the server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(server)
    }

    /// The server's process id, as `/proc` names it.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `POST path` to the server at `addr` and returns the body of the answer.
pub async fn control(addr: SocketAddr, path: &str) -> Result<String, Box<dyn std::error::Error>> {
    control_on(TcpStream::connect(addr).await?, path).await
}

/// Sends `POST path` on `stream`, a new connection to the server, and returns the body of
/// the answer.
pub async fn control_on(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    path: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(CONTROL_TIMEOUT, stream.read_to_string(&mut response)).await??;
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// The first complete WebSocket frame a server sent (unmasked, RFC 6455 section 5.2) in
/// `data`: its opcode (with RSV1, 0x40, for a compressed message), payload and length on
/// the wire.
pub fn ws_frame(data: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&first, &second) = (data.first()?, data.get(1)?);
    let (len, header) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(data.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(data.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        len => (usize::from(len), 2),
    };
    let payload = data.get(header..header + len)?;
    Some((first & 0x4f, payload, header + len))
}

/// The client's pong to a ping carrying `payload` (at most 125 bytes, as every control
/// frame's), masked with the all-zero key, which leaves the payload as it is.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x8a, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
    frame.extend_from_slice(&payload[..payload.len().min(125)]);
    frame
}
