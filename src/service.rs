//! [`StreamService`]: answers stream requests, passes the rest to the inner service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, header};
use tower_service::Service;

use crate::body::{Prepared, ResponseBody};
use crate::classify::{is_extended_connect, is_upgrade_attempt, wants_event_stream};
use crate::config::{Config, WriteTimeout, peer, query_param};
use crate::future::ResponseFuture;
use crate::sse::SseBody;
use crate::{Rejection, ws};

/// The service made by a [`StreamLayer`](crate::StreamLayer) around `S`.
#[derive(Clone, Debug)]
pub struct StreamService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> StreamService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for StreamService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.config.intercepts(request.uri().path()) {
            return ResponseFuture::inner(self.inner.call(request));
        }
        if is_upgrade_attempt(request.headers())
            || is_extended_connect(request.method(), request.extensions())
        {
            let (parts, _body) = request.into_parts();
            let response = ws::accept(&self.config, parts).unwrap_or_else(refuse);
            return ResponseFuture::ready(response);
        }
        if wants_event_stream(&request) {
            let (parts, _body) = request.into_parts();
            let response = sse_response(&self.config, &parts).unwrap_or_else(refuse);
            return ResponseFuture::ready(response);
        }
        ResponseFuture::inner(self.inner.call(request))
    }
}

/// The answer to a refused stream request, counted.
fn refuse(rejection: Rejection) -> Response<Prepared> {
    crate::metrics::refused(rejection.status());
    rejection.into_response()
}

fn sse_response(
    config: &Config,
    parts: &http::request::Parts,
) -> Result<Response<Prepared>, Rejection> {
    let topics = config.topics(parts, false)?;
    let span = tracing::debug_span!(
        "stream",
        transport = "sse",
        topic = %topics.join(","),
        peer = peer(&parts.extensions).map(tracing::field::display),
    );
    // EventSource sends the header when it reconnects; the query parameter lets a page
    // resume on its first connection.
    let last_event_id = parts
        .headers
        .get("last-event-id")
        .and_then(|id| id.to_str().ok())
        .map(str::to_owned)
        .or_else(|| query_param(parts, "lastEventId"));
    let opened = config.open(&topics, last_event_id.as_deref());
    span.in_scope(|| tracing::debug!(lost = opened.lost.len(), "stream opened"));
    let body = SseBody::new(opened, config, parts.version, span);
    let mut response = Response::new(Prepared::Sse(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    headers.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    // `tower_fanout::serve` closes a stream whose client stops reading for this long.
    response
        .extensions_mut()
        .insert(WriteTimeout(config.write_timeout));
    Ok(response)
}
