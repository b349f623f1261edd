//! The provider's metadata: discovery and JWKS, how to fetch them, how to
//! validate them, and the compact form workers share them in.

mod load;

use serde::Deserialize;

use crate::config::ProviderConfig;
use crate::encoding::split_url;
use crate::http::{HttpCall, HttpResponse};
use crate::jose::{Jwks, JwksError};

pub use load::{retry_delay, Load, Progress, Schedule, METADATA_MAX_AGE};

/// The endpoints we use, from `/.well-known/openid-configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Discovery {
    /// Issuer (equal to the configured one).
    pub issuer: String,
    /// Browser-facing authorization endpoint.
    pub authorization_endpoint: String,
    /// Token endpoint (called by the proxy).
    pub token_endpoint: String,
    /// JWKS (called by the proxy).
    pub jwks_uri: String,
    /// Userinfo (optional).
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// RP-initiated logout (optional).
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    /// RFC 9207: the provider puts `iss` in every authorization response, so
    /// a callback without it is refused (a mix-up attack would strip it).
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// Why provider metadata was refused or not fetched. `what` names the
/// document or endpoint (`discovery`, `jwks`, `token_endpoint` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// No callout target for the host of an endpoint.
    NoCalloutTarget {
        /// The endpoint.
        what: &'static str,
        /// Its `host[:port]`.
        authority: String,
    },
    /// No answer: unreachable, reset or timed out.
    Unreachable {
        /// The document.
        what: &'static str,
    },
    /// An answer other than 200.
    Status {
        /// The document.
        what: &'static str,
        /// The status.
        status: u16,
    },
    /// The discovery document is not JSON of the expected shape.
    InvalidDiscovery(String),
    /// The discovery `issuer` differs from `provider.issuer`.
    IssuerMismatch {
        /// What the provider says.
        discovered: String,
        /// What the configuration says.
        configured: String,
    },
    /// An advertised endpoint that is not an http(s) URL.
    NotUrl {
        /// The endpoint.
        what: &'static str,
        /// Its value.
        url: String,
    },
    /// A plain-http endpoint where https is required.
    InsecureEndpoint {
        /// The endpoint.
        what: &'static str,
        /// Its value.
        url: String,
    },
    /// The JWKS is unusable.
    Jwks(JwksError),
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::NoCalloutTarget { what, authority } => {
                write!(f, "no callout target for the {what} host {authority:?}: add it to provider.callouts")
            }
            ProviderError::Unreachable { what } => write!(f, "{what}: provider unreachable or timed out"),
            ProviderError::Status { what, status } => write!(f, "{what}: provider answered HTTP {status}"),
            ProviderError::InvalidDiscovery(e) => write!(f, "discovery document is not valid: {e}"),
            ProviderError::IssuerMismatch { discovered, configured } => write!(
                f,
                "discovery issuer {discovered:?} differs from provider.issuer {configured:?}; they must match exactly \
                 (check the scheme and any trailing slash)"
            ),
            ProviderError::NotUrl { what, url } => write!(f, "discovery {what} {url:?} is not an http(s) URL"),
            ProviderError::InsecureEndpoint { what, url } => write!(
                f,
                "discovery {what} {url:?} uses http://; the provider must advertise https endpoints \
                 (or set provider.insecure_allow_http_issuer for a provider on a trusted network)"
            ),
            ProviderError::Jwks(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProviderError {}

fn get(config: &ProviderConfig, url: &str, what: &'static str) -> Result<HttpCall, ProviderError> {
    config
        .call("GET", url, vec![("accept".into(), "application/json".into())], Vec::new())
        .ok_or_else(|| ProviderError::NoCalloutTarget { what, authority: split_url(url).map_or(url, |(_, a, _)| a).to_owned() })
}

/// The discovery request.
pub fn discovery_call(config: &ProviderConfig) -> Result<HttpCall, ProviderError> {
    let url = format!("{}/.well-known/openid-configuration", config.issuer.trim_end_matches('/'));
    get(config, &url, "issuer")
}

/// The JWKS request.
pub fn jwks_call(config: &ProviderConfig, discovery: &Discovery) -> Result<HttpCall, ProviderError> {
    get(config, &discovery.jwks_uri, "jwks_uri")
}

fn ok_body<'a>(resp: &'a HttpResponse, what: &'static str) -> Result<&'a [u8], ProviderError> {
    match resp.status {
        0 => Err(ProviderError::Unreachable { what }),
        200 => Ok(&resp.body),
        status => Err(ProviderError::Status { what, status }),
    }
}

impl Discovery {
    /// Parses and checks a discovery document against the configuration.
    pub fn parse(bytes: &[u8], config: &ProviderConfig) -> Result<Discovery, ProviderError> {
        let d: Discovery = serde_json::from_slice(bytes).map_err(|e| ProviderError::InvalidDiscovery(e.to_string()))?;
        if d.issuer != config.issuer {
            return Err(ProviderError::IssuerMismatch { discovered: d.issuer, configured: config.issuer.clone() });
        }
        let required = [
            ("authorization_endpoint", Some(&d.authorization_endpoint)),
            ("token_endpoint", Some(&d.token_endpoint)),
            ("jwks_uri", Some(&d.jwks_uri)),
        ];
        let optional = [("userinfo_endpoint", d.userinfo_endpoint.as_ref()), ("end_session_endpoint", d.end_session_endpoint.as_ref())];
        for (name, url) in required.into_iter().chain(optional).filter_map(|(n, u)| Some((n, u?))) {
            match split_url(url) {
                None => return Err(ProviderError::NotUrl { what: name, url: url.clone() }),
                // Tokens and codes travel to these: never in clear to a remote host.
                Some(("http", _, _)) if !config.http_endpoints_allowed => {
                    return Err(ProviderError::InsecureEndpoint { what: name, url: url.clone() })
                }
                Some(_) => {}
            }
        }
        // Calls to these go through callouts: fail now, naming the fix, rather
        // than at the first login or refresh.
        get(config, &d.token_endpoint, "token_endpoint")?;
        get(config, &d.jwks_uri, "jwks_uri")?;
        if let Some(userinfo) = &d.userinfo_endpoint {
            get(config, userinfo, "userinfo_endpoint")?;
        }
        Ok(d)
    }

    /// Parses the discovery response.
    pub fn from_response(resp: &HttpResponse, config: &ProviderConfig) -> Result<Discovery, ProviderError> {
        Discovery::parse(ok_body(resp, "discovery")?, config)
    }
}

/// Parses a JWKS response.
pub fn jwks_from_response(resp: &HttpResponse) -> Result<Jwks, ProviderError> {
    Jwks::parse(ok_body(resp, "jwks")?).map_err(ProviderError::Jwks)
}

/// Discovery and keys, as one worker holds them.
pub struct ProviderSnapshot {
    /// Endpoints.
    pub discovery: Discovery,
    /// Keys.
    pub jwks: Jwks,
    /// When the JWKS was fetched (unix seconds).
    pub fetched_at: u64,
}

/// The raw documents, in the form workers exchange through shared memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedProvider {
    /// When fetched.
    pub fetched_at: u64,
    /// Discovery JSON.
    pub discovery: Vec<u8>,
    /// JWKS JSON.
    pub jwks: Vec<u8>,
}

