//! Any event the API accepts is read back exactly by a parser that follows the WHATWG
//! event-stream rules; any field the API refuses never reaches the wire.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tower_fanout::Event;

#[path = "../../tests/support/sse_spec.rs"]
mod sse_spec;

#[derive(Arbitrary, Debug)]
struct Input {
    data: String,
    event: Option<String>,
    id: Option<String>,
    retry: Option<u32>,
}

fuzz_target!(|input: Input| {
    let mut event = Event::new(input.data.clone());
    if let Some(name) = &input.event {
        match event.clone().event(name) {
            Ok(with) => event = with,
            Err(_) => assert!(name.contains(['\r', '\n'])),
        }
    }
    if let Some(id) = &input.id {
        match event.clone().id(id) {
            Ok(with) => event = with,
            Err(_) => assert!(id.contains(['\r', '\n', '\0'])),
        }
    }
    if let Some(retry) = input.retry {
        event = event.retry(Duration::from_millis(retry.into()));
    }

    let parsed = sse_spec::parse(&event.to_sse());
    assert_eq!(parsed.len(), 1, "one event on the wire");
    let parsed = &parsed[0];
    assert_eq!(parsed.data, input.data.replace("\r\n", "\n").replace('\r', "\n"));
    assert_eq!(
        parsed.event_type,
        event.event_type().filter(|t| !t.is_empty()).unwrap_or("message")
    );
    assert_eq!(parsed.last_event_id, event.event_id().unwrap_or(""));
    assert_eq!(parsed.retry, event.retry_interval().map(|r| r.as_millis() as u64));
});
