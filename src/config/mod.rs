//! The configuration schema, shared by every front end (Envoy and nginx
//! plugin configuration, the sidecar's file). Parsing reports every error at
//! once, each naming its field and what would be valid.
//!
//! `raw` is the schema as serde reads it, `check` the checks every section
//! shares, `compile` turns the core's sections into a [`Config`]. A front
//! end's own section (the sidecar's `sidecar:`) is a [`Section`] it defines
//! and checks with the same [`Checker`].

mod check;
mod compile;
mod raw;
mod routes;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;

use crate::encoding::{b64std, build_query, percent_encode, split_url};
use crate::headers::StripSet;
use crate::http::HttpCall;
use crate::policy::{HostPattern, RouteTable};
use crate::seal::Sealer;

pub use crate::headers::HeaderNames;
pub use crate::secret::{SecretSource, SecretString};
pub use check::{decode_cookie_secret, looks_human_made, parse_duration, Checker};
pub use raw::{RawDuration, RawSecret};

/// How a host reaches the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpCalls {
    /// Only through mapped callout targets (proxy-wasm: an Envoy cluster or
    /// an nginx `host:port` per provider host).
    Callouts,
    /// Unmapped hosts at their own address (a native HTTP client).
    Direct,
}

/// The sections of the configuration that one front end reads and checks
/// itself; the core's parser skips them (and every other front end's).
pub trait Section: Sized {
    /// Their keys at the top of the configuration.
    const KEYS: &'static [&'static str];
    /// The sections as written: deserialized from an object holding only
    /// the keys present among [`Section::KEYS`].
    type Raw: DeserializeOwned + Default;
    /// Checks the section, reporting errors through `checker`.
    fn compile(raw: Self::Raw, checker: &mut Checker<'_>) -> Self;
}

/// Keys of the sections front ends read themselves.
pub const FRONT_END_SECTIONS: [&str; 2] = ["sidecar", "store"];

/// No section of its own (the filter).
impl Section for () {
    const KEYS: &'static [&'static str] = &[];
    type Raw = ();
    fn compile((): (), _: &mut Checker<'_>) {}
}

/// `SameSite` attribute of the cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites: what the callback needs.
    Lax,
    /// Never sent cross-site (breaks the callback if used for the login cookie).
    Strict,
    /// Always sent; requires `Secure`.
    None,
}

impl SameSite {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

/// How the filter authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// Form fields (`client_secret_post`).
    Post,
}

/// The OpenID provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Issuer, compared exactly with discovery and ID tokens.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Client authentication method.
    pub client_auth: ClientAuth,
    /// Space-separated scopes.
    pub scopes: String,
    /// IdP `host[:port]` → callout target (Envoy cluster, or `host:port` in nginx).
    pub callouts: BTreeMap<String, String>,
    /// Callout timeout.
    pub timeout_ms: u32,
    /// Allowed clock skew for token times, seconds.
    pub clock_skew: u64,
    /// Let email rules match addresses the IdP has not verified.
    pub trust_unverified_email: bool,
    /// Claim used for the user header.
    pub user_claim: UserClaim,
    /// Name shown on pages ("Continue with …").
    pub display_name: String,
    /// How the host reaches the provider's hosts.
    pub calls: IdpCalls,
    /// Discovered endpoints may be plain `http`: the issuer is on loopback,
    /// or `insecure_allow_http_issuer` is set.
    pub http_endpoints_allowed: bool,
}

/// The ID-token claim that names the user in the user header (`sub` when
/// the chosen claim is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserClaim {
    /// `preferred_username` (the default).
    PreferredUsername,
    /// `email`.
    Email,
    /// `name`.
    Name,
    /// `sub`, which never changes for a user.
    Sub,
}

impl UserClaim {
    pub(super) fn parse(name: &str) -> Option<UserClaim> {
        match name {
            "preferred_username" => Some(UserClaim::PreferredUsername),
            "email" => Some(UserClaim::Email),
            "name" => Some(UserClaim::Name),
            "sub" => Some(UserClaim::Sub),
            _ => None,
        }
    }
}

