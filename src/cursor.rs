//! Where a stream of several topics stands in each, as one id a client hands back to
//! resume: the `id:` of a Server-Sent event, which the browser sends as `Last-Event-ID`,
//! and the id of a WebSocket frame with `websocket_ids`.
//!
//! A stream of one topic uses the event's own id, as it always has. A stream of several
//! topics gives each event the id `INDEX;P0,P1,…`: the index (in the order the request
//! named the topics) of the topic the event belongs to, then, for every topic, the id of
//! the last event of it the stream has sent, or of the newest one there was when the
//! stream began, or nothing when the topic had none yet. The positions are the events'
//! own ids, so the cursor means the same on every node that knows those ids. `%`, `,`
//! and `;` in an id are escaped as `%25`, `%2C` and `%3B`.
//!
//! With the hub's own ids (at most 34 characters, usually about 20), 64 topics make an
//! id of at most 2.3 KB, within the 4 to 8 KB a proxy allows for a request header.

use std::fmt::Write;

/// The last id of each topic of a stream, by the topic's key.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    ids: Vec<Option<Box<str>>>,
    /// How many of `ids` are known: with none, there is no cursor to make.
    known: usize,
}

impl Positions {
    /// Positions for `topics` topics, each where `start` says.
    pub(crate) fn new(start: impl IntoIterator<Item = Option<String>>) -> Self {
        let ids: Vec<Option<Box<str>>> = start.into_iter().map(|id| id.map(Into::into)).collect();
        let known = ids.iter().flatten().count();
        Self { ids, known }
    }

    /// Records that the stream has sent the event `id` of the topic `key`, and returns the
    /// cursor to send with it; `None` when no topic has a position yet.
    pub(crate) fn advance(&mut self, key: usize, id: Option<&str>) -> Option<String> {
        if let (Some(slot), Some(id)) = (self.ids.get_mut(key), id) {
            if slot.is_none() {
                self.known += 1;
            }
            *slot = Some(id.into());
        }
        if self.known == 0 {
            return None;
        }
        let mut cursor = String::with_capacity(8 + 24 * self.ids.len());
        let _ = write!(cursor, "{key};");
        for (index, id) in self.ids.iter().enumerate() {
            if index > 0 {
                cursor.push(',');
            }
            if let Some(id) = id {
                escape(id, &mut cursor);
            }
        }
        Some(cursor)
    }
}

/// The positions a client hands back: `topics` of them, one per topic, `None` where the
/// cursor has none; `None` altogether when `cursor` is not one of ours for that many
/// topics.
pub(crate) fn decode(cursor: &str, topics: usize) -> Option<Vec<Option<String>>> {
    let (index, positions) = cursor.split_once(';')?;
    index
        .parse::<usize>()
        .ok()
        .filter(|&index| index < topics)?;
    let ids: Vec<Option<String>> = positions
        .split(',')
        .map(|id| (!id.is_empty()).then(|| unescape(id)).flatten())
        .collect();
    (ids.len() == topics).then_some(ids)
}

fn escape(id: &str, out: &mut String) {
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            ',' => out.push_str("%2C"),
            ';' => out.push_str("%3B"),
            c => out.push(c),
        }
    }
}

fn unescape(id: &str) -> Option<String> {
    let mut out = String::with_capacity(id.len());
    let mut rest = id;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escaped = rest.get(at..at + 3)?;
        out.push(match escaped {
            "%25" => '%',
            "%2C" => ',',
            "%3B" => ';',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_the_topic_and_reads_back_every_position() {
        let mut positions = Positions::new([None, Some("a-1".to_owned()), None]);
        assert_eq!(
            positions.advance(2, Some("x,y;z%")).as_deref(),
            Some("2;,a-1,x%2Cy%3Bz%25")
        );
        let cursor = positions.advance(0, Some("b-7")).expect("a cursor");
        assert_eq!(cursor, "0;b-7,a-1,x%2Cy%3Bz%25");
        assert_eq!(
            decode(&cursor, 3),
            Some(vec![
                Some("b-7".to_owned()),
                Some("a-1".to_owned()),
                Some("x,y;z%".to_owned())
            ])
        );
        assert_eq!(decode(&cursor, 2), None, "another number of topics");
        assert_eq!(decode("5;a,b,c", 3), None, "an index out of range");
        assert_eq!(decode("plain-id", 3), None);
        assert_eq!(
            decode("0;%zz,,", 3),
            Some(vec![None, None, None]),
            "a bad escape is no position"
        );
        assert_eq!(Positions::new([None, None]).advance(0, None), None);
    }
}
