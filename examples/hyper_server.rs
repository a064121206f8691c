//! A push server on a bare hyper-util server: a demo page, a stream endpoint answering
//! WebSocket and Server-Sent Events, and a publish endpoint.
//!
//! ```sh
//! cargo run --example hyper_server             # listens on 127.0.0.1:3000
//! ADDR=127.0.0.1:8080 cargo run --example hyper_server
//! TLS_CERT=cert.pem TLS_KEY=key.pem cargo run --features http2 --example hyper_server
//! ```
//!
//! With `TLS_CERT` and `TLS_KEY` (PEM files), or `TLS_SELF_SIGNED=1` (a certificate for
//! `localhost` made at start), it serves HTTPS, HTTP/2 and HTTP/1.1 by ALPN; built with
//! `--features http2`, WebSockets travel over HTTP/2 too.
//!
//! - `GET /`: a page that subscribes to a topic by WebSocket and by EventSource and shows
//!   what arrives;
//! - `GET /events/{topic}`: the stream endpoint, WebSocket or SSE by the request's headers;
//! - `GET /events?topic=a&topic=b`: one stream of several topics (SSE, raw WebSocket, or
//!   the `fanout.v1` protocol, whose clients may also name none and subscribe later);
//! - `GET /fanout.js`: the browser client of the protocol (`client/fanout.js`);
//! - `POST /publish/{topic}?event=TYPE`: broadcasts the body; answers with the number of
//!   local subscribers reached;
//! - `GET /metrics` (built with `--features metrics`): the Prometheus text format;
//! - `POST /disconnect/{topic}`: ends the topic's streams, and every connection that
//!   holds the topic among others (they resume when they reconnect); answers with the
//!   number ended.
//!
//! The hub keeps 256 events per topic, so a reconnecting client gets what it missed:
//! `EventSource` resumes by itself, and the page's WebSocket, whose frames carry
//! `id LF data`, reconnects with `?since=ID`.
//!
//! Try `curl -N -H 'Accept: text/event-stream' localhost:3000/events/demo` in one shell and
//! `curl -d hello localhost:3000/publish/demo` in another.
//!
//! Built with `--features redis` and run with `REDIS_URL` set, it joins the Redis
//! backplane: two of them on two ports are a cluster, where a publish on either reaches
//! the subscribers of both.
//!
//! ```sh
//! ADDR=127.0.0.1:3000 REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example hyper_server
//! ADDR=127.0.0.1:3001 REDIS_URL=redis://127.0.0.1:6379/ cargo run --features redis --example hyper_server
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower_fanout::{Compression, Event, Hub, HubBuilder, Rejection, StreamLayer};
use tower_layer::Layer;
use tower_service::Service;

const PAGE: &str = include_str!("hyper_server.html");
const CLIENT: &str = include_str!("../client/fanout.js");
/// The largest body `POST /publish` accepts.
const MAX_PUBLISH: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    // 256 events per topic are kept, so a client that reconnects gets what it missed.
    let (builder, plane) = backplane(Hub::builder().history(256))?;
    let hub = builder.build();
    let app = App {
        #[cfg(feature = "metrics")]
        scrape: scraper(&hub, plane)?,
        hub: hub.clone(),
    };
    #[cfg(not(feature = "metrics"))]
    let _ = plane;
    let app = StreamLayer::new(hub.clone())
        .websocket_ids(true)
        // permessage-deflate for the clients that offer it, as browsers do.
        .compression(Compression::new())
        .retry(Duration::from_secs(1))
        .topics(|parts| match parts.uri.path() {
            // Several topics, or none for a client of the protocol that subscribes later.
            "/events" => Ok(parts
                .uri
                .query()
                .map(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .filter(|(key, _)| key == "topic")
                        .map(|(_, topic)| topic.into_owned())
                        .collect()
                })
                .unwrap_or_default()),
            path => path
                .strip_prefix("/events/")
                .filter(|topic| !topic.is_empty() && !topic.contains('/'))
                .map(|topic| vec![topic.to_owned()])
                .ok_or_else(|| {
                    Rejection::new(
                        StatusCode::NOT_FOUND,
                        "streams are at /events/{topic} and /events?topic=a&topic=b",
                    )
                }),
        })
        .layer(app);

    let tls = tls()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            // Upgrades must be enabled for WebSockets, and the extended CONNECT for
            // WebSockets over HTTP/2.
            #[cfg_attr(not(feature = "http2"), allow(unused_mut))]
            let mut builder = auto::Builder::new(TokioExecutor::new());
            #[cfg(feature = "http2")]
            builder.http2().enable_connect_protocol();
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
                None => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
            };
        });
    }
}

