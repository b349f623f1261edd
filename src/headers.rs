//! Identity-header hygiene (security invariant 1): every inbound spelling of a
//! header we inject is removed, whatever its case and whether `-` was written
//! as `_` or `.` (proxies and CGI-style upstreams fold those together).

use std::sync::Arc;

/// Names of the identity headers sent upstream; `None` disables one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNames {
    /// User name (from `provider.user_claim`, falling back to `sub`).
    pub user: Option<Arc<str>>,
    /// Email address.
    pub email: Option<Arc<str>>,
    /// Comma-joined groups.
    pub groups: Option<Arc<str>>,
    /// Display name.
    pub name: Option<Arc<str>>,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            user: Some("Remote-User".into()),
            email: Some("Remote-Email".into()),
            groups: Some("Remote-Groups".into()),
            name: Some("Remote-Name".into()),
        }
    }
}

impl HeaderNames {
    /// The names in use.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        [&self.user, &self.email, &self.groups, &self.name].into_iter().flatten().map(|n| &**n)
    }
}

/// Header names folded to one canonical spelling.
#[derive(Debug, Clone, Default)]
pub struct StripSet {
    canonical: Vec<Vec<u8>>,
}

fn fold(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

impl StripSet {
    /// Builds the set from header names in any spelling.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> StripSet {
        let mut canonical: Vec<Vec<u8>> = names.into_iter().map(|n| n.bytes().map(fold).collect()).collect();
        canonical.sort();
        canonical.dedup();
        canonical.retain(|n| !n.is_empty());
        StripSet { canonical }
    }

    /// Whether an inbound header name is a spelling of a protected one.
    /// Allocation-free: this runs for every header of every request.
    pub fn contains(&self, name: &str) -> bool {
        let name = name.as_bytes();
        self.canonical.iter().any(|c| c.len() == name.len() && c.iter().zip(name).all(|(&a, &b)| a == fold(b)))
    }

    /// The canonical names: lower case, `-` for `_` and `.`.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.canonical.iter().filter_map(|n| std::str::from_utf8(n).ok())
    }

    /// Number of canonical names.
    pub fn len(&self) -> usize {
        self.canonical.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.canonical.is_empty()
    }
}

/// Headers that other auth proxies inject; stripped by default so that an
/// upstream configured for one of them cannot be fooled through this one.
pub const FOREIGN_IDENTITY_HEADERS: &[&str] = &[
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Access-Token",
    "X-Remote-User",
    "X-Email",
    "X-WebAuth-User",
    "Remote-User",
    "Remote-Email",
    "Remote-Groups",
    "Remote-Name",
];

/// Headers some frameworks take the request's path, method or host from
/// (Symfony, Zend, IIS URL Rewrite, Spring's and ASP.NET's forwarded-headers
/// support, Django's `USE_X_FORWARDED_HOST`): a client's copy would make the
/// upstream serve another path or build links to another host than the one
/// decided, so they are removed like identity headers. A proxy that sets
/// them itself does so after the gate (Caddy and Traefik their
/// `X-Forwarded-Host`). `X-Forwarded-For` and `X-Forwarded-Proto` stay: the
/// proxy in front appends or overwrites them.
pub const ROUTING_OVERRIDE_HEADERS: &[&str] = &[
    "X-Original-URL",
    "X-Original-URI",
    "X-Original-Method",
    "X-Original-Host",
    "X-Rewrite-URL",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Forwarded-Host",
    "X-Forwarded-Prefix",
    "X-Forwarded-Port",
    "X-Forwarded-Server",
    "X-Envoy-Original-Path",
    "X-Host",
    "Forwarded",
];

/// Whether `name` is another spelling (`_` or `.` for `-`) of a header the
/// proxy in front owns (`X-Forwarded-For`, `X-Forwarded-Proto`,
/// `X-Real-IP`): the canonical one is the proxy's to set, and a CGI-style
/// upstream would fold a client's `X_Forwarded_Proto` into it.
pub fn respells_proxy_header(name: &str) -> bool {
    matches!(name.len(), 9 | 15 | 17)
        && name.bytes().any(|b| b == b'_' || b == b'.')
        && PROXY_OWNED_HEADERS
            .iter()
            .any(|o| o.len() == name.len() && o.bytes().zip(name.bytes()).all(|(a, b)| a.to_ascii_lowercase() == fold(b)))
}

/// The headers the proxy in front sets itself (see [`respells_proxy_header`]).
pub const PROXY_OWNED_HEADERS: &[&str] = &["X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP"];

/// Headers some frameworks take the request method from (Express's
/// method-override, Rails, Google APIs): with routes chosen by method, a
/// client's copy would make the upstream run another method than the one
/// decided, so they are removed when any route lists `methods`.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_spellings_of_the_proxys_headers_are_caught_not_the_headers() {
        for n in ["X_Forwarded_Proto", "x.forwarded.for", "X_REAL_IP", "x-forwarded_for"] {
            assert!(respells_proxy_header(n), "{n}");
        }
        for n in ["X-Forwarded-Proto", "x-forwarded-for", "X-Real-IP", "x_forwarded_prot", "remote_user"] {
            assert!(!respells_proxy_header(n), "{n}");
        }
    }

    #[test]
    fn every_spelling_is_caught() {
        let set = StripSet::new(["Remote-User", "x-api-key"]);
        for n in ["remote-user", "REMOTE-USER", "Remote_User", "remote.user", "REMOTE.USER", "X_API_KEY", "x.api.key"] {
            assert!(set.contains(n), "{n}");
        }
        for n in ["remote-users", "remote-use", "x-api", "remoteuser", ""] {
            assert!(!set.contains(n), "{n}");
        }
    }
}
