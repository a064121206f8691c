//! Reading a connection's first request head, to tell an event stream from the rest.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use tokio::io::AsyncRead;

use super::Body;
use crate::classify::{is_upgrade_attempt, wants_event_stream};
use crate::scratch;

/// A head larger than this goes to hyper, which has the limits and the errors for it.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

pub(super) enum Head {
    /// A Server-Sent-Events request, alone on its connection.
    EventStream(Box<Request<Body>>),
    /// Anything else, as read so far.
    Other(Bytes),
    /// The client left before it sent a head.
    Closed,
}

/// Reads until the first request head is whole, or is known not to be an event stream.
///
/// Nothing is allocated while the client has sent nothing: each read lands in the
/// thread's buffer ([`scratch`]) and is copied into one of the head's size. After a
/// restart every client reconnects at once, and thousands of connections wait for their
/// heads together: a buffer each, freed among the sessions that outlive them, would stay
/// resident.
pub(super) async fn read(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Head> {
    let mut read = BytesMut::new();
    loop {
        let len = poll_fn(|cx| {
            scratch::poll_read(Pin::new(&mut *stream), cx, |filled| {
                read.extend_from_slice(filled);
                filled.len()
            })
        })
        .await?;
        if len == 0 {
            return Ok(if read.is_empty() {
                Head::Closed
            } else {
                Head::Other(read.freeze())
            });
        }
        match parse(&read) {
            Parsed::EventStream(request) => return Ok(Head::EventStream(request)),
            Parsed::Partial if read.len() < MAX_HEAD => {}
            Parsed::Partial | Parsed::Other => return Ok(Head::Other(read.freeze())),
        }
    }
}

enum Parsed {
    EventStream(Box<Request<Body>>),
    Partial,
    Other,
}

fn parse(read: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(read) {
        // Bytes past the head (a body, a pipelined request) are hyper's to read.
        Ok(httparse::Status::Complete(len)) if len == read.len() => {}
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        _ => return Parsed::Other,
    }
    if head.method != Some("GET") || head.version != Some(1) {
        return Parsed::Other;
    }
    let Some(request) = request(&head) else {
        return Parsed::Other;
    };
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len != "0");
    if has_body || is_upgrade_attempt(request.headers()) || !wants_event_stream(&request) {
        return Parsed::Other;
    }
    Parsed::EventStream(Box::new(request))
}

/// The head as a request; `None` for what `http` does not accept, which hyper then
/// refuses with its own error.
fn request(head: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let uri: Uri = head.path?.parse().ok()?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for field in head.headers.iter() {
        headers.append(
            HeaderName::from_bytes(field.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(field.value).ok()?,
        );
    }
    let mut request = Request::new(Body::default());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::{Parsed, parse};

    fn kind(head: &str) -> &'static str {
        match parse(head.as_bytes()) {
            Parsed::EventStream(_) => "stream",
            Parsed::Partial => "partial",
            Parsed::Other => "other",
        }
    }

    #[test]
    fn only_a_lone_bodiless_event_stream_request_is_taken() {
        let stream = "GET /events/a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        assert_eq!(kind(stream), "stream");
        assert_eq!(kind(&stream[..30]), "partial");
        assert_eq!(kind(&format!("{stream}GET / HTTP/1.1\r\n\r\n")), "other");
        assert_eq!(kind(&stream.replace("GET", "POST")), "other");
        assert_eq!(kind(&stream.replace("HTTP/1.1", "HTTP/1.0")), "other");
        assert_eq!(
            kind(&stream.replace("text/event-stream", "text/html")),
            "other"
        );
        let with_body = stream.replace("Host: x", "Host: x\r\nContent-Length: 5");
        assert_eq!(kind(&with_body), "other");
        let upgrade = stream.replace(
            "Host: x",
            "Host: x\r\nConnection: upgrade\r\nUpgrade: websocket",
        );
        assert_eq!(kind(&upgrade), "other");
        assert_eq!(kind("GET /\0 HTTP/1.1\r\n\r\n"), "other");
    }
}
