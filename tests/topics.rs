//! Many topics on one connection, over real sockets: several at the handshake, for
//! WebSocket and SSE; per-topic authorization; the WebSocket protocol `fanout.v1` with
//! its replies and errors; subscribes from an `on_message` handler; resuming every topic
//! of a stream.

mod common;

use std::task::{Context, Poll};

use futures_util::SinkExt;
use http::{Request, StatusCode};
use serde_json::json;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tower_fanout::{Event, Hub, Rejection, StreamLayer};
use tower_layer::Layer;
use tower_service::Service;

use common::{
    Inner, SseClient, WAIT, command, next_json, next_text, protocol_client, raw_request, send,
    serve_hyper, wait_until, ws_connect,
};

/// A user, as an authentication layer in front of the stream layer leaves it.
#[derive(Clone, Debug)]
struct User(String);

/// The authentication layer: the `x-user` header names the user.
#[derive(Clone)]
struct Authenticate<S>(S);

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let user = request
            .headers()
            .get("x-user")
            .and_then(|user| user.to_str().ok())
            .map(|user| User(user.to_owned()));
        if let Some(user) = user {
            request.extensions_mut().insert(user);
        }
        self.0.call(request)
    }
}

/// Topics `private:NAME` are for the user NAME only; `secret` for no one.
fn authorize(parts: &http::request::Parts, topic: &str) -> Result<(), Rejection> {
    if topic == "secret" {
        return Err(Rejection::new(StatusCode::FORBIDDEN, "no one reads secret"));
    }
    match topic.strip_prefix("private:") {
        None => Ok(()),
        Some(owner) => match parts.extensions.get::<User>() {
            Some(User(user)) if user == owner => Ok(()),
            Some(_) => Err(Rejection::new(StatusCode::FORBIDDEN, "not your topic")),
            None => Err(Rejection::new(StatusCode::UNAUTHORIZED, "sign in first")),
        },
    }
}

