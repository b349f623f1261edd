//! Where the browser may be sent after login or logout (security invariant 5).
//! Relative paths on this site, or absolute URLs on allow-listed hosts; every
//! other spelling falls back to `/`.

use crate::encoding::{percent_decode, plain_authority, split_url};
use crate::policy::HostPattern;

/// Returns `candidate` if it is a safe redirect target, else `None`.
/// `scheme` is the scheme the request came in on: from `https`, an absolute
/// target on `http` is refused (it would hand the browser's next request, and
/// any token in its URL, to the network in clear).
pub fn safe_redirect(candidate: &str, allowed_hosts: &[HostPattern], scheme: &str) -> Option<String> {
    if candidate.is_empty() || candidate.len() > 2048 || has_bad_bytes(candidate) {
        return None;
    }
    // Browsers decode before they interpret, so check the decoded form too
    // (`/%2F%2Fevil` must not turn into `//evil` anywhere along the way).
    let decoded = percent_decode(candidate, false)?;
    if has_bad_bytes(&decoded) || percent_decode(&decoded, false).is_some_and(|d| has_bad_bytes(&d)) {
        return None;
    }
    if candidate.starts_with('/') {
        let path_part = candidate.split(['?', '#']).next().unwrap_or("");
        let decoded_path = percent_decode(path_part, false)?;
        if path_part.starts_with("//") || decoded_path.starts_with("//") {
            return None;
        }
        return Some(candidate.to_owned());
    }
    let (target_scheme, authority, _) = split_url(candidate)?;
    if target_scheme == "http" && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    if !plain_authority(authority) {
        return None;
    }
    let host = authority_host(authority);
    allowed_hosts.iter().any(|p| p.matches(host)).then(|| candidate.to_owned())
}

fn has_bad_bytes(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\')
}

/// The host of an authority, without port, IPv6 brackets or the trailing dot
/// of a fully qualified name (`grafana.example.com.` is the same site, and
/// proxies route it as such).
pub fn authority_host(authority: &str) -> &str {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<HostPattern> {
        vec![HostPattern::parse("*.example.com").unwrap(), HostPattern::parse("app.test").unwrap()]
    }

    #[test]
    fn relative_paths_pass() {
        for ok in ["/", "/app?x=1", "/a/b#frag", "/?next=//evil.example"] {
            assert_eq!(safe_redirect(ok, &allowed(), "https").as_deref(), Some(ok), "{ok}");
        }
    }

    #[test]
    fn open_redirect_spellings_fail() {
        for bad in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "http://evil.example",
            "https:evil.example",
            "https:/evil.example",
            "//evil.example/%2F..",
            "/%2Fevil.example",
            "/%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%255Cevil.example",
            "%2F%2Fevil.example",
            "/\tevil",
            "/\r\nSet-Cookie:x=y",
            "/%0d%0aLocation:%20https://evil.example",
            "javascript:alert(1)",
            "https://example.com.evil.example/",
            "https://app.test@evil.example/",
            "https://evil.example%23.example.com/",
            "https://evil.example#.example.com/",
            "https://evil.example%2F.example.com/",
            "https://app.test:evil",
            "https://app.test:99999/",
            "https://app.test:/",
            "https://[::1/",
            "evil.example",
            "",
        ] {
            assert_eq!(safe_redirect(bad, &allowed(), "https"), None, "{bad:?}");
        }
    }

    #[test]
    fn allow_listed_hosts_pass() {
        assert!(safe_redirect("https://grafana.example.com/d/1", &allowed(), "https").is_some());
        assert!(safe_redirect("https://app.test:8443/", &allowed(), "https").is_some());
        assert!(safe_redirect("https://example.com/", &allowed(), "https").is_none());
    }

    #[test]
    fn allow_listed_hosts_are_never_a_downgrade_to_http() {
        assert_eq!(safe_redirect("http://grafana.example.com/d/1", &allowed(), "https"), None);
        assert_eq!(safe_redirect("HTTP://grafana.example.com/d/1", &allowed(), "https"), None);
        assert!(safe_redirect("http://grafana.example.com/d/1", &allowed(), "http").is_some());
        assert!(safe_redirect("https://grafana.example.com/d/1", &allowed(), "http").is_some());
    }
}
