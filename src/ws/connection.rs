//! The task that serves one WebSocket connection: subscription, client messages and
//! direct sends in one loop.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Extensions;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tracing::Instrument;

use super::{Connection, DIRECT_QUEUE, Inbound, LOST, event_frame};
use crate::layer::Config;
use crate::{CloseReason, RecvError, Resume, Subscription};

/// Events taken from the subscription per write: fed in one burst, flushed once.
const BATCH: usize = 64;

pub(super) async fn serve(
    on_upgrade: OnUpgrade,
    subscription: Subscription,
    resume: Resume,
    config: Arc<Config>,
    extensions: Extensions,
) {
    let span = tracing::debug_span!(
        "stream",
        transport = "websocket",
        topic = subscription.topic(),
        peer = crate::service::peer(&extensions).map(tracing::field::display),
    );
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                return tracing::warn!(
                    %error,
                    "the server did not hand over the upgraded connection; serve it with \
                     upgrades enabled (hyper-util's serve_connection_with_upgrades, axum::serve)"
                );
            }
        };
        // The library's defaults buffer 128 KiB per connection; an idle push connection
        // needs little: the read buffer is refilled 1 KiB at a time, and larger messages
        // are still read whole.
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(16 * 1024)
            // Flushed after every burst, the buffer holds at most a burst; the bound only
            // stops a connection whose writes fail from growing it.
            .max_write_buffer_size(64 * 1024 * 1024)
            .max_message_size(Some(config.read_limit))
            .max_frame_size(Some(config.read_limit));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
                .await;
        tracing::debug!("connection opened");
        match run(socket, subscription, resume, &config, &extensions).await {
            Some((code, reason)) => {
                tracing::debug!(code = u16::from(code), reason, "connection closed")
            }
            None => tracing::debug!("connection closed by the client"),
        }
    }
    .instrument(span)
    .await;
}

/// Serves until the connection ends; returns the close code and reason sent, if any.
async fn run<S>(
    mut socket: WebSocketStream<S>,
    mut subscription: Subscription,
    resume: Resume,
    config: &Config,
    extensions: &Extensions,
) -> Option<(CloseCode, &'static str)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if config.websocket_ids
        && resume == Resume::EventsLost
        && !write(&mut socket, std::iter::once(Message::text(LOST)), config).await
    {
        return None;
    }
    let (direct, mut direct_rx) = mpsc::channel::<Message>(DIRECT_QUEUE);
    let connection = Connection { direct };
    let mut batch = Vec::with_capacity(BATCH);
    let mut pings = interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Checked at each ping, so that a connection needs one timer, not two.
    let allowed_silence = config.ping_interval + config.ping_timeout;
    let mut last_heard = Instant::now();

    let close = loop {
        tokio::select! {
            _ = pings.tick() => {
                if last_heard.elapsed() >= allowed_silence {
                    break Some((CloseCode::Away, "ping timeout"));
                }
                if !write(&mut socket, std::iter::once(Message::Ping(Bytes::new())), config).await {
                    break Some((CloseCode::Again, "write timed out"));
                }
            }
            received = subscription.recv_many(&mut batch, BATCH) => match received {
                Ok(_) => {
                    let frames = batch.drain(..).map(|event| event_frame(&event, config));
                    if !write(&mut socket, frames, config).await {
                        break Some((CloseCode::Again, "write timed out"));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "lagged: events skipped");
                }
                Err(RecvError::Closed(CloseReason::Lagged)) => {
                    break Some((CloseCode::Policy, "too slow to keep up"));
                }
                Err(RecvError::Closed(CloseReason::Disconnected)) => {
                    break Some((CloseCode::Normal, "disconnected by the server"));
                }
                Err(RecvError::Closed(_)) => break Some((CloseCode::Away, "server shutting down")),
            },
            Some(first) = direct_rx.recv() => {
                let queued = std::iter::from_fn(|| direct_rx.try_recv().ok());
                if !write(&mut socket, std::iter::once(first).chain(queued), config).await {
                    break Some((CloseCode::Again, "write timed out"));
                }
            }
            message = socket.next() => {
                if matches!(message, Some(Ok(_))) {
                    last_heard = Instant::now();
                }
                match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    let (data, text) = match message {
                        Message::Text(text) => (Bytes::from(text), true),
                        other => (other.into_data(), false),
                    };
                    deliver(config, &subscription, extensions, &connection, data, text);
                    // Replies the handler queued go out before the next message is read,
                    // so a client that sends faster than it reads cannot fill the queue.
                    let replies: Vec<Message> = std::iter::from_fn(|| direct_rx.try_recv().ok()).collect();
                    if !replies.is_empty() && !write(&mut socket, replies.into_iter(), config).await {
                        break Some((CloseCode::Again, "write timed out"));
                    }
                }
                // The library queues the pong (or the close reply); send it now.
                Some(Ok(Message::Ping(_) | Message::Close(_))) => {
                    if timeout(config.write_timeout, socket.flush()).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(Error::Capacity(_))) => break Some((CloseCode::Size, "message too big")),
                Some(Err(Error::Utf8(_))) => break Some((CloseCode::Invalid, "invalid UTF-8")),
                Some(Err(Error::Protocol(_))) => break Some((CloseCode::Protocol, "protocol error")),
                // The client closed, or the connection is gone.
                Some(Err(_)) | None => break None,
            }},
        }
    };

    let (code, reason) = close?;
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    // Best effort: a peer that stopped reading cannot receive it anyway.
    let _ = timeout(config.write_timeout, socket.close(Some(frame))).await;
    Some((code, reason))
}

/// Feeds every frame, then flushes once. False when the write failed or timed out.
async fn write<S>(
    socket: &mut WebSocketStream<S>,
    frames: impl Iterator<Item = Message>,
    config: &Config,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let burst = async {
        for frame in frames {
            socket.feed(frame).await?;
        }
        socket.flush().await
    };
    matches!(timeout(config.write_timeout, burst).await, Ok(Ok(())))
}

fn deliver(
    config: &Config,
    subscription: &Subscription,
    extensions: &Extensions,
    connection: &Connection,
    data: Bytes,
    text: bool,
) {
    if let Some(handler) = &config.on_message {
        handler(Inbound {
            data,
            text,
            topic: subscription.topic(),
            extensions,
            hub: &config.hub,
            connection,
        });
    }
}