async fn serve(layer: StreamLayer) -> std::net::SocketAddr {
    serve_hyper(Authenticate(layer.layer(Inner))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_the_topics_of_its_handshake() {
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=a&topic=b&topic=a")).await;
    let mut sse = SseClient::connect(addr, "/?topic=b&topic=c").await;
    wait_until("both subscribed, a topic named twice once", || {
        hub.stats().subscribers == 4
    })
    .await;
    for topic in ["a", "b", "c", "d"] {
        hub.broadcast(topic, format!("to {topic}"));
    }
    let mut frames = vec![next_text(&mut socket).await, next_text(&mut socket).await];
    frames.sort();
    assert_eq!(frames, ["to a", "to b"]);
    let mut events = vec![sse.next_event().await.data, sse.next_event().await.data];
    events.sort();
    assert_eq!(events, ["to b", "to c"]);
    hub.broadcast("a", "again");
    assert_eq!(next_text(&mut socket).await, "again", "nothing of c or d");
}

#[tokio::test]
async fn too_many_topics_and_refused_topics_refuse_the_handshake() {
    let hub = Hub::new();
    let addr = serve(
        StreamLayer::new(hub.clone())
            .max_topics(3)
            .authorize(authorize),
    )
    .await;
    let get = |query: &str, headers: &str| {
        format!(
            "GET /{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}Connection: close\r\n\r\n"
        )
    };
    for (request, status, reason) in [
        (
            get("?topic=a&topic=b&topic=c&topic=d", ""),
            400,
            "too many topics: at most 3",
        ),
        (get("?topic=a&topic=secret", ""), 403, "no one reads secret"),
        (get("?topic=private:ann", ""), 401, "sign in first"),
        (
            get("?topic=private:ann", "x-user: bob\r\n"),
            403,
            "not your topic",
        ),
        (get("", ""), 400, "missing topic"),
    ] {
        let (code, text) = raw_request(addr, &request).await;
        assert_eq!(code, status, "{request:?} -> {text}");
        assert!(text.contains(reason), "{request:?} -> {text}");
    }
    assert_eq!(hub.stats().subscribers, 0);
    let mut ann =
        SseClient::connect_with(addr, "/?topic=private:ann&topic=a", "x-user: ann\r\n").await;
    wait_until("subscribed", || hub.stats().subscribers == 2).await;
    hub.broadcast("private:ann", "for ann");
    assert_eq!(ann.next_event().await.data, "for ann");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_of_several_topics_names_each_events_topic_and_resumes_them_all() {
    let hub = Hub::builder().history(64).build();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    let topics = ["a", "b", "c"];
    let path = "/?topic=a&topic=b&topic=c";
    // c has had events before the stream starts; b will have none until after the drop.
    hub.broadcast("c", "c-before");
    let mut sse = SseClient::connect(addr, path).await;
    wait_until("subscribed", || hub.stats().subscribers == 3).await;
    hub.broadcast("a", "a0");
    hub.broadcast("c", "c0");
    // Each id names the event's topic by its index in the request, then the positions.
    let mut last_id = String::new();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = sse.next_event().await;
        let id = event.id.expect("an id");
        let index: usize = id
            .split(';')
            .next()
            .expect("an index")
            .parse()
            .expect("a number");
        seen.push(format!("{} {}", topics[index], event.data));
        last_id = id;
    }
    assert_eq!(seen, ["a a0", "c c0"]);
    drop(sse);
    wait_until("gone", || hub.stats().subscribers == 0).await;

    // While it is away, every topic moves on.
    for topic in topics {
        hub.broadcast(topic, format!("{topic}1"));
        hub.broadcast(topic, format!("{topic}2"));
    }
    let mut sse =
        SseClient::connect_with(addr, path, &format!("Last-Event-ID: {last_id}\r\n")).await;
    let mut by_topic: [Vec<String>; 3] = Default::default();
    for _ in 0..6 {
        let event = sse.next_event().await;
        assert_eq!(
            event.event, "message",
            "no lost notice: every topic reaches back"
        );
        let index: usize = event
            .id
            .expect("an id")
            .split(';')
            .next()
            .expect("index")
            .parse()
            .expect("number");
        by_topic[index].push(event.data);
    }
    assert_eq!(by_topic, [["a1", "a2"], ["b1", "b2"], ["c1", "c2"]]);

    // A resume that one topic's history no longer reaches: that topic is announced lost.
    let small = Hub::builder().history(2).build();
    let addr = serve(StreamLayer::new(small.clone())).await;
    let mut sse = SseClient::connect(addr, "/?topic=x&topic=y").await;
    wait_until("subscribed", || small.stats().subscribers == 2).await;
    small.broadcast("x", "x0");
    small.broadcast("y", "y0");
    sse.next_event().await;
    let id = sse.next_event().await.id.expect("an id");
    drop(sse);
    wait_until("gone", || small.stats().subscribers == 0).await;
    for i in 1..=4 {
        small.broadcast("x", format!("x{i}"));
    }
    small.broadcast("y", "y1");
    let mut sse = SseClient::connect_with(
        addr,
        "/?topic=x&topic=y",
        &format!("Last-Event-ID: {id}\r\n"),
    )
    .await;
    let lost = sse.next_event().await;
    assert_eq!((lost.event.as_str(), lost.data.as_str()), ("lost", "x"));
    let mut rest: Vec<String> = Vec::new();
    for _ in 0..3 {
        rest.push(sse.next_event().await.data);
    }
    rest.sort();
    assert_eq!(rest, ["x3", "x4", "y1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_subscribes_replies_and_refuses_with_reasons() {
    let hub = Hub::builder().history(16).build();
    let addr = serve(
        StreamLayer::new(hub.clone())
            .max_topics(3)
            .authorize(authorize),
    )
    .await;
    // No topic at the handshake: a client of the protocol subscribes later.
    let mut socket = protocol_client(addr, "", &[("x-user", "ann")]).await;

    assert_eq!(
        command(
            &mut socket,
            json!({"type": "subscribe", "topic": "a", "req": 1})
        )
        .await,
        json!({"type": "ok", "req": 1, "position": ""})
    );
    hub.broadcast("a", Event::new("hello").event("greeting").expect("valid"));
    hub.broadcast("a", vec![0xff, 0x00]);
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "event", "topic": "a", "id": hub_id(&hub, "a", 0), "event": "greeting", "data": "hello"})
    );
    let binary = next_json(&mut socket).await;
    assert_eq!(binary["data_base64"], "/wA=", "{binary}");

    for (command, reply) in [
        (
            json!({"type": "subscribe", "topic": "a", "req": "r2"}),
            json!({"type": "error", "req": "r2", "status": 409, "reason": "already subscribed to `a`"}),
        ),
        (
            json!({"type": "subscribe", "topic": "secret", "req": 3}),
            json!({"type": "error", "req": 3, "status": 403, "reason": "no one reads secret"}),
        ),
        (
            json!({"type": "subscribe", "topic": "private:bob", "req": 4}),
            json!({"type": "error", "req": 4, "status": 403, "reason": "not your topic"}),
        ),
        (
            json!({"type": "subscribe", "topic": "private:ann", "req": 5}),
            json!({"type": "ok", "req": 5, "position": ""}),
        ),
        (
            json!({"type": "subscribe", "topic": "b", "req": 6}),
            json!({"type": "ok", "req": 6, "position": ""}),
        ),
        (
            json!({"type": "subscribe", "topic": "c", "req": 7}),
            json!({"type": "error", "req": 7, "status": 400, "reason": "too many topics: at most 3 on one connection"}),
        ),
        (
            json!({"type": "unsubscribe", "topic": "zzz", "req": 8}),
            json!({"type": "error", "req": 8, "status": 404, "reason": "not subscribed to `zzz`"}),
        ),
        (
            json!({"type": "publish", "req": "x"}),
            json!({"type": "error", "req": "x", "status": 400, "reason": "unknown command type `publish`"}),
        ),
        (
            json!({"type": "subscribe", "req": 9}),
            json!({"type": "error", "req": 9, "status": 400, "reason": "subscribe needs a `topic`"}),
        ),
        (
            json!(["not", "an", "object"]),
            json!({"type": "error", "status": 400, "reason": "a command is a JSON object"}),
        ),
    ] {
        send(&mut socket, command.clone()).await;
        assert_eq!(next_json(&mut socket).await, reply, "{command}");
    }
    socket.send(Message::text("{not json")).await.expect("send");
    assert_eq!(
        next_json(&mut socket).await["reason"],
        "a command is a JSON object"
    );
    socket
        .send(Message::binary(vec![1, 2]))
        .await
        .expect("send");
    assert_eq!(
        next_json(&mut socket).await["reason"],
        "commands are JSON in text frames"
    );

    // Unsubscribed: nothing more of it; the connection serves the rest.
    assert_eq!(
        command(
            &mut socket,
            json!({"type": "unsubscribe", "topic": "a", "req": 10})
        )
        .await,
        json!({"type": "ok", "req": 10})
    );
    hub.broadcast("a", "gone");
    hub.broadcast("b", "still");
    let event = next_json(&mut socket).await;
    assert_eq!(
        (event["topic"].as_str(), event["data"].as_str()),
        (Some("b"), Some("still"))
    );
}

/// The id the hub gave the `n`th event of `topic`, read from its history.
fn hub_id(hub: &Hub, topic: &str, n: usize) -> String {
    let (mut replay, _) = hub.resume(topic, "unknown");
    let mut id = String::new();
    for _ in 0..=n {
        let Poll::Ready(Ok(event)) =
            replay.poll_recv(&mut Context::from_waker(std::task::Waker::noop()))
        else {
            panic!("fewer than {} events of {topic} held", n + 1);
        };
        id = event.event_id().expect("an id").to_owned();
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_resumes_a_topic_and_says_when_it_cannot() {
    let hub = Hub::builder().history(4).build();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    let mut first = protocol_client(addr, "", &[]).await;
    assert_eq!(
        command(
            &mut first,
            json!({"type": "subscribe", "topic": "t", "req": 1})
        )
        .await["position"],
        ""
    );
    hub.broadcast("t", "e1");
    hub.broadcast("t", "e2");
    next_json(&mut first).await;
    let e2 = next_json(&mut first).await["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    drop(first);

    // Resumed after e2: the events it missed, then live ones.
    hub.broadcast("t", "e3");
    let mut again = protocol_client(addr, "", &[]).await;
    assert_eq!(
        command(
            &mut again,
            json!({"type": "subscribe", "topic": "t", "since": e2, "req": 2})
        )
        .await,
        json!({"type": "ok", "req": 2, "position": e2})
    );
    assert_eq!(next_json(&mut again).await["data"], "e3");
    hub.broadcast("t", "e4");
    assert_eq!(next_json(&mut again).await["data"], "e4");

    // From a topic's start, for a client that saw nothing of it: every event still held.
    let mut fresh = protocol_client(addr, "", &[]).await;
    assert_eq!(
        command(
            &mut fresh,
            json!({"type": "subscribe", "topic": "t", "since": "", "req": 3})
        )
        .await["type"],
        "ok"
    );
    for expected in ["e1", "e2", "e3", "e4"] {
        assert_eq!(next_json(&mut fresh).await["data"], expected);
    }

    // After an id the history no longer reaches: the reply, then `lost`, then the oldest.
    for i in 5..=8 {
        hub.broadcast("t", format!("e{i}"));
    }
    let mut late = protocol_client(addr, "", &[]).await;
    assert_eq!(
        command(
            &mut late,
            json!({"type": "subscribe", "topic": "t", "since": e2, "req": 4})
        )
        .await["type"],
        "ok"
    );
    assert_eq!(
        next_json(&mut late).await,
        json!({"type": "lost", "topic": "t"})
    );
    assert_eq!(next_json(&mut late).await["data"], "e5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_connection_keeps_its_frames_and_a_handler_changes_its_topics() {
    let hub = Hub::new();
    let layer = StreamLayer::new(hub.clone()).on_message(|inbound| {
        let connection = inbound.connection();
        let _ = match inbound.text().unwrap_or_default() {
            "topics" => connection.send(inbound.topics().collect::<Vec<_>>().join(",")),
            command => match (command.strip_prefix('+'), command.strip_prefix('-')) {
                (Some(topic), _) => connection.subscribe(topic),
                (_, Some(topic)) => connection.unsubscribe(topic),
                _ => Ok(()),
            },
        };
    });
    let addr = serve(layer).await;
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=a")).await;
    socket.send(Message::text("+x")).await.expect("send");
    socket.send(Message::text("topics")).await.expect("send");
    assert_eq!(next_text(&mut socket).await, "a,x");
    hub.broadcast("x", "on x");
    assert_eq!(
        next_text(&mut socket).await,
        "on x",
        "data only, as for one topic"
    );
    socket.send(Message::text("-x")).await.expect("send");
    socket.send(Message::text("topics")).await.expect("send");
    assert_eq!(next_text(&mut socket).await, "a");
    hub.broadcast("x", "not for it");
    hub.broadcast("a", "on a");
    assert_eq!(next_text(&mut socket).await, "on a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnecting_one_topic_closes_a_connection_of_several() {
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone())).await;
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=a&topic=b")).await;
    let mut sse = SseClient::connect(addr, "/?topic=a&topic=b").await;
    wait_until("subscribed", || hub.stats().subscribers == 4).await;
    assert_eq!(hub.disconnect("b"), 2);
    assert_eq!(common::close_code(&mut socket).await, Some(1000));
    timeout(WAIT, sse.until_end())
        .await
        .expect("the stream ended");
    wait_until("every topic let go", || hub.stats().subscribers == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ids_of_several_topics_carry_the_cursor_and_resume_both() {
    let hub = Hub::builder().history(16).build();
    let addr = serve(StreamLayer::new(hub.clone()).websocket_ids(true)).await;
    let mut socket = ws_connect(&format!("ws://{addr}/?topic=a&topic=b")).await;
    wait_until("subscribed", || hub.stats().subscribers == 2).await;
    hub.broadcast("b", "b0");
    let frame = next_text(&mut socket).await;
    let (cursor, data) = frame.split_once('\n').expect("id, line feed, data");
    assert!(cursor.starts_with("1;"), "b is the second topic: {cursor}");
    assert_eq!(data, "b0");
    let cursor = cursor.to_owned();
    drop(socket);
    wait_until("gone", || hub.stats().subscribers == 0).await;
    hub.broadcast("a", "a1");
    hub.broadcast("b", "b1");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", "a")
        .append_pair("topic", "b")
        .append_pair("since", &cursor)
        .finish();
    let mut socket = ws_connect(&format!("ws://{addr}/?{query}")).await;
    let mut data: Vec<String> = Vec::new();
    for _ in 0..2 {
        data.push(
            next_text(&mut socket)
                .await
                .split_once('\n')
                .expect("id")
                .1
                .to_owned(),
        );
    }
    data.sort();
    assert_eq!(data, ["a1", "b1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_commands_is_held_back_and_harms_no_one() {
    let hub = Hub::new();
    let addr = serve(StreamLayer::new(hub.clone()).max_topics(4)).await;
    let mut bystander = ws_connect(&format!("ws://{addr}/?topic=news")).await;
    let flooder = protocol_client(addr, "", &[]).await;
    // Commands as fast as it can write, replies never read.
    let flood = tokio::spawn(async move {
        let mut flooder = flooder;
        for i in 0..50_000u32 {
            let topic = format!("flood-{}", i % 8);
            let kind = if i % 2 == 0 {
                "subscribe"
            } else {
                "unsubscribe"
            };
            let command = json!({"type": kind, "topic": topic, "req": i}).to_string();
            if flooder.feed(Message::text(command)).await.is_err() {
                return;
            }
        }
        let _ = flooder.flush().await;
    });
    // Meanwhile the others are served, and the flooder holds at most its topics.
    for i in 0..20 {
        assert!(hub.stats().topics <= 1 + 4, "{:?}", hub.stats());
        hub.broadcast("news", format!("n{i}"));
        assert_eq!(next_text(&mut bystander).await, format!("n{i}"));
    }
    flood.abort();
    let _ = flood.await;
    wait_until("the flooder is let go", || hub.stats().subscribers == 1).await;
}
