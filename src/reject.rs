//! Refusing a stream request: a status and a short plain-text reason.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Prepared;

/// A refusal of a stream request, answered with `status` and `reason` as a plain-text body.
///
/// Returned by a topic resolver to refuse a client (for example 401 when it is not
/// authenticated); the layer uses it for malformed handshakes too.
///
/// ```
/// use http::StatusCode;
/// use tower_fanout::Rejection;
///
/// let rejection = Rejection::new(StatusCode::FORBIDDEN, "not your device");
/// assert_eq!(rejection.status(), StatusCode::FORBIDDEN);
/// assert_eq!(rejection.reason(), "not your device");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    reason: Cow<'static, str>,
    /// A header the client needs to retry correctly (e.g. the supported version).
    header: Option<(header::HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A refusal with this status and reason.
    pub fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            reason: reason.into(),
            header: None,
        }
    }

    pub(crate) fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.header = Some((name, HeaderValue::from_static(value)));
        self
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The reason sent as the response body.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub(crate) fn into_response(self) -> Response<Prepared> {
        let mut body = self.reason.into_owned();
        body.push('\n');
        let mut response = Response::new(Prepared::Full(Some(Bytes::from(body))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some((name, value)) = self.header {
            headers.insert(name, value);
        }
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for Rejection {}