/// HTTPS with the certificate chain and key in the PEM files at `TLS_CERT` and `TLS_KEY`,
/// when both are set, or with a self-signed certificate for `localhost` made at start
/// when `TLS_SELF_SIGNED` is set (for a browser told to ignore certificate errors);
/// offering HTTP/2 and HTTP/1.1 by ALPN.
fn tls() -> Result<Option<tokio_rustls::TlsAcceptor>, Box<dyn std::error::Error>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (chain, key) = match (std::env::var("TLS_CERT"), std::env::var("TLS_KEY")) {
        (Ok(cert), Ok(key)) => (
            CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_file(&key)?,
        ),
        _ if std::env::var_os("TLS_SELF_SIGNED").is_some() => {
            let made = rcgen::generate_simple_self_signed(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ])?;
            let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())?;
            (vec![made.cert.der().clone()], key)
        }
        _ => return Ok(None),
    };
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
        config,
    ))))
}

/// The backplane the hub joined, if any.
#[cfg(feature = "redis")]
type Plane = Option<tower_fanout::backplane::RedisBackplane>;
#[cfg(not(feature = "redis"))]
type Plane = Option<Infallible>;

/// Joins the Redis backplane at `REDIS_URL`, when set.
#[cfg(feature = "redis")]
fn backplane(builder: HubBuilder) -> Result<(HubBuilder, Plane), Box<dyn std::error::Error>> {
    Ok(match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("sharing topics through {url}");
            let plane = tower_fanout::backplane::RedisBackplane::new(&url)?;
            (builder.backplane(plane.clone()), Some(plane))
        }
        Err(_) => (builder, None),
    })
}

#[cfg(not(feature = "redis"))]
fn backplane(builder: HubBuilder) -> Result<(HubBuilder, Plane), Box<dyn std::error::Error>> {
    if std::env::var_os("REDIS_URL").is_some() {
        return Err("REDIS_URL is set, but this build has no Redis: add --features redis".into());
    }
    Ok((builder, None))
}

/// Renders `GET /metrics`: the hub's and the backplane's counters, handed to the
/// Prometheus recorder just before.
#[cfg(feature = "metrics")]
type Scrape = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

#[cfg(feature = "metrics")]
fn scraper(hub: &Hub, plane: Plane) -> Result<Scrape, Box<dyn std::error::Error>> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let hub = hub.clone();
    Ok(std::sync::Arc::new(move || {
        tower_fanout::metrics::record(&hub);
        #[cfg(feature = "redis")]
        if let Some(plane) = &plane {
            tower_fanout::metrics::record_redis(plane);
        }
        #[cfg(not(feature = "redis"))]
        let _ = &plane;
        handle.render()
    }))
}

/// Everything that is not a stream: the page and the publish endpoint.
#[derive(Clone)]
struct App {
    hub: Hub,
    #[cfg(feature = "metrics")]
    scrape: Scrape,
}

impl Service<Request<Incoming>> for App {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(route(app, request).await) })
    }
}

async fn route(app: App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let hub = app.hub;
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        #[cfg(feature = "metrics")]
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, (app.scrape)());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/") => typed(PAGE, "text/html; charset=utf-8"),
        (&Method::GET, "/fanout.js") => typed(CLIENT, "text/javascript; charset=utf-8"),
        (&Method::POST, path) if path.starts_with("/publish/") => {
            let topic = path.trim_start_matches("/publish/").to_owned();
            // Decoded as a browser encodes it: `?event=a%20b` is the type `a b`.
            let event_type = request.uri().query().and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == "event")
                    .map(|(_, value)| value.into_owned())
            });
            let data = match Limited::new(request.into_body(), MAX_PUBLISH)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large or broken\n"),
            };
            let mut event = Event::new(data);
            if let Some(event_type) = event_type {
                event = match event.event(&event_type) {
                    Ok(event) => event,
                    Err(error) => return text(StatusCode::BAD_REQUEST, format!("{error}\n")),
                };
            }
            text(
                StatusCode::OK,
                format!("{}\n", hub.broadcast(&topic, event)),
            )
        }
        (&Method::POST, path) if path.starts_with("/disconnect/") => {
            let topic = path.trim_start_matches("/disconnect/");
            text(StatusCode::OK, format!("{}\n", hub.disconnect(topic)))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn typed(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}
