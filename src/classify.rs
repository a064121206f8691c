//! Telling stream requests from the rest: a WebSocket upgrade attempt, a request for a
//! Server-Sent-Events stream. The service answers what it classifies so, and
//! [`serve`](crate::serve()) chooses how to serve a connection by the same rules.

use http::{HeaderMap, HeaderName, Method, Request, header};

/// Whether the request asks for a WebSocket at all: it names the protocol in `Upgrade`, or
/// carries a key. Such a request is answered by the layer, with a refusal if malformed.
pub(crate) fn is_upgrade_attempt(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
        || headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Whether the request is an HTTP/2 extended CONNECT for a WebSocket (RFC 8441): the
/// method CONNECT with the `:protocol` pseudo-header `websocket`, which hyper hands
/// over as an extension.
pub(crate) fn is_extended_connect(method: &Method, extensions: &http::Extensions) -> bool {
    #[cfg(feature = "http2")]
    {
        method == Method::CONNECT
            && extensions
                .get::<hyper::ext::Protocol>()
                .is_some_and(|protocol| protocol.as_str().eq_ignore_ascii_case("websocket"))
    }
    #[cfg(not(feature = "http2"))]
    {
        let _ = (method, extensions);
        false
    }
}

/// Whether the request asks for a Server-Sent-Events stream: a `GET` whose `Accept`
/// lists `text/event-stream`.
pub(crate) fn wants_event_stream<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET
        && list_items(request.headers(), &header::ACCEPT).any(|media| {
            // A media type may carry parameters: `text/event-stream; q=1`.
            media
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Whether a comma-separated header lists `token`, case-insensitively.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|item| item.eq_ignore_ascii_case(token))
}

/// The items of a comma-separated header, over all its lines, trimmed.
pub(crate) fn list_items<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}
