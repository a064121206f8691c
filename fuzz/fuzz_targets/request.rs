//! Any request through the layer: stream requests are answered with 101, 200 or a 4xx/5xx
//! with a reason; everything else reaches the inner service. Nothing panics.
#![no_main]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::task::{Context, Poll};

use arbitrary::Arbitrary;
use http::{Method, Request, Response, Version};
use libfuzzer_sys::fuzz_target;
use tower_fanout::{Hub, StreamLayer};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    http10: bool,
    uri: String,
    headers: Vec<(Name, Vec<u8>)>,
    origins: Vec<String>,
}

/// Mostly the headers the classifier reads, sometimes any.
#[derive(Arbitrary, Debug)]
enum Name {
    Connection,
    Upgrade,
    Version,
    Key,
    Origin,
    Host,
    Accept,
    Other(String),
}

#[derive(Clone)]
struct Inner;

impl Service<Request<()>> for Inner {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new("inner".into())))
    }
}

fuzz_target!(|input: Input| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();

    let method = [Method::GET, Method::POST, Method::HEAD, Method::CONNECT][usize::from(input.method % 4)].clone();
    let mut request = Request::builder()
        .method(method)
        .version(if input.http10 { Version::HTTP_10 } else { Version::HTTP_11 });
    if let Ok(uri) = input.uri.parse::<http::Uri>() {
        request = request.uri(uri);
    }
    for (name, value) in &input.headers {
        let name = match name {
            Name::Connection => "connection",
            Name::Upgrade => "upgrade",
            Name::Version => "sec-websocket-version",
            Name::Key => "sec-websocket-key",
            Name::Origin => "origin",
            Name::Host => "host",
            Name::Accept => "accept",
            Name::Other(other) => other,
        };
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(()) else { return };

    let hub = Hub::new();
    let mut service = StreamLayer::new(hub.clone()).allowed_origins(input.origins).layer(Inner);
    let Poll::Ready(Ok(response)) = std::pin::pin!(service.call(request))
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
    else {
        panic!("the layer answers at once");
    };
    let status = response.status().as_u16();
    assert!(
        matches!(status, 101 | 200 | 400 | 403 | 405 | 426 | 500),
        "unexpected status {status}"
    );
    if status >= 400 {
        let mut body = std::pin::pin!(response.into_body());
        let frame = http_body::Body::poll_frame(body.as_mut(), &mut Context::from_waker(std::task::Waker::noop()));
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))), "a refusal carries a reason");
    }
});
