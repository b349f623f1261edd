//! Small encoders shared by cookies, URLs and forms. One place for each rule.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// base64url without padding: the alphabet of JWTs, PKCE and our cookie values.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding; `None` on any invalid byte.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text.as_bytes()).ok()
}

/// Standard base64 with padding (HTTP Basic credentials).
pub fn b64std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard or URL-safe base64, padded or not.
pub fn b64_any_decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed.replace('+', "-").replace('/', "_"))
        .ok()
}

const UNRESERVED: &[u8] = b"-._~";

/// Percent-encodes everything but RFC 3986 unreserved characters, so the
/// value is safe in a query string, a form body and a `Location` header.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || UNRESERVED.contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(n & 0x0f)])
}

pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes and, for forms and queries, `+` as space.
/// Invalid escapes make the whole value invalid rather than guessed at.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `a=1&b=2` into decoded pairs, skipping pairs that do not decode.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .filter_map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            Some((percent_decode(k, true)?, percent_decode(v, true)?))
        })
        .collect()
}

/// Builds `a=1&b=2` from pairs, encoding both sides.
pub fn build_query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Splits `scheme://authority/path?query` into (scheme, authority, path-and-query).
/// Only `http` and `https` are accepted; the path defaults to `/`.
pub fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    // Only what a host and port can contain: anything else (`@`, `\`, `%`,
    // spaces) is how "evil.com%23.example.com" would pass a suffix check.
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_');
    if authority.is_empty() || !authority.bytes().all(valid) {
        return None;
    }
    Some((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// `text` with every byte that is not visible ASCII percent-encoded, and
/// nothing else changed: a URL a header can carry (a raw UTF-8 path or query
/// from the request line stays the same resource).
pub fn escape_non_visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x21..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        let raw = "a b/c?d=e&f~g.h-i_é";
        let enc = percent_encode(raw);
        assert_eq!(enc, "a%20b%2Fc%3Fd%3De%26f~g.h-i_%C3%A9");
        assert_eq!(percent_decode(&enc, false).as_deref(), Some(raw));
    }

    #[test]
    fn bad_escapes_are_rejected() {
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
    }

    #[test]
    fn query_parsing() {
        let q = parse_query("code=abc&state=x%2By&empty=&flag&iss=http%3A%2F%2Fidp");
        assert_eq!(q[0], ("code".into(), "abc".into()));
        assert_eq!(q[1], ("state".into(), "x+y".into()));
        assert_eq!(q[2], ("empty".into(), "".into()));
        assert_eq!(q[3], ("flag".into(), "".into()));
        assert_eq!(q[4], ("iss".into(), "http://idp".into()));
    }

    #[test]
    fn url_splitting() {
        assert_eq!(
            split_url("https://id.example.com/api/oidc/token"),
            Some(("https", "id.example.com", "/api/oidc/token"))
        );
        assert_eq!(split_url("http://127.0.0.1:9000"), Some(("http", "127.0.0.1:9000", "/")));
        assert_eq!(split_url("ftp://x/"), None);
        assert_eq!(split_url("https://user@evil/"), None);
        assert_eq!(split_url("https://evil.com#.example.com/"), Some(("https", "evil.com", "#.example.com/")));
        assert_eq!(split_url("https://evil.com%23.example.com/"), None);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<a href=\"x\">'&"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
    }
}

