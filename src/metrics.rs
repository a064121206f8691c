//! Prometheus-ready metrics through the [`metrics`](https://docs.rs/metrics) facade, with
//! the `metrics` feature: whatever exporter the application installs (Prometheus,
//! StatsD, ...) receives them.
//!
//! What happens per connection is recorded as it happens: connections open, by
//! transport and HTTP version (`fanout_connections`), WebSocket closes by code
//! (`fanout_closes_total`), write timeouts by transport (`fanout_write_timeouts_total`)
//! and refused handshakes by status (`fanout_refused_total`). What happens per event is
//! counted by the hub, as it always is, and handed to the recorder by `record` (and
//! `record_redis` for the backplane's counters), so that a delivery costs no more
//! with metrics than without: call them before each scrape.
//!
//! ```
//! # #[cfg(feature = "metrics")]
//! # {
//! let hub = tower_fanout::Hub::new();
//! // Before rendering the exporter's text, for example in the `/metrics` handler:
//! tower_fanout::metrics::record(&hub);
//! # }
//! ```
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `fanout_connections` | gauge | `transport` (`websocket`, `sse`), `version` (`HTTP/1.1`, `HTTP/2`) |
//! | `fanout_closes_total` | counter | `code` (WebSocket close code) |
//! | `fanout_write_timeouts_total` | counter | `transport` |
//! | `fanout_refused_total` | counter | `status` |
//! | `fanout_topics`, `fanout_idle_topics`, `fanout_subscriptions` | gauge | |
//! | `fanout_broadcasts_total`, `fanout_deliveries_total` | counter | |
//! | `fanout_lagged_events_total`, `fanout_lag_disconnects_total` | counter | |
//! | `fanout_backplane_connected`, `fanout_backplane_topics`, `fanout_backplane_waiting_resumes` | gauge | |
//! | `fanout_backplane_published_total`, `_not_delivered_total`, `_received_total`, `_dropped_total`, `_lost_total`, `_reconnects_total` | counter | |

#[cfg(feature = "metrics")]
use metrics::{counter, gauge};

#[cfg(feature = "metrics")]
use crate::Hub;

/// Counts a connection of `transport` open while it lives.
#[derive(Debug)]
pub(crate) struct Open {
    #[cfg(feature = "metrics")]
    labels: [(&'static str, &'static str); 2],
}

impl Open {
    pub(crate) fn new(transport: &'static str, version: http::Version) -> Self {
        #[cfg(feature = "metrics")]
        {
            let version = match version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_3 => "HTTP/3",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            };
            let labels = [("transport", transport), ("version", version)];
            gauge!("fanout_connections", &labels).increment(1.0);
            Self { labels }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (transport, version);
            Self {}
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Open {
    fn drop(&mut self) {
        gauge!("fanout_connections", &self.labels).decrement(1.0);
    }
}

/// A WebSocket connection closed with `code`.
pub(crate) fn closed(code: u16) {
    #[cfg(feature = "metrics")]
    counter!("fanout_closes_total", "code" => code.to_string()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = code;
}

/// A connection of `transport` was closed because its client took nothing for the write
/// timeout.
pub(crate) fn write_timeout(transport: &'static str) {
    #[cfg(feature = "metrics")]
    counter!("fanout_write_timeouts_total", "transport" => transport).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = transport;
}

/// A stream request was refused with `status`.
pub(crate) fn refused(status: http::StatusCode) {
    #[cfg(feature = "metrics")]
    counter!("fanout_refused_total", "status" => status.as_str().to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = status;
}

/// Hands the hub's counters ([`Hub::stats`]) to the installed recorder: topics,
/// subscriptions, broadcasts, deliveries and what lag cost. Call it before each scrape.
#[cfg(feature = "metrics")]
pub fn record(hub: &Hub) {
    let stats = hub.stats();
    gauge!("fanout_topics").set(stats.topics as f64);
    gauge!("fanout_idle_topics").set(stats.idle_topics as f64);
    gauge!("fanout_subscriptions").set(stats.subscribers as f64);
    counter!("fanout_broadcasts_total").absolute(stats.broadcasts);
    counter!("fanout_deliveries_total").absolute(stats.deliveries);
    counter!("fanout_lagged_events_total").absolute(stats.dropped);
    counter!("fanout_lag_disconnects_total").absolute(stats.lag_disconnects);
}

/// Hands a Redis backplane's counters ([`RedisBackplane::stats`]) to the installed
/// recorder. Call it before each scrape.
///
/// [`RedisBackplane::stats`]: crate::backplane::RedisBackplane::stats
#[cfg(all(feature = "metrics", feature = "redis"))]
pub fn record_redis(backplane: &crate::backplane::RedisBackplane) {
    let stats = backplane.stats();
    gauge!("fanout_backplane_connected").set(if stats.connected { 1.0 } else { 0.0 });
    gauge!("fanout_backplane_topics").set(stats.subscribed_topics as f64);
    gauge!("fanout_backplane_waiting_resumes").set(stats.waiting_resumes as f64);
    counter!("fanout_backplane_published_total").absolute(stats.published);
    counter!("fanout_backplane_not_delivered_total").absolute(stats.not_delivered);
    counter!("fanout_backplane_received_total").absolute(stats.received);
    counter!("fanout_backplane_dropped_total").absolute(stats.dropped);
    counter!("fanout_backplane_lost_total").absolute(stats.lost);
    counter!("fanout_backplane_reconnects_total").absolute(stats.reconnects);
}
