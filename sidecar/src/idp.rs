//! Calls to the identity provider: a small HTTP/1.1 client over TCP or TLS
//! (rustls, the system's trusted CAs), one connection per call — logins and
//! refreshes are rare next to decisions, and a fresh connection never
//! carries a half-read answer from a timed-out call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use oidc_edge::{HttpCall, HttpResponse};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest IdP answer read (discovery, JWKS, token responses are a few KB).
const MAX_BODY: usize = 1 << 20;

/// Why a call to the provider got no answer.
#[derive(Debug)]
pub enum CallError {
    /// The TCP connection failed.
    Connect { target: String, source: std::io::Error },
    /// The host is not a name TLS can check a certificate against.
    TlsName(String),
    /// The TLS handshake failed (certificate, protocol).
    Tls { host: String, source: std::io::Error },
    /// The HTTP exchange failed (reset, malformed answer, oversized body).
    Http(String),
    /// No complete answer within the timeout.
    Timeout { ms: u32 },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect { target, source } => write!(f, "connect {target}: {source}"),
            CallError::TlsName(host) => write!(f, "{host:?} is not a TLS server name"),
            CallError::Tls { host, source } => write!(f, "TLS with {host}: {source}"),
            CallError::Http(why) => f.write_str(why),
            CallError::Timeout { ms } => write!(f, "timed out after {ms} ms"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Connect { source, .. } | CallError::Tls { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub struct IdpClient {
    tls: tokio_rustls::TlsConnector,
}

impl IdpClient {
    /// A client trusting the system's CAs (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured).
    pub fn new() -> IdpClient {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            crate::log::event(
                crate::log::Level::Warn,
                "no trusted CA certificates found; https calls to the identity provider will fail",
                &[("hint", "install ca-certificates or set SSL_CERT_FILE".into())],
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let config = match config {
            Ok(c) => c,
            // ring supports the default versions; this cannot happen, but fail closed.
            Err(_) => std::process::abort(),
        };
        IdpClient { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// Makes `call`, within its timeout.
    pub async fn call(&self, call: &HttpCall) -> Result<HttpResponse, CallError> {
        self.call_with_headers(call).await.map(|(resp, _)| resp)
    }

    /// Makes `call` and keeps the answer's headers (`oidc-edge doctor`
    /// reads `Date` and `Location`).
    pub async fn call_with_headers(&self, call: &HttpCall) -> Result<(HttpResponse, hyper::HeaderMap), CallError> {
        let timeout = Duration::from_millis(u64::from(call.timeout_ms));
        match tokio::time::timeout(timeout, self.try_call(call)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout { ms: call.timeout_ms }),
        }
    }

    async fn try_call(&self, call: &HttpCall) -> Result<(HttpResponse, hyper::HeaderMap), CallError> {
        let https = call.scheme == "https";
        let target = with_port(&call.target, if https { 443 } else { 80 });
        let tcp = TcpStream::connect(&target).await.map_err(|source| CallError::Connect { target: target.clone(), source })?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return exchange(tcp, call).await;
        }
        let host = oidc_edge::redirect::authority_host(&call.authority).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| CallError::TlsName(host.to_owned()))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|source| CallError::Tls { host: host.to_owned(), source })?;
        exchange(tls, call).await
    }
}

fn with_port(target: &str, default: u16) -> String {
    let has_port = match target.rsplit_once(':') {
        Some((host, port)) => !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && (!host.contains(':') || host.ends_with(']')),
        None => false,
    };
    if has_port {
        target.to_owned()
    } else {
        format!("{target}:{default}")
    }
}

async fn exchange<S>(stream: S, call: &HttpCall) -> Result<(HttpResponse, hyper::HeaderMap), CallError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CallError::Http(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder().method(call.method).uri(call.path.as_str()).header("host", call.authority.as_str());
    for (n, v) in &call.headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(call.body.clone()))).map_err(|e| CallError::Http(format!("request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| CallError::Http(format!("request: {e}")))?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| CallError::Http(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((HttpResponse { status, body: body.to_vec() }, parts.headers))
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_ports_are_added_only_when_missing() {
        use super::with_port;
        assert_eq!(with_port("id.example.com", 443), "id.example.com:443");
        assert_eq!(with_port("id.example.com:8443", 443), "id.example.com:8443");
        assert_eq!(with_port("[::1]:9000", 80), "[::1]:9000");
        assert_eq!(with_port("[::1]", 80), "[::1]:80");
    }
}
