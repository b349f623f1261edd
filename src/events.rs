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
    /// A refresh call to the IdP started.
    RefreshStarted,
    /// A refresh produced a new session cookie.
    RefreshSucceeded,
    /// A refresh failed (the reason says whether the session was kept).
    RefreshFailed(&'static str),
    /// A request joined a refresh made by another request or worker.
    RefreshCoalesced,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Expected failures, including any an outsider can trigger.
    Info,
    /// Something an operator should look at.
    Warn,
}

/// Every counter name, for hosts that define metrics up front.
pub const COUNTERS: &[&str] = &[
    "oidc_edge_logins_started",
    "oidc_edge_logins_completed",
    "oidc_edge_logins_failed",
    "oidc_edge_requests_allowed",
    "oidc_edge_requests_denied",
    "oidc_edge_requests_redirected",
    "oidc_edge_requests_unauthorized",
    "oidc_edge_invalid_cookies",
    "oidc_edge_provider_unavailable",
    "oidc_edge_sign_outs",
    "oidc_edge_refreshes_started",
    "oidc_edge_refreshes_succeeded",
    "oidc_edge_refreshes_failed",
    "oidc_edge_refreshes_coalesced",
];

impl Event {
    /// Index into [`COUNTERS`] of each counter this event increments.
    pub fn counters(&self) -> &'static [usize] {
        match self {
            // A started login is also a redirected request.
            Event::LoginStarted => &[0, 5],
            Event::LoginCompleted => &[1],
            Event::LoginFailed(_) => &[2],
            Event::TokenRejected(_) => &[],
            Event::Allowed => &[3],
            Event::PathRedirected => &[5],
            Event::Denied(_) => &[4],
            Event::Unauthorized => &[6],
            Event::InvalidCookie(_) => &[7],
            Event::ProviderUnavailable => &[8],
            Event::SignedOut => &[9],
            Event::RefreshStarted => &[10],
            Event::RefreshSucceeded => &[11],
            Event::RefreshFailed(_) => &[12],
            Event::RefreshCoalesced => &[13],
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
            Event::RefreshFailed(why) => Some(format!("session refresh failed: {why}")),
            _ => None,
        }
    }
}
