//! Which browser origins may open a WebSocket: the page's own host, and the patterns the
//! layer allows.

use http::{HeaderMap, header};

/// Whether a request with these headers, for a server reached as `host`, may upgrade.
pub(crate) fn allowed(patterns: &[String], headers: &HeaderMap, host: Option<&str>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Not a browser: browsers always send Origin on a WebSocket handshake.
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    if let (Some(authority), Some(host)) = (authority, host)
        && authority.eq_ignore_ascii_case(host)
    {
        return true;
    }
    patterns.iter().any(|pattern| {
        pattern == "*"
            || if pattern.contains("://") {
                glob(pattern, origin)
            } else {
                authority.is_some_and(|authority| glob(pattern, authority))
            }
    })
}

/// Case-insensitive match of `text` against `pattern`, where `*` stands for any run of
/// characters.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern index after it, and the text index
    // it has consumed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p + 1, t));
            p += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((after_star, consumed)) = star {
            p = after_star;
            t = consumed + 1;
            star = Some((after_star, consumed + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn check(patterns: &[&str], origin: Option<&str>, host: &str) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(origin) = origin {
            headers.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).expect("valid"),
            );
        }
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        allowed(&patterns, &headers, Some(host))
    }

    #[test]
    fn origin_rules() {
        assert!(check(&[], None, "app.test"), "no Origin: not a browser");
        assert!(
            check(&[], Some("https://APP.test"), "app.test"),
            "same host"
        );
        assert!(!check(&[], Some("https://evil.test"), "app.test"));
        assert!(check(
            &["*.example.com"],
            Some("https://a.EXAMPLE.com"),
            "app.test"
        ));
        assert!(!check(
            &["*.example.com"],
            Some("https://example.com"),
            "app.test"
        ));
        assert!(check(
            &["https://*.example.com"],
            Some("https://a.example.com"),
            "app.test"
        ));
        assert!(!check(
            &["https://*.example.com"],
            Some("http://a.example.com"),
            "app.test"
        ));
        assert!(check(&["*"], Some("null"), "app.test"));
        assert!(!check(&["app.test"], Some("null"), "app.test"));
        assert!(check(
            &["localhost:*"],
            Some("http://localhost:5173"),
            "app.test"
        ));
    }
}
