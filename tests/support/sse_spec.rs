//! The event stream interpretation of the WHATWG HTML standard ("server-sent events",
//! "Interpreting an event stream"), step by step, to read back what the crate writes.
//! Shared by the property tests and the fuzz target.

/// What an `EventSource` would dispatch, plus the reconnection time it would adopt.
#[derive(Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub event_type: String,
    pub data: String,
    pub last_event_id: String,
    pub retry: Option<u64>,
}

/// The event stream interpretation of the standard, for a whole stream.
pub fn parse(stream: &[u8]) -> Vec<Dispatched> {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);

    let mut dispatched = Vec::new();
    let (mut data, mut event_type, mut last_id_buffer) =
        (String::new(), String::new(), String::new());
    let mut retry = None;

    // Lines end at CRLF, a lone CR or a lone LF; a last line without an ending is
    // incomplete and never processed.
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];

        if line.is_empty() {
            // Dispatch.
            let last_event_id = last_id_buffer.clone();
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            dispatched.push(Dispatched {
                event_type: if event_type.is_empty() {
                    "message".into()
                } else {
                    event_type.clone()
                },
                data: std::mem::take(&mut data),
                last_event_id,
                retry,
            });
            event_type.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => last_id_buffer = value.to_owned(),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                retry = value.parse().ok();
            }
            _ => {}
        }
    }
    dispatched
}
