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
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\' || b == b'#') {
        return Err(PathError::Ambiguous);
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
}
