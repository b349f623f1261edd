//! Small encoders shared by cookies, URLs and forms. One place for each rule.

use std::borrow::Cow;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS, NON_ALPHANUMERIC};

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
    URL_SAFE_NO_PAD.decode(trimmed.replace('+', "-").replace('/', "_")).ok()
}

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Every byte that is not visible ASCII: controls, space, DEL and (always,
/// in `percent-encoding`) every non-ASCII byte.
const NOT_VISIBLE: &AsciiSet = &CONTROLS.add(b' ');

/// Percent-encodes everything but RFC 3986 unreserved characters, so the
/// value is safe in a query string, a form body and a `Location` header.
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, RESERVED).to_string()
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
/// Invalid escapes make the whole value invalid rather than guessed at
/// (`percent-encoding` alone would keep `%zz` as it is), and so does a
/// result that is not UTF-8.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let escapes_valid = bytes.iter().enumerate().filter(|(_, &b)| b == b'%').all(|(i, _)| {
        let hex = |at: usize| bytes.get(at).copied().and_then(hex_value).is_some();
        hex(i + 1) && hex(i + 2)
    });
    if !escapes_valid {
        return None;
    }
    // `+` before decoding, so that an escaped `%2B` stays a plus.
    let text = if plus_is_space && text.contains('+') { Cow::Owned(text.replace('+', " ")) } else { Cow::Borrowed(text) };
    percent_decode_str(&text).decode_utf8().ok().map(Cow::into_owned)
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
    utf8_percent_encode(text, NOT_VISIBLE).to_string()
}

/// `host[:port]` with a DNS name (`_` allowed, as container networks name
/// services) or an IPv4 or bracketed IPv6 address and a numeric port:
/// nothing a browser could read as another host (`@`, `,`, `/`, spaces), or
/// refuse.
pub fn plain_authority(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, after)) => (!ip.is_empty() && ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'), after),
            None => return false,
        },
        None => {
            let (host, after) = authority.find(':').map_or((authority, ""), |i| authority.split_at(i));
            (!host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')), after)
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u32>().is_ok_and(|n| n <= 65535)
        });
    host_ok && port_ok
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
        assert_eq!(split_url("https://id.example.com/api/oidc/token"), Some(("https", "id.example.com", "/api/oidc/token")));
        assert_eq!(split_url("http://127.0.0.1:9000"), Some(("http", "127.0.0.1:9000", "/")));
        assert_eq!(split_url("ftp://x/"), None);
        assert_eq!(split_url("https://user@evil/"), None);
        assert_eq!(split_url("https://evil.com#.example.com/"), Some(("https", "evil.com", "#.example.com/")));
        assert_eq!(split_url("https://evil.com%23.example.com/"), None);
    }

    /// The hand-written rules these functions had before `percent-encoding`,
    /// byte for byte: every byte value, alone and beside others.
    #[test]
    fn encoders_keep_their_byte_sets() {
        let hex = |b: u8| format!("%{b:02X}");
        let text: String = (0u8..0x80).map(char::from).chain(['é', '€', '😀']).collect();
        let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        let want: String = text.bytes().map(|b| if unreserved(b) { char::from(b).to_string() } else { hex(b) }).collect();
        assert_eq!(percent_encode(&text), want);
        let want: String = text.bytes().map(|b| if (0x21..0x7f).contains(&b) { char::from(b).to_string() } else { hex(b) }).collect();
        assert_eq!(escape_non_visible(&text), want);
        assert_eq!(escape_non_visible("/a b/%2e?x=é#f"), "/a%20b/%2e?x=%C3%A9#f");
    }

    #[test]
    fn decoding_is_strict_about_escapes_and_utf8() {
        assert_eq!(percent_decode("a+b%2Bc%20d", true).as_deref(), Some("a b+c d"));
        assert_eq!(percent_decode("a+b%2Bc%20d", false).as_deref(), Some("a+b+c d"));
        assert_eq!(percent_decode("%2541", false).as_deref(), Some("%41"));
        assert_eq!(percent_decode("%e2%82%AC", false).as_deref(), Some("€"));
        for bad in ["%", "%%41", "a%4", "%4g", "100%", "%ff", "%C3", "%C3%28"] {
            assert_eq!(percent_decode(bad, true), None, "{bad}");
        }
        assert_eq!(percent_decode("", true).as_deref(), Some(""));
        assert_eq!(parse_query("a=%zz&b=%C3%A9&c=%ff&d"), vec![("b".into(), "é".into()), ("d".into(), "".into())]);
        assert_eq!(build_query(&[("rd", "/a b?c=d&e"), ("scope", "openid email")]), "rd=%2Fa%20b%3Fc%3Dd%26e&scope=openid%20email");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<a href=\"x\">'&"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;");
    }
}
