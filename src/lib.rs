//! `tower-fanout` turns a tower/hyper HTTP stack into a real-time push server.
//!
//! [`StreamLayer`] answers WebSocket upgrades and Server-Sent-Events requests on any tower
//! service (hyper, axum, tonic), resolves a topic from each request and subscribes the
//! connection to a [`Hub`]; every other request reaches the inner service untouched. A
//! [`backplane`] shares broadcasts between processes (Redis, with the `redis` feature).
//! The layer works under any server that hands over upgraded connections (hyper-util,
//! `axum::serve`); [`serve()`] is one of the crate's own, which answers event streams
//! with the least memory per connection.
//!
//! Its heart is the [`Hub`]: a lock-sharded, topic-keyed fan-out of [`Event`]s.
//! [`Hub::broadcast`] is a plain function that reaches every current [`Subscription`] of a
//! topic without ever waiting for one; each event is stored once and shared by all
//! subscribers, and its Server-Sent-Events wire form is encoded once. A [`Publisher`] is
//! the same for one topic, without finding the topic again for each event.
//!
//! # Quick start
//!
//! ```
//! use tower_fanout::{Event, Hub};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let mut device = hub.subscribe("device-42");
//!
//! // From anywhere: a request handler, a background job, another thread.
//! let reached = hub.broadcast("device-42", Event::new(r#"{"task":7}"#).event("task.cancelled")?);
//! assert_eq!(reached, 1);
//!
//! let event = device.recv().await?;
//! assert_eq!(event.event_type(), Some("task.cancelled"));
//! assert_eq!(&event.to_sse()[..], b"event: task.cancelled\ndata: {\"task\":7}\n\n");
//! # Ok(())
//! # }
//! ```
//!
//! # Slow subscribers
//!
//! Publishing never waits. Each topic keeps a bounded ring of its latest events
//! ([`HubBuilder::buffer`]); a subscriber that falls a whole ring behind is handled by the
//! [`LagPolicy`]: it skips the oldest events and is told how many, or it is disconnected.
//! Memory stays bounded whatever the subscribers do.
//!
//! # Many topics on one connection
//!
//! A connection may carry several topics: every `topic` query parameter by default
//! (`/events?topic=a&topic=b`), bounded by [`StreamLayer::max_topics`], each checked by
//! [`StreamLayer::authorize`]. A WebSocket client that asks for the `fanout.v1`
//! subprotocol (`PROTOCOL.md` in the repository, `client/fanout.js` for browsers)
//! subscribes and unsubscribes at runtime; a [`Subscriber`] is the same in process.
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `redis` | [`backplane`]'s `RedisBackplane`: broadcasts, and with history the history itself, shared between processes through Redis |
//! | `http2` | WebSockets over HTTP/2 (RFC 8441) where the server enables the extended CONNECT |
//! | `metrics` | [`metrics`] through the `metrics` facade, for any exporter |
//!
//! # Modules
//!
//! From the outside in: a module uses those below it in this table. Two pairs lean on
//! each other by design: an [`Event`] caches its wire forms, which the `sse` and `ws`
//! encoders make from it, and the configuration holds the `on_message` handler, whose
//! argument ([`ws::Inbound`]) is the WebSocket module's.
//!
//! | module | what it is |
//! | --- | --- |
//! | `layer` | [`StreamLayer`]: the options, applied to an inner service |
//! | `service`, `future`, `body` | [`StreamService`] and its [`ResponseFuture`] and [`ResponseBody`] |
//! | [`serve`](mod@serve) | [`serve()`]: HTTP/1.1 with upgrades (HTTP/2 with `http2`), TLS or any transport, event streams on the bare socket |
//! | [`ws`] | the handshake, origin checks, the `fanout.v1` protocol, permessage-deflate ([`Compression`]), the connection task |
//! | [`sse`] | the Server-Sent-Events encoding and response body |
//! | `config` | the layer's configuration, shared by every part that serves a stream |
//! | `classify` | telling WebSocket upgrade attempts and event-stream requests from the rest |
//! | `cursor` | one resumable id for a stream of several topics |
//! | `outgoing`, `wake` | a connection's write buffer; telling what woke a task |
//! | [`metrics`] | what the crate records, with the `metrics` feature |
//! | [`hub`], [`backplane`] | topics, their rings of events, [`Publisher`], [`Subscription`] and [`Subscriber`]; carrying broadcasts between processes (Redis) |
//! | `event`, `reject` | [`Event`] and its wire forms; [`Rejection`] |

#![warn(
    clippy::all,
    clippy::dbg_macro,
    clippy::todo,
    clippy::mem_forget,
    clippy::unused_self,
    clippy::needless_continue,
    clippy::needless_borrow,
    clippy::match_wildcard_for_single_variants,
    clippy::if_let_mutex,
    clippy::await_holding_lock,
    clippy::imprecise_flops,
    clippy::suboptimal_flops,
    clippy::lossy_float_literal,
    clippy::rest_pat_in_fully_bound_structs,
    clippy::fn_params_excessive_bools,
    clippy::exit,
    clippy::inefficient_to_string,
    clippy::linkedlist,
    clippy::macro_use_imports,
    clippy::option_option,
    clippy::verbose_file_reads,
    clippy::unnested_or_patterns,
    rust_2018_idioms,
    future_incompatible,
    nonstandard_style,
    missing_docs,
    missing_debug_implementations
)]
#![deny(unreachable_pub, unsafe_code)]
#![cfg_attr(test, allow(clippy::float_cmp))]

pub mod backplane;
mod body;
mod classify;
mod config;
mod cursor;
mod event;
mod future;
pub mod hub;
mod layer;
pub mod metrics;
mod outgoing;
mod reject;
mod scratch;
pub mod serve;
mod service;
pub mod sse;
mod wake;
pub mod ws;

pub use body::ResponseBody;
pub use event::{Event, InvalidEvent};
pub use future::ResponseFuture;
pub use hub::{
    CloseReason, Hub, HubBuilder, LagPolicy, Lagged, Publisher, RecvError, Resume, Stats,
    Subscriber, Subscription,
};
pub use layer::StreamLayer;
pub use reject::Rejection;
pub use serve::serve;
pub use service::StreamService;
pub use ws::Compression;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;