impl SharedProvider {
    /// `fetched_at (8) | discovery length (4) | discovery | jwks`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.discovery.len() + self.jwks.len());
        out.extend_from_slice(&self.fetched_at.to_be_bytes());
        out.extend_from_slice(&(self.discovery.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.discovery);
        out.extend_from_slice(&self.jwks);
        out
    }

    /// Inverse of [`SharedProvider::encode`].
    pub fn decode(bytes: &[u8]) -> Option<SharedProvider> {
        let fetched_at = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?) as usize;
        let discovery = bytes.get(12..12usize.checked_add(len)?)?.to_vec();
        let jwks = bytes.get(12 + len..)?.to_vec();
        Some(SharedProvider { fetched_at, discovery, jwks })
    }

    /// Validates both documents into a snapshot.
    pub fn snapshot(&self, config: &ProviderConfig) -> Result<ProviderSnapshot, ProviderError> {
        Ok(ProviderSnapshot {
            discovery: Discovery::parse(&self.discovery, config)?,
            jwks: Jwks::parse(&self.jwks).map_err(ProviderError::Jwks)?,
            fetched_at: self.fetched_at,
        })
    }
}

/// Minimum time between JWKS refetches triggered by an unknown `kid`.
pub const JWKS_REFETCH_COOLDOWN: u64 = 60;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, IdpCalls};
    use crate::testing::{discovery, EnvSecrets};
    use serde_json::json;

    fn config(issuer: &str, callouts: serde_json::Value, extra: serde_json::Value) -> ProviderConfig {
        let mut provider = json!({"issuer": issuer, "client_id": "c", "client_secret": {"env": "CLIENT_SECRET"}, "callouts": callouts});
        if let (Some(p), Some(e)) = (provider.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        let cfg = json!({"provider": provider, "session": {"secrets": [{"env": "COOKIE_SECRET"}]}, "routes": [{"path": "/"}]});
        match Config::parse(&cfg.to_string(), &EnvSecrets::standard(), IdpCalls::Callouts) {
            Ok(c) => c.provider,
            Err(e) => panic!("{e}"),
        }
    }

    fn doc(issuer: &str, edit: impl FnOnce(&mut Discovery)) -> Vec<u8> {
        let mut d = discovery();
        for url in [&mut d.authorization_endpoint, &mut d.token_endpoint, &mut d.jwks_uri] {
            *url = url.replace(crate::testing::ISSUER, issuer);
        }
        d.userinfo_endpoint = Some(format!("{issuer}/api/oidc/userinfo"));
        d.end_session_endpoint = Some(format!("{issuer}/api/oidc/end-session"));
        d.issuer = issuer.to_owned();
        edit(&mut d);
        serde_json::json!({
            "issuer": d.issuer, "authorization_endpoint": d.authorization_endpoint, "token_endpoint": d.token_endpoint,
            "jwks_uri": d.jwks_uri, "userinfo_endpoint": d.userinfo_endpoint, "end_session_endpoint": d.end_session_endpoint,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn endpoints_must_be_https_unless_the_issuer_is_on_loopback_or_allowed() {
        let https = config("https://id.example.com", json!({"id.example.com": "idp"}), json!({}));
        assert!(Discovery::parse(&doc("https://id.example.com", |_| {}), &https).is_ok());
        for field in ["authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint", "end_session_endpoint"] {
            let bytes = doc("https://id.example.com", |d| {
                let url = match field {
                    "authorization_endpoint" => &mut d.authorization_endpoint,
                    "token_endpoint" => &mut d.token_endpoint,
                    "jwks_uri" => &mut d.jwks_uri,
                    "userinfo_endpoint" => d.userinfo_endpoint.get_or_insert_with(String::new),
                    _ => d.end_session_endpoint.get_or_insert_with(String::new),
                };
                *url = url.replacen("https://", "http://", 1);
            });
            let err = Discovery::parse(&bytes, &https).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains("https"), "{field}: {err}");
        }
        let loopback = config("http://127.0.0.1:9000", json!({"127.0.0.1:9000": "idp"}), json!({}));
        assert!(Discovery::parse(&doc("http://127.0.0.1:9000", |_| {}), &loopback).is_ok());
        let lan = config("http://idp.lan", json!({"idp.lan": "idp"}), json!({"insecure_allow_http_issuer": true}));
        assert!(Discovery::parse(&doc("http://idp.lan", |_| {}), &lan).is_ok());
    }

    #[test]
    fn an_unmapped_userinfo_host_is_reported_at_load() {
        let https = config("https://id.example.com", json!({"id.example.com": "idp"}), json!({}));
        let bytes = doc("https://id.example.com", |d| d.userinfo_endpoint = Some("https://internal.example.com/userinfo".into()));
        let err = Discovery::parse(&bytes, &https).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("userinfo_endpoint") && err.contains("internal.example.com") && err.contains("provider.callouts"), "{err}");
    }
}
