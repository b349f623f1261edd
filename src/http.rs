//! The HTTP calls the core asks a host to make, and their answers.

/// An HTTP call the host must make (to an Envoy cluster or an nginx `host:port`).
/// Its `Debug` omits header values and the body: they carry client credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// Callout target: cluster name or `host:port`.
    pub target: String,
    /// Method.
    pub method: &'static str,
    /// `http` or `https` (ngx_wasm_module turns TLS on from `:scheme`;
    /// Envoy takes it from the cluster).
    pub scheme: &'static str,
    /// `:authority` (the IdP's host, for virtual hosting and TLS SNI).
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Timeout.
    pub timeout_ms: u32,
}

impl std::fmt::Debug for HttpCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCall")
            .field("target", &self.target)
            .field("method", &self.method)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// What came back. `status == 0` means no response: unreachable, reset or timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// HTTP status, or 0.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}
