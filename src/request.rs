//! The parts of a request the engine reads, and what it asks of them.

use std::net::IpAddr;

/// The parts of a request the engine reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a str,
    /// `http` or `https`, as the client used it.
    pub scheme: &'a str,
    /// Host header / `:authority`.
    pub authority: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    /// Every header (names in any case).
    pub headers: &'a [(String, String)],
    /// Whether the host forwards [`Allow::set_path`] in place of the received
    /// path (Envoy does). Where it does not (nginx, forward-auth proxies), a
    /// path that normalization changes is never forwarded: the upstream would
    /// read the spelling, not the decision.
    pub rewrites_path: bool,
    /// The address the proxy saw the request come from (its connection's
    /// peer), when a route decides on it ([`crate::policy::RouteTable::use_client_address`]).
    pub client: Option<IpAddr>,
}

impl RequestHead<'_> {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name`, across all `cookie` headers (the first one).
    pub fn cookie<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.cookies(name).next()
    }

    /// Every value of cookie `name`: a browser sends several when cookies of
    /// the same name exist for different paths or domains.
    pub fn cookies<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(move |pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v.trim_matches('"'))
            })
    }

    /// Whether the request was made by one of our own pages or by the user
    /// (a typed URL, a bookmark), never by another site: Fetch Metadata where
    /// the browser sends it, else an `Origin` equal to ours. A request with
    /// neither (an old browser's `<img>`, a script) is not.
    pub(crate) fn same_origin(&self) -> bool {
        match self.header("sec-fetch-site") {
            Some(site) => site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"),
            None => self.header("origin").is_some_and(|origin| {
                origin
                    .split_once("://")
                    .is_some_and(|(scheme, host)| scheme.eq_ignore_ascii_case(self.scheme) && host.eq_ignore_ascii_case(self.authority))
            }),
        }
    }

    /// A CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method` (it never carries credentials).
    pub(crate) fn is_cors_preflight(&self) -> bool {
        self.method.eq_ignore_ascii_case("OPTIONS") && self.header("origin").is_some() && self.header("access-control-request-method").is_some()
    }

    /// The client's address: the proxy's peer, or with `hops` trusted
    /// proxies in front of it, the `hops`-th `X-Forwarded-For` entry from
    /// the right (what the farthest trusted one saw). `None` when there are
    /// not that many entries or the entry is not an address: never a guess.
    pub fn client_address(&self, hops: u8) -> Option<IpAddr> {
        if hops == 0 {
            return self.client;
        }
        let entries: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect();
        let entry = entries.len().checked_sub(usize::from(hops)).and_then(|i| entries.get(i))?;
        parse_address(entry)
    }

    /// Why the request is refused before any decision, if it is: a `Host`
    /// that is not `host[:port]` (two `Host` lines merged into `a,b`, a
    /// `user@host`), which would otherwise shape `redirect_uri` and every
    /// absolute `Location`; an upgrade to cleartext HTTP/2, which would turn
    /// the connection to the upstream into a tunnel no gate reads.
    pub(crate) fn refusal(&self) -> Option<&'static str> {
        if !crate::encoding::plain_authority(self.authority) {
            return Some("The Host header is not a host name with an optional port.");
        }
        let h2c = |(n, v): &(String, String)| {
            (n.eq_ignore_ascii_case("upgrade") && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
                || n.eq_ignore_ascii_case("http2-settings")
        };
        if self.headers.iter().any(h2c) {
            return Some("Upgrading the connection to cleartext HTTP/2 (h2c) is not supported.");
        }
        None
    }

    pub(crate) fn looks_like_api(&self) -> bool {
        let accept = self.header("accept").unwrap_or("");
        (accept.contains("application/json") && !accept.contains("text/html"))
            || self.header("authorization").is_some_and(|a| a.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")))
            || self.header("sec-fetch-mode").is_some_and(|m| m.eq_ignore_ascii_case("cors"))
            || self.header("x-requested-with").is_some_and(|m| m.eq_ignore_ascii_case("xmlhttprequest"))
    }
}

/// An address as proxies write it: `ip`, `ip:port`, `[v6]` or `[v6]:port`.
pub fn parse_address(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = t.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    t.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|v6| v6.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_the_peer_or_a_trusted_hop_back() {
        let headers =
            vec![("X-Forwarded-For".to_owned(), "6.6.6.6, 10.0.0.7".to_owned()), ("x-forwarded-for".to_owned(), "10.0.0.9".to_owned())];
        let head = RequestHead {
            method: "GET",
            scheme: "https",
            authority: "a",
            path: "/",
            headers: &headers,
            rewrites_path: true,
            client: parse_address("192.0.2.1:5555"),
        };
        assert_eq!(head.client_address(0), parse_address("192.0.2.1"));
        assert_eq!(head.client_address(1), parse_address("10.0.0.9"));
        assert_eq!(head.client_address(2), parse_address("10.0.0.7"));
        assert_eq!(head.client_address(3), parse_address("6.6.6.6"));
        assert_eq!(head.client_address(4), None, "not that many hops: unknown");
        assert_eq!(parse_address("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        assert_eq!(parse_address("[2001:db8::1]"), "2001:db8::1".parse().ok());
        assert_eq!(parse_address("unknown"), None);
    }
}
