//! What the engine reports: each event is one counter and, for failures, one
//! log line with the reason (never a secret, token or cookie value).

/// Something worth counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Redirected a browser to the IdP.
    LoginStarted,
    /// Callback finished with a session cookie.
    LoginCompleted,
    /// Callback or code exchange failed.
    LoginFailed(&'static str),
    /// The ID token did not verify (detail for the log line).
    TokenRejected(String),
    /// Request forwarded upstream.
    Allowed,
    /// Browser sent to the canonical spelling of its path (the host forwards
    /// paths as received, so it could not be forwarded as decided).
    PathRedirected,
    /// Request refused (403/400).
    Denied(&'static str),
    /// API-style request without a session (401).
    Unauthorized,
    /// A session cookie that did not open.
    InvalidCookie(&'static str),
    /// A login could not start or finish because the IdP is unreachable.
    ProviderUnavailable,
    /// Sign-out.
    SignedOut,
    /// The provider ended sessions by back-channel logout.
    BackchannelLogout,
    /// A refresh call to the IdP started.
    RefreshStarted,
    /// A refresh produced a new session cookie.
    RefreshSucceeded,
    /// A refresh failed (the reason says whether the session was kept).
    RefreshFailed(&'static str),
    /// A request joined a refresh made by another request or worker.
    RefreshCoalesced,
    /// The shared store did not answer; what the gate did instead.
    StoreUnavailable(&'static str),
}

/// The events of one turn: one or two on the hot path, kept inline so that
/// a decision allocates nothing for them.
pub type Events = smallvec::SmallVec<[Event; 2]>;

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Expected failures, including any an outsider can trigger.
    Info,
    /// Something an operator should look at.
    Warn,
}

/// A counter every front end exports, under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Browsers sent to the IdP.
    LoginsStarted,
    /// Callbacks that ended with a session cookie.
    LoginsCompleted,
    /// Callbacks or code exchanges that failed.
    LoginsFailed,
    /// Requests forwarded upstream.
    RequestsAllowed,
    /// Requests refused (400/403).
    RequestsDenied,
    /// Requests answered with a redirect (to the IdP or to the normalized path).
    RequestsRedirected,
    /// API requests without a session (401).
    RequestsUnauthorized,
    /// Session cookies that did not open.
    InvalidCookies,
    /// Logins answered 503 because the IdP was unreachable.
    ProviderUnavailable,
    /// Sign-outs.
    SignOuts,
    /// Refresh calls started.
    RefreshesStarted,
    /// Refreshes that produced a new session cookie.
    RefreshesSucceeded,
    /// Refreshes that failed (kept or ended the session).
    RefreshesFailed,
    /// Requests that joined another request's refresh.
    RefreshesCoalesced,
    /// Store operations that got no answer.
    StoreUnavailable,
}

impl Counter {
    /// Every counter, for hosts that define metrics up front.
    pub const ALL: [Counter; 15] = [
        Counter::LoginsStarted,
        Counter::LoginsCompleted,
        Counter::LoginsFailed,
        Counter::RequestsAllowed,
        Counter::RequestsDenied,
        Counter::RequestsRedirected,
        Counter::RequestsUnauthorized,
        Counter::InvalidCookies,
        Counter::ProviderUnavailable,
        Counter::SignOuts,
        Counter::RefreshesStarted,
        Counter::RefreshesSucceeded,
        Counter::RefreshesFailed,
        Counter::RefreshesCoalesced,
        Counter::StoreUnavailable,
    ];

    /// The metric name (Envoy and ngx_wasm_module stats; the sidecar's
    /// Prometheus name adds `_total`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::LoginsStarted => "oidc_edge_logins_started",
            Counter::LoginsCompleted => "oidc_edge_logins_completed",
            Counter::LoginsFailed => "oidc_edge_logins_failed",
            Counter::RequestsAllowed => "oidc_edge_requests_allowed",
            Counter::RequestsDenied => "oidc_edge_requests_denied",
            Counter::RequestsRedirected => "oidc_edge_requests_redirected",
            Counter::RequestsUnauthorized => "oidc_edge_requests_unauthorized",
            Counter::InvalidCookies => "oidc_edge_invalid_cookies",
            Counter::ProviderUnavailable => "oidc_edge_provider_unavailable",
            Counter::SignOuts => "oidc_edge_sign_outs",
            Counter::RefreshesStarted => "oidc_edge_refreshes_started",
            Counter::RefreshesSucceeded => "oidc_edge_refreshes_succeeded",
            Counter::RefreshesFailed => "oidc_edge_refreshes_failed",
            Counter::RefreshesCoalesced => "oidc_edge_refreshes_coalesced",
            Counter::StoreUnavailable => "oidc_edge_store_unavailable",
        }
    }

    /// One line of help, for `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Counter::LoginsStarted => "Browsers sent to the identity provider.",
            Counter::LoginsCompleted => "Sign-ins that ended with a session cookie.",
            Counter::LoginsFailed => "Sign-ins that failed at the callback or the code exchange.",
            Counter::RequestsAllowed => "Requests forwarded upstream.",
            Counter::RequestsDenied => "Requests refused (400 or 403).",
            Counter::RequestsRedirected => "Requests answered with a redirect (to sign in, or to the normalized path).",
            Counter::RequestsUnauthorized => "API requests without a session (401).",
            Counter::InvalidCookies => "Session cookies that did not open (tampered, expired, or sealed with an unknown key).",
            Counter::ProviderUnavailable => "Sign-ins answered 503 because the identity provider was unreachable.",
            Counter::SignOuts => "Sign-outs.",
            Counter::RefreshesStarted => "Session refreshes sent to the identity provider.",
            Counter::RefreshesSucceeded => "Session refreshes that produced a new session cookie.",
            Counter::RefreshesFailed => "Session refreshes that failed (the log line says whether the session was kept).",
            Counter::RefreshesCoalesced => "Requests that joined a refresh made by another request or worker.",
            Counter::StoreUnavailable => "Shared-store operations that got no answer (the gate went on without them where safe).",
        }
    }

    /// Position in [`Counter::ALL`], for hosts that keep counters in an array.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Event {
    /// The counters this event increments.
    pub fn counters(&self) -> &'static [Counter] {
        match self {
            // A started login is also a redirected request.
            Event::LoginStarted => &[Counter::LoginsStarted, Counter::RequestsRedirected],
            Event::LoginCompleted => &[Counter::LoginsCompleted],
            Event::LoginFailed(_) => &[Counter::LoginsFailed],
            Event::TokenRejected(_) => &[],
            Event::Allowed => &[Counter::RequestsAllowed],
            Event::PathRedirected => &[Counter::RequestsRedirected],
            Event::Denied(_) => &[Counter::RequestsDenied],
            Event::Unauthorized => &[Counter::RequestsUnauthorized],
            Event::InvalidCookie(_) => &[Counter::InvalidCookies],
            Event::ProviderUnavailable => &[Counter::ProviderUnavailable],
            Event::SignedOut | Event::BackchannelLogout => &[Counter::SignOuts],
            Event::RefreshStarted => &[Counter::RefreshesStarted],
            Event::RefreshSucceeded => &[Counter::RefreshesSucceeded],
            Event::RefreshFailed(_) => &[Counter::RefreshesFailed],
            Event::RefreshCoalesced => &[Counter::RefreshesCoalesced],
            Event::StoreUnavailable(_) => &[Counter::StoreUnavailable],
        }
    }

    /// How loud the event's log line is, the same on every front end:
    /// failures an outsider can cause at will (a forged cookie, a refused
    /// path, a bad callback) are `Info`, so they cannot flood a warning
    /// channel; the provider failing is `Warn`.
    pub fn severity(&self) -> Severity {
        match self {
            Event::ProviderUnavailable | Event::RefreshFailed(_) => Severity::Warn,
            _ => Severity::Info,
        }
    }

    /// The log line for failures; `None` for routine events.
    pub fn log_line(&self) -> Option<String> {
        match self {
            Event::LoginFailed(why) => Some(format!("login failed: {why}")),
            Event::TokenRejected(why) => Some(format!("ID token rejected: {why}")),
            Event::Denied(why) => Some(format!("request denied: {why}")),
            Event::InvalidCookie(why) => Some(format!("session cookie refused: {why}")),
            Event::ProviderUnavailable => Some("identity provider unavailable: answered 503".into()),
            Event::BackchannelLogout => Some("back-channel logout: the provider ended a session".into()),
            Event::RefreshFailed(why) => Some(format!("session refresh failed: {why}")),
            // The sidecar logs the store being down once, rate-limited.
            Event::StoreUnavailable(_) => None,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Counter;

    #[test]
    fn every_counter_sits_at_its_index_with_a_distinct_name() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.name().starts_with("oidc_edge_") && !c.help().is_empty());
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
