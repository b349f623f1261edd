//! The parts of a request the engine reads, and what it asks of them.

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

    pub(crate) fn looks_like_api(&self) -> bool {
        let accept = self.header("accept").unwrap_or("");
        (accept.contains("application/json") && !accept.contains("text/html"))
            || self.header("sec-fetch-mode").is_some_and(|m| m.eq_ignore_ascii_case("cors"))
            || self.header("x-requested-with").is_some_and(|m| m.eq_ignore_ascii_case("xmlhttprequest"))
    }
}