impl ProviderConfig {
    /// A token-endpoint request with this client's authentication: the
    /// gates' code exchanges and refreshes, and `oidc-edge doctor`'s probe of
    /// the client secret, are one request shape.
    pub fn token_call(&self, token_endpoint: &str, form: &[(&str, &str)]) -> Option<HttpCall> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("client_id", &self.client_id));
        let mut headers = vec![
            ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        match self.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-encode both parts before base64.
                let creds = format!("{}:{}", percent_encode(&self.client_id), percent_encode(self.client_secret.expose()));
                headers.push(("authorization".to_owned(), format!("Basic {}", b64std(creds.as_bytes()))));
            }
            ClientAuth::Post => fields.push(("client_secret", self.client_secret.expose())),
        }
        self.call("POST", token_endpoint, headers, build_query(&fields).into_bytes())
    }

    /// A call to an IdP URL, through the callout target mapped to its
    /// authority (`host:port`), else to its host; `None` when unmapped.
    pub fn call(&self, method: &'static str, url: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Option<HttpCall> {
        let (scheme, authority, path) = split_url(url)?;
        let host = crate::redirect::authority_host(authority);
        let target = match self.callouts.get(authority).or_else(|| self.callouts.get(host)) {
            Some(t) => t.clone(),
            None if self.calls == IdpCalls::Direct => authority.to_owned(),
            None => return None,
        };
        Some(HttpCall {
            target,
            method,
            scheme: if scheme == "https" { "https" } else { "http" },
            authority: authority.to_owned(),
            path: path.to_owned(),
            headers,
            body,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// Session cookie settings.
pub struct SessionConfig {
    /// Session cookie name; the login and ID-token cookies derive from it.
    pub cookie_name: String,
    /// The keys: first seals, all open.
    pub sealer: Sealer,
    /// Absolute session lifetime, seconds.
    pub lifetime: u64,
    /// How long a login may take from redirect to callback, seconds.
    pub login_timeout: u64,
    /// How long a session is trusted before it is re-checked with the IdP
    /// using the refresh token, seconds.
    pub refresh_interval: u64,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Secure`.
    pub secure: bool,
    /// `Domain`, when cookies should span subdomains.
    pub domain: Option<String>,
}

/// Paths the filter answers itself, on every host.
#[derive(Debug, Clone)]
pub struct Paths {
    /// OAuth2 redirect URI path.
    pub callback: String,
    /// Sign-out path.
    pub sign_out: String,
    /// Explicit login start (`?rd=` names where to go afterwards).
    pub start: String,
    /// A page with a "Continue with <provider>" button, for deployments
    /// that want a page before the redirect.
    pub sign_in: String,
    /// Sidecar: nginx `auth_request` decisions (2xx/401/403).
    pub auth: String,
    /// Sidecar: forward-auth decisions for Caddy and Traefik, whose non-2xx
    /// answers go to the browser as they are.
    pub forward_auth: String,
    /// Sidecar: where the provider posts back-channel logout tokens
    /// (register it as the client's `backchannel_logout_uri`).
    pub backchannel_logout: String,
    /// The public keys of signed identity tokens (`signed_identity`).
    pub jwks: String,
}

/// A validated, compiled configuration.
pub struct Config {
    /// Provider.
    pub provider: ProviderConfig,
    /// Session cookies.
    pub session: SessionConfig,
    /// Our own paths.
    pub paths: Paths,
    /// Absolute callback URL, when it cannot be derived from the request.
    pub redirect_url: Option<String>,
    /// Where the IdP sends the browser after logout; default `<scheme>://<host>/`.
    pub post_logout_redirect_url: Option<String>,
    /// Hosts that redirects after login/logout may target besides relative paths.
    pub allowed_redirect_hosts: Vec<HostPattern>,
    /// Every header name removed from inbound requests.
    pub strip: StripSet,
    /// Routes.
    pub routes: RouteTable,
    /// The key that signs identity tokens for routes' `signed_identity`.
    pub identity: Option<crate::identity::IdentitySigner>,
    /// Distinct audience sets of routes taking bearer tokens (one token
    /// cache each).
    pub bearer_caches: usize,
    /// Trusted proxies in front of the gate's own proxy: the client's
    /// address is the `X-Forwarded-For` entry this many hops back (0: the
    /// proxy's peer). `client_address.forwarded_hops`.
    pub client_hops: u8,
    /// The sidecar a filter hands fleet-wide work to (`fleet.coordinator`);
    /// `None` for a filter on its own, and always for the sidecar itself.
    pub coordinator: Option<crate::fleet::Coordinator>,
    /// Settings that work but should be changed, each naming its field and
    /// the fix (`oidc-edge check` prints them, the gates log them at start).
    pub warnings: Vec<FieldIssue>,
}

impl Config {
    /// The paths the gate answers itself for browsers and clients (not
    /// decisions): what a proxy in front of the sidecar routes to it. The
    /// identity JWKS only where identity tokens are signed.
    pub fn pages(&self) -> Vec<&str> {
        let p = &self.paths;
        let mut out = vec![p.start.as_str(), p.callback.as_str(), p.sign_out.as_str(), p.sign_in.as_str()];
        if self.identity.is_some() {
            out.push(p.jwks.as_str());
        }
        out
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config").field("provider", &self.provider).finish_non_exhaustive()
    }
}

/// One finding about one field: an error, or a warning about a setting
/// that works but should change. Displays as `field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    /// The field, as a path (`routes[2].groups`); `configuration` for the whole.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldIssue {
    pub(crate) fn new(field: &str, message: impl fmt::Display) -> FieldIssue {
        FieldIssue { field: field.to_owned(), message: message.to_string() }
    }
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<FieldIssue>);

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid oidc-edge configuration ({} error{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
