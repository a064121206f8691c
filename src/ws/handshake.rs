//! Validation of a WebSocket opening handshake (RFC 6455, section 4.2.1).

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::Rejection;
use crate::classify::has_token;

/// How the handshake is answered.
pub(crate) enum Answer {
    /// HTTP/1.1: 101, with this `Sec-WebSocket-Accept`.
    SwitchingProtocols(HeaderValue),
    /// An HTTP/2 extended CONNECT (RFC 8441): 200, and the stream carries the frames.
    Connected,
}

/// Checks the handshake: an HTTP/1.1 upgrade (RFC 6455, section 4.2.1) or an HTTP/2
/// extended CONNECT (RFC 8441, section 5), which has no key.
pub(crate) fn validate(parts: &Parts) -> Result<Answer, Rejection> {
    if crate::classify::is_extended_connect(&parts.method, &parts.extensions) {
        version_13(&parts.headers)?;
        return Ok(Answer::Connected);
    }
    if parts.method != Method::GET {
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade must use GET",
        )
        .with_header(header::ALLOW, "GET"));
    }
    if parts.version != Version::HTTP_11 {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs HTTP/1.1",
        ));
    }
    let headers = &parts.headers;
    if !has_token(headers, &header::CONNECTION, "upgrade")
        || !has_token(headers, &header::UPGRADE, "websocket")
    {
        return Err(Rejection::new(
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade needs `Connection: upgrade` and `Upgrade: websocket`",
        )
        .with_header(header::UPGRADE, "websocket"));
    }
    version_13(headers)?;
    let key = single(headers, &header::SEC_WEBSOCKET_KEY)
        .filter(|key| is_valid_key(key.as_bytes()))
        .ok_or_else(|| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be 16 bytes in base64",
            )
        })?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map(Answer::SwitchingProtocols)
        .map_err(|_| {
            Rejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not encode the accept key",
            )
        })
}

/// Refuses a handshake whose `Sec-WebSocket-Version` is not 13.
fn version_13(headers: &HeaderMap) -> Result<(), Rejection> {
    if single(headers, &header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version: only 13 is supported",
        )
        .with_header(header::SEC_WEBSOCKET_VERSION, "13"));
    }
    Ok(())
}

/// The header's value when it appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

/// A base64 encoding of 16 bytes: 22 characters of the alphabet and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

#[cfg(test)]
mod tests {
    use super::is_valid_key;

    #[test]
    fn keys() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!is_valid_key(b"c2hvcnQ="));
    }
}
