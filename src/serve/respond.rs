//! Answering an event-stream request on the bare socket: the service's response, head and
//! body, written as it comes, with nothing kept between events but the body itself.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Buf;
use http::response::Parts;
use http::{Request, Response, StatusCode, header};
use http_body::Body as HttpBody;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tower_service::Service;

use super::{Body, BoxError, Open, WriteTimeout, call};
use crate::outgoing::Outgoing;
use crate::wake::{Alarm, Signal};

/// Rounds of gathering and writing one wake-up may do before yielding.
const ROUNDS: usize = 16;
/// Body frames gathered per round.
const FRAMES: usize = 64;
/// Reads of whatever the client sends (it has nothing more to say) per wake-up.
const READS: usize = 16;

const SERVICE_FAILED: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Calls `service` with `request`, and returns what writes its response to `stream`
/// until it ends, then closes the connection: the connection's task goes on with it.
/// `None` when the service failed, which has been answered.
pub(super) async fn respond<S, B, Io>(
    mut stream: Io,
    service: S,
    request: Request<Body>,
    open: Open,
) -> Option<Streaming<B, Io>>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody,
    B::Error: Into<BoxError>,
    Io: AsyncRead + AsyncWrite + Unpin,
{
    let response = call(service, request).await.map_err(|error| {
        tracing::error!(error = %error.into(), "the service failed");
    });
    let Ok(response) = response else {
        let _ = stream.write_all(SERVICE_FAILED).await;
        return None;
    };
    Some(Streaming::new(stream, response, open))
}

pin_project! {
    /// Writes a response to the socket until it ends, or the client leaves.
    pub(super) struct Streaming<B, Io> {
        #[pin]
        body: B,
        writer: Writer<Io>,
    }
}

/// Everything of a response on its way but the body.
struct Writer<Io> {
    io: Io,
    out: Outgoing,
    /// Says whether the socket may have something to read: the client's leaving.
    readable: Signal,
    framing: Framing,
    /// Whether the whole body is in `out`.
    ended: bool,
    /// How long bytes may wait for the client, when the response says (`WriteTimeout`).
    write_timeout: Option<Duration>,
    /// Rings when waiting bytes may be overdue; made at the first write that waits.
    deadline: Option<Alarm>,
    /// Whether bytes are waiting for the client, and `deadline` is running.
    waiting: bool,
    /// Tells a server shutting down that this connection is still open.
    _open: Open,
}

/// How the body is delimited.
#[derive(Clone, Copy)]
enum Framing {
    /// A stream, its length unknown: chunked.
    Chunked,
    /// `content-length`.
    Length(u64),
    /// A status that has no body.
    Empty,
}

impl Framing {
    fn of(parts: &Parts, body: &impl HttpBody) -> Self {
        if parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED
        {
            return Self::Empty;
        }
        body.size_hint().exact().map_or(Self::Chunked, Self::Length)
    }
}

enum End {
    /// The client closed the connection, or it broke.
    Gone,
    /// The client has not read what was written for longer than the write timeout.
    WriteTimedOut,
    Body(BoxError),
}

impl<B, Io> Streaming<B, Io>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    fn new(io: Io, response: Response<B>, open: Open) -> Self {
        let (parts, body) = response.into_parts();
        let framing = Framing::of(&parts, &body);
        let write_timeout = parts.extensions.get().map(|&WriteTimeout(timeout)| timeout);
        let mut out = Outgoing::default();
        put_head(out.bytes(), &parts, framing);
        let writer = Writer {
            io,
            out,
            readable: Signal::new(),
            framing,
            // A status without a body ends with its head.
            ended: matches!(framing, Framing::Empty),
            write_timeout,
            deadline: None,
            waiting: false,
            _open: open,
        };
        Self { body, writer }
    }
}

