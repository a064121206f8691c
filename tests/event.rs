//! The Server-Sent-Events wire form, read back by a parser that follows the WHATWG HTML
//! standard's "server-sent events" section step by step.

use std::time::Duration;

use proptest::prelude::*;
use tower_fanout::Event;

#[path = "support/sse_spec.rs"]
mod sse_spec;
use sse_spec::{Dispatched, parse};

/// Every line ending a parser accepts reads back as LF.
fn normalized(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

fn event_strategy() -> impl Strategy<Value = Event> {
    let line = "[^\r\n]{0,12}";
    (
        // Data: any text, with every kind of line ending and leading spaces likely.
        proptest::collection::vec(
            prop_oneof![
                "[^\r\n]{0,8}",
                Just("\r\n".to_owned()),
                Just("\r".to_owned()),
                Just("\n".to_owned()),
                Just(" ".to_owned()),
                Just(":".to_owned())
            ],
            0..8,
        )
        .prop_map(|parts| parts.concat()),
        proptest::option::of(line),
        proptest::option::of("[^\r\n\0]{0,12}"),
        proptest::option::of(0u64..10_000_000),
    )
        .prop_map(|(data, event_type, id, retry)| {
            let mut event = Event::new(data);
            if let Some(event_type) = event_type {
                event = event.event(&event_type).expect("no CR or LF");
            }
            if let Some(id) = id {
                event = event.id(&id).expect("no CR, LF or NUL");
            }
            if let Some(retry) = retry {
                event = event.retry(Duration::from_millis(retry));
            }
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_stream_of_events_reads_back_exactly(events in proptest::collection::vec(event_strategy(), 1..6)) {
        let stream: Vec<u8> = events.iter().flat_map(|event| event.to_sse()).collect();
        let parsed = parse(&stream);
        prop_assert_eq!(parsed.len(), events.len());

        let (mut last_event_id, mut retry) = (String::new(), None);
        for (event, parsed) in events.iter().zip(&parsed) {
            // The id and retry of an event without them persist from earlier ones.
            if let Some(id) = event.event_id() {
                last_event_id = id.to_owned();
            }
            if let Some(interval) = event.retry_interval() {
                retry = Some(interval.as_millis() as u64);
            }
            let data = std::str::from_utf8(event.data()).expect("generated as text");
            let expected = Dispatched {
                event_type: event.event_type().filter(|t| !t.is_empty()).unwrap_or("message").to_owned(),
                data: normalized(data),
                last_event_id: last_event_id.clone(),
                retry,
            };
            prop_assert_eq!(parsed, &expected);
        }
    }

    #[test]
    fn text_fields_with_line_breaks_are_refused(prefix in "[a-z]{0,4}", breaker in prop_oneof![Just('\r'), Just('\n')], suffix in "[a-z]{0,4}") {
        let value = format!("{prefix}{breaker}{suffix}");
        prop_assert!(Event::new("x").event(&value).is_err());
        prop_assert!(Event::new("x").id(&value).is_err());
    }
}

#[test]
fn an_id_with_nul_is_refused() {
    let error = Event::new("x").id("a\0b").expect_err("NUL is refused");
    assert_eq!(error.to_string(), "event id must not contain '\\0'");
}

#[test]
fn a_forged_field_cannot_reach_the_wire() {
    let error = Event::new("x")
        .event("ping\ndata: forged")
        .expect_err("LF is refused");
    assert_eq!(error.to_string(), "event type must not contain '\\n'");
}

#[test]
fn encoding_is_shared_not_repeated() {
    let event = Event::new("payload");
    let first = event.to_sse();
    let second = event.to_sse();
    assert_eq!(
        first.as_ptr(),
        second.as_ptr(),
        "the second call reuses the bytes"
    );
}
