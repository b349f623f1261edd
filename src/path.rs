//! Request-path normalization for policy matching (security invariant 6):
//! every spelling of a path must be matched as the upstream will read it.

use std::borrow::Cow;

use crate::encoding::hex_value;

/// Why a path is refused outright rather than normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `/`, `\` or `#` encoded, a raw `\` or `#`, a `;` path parameter, NUL or another control
    /// character: upstreams disagree on what these mean, so no reading is safe (nginx ends its
    /// path at a raw `#` while passing the whole request line upstream; Caddy sends it on as `%23`).
    Ambiguous,
    /// Not an origin-form path, or a bad percent-escape.
    Invalid,
    /// A raw byte that is not printable ASCII (a space, or anything from
    /// 0x80 up), or escapes that do not decode to UTF-8 (`%85`, `%A0`):
    /// Python's servers split the request line on NEL and NBSP, and a host
    /// that decodes lossily (`\u{FFFD}`) decides on another path than the
    /// bytes it forwards.
    NotAscii,
}

/// Normalizes the path part of a request target (no query): decodes escaped
/// unreserved characters (`%2e` → `.`, `%41` → `A`), upper-cases the other
/// escapes, resolves `.` and `..` segments as RFC 3986 §5.2.4 does (an empty
/// segment is a segment: `/admin//../x` is `/admin/x`), then merges the empty
/// segments that remain. Merging only after `..` is resolved keeps the result
/// at least as long as what an RFC 3986 upstream resolves; a gate that cannot
/// forward this result redirects to it instead (see `Engine::on_request`).
/// Returns the input unchanged (borrowed) in the common case of a clean path.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::Invalid);
    }
    for &b in bytes {
        match b {
            b'\\' | b'#' => return Err(PathError::Ambiguous),
            0x21..=0x7e => {}
            b' ' | 0x80.. => return Err(PathError::NotAscii),
            _ => return Err(PathError::Ambiguous),
        }
    }
    let clean = !path.contains('%') && !path.contains("//") && !path.contains("/.") && !path.contains(';');
    if clean {
        return Ok(Cow::Borrowed(path));
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value).ok_or(PathError::Invalid)?;
            let lo = bytes.get(i + 2).copied().and_then(hex_value).ok_or(PathError::Invalid)?;
            let b = hi << 4 | lo;
            if b == b'/' || b == b'\\' || b == b'#' || b < 0x20 || b == 0x7f {
                return Err(PathError::Ambiguous);
            }
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                decoded.push(char::from(b));
            } else {
                decoded.push('%');
                decoded.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                decoded.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else {
            // Multi-byte UTF-8 is copied byte-run by byte-run via char boundaries.
            let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
            decoded.push_str(&path[i..i + ch_len]);
            i += ch_len;
        }
    }
    if decoded.contains('%') && !escapes_are_utf8(&decoded) {
        return Err(PathError::NotAscii);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        // Servlet containers strip `;params` from segments (`/admin;x/` is
        // `/admin/`, `..;` is `..`), other servers do not: refuse rather than guess.
        if seg.contains(';') {
            return Err(PathError::Ambiguous);
        }
        trailing_slash = n == last;
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    if out.last() == Some(&"") {
        trailing_slash = true;
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in out.iter().filter(|s| !s.is_empty()) {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || trailing_slash {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// Whether the bytes the `%XX` escapes of `text` stand for (with the rest)
/// are UTF-8. Browsers escape UTF-8; a lone `%85` or `%A0` is a Latin-1
/// whitespace byte that some servers trim or split on.
fn escapes_are_utf8(text: &str) -> bool {
    decode_all(text).is_some_and(|bytes| std::str::from_utf8(&bytes).is_ok())
}

fn decode_all(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value)?;
            let lo = bytes.get(i + 2).copied().and_then(hex_value)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// How an upstream that is lenient with paths may read a normalized path:
/// every escape decoded, the path cut at a decoded `?` and each segment at a
/// decoded `;`, characters that servers fold to ASCII folded (fullwidth
/// forms, `ı`, `ſ`, the Kelvin sign), invisible ones dropped (BOM,
/// zero-width, soft hyphen), each segment trimmed of the whitespace and
/// trailing dots that Windows, .NET, Spring and JavaScript's `trim` remove
/// (`/admin./`, `/admin%20/`, `/admin%C2%A0`), then dot segments resolved
/// again (a fullwidth `．．` or `／` is a dot or a slash to them).
///
/// `None` when no such reading differs from the path (the common case, one
/// scan): a gate refuses the request when this reading would pick another
/// route than the path does, so no spelling reaches a route it was not
/// decided as.
pub fn lenient_reading(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let trailing_dot = bytes.windows(2).any(|w| w == b"./") || bytes.last() == Some(&b'.');
    if !trailing_dot && !path.contains('%') {
        return None;
    }
    let decoded = decode_all(path)?;
    let text = String::from_utf8_lossy(&decoded);
    let mut folded = String::with_capacity(text.len());
    for c in text.chars() {
        match fold(c) {
            // The query starts at the first `?` as read after folding: a
            // fullwidth `？` ends the path for a reader that folds it.
            Folded::Keep if c == '?' => break,
            Folded::To('?') => break,
            Folded::Keep => folded.push(c),
            // A backslash is a separator to Windows servers.
            Folded::To('\\') => folded.push('/'),
            Folded::To(a) => folded.push(a),
            Folded::Drop => {}
        }
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in folded.split('/').skip(1) {
        let seg = seg.split(';').next().unwrap_or("");
        let trimmed = seg.trim_matches(|c| c == '.' || is_trimmed(c));
        // Only dots and spaces: the stricter reading of `...` or `.. ` is `..`.
        let seg = if trimmed.is_empty() && seg.matches('.').count() >= 2 {
            ".."
        } else {
            seg.trim_start_matches(is_trimmed).trim_end_matches(|c| c == '.' || is_trimmed(c))
        };
        match seg {
            "" => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(folded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || folded.ends_with('/') {
        result.push('/');
    }
    Some(result)
}

enum Folded {
    Keep,
    To(char),
    Drop,
}

fn fold(c: char) -> Folded {
    match c {
        // Fullwidth ASCII (NFKC, and Windows' best-fit mapping).
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(u32::from(c) - 0xFEE0).map_or(Folded::Keep, Folded::To),
        // Upper-cased by .NET's and Python's case-insensitive comparisons.
        '\u{0131}' => Folded::To('i'),
        '\u{017F}' => Folded::To('s'),
        '\u{212A}' => Folded::To('k'),
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' => Folded::Drop,
        _ => Folded::Keep,
    }
}

/// Whitespace as the lenient readers trim it: ASCII and Unicode spaces,
/// NEL, NBSP, the line and paragraph separators (and controls: never in a
/// normalized path, but trimmed by the same readers).
fn is_trimmed(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize("/app/index.html"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn tricks_collapse_to_the_real_path() {
        assert_eq!(n("/public/../admin/x").unwrap(), "/admin/x");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2E/admin/").unwrap(), "/admin/");
        assert_eq!(n("//admin//x").unwrap(), "/admin/x");
        assert_eq!(n("/./admin/./x").unwrap(), "/admin/x");
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/../../admin").unwrap(), "/admin");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%c3%a9").unwrap(), "/a%C3%A9");
        // A literal percent stays encoded: never decoded twice.
        assert_eq!(n("/100%25/x").unwrap(), "/100%25/x");
        assert_eq!(n("/%252e%252e/admin").unwrap(), "/%252e%252e/admin");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/..").unwrap(), "/");
    }

    #[test]
    fn an_empty_segment_before_dot_dot_is_a_segment() {
        // RFC 3986 §5.2.4: merging slashes first would give /public/x, shorter
        // than what an upstream resolves.
        assert_eq!(n("/admin//../public/x").unwrap(), "/admin/public/x");
        assert_eq!(n("/admin/x//../../public/x").unwrap(), "/admin/public/x");
        assert_eq!(n("/admin/%2e%2e/public/x").unwrap(), "/public/x");
        assert_eq!(n("/admin/.%2E/public/x").unwrap(), "/public/x");
        assert_eq!(n("/admin/%2e./public/x").unwrap(), "/public/x");
        assert_eq!(n("/a//b//").unwrap(), "/a/b/");
        assert_eq!(n("/a//").unwrap(), "/a/");
        assert_eq!(n("/a/b//..").unwrap(), "/a/b/");
        assert_eq!(n("//").unwrap(), "/");
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        // A redirect to the normalized path must not be redirected again.
        for p in ["/admin//../public/x", "/a/./b/../c//d/", "/%61%2e%2E/x", "/a%c3%a9/%7e", "//..//a", "/a/b//.."] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for p in [
            "/public%2f..%2fadmin",
            "/public%2Fadmin",
            "/a\\b",
            "/a%5cb",
            "/a%00",
            "/a\tb",
            "/public/..;/admin",
            "/admin/#/../../public/x",
            "/admin/%23/../../public/x",
        ] {
            assert_eq!(n(p), Err(PathError::Ambiguous), "{p}");
        }
        assert_eq!(n("admin"), Err(PathError::Invalid));
        assert_eq!(n("/a%zz"), Err(PathError::Invalid));
        assert_eq!(n("/a%2"), Err(PathError::Invalid));
    }

    #[test]
    fn bytes_that_are_not_printable_ascii_are_refused() {
        for p in ["/admin\u{85}", "/admin\u{a0}", "/admin\u{FFFD}", "/caf\u{e9}", "/a b", "/admin%85", "/admin%A0", "/admin%C0%AF", "/x%FF"] {
            assert_eq!(n(p), Err(PathError::NotAscii), "{p:?}");
        }
        // UTF-8, escaped as browsers send it, is a path like any other.
        assert_eq!(n("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    fn lenient(p: &str) -> Option<String> {
        lenient_reading(p)
    }

    #[test]
    fn clean_paths_have_no_other_reading() {
        for p in ["/", "/admin/", "/admin/x.html", "/a.b/c", "/.well-known/x"] {
            assert_eq!(lenient(p), None, "{p}");
        }
    }

    #[test]
    fn lenient_servers_fold_these_into_the_admin_prefix() {
        for p in [
            "/admin./",
            "/admin../x",
            "/admin%20/",
            "/admin%20",
            "/%20admin/",
            "/admin%C2%A0/",
            "/admin%C2%85",
            "/admin%E2%80%A8/",
            "/%EF%BB%BFadmin/",
            "/ad%E2%80%8Bmin/",
            "/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/",
            "/adm%C4%B1n/",
            "/admin%3F/",
            "/admin%EF%BC%9Fx",
            "/admin%3Bx/",
            "/public/%EF%BC%8E%EF%BC%8E/admin/",
            "/public%EF%BC%8F..%EF%BC%8Fadmin/",
            "/public/.../admin/",
            "/public/..%20/admin/",
        ] {
            let reading = lenient(p).unwrap_or_default();
            assert!(reading == "/admin" || reading.starts_with("/admin/"), "{p} read as {reading:?}");
        }
        assert_eq!(lenient("/%C5%BFonarr/").as_deref(), Some("/sonarr/"));
    }

    #[test]
    fn other_escapes_read_as_themselves() {
        assert_eq!(lenient("/files/caf%C3%A9.txt").as_deref(), Some("/files/caf\u{e9}.txt"));
        assert_eq!(lenient("/files/My%20File.pdf").as_deref(), Some("/files/My File.pdf"));
        assert_eq!(lenient("/100%25/x").as_deref(), Some("/100%/x"));
    }
}