impl<B, Io> Future for Streaming<B, Io>
where
    B: HttpBody,
    B::Error: Into<BoxError>,
    Io: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let writer = this.writer;
        match ready!(writer.poll_send(this.body, cx)) {
            Ok(()) => {
                // The response is whole: say so with a FIN, not a reset.
                let _ = ready!(Pin::new(&mut writer.io).poll_shutdown(cx));
            }
            Err(End::Gone) => tracing::debug!("connection lost"),
            Err(End::WriteTimedOut) => {
                crate::metrics::write_timeout("sse");
                tracing::debug!("write timed out; connection closed");
            }
            Err(End::Body(error)) => {
                // Closing without the last chunk tells the client the response broke off.
                tracing::debug!(%error, "the response body failed");
            }
        }
        Poll::Ready(())
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> Writer<Io> {
    /// Writes the response until it ends or the client leaves.
    fn poll_send<B>(&mut self, mut body: Pin<&mut B>, cx: &mut Context<'_>) -> Poll<Result<(), End>>
    where
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        for _ in 0..ROUNDS {
            if self.client_left(cx) {
                return Poll::Ready(Err(End::Gone));
            }
            let more = self.gather(body.as_mut(), cx)?;
            match self.out.poll_write(&mut self.io, cx) {
                Poll::Ready(Ok(())) => self.waiting = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Gone)),
                // The socket wakes the task when it takes more.
                Poll::Pending if self.overdue(cx) => return Poll::Ready(Err(End::WriteTimedOut)),
                Poll::Pending => return Poll::Pending,
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            if !more {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// A write is waiting: whether the socket has taken nothing for longer than the write
    /// timeout. A client that reads slowly is not timed out; one that reads nothing is.
    fn overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(since)) = (self.write_timeout, self.out.stalled_since()) else {
            return false;
        };
        let due = since + timeout;
        if !self.waiting {
            self.waiting = true;
            match &mut self.deadline {
                Some(alarm) => alarm.set(due),
                None => self.deadline = Some(Alarm::new(due)),
            }
        }
        let Some(alarm) = &mut self.deadline else {
            return false;
        };
        // The alarm is not moved each time the socket takes bytes: it rings, finds the
        // deadline moved, and is set again.
        while alarm.poll_rung(cx) {
            if Instant::now() >= due {
                return true;
            }
            alarm.set(due);
        }
        false
    }

    /// Puts the body's ready frames into `out`; true when it stopped before the body said
    /// it had nothing more for now.
    fn gather<B>(&mut self, mut body: Pin<&mut B>, cx: &mut Context<'_>) -> Result<bool, End>
    where
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        for _ in 0..FRAMES {
            if self.ended || !self.out.has_room() {
                return Ok(!self.ended);
            }
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are dropped: the client was not asked whether it takes them.
                    if let Ok(data) = frame.into_data() {
                        self.put(data);
                    }
                }
                Poll::Ready(Some(Err(error))) => return Err(End::Body(error.into())),
                Poll::Ready(None) => {
                    if let Framing::Chunked = self.framing {
                        self.out.bytes().extend_from_slice(b"0\r\n\r\n");
                    }
                    self.ended = true;
                }
                Poll::Pending => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Appends a frame of the body, large ones by reference.
    fn put(&mut self, data: impl Buf) {
        match self.framing {
            // An empty chunk would end the body.
            Framing::Chunked if data.has_remaining() => {
                let out = self.out.bytes();
                put_hex(out, data.remaining());
                out.extend_from_slice(b"\r\n");
                self.out.put_buf(data);
                self.out.bytes().extend_from_slice(b"\r\n");
            }
            Framing::Length(_) => self.out.put_buf(data),
            Framing::Chunked | Framing::Empty => {}
        }
    }

    /// Reads and drops what the client sent, if the socket said it has something; true
    /// when the client has closed the connection.
    fn client_left(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.readable.take(cx.waker()) {
            return false;
        }
        let mut read_cx = Context::from_waker(self.readable.waker());
        let mut scratch = [0; 256];
        for _ in 0..READS {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(&mut read_cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return true,
                // The socket has registered the signal's waker.
                Poll::Pending => return false,
            }
        }
        self.readable.raise();
        false
    }
}

/// The status line and the headers, with the framing this writer uses: hop-by-hop headers
/// from the service are replaced, and the connection closes after the response.
fn put_head(out: &mut Vec<u8>, parts: &Parts, framing: Framing) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    let reason = parts.status.canonical_reason().unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
        ]
        .contains(name)
            || name == "keep-alive"
        {
            continue;
        }
        put_field(out, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        put_field(out, "date", date.as_bytes());
    }
    put_field(out, "connection", b"close");
    match framing {
        Framing::Chunked => put_field(out, "transfer-encoding", b"chunked"),
        Framing::Length(len) => put_field(out, "content-length", len.to_string().as_bytes()),
        Framing::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn put_hex(out: &mut Vec<u8>, mut value: usize) {
    let mut digits = [0; 2 * size_of::<usize>()];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[value & 0xf];
        value >>= 4;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::put_hex;

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (value, hex) in [(0, "0"), (9, "9"), (10, "a"), (64, "40"), (65_535, "ffff")] {
            let mut out = Vec::new();
            put_hex(&mut out, value);
            assert_eq!(out, hex.as_bytes());
        }
    }
}
