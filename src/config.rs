//! The configuration schema, shared by every front end (Envoy and nginx
//! plugin configuration, the sidecar's file). Parsing reports every error at
//! once, each naming its field and what would be valid.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::encoding::{b64_any_decode, split_url};
use crate::headers::{StripSet, FOREIGN_IDENTITY_HEADERS, ROUTING_OVERRIDE_HEADERS};
use crate::policy::{HostPattern, Requirement, Route, RouteTable, Rule};
use crate::provider::HttpCall;
use crate::seal::Sealer;

/// A secret value. `Debug` and `Display` never show it. Shared (`Arc`) so
/// that injecting it into a request costs no copy.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretString(Arc<str>);

impl SecretString {
    /// Wraps a secret.
    pub fn new(value: String) -> SecretString {
        SecretString(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The secret as a shared string, for header values.
    pub fn expose_shared(&self) -> Arc<str> {
        Arc::clone(&self.0)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where secrets come from: the host's environment, files (sidecar only).
pub trait SecretSource {
    /// An environment variable of the process (for proxy-wasm: of the VM).
    fn env(&self, name: &str) -> Option<String>;
    /// A file's contents; `Err` explains why it is unavailable.
    fn file(&self, path: &str) -> Result<String, String>;
}

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
    /// Unmapped IdP hosts are called at their own address (the sidecar);
    /// the filter can only reach mapped callout targets.
    pub direct_calls: bool,
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
    fn parse(name: &str) -> Option<UserClaim> {
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
    /// A call to an IdP URL, through the callout target mapped to its
    /// authority (`host:port`), else to its host; `None` when unmapped.
    pub fn call(&self, method: &'static str, url: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Option<HttpCall> {
        let (scheme, authority, path) = split_url(url)?;
        let host = crate::redirect::authority_host(authority);
        let target = match self.callouts.get(authority).or_else(|| self.callouts.get(host)) {
            Some(t) => t.clone(),
            None if self.direct_calls => authority.to_owned(),
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
    /// Key for the filter's random generator, derived from the sealing secret.
    pub rng_key: [u8; 32],
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
}

/// Which front end reads the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The proxy-wasm filter: IdP calls go to mapped callout targets only.
    Filter,
    /// The native sidecar: IdP calls go to the IdP's own address unless mapped.
    Sidecar,
}

/// Log verbosity of the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Failures that need an operator.
    Warn,
    /// Also refused requests and sign-ins.
    Info,
    /// Also one line per decision.
    Debug,
}

/// Settings only the sidecar reads (the filter ignores the section).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Address to listen on.
    pub listen: std::net::SocketAddr,
    /// Peers whose `X-Forwarded-*` / `X-Original-*` headers are believed.
    pub trusted_proxies: Vec<crate::net::IpNet>,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// When set, decisions are answered only to requests carrying it in
    /// `X-Oidc-Edge-Proxy` (the rendered snippets send it): a decision
    /// endpoint routed to browsers by mistake then gives them nothing.
    pub proxy_token: Option<SecretString>,
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
    /// Sidecar settings.
    pub sidecar: SidecarConfig,
    /// Settings that work but should be changed, each naming its field and
    /// the fix (`oidc-edge check` prints them, the gates log them at start).
    pub warnings: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config").field("provider", &self.provider).finish_non_exhaustive()
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid oidc-edge configuration ({} error{}):", self.0.len(), if self.0.len() == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawSecret {
    Inline(String),
    Env { env: String },
    File { file: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    provider: RawProvider,
    session: RawSession,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    identity_headers: RawHeaderNames,
    #[serde(default)]
    strip_headers: Vec<String>,
    #[serde(default)]
    allowed_redirect_hosts: Vec<String>,
    redirect_url: Option<String>,
    post_logout_redirect_url: Option<String>,
    routes: Vec<RawRoute>,
    #[serde(default)]
    sidecar: RawSidecar,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    listen: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    log_level: Option<String>,
    proxy_token: Option<RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: String,
    client_id: String,
    client_secret: RawSecret,
    #[serde(default)]
    client_auth: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default)]
    callouts: BTreeMap<String, String>,
    timeout_ms: Option<u32>,
    clock_skew: Option<RawDuration>,
    #[serde(default)]
    trust_unverified_email: bool,
    user_claim: Option<String>,
    display_name: Option<String>,
    #[serde(default)]
    insecure_allow_http_issuer: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    cookie_name: Option<String>,
    secrets: Vec<RawSecret>,
    lifetime: Option<RawDuration>,
    login_timeout: Option<RawDuration>,
    refresh_interval: Option<RawDuration>,
    same_site: Option<String>,
    secure: Option<bool>,
    domain: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    callback: Option<String>,
    sign_out: Option<String>,
    start: Option<String>,
    sign_in: Option<String>,
    auth: Option<String>,
    forward_auth: Option<String>,
}

/// Each field: absent = inherit, `""` = disabled, else the header name.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawHeaderNames {
    user: Option<String>,
    email: Option<String>,
    groups: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<String>,
    path: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    emails: Vec<String>,
    #[serde(default)]
    email_domains: Vec<String>,
    #[serde(default)]
    api: bool,
    #[serde(default)]
    inject_headers: BTreeMap<String, RawSecret>,
    identity_headers: Option<RawHeaderNames>,
}

/// Parses a duration: seconds as a number, or `90s`, `15m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

struct Checker<'a> {
    errors: Vec<String>,
    warnings: Vec<String>,
    secrets: &'a dyn SecretSource,
}

impl Checker<'_> {
    fn err(&mut self, field: &str, msg: impl fmt::Display) {
        self.errors.push(format!("{field}: {msg}"));
    }

    fn warn(&mut self, field: &str, msg: impl fmt::Display) {
        self.warnings.push(format!("{field}: {msg}"));
    }

    fn secret(&mut self, field: &str, raw: &RawSecret) -> Option<String> {
        let value = match raw {
            RawSecret::Inline(v) => v.clone(),
            RawSecret::Env { env } => match self.secrets.env(env) {
                Some(v) => v,
                None => {
                    self.err(field, format!(
                        "environment variable {env} is not set or not visible; set it, and with Envoy list it in \
                         vm_config.environment_variables.host_env_keys"
                    ));
                    return None;
                }
            },
            RawSecret::File { file } => match self.secrets.file(file) {
                Ok(v) => v.trim_end_matches(['\r', '\n']).to_owned(),
                Err(why) => {
                    self.err(field, format!("cannot read {file}: {why}"));
                    return None;
                }
            },
        };
        if value.is_empty() {
            self.err(field, "is empty");
            return None;
        }
        Some(value)
    }

    fn duration(&mut self, field: &str, raw: Option<&RawDuration>, default: u64, min: u64) -> u64 {
        let value = match raw {
            None => return default,
            Some(RawDuration::Seconds(s)) => Some(*s),
            Some(RawDuration::Text(t)) => parse_duration(t),
        };
        match value {
            Some(v) if v >= min => v,
            Some(v) => {
                self.err(field, format!("{v}s is too short; use at least {min}s"));
                default
            }
            None => {
                self.err(field, "is not a duration; write seconds (3600) or 90s, 15m, 12h, 7d");
                default
            }
        }
    }

    fn path(&mut self, field: &str, raw: Option<&String>, default: &str) -> String {
        let p = raw.map_or(default, String::as_str);
        let bad_char = p.bytes().any(|b| b.is_ascii_control() || matches!(b, b'?' | b'#' | b'\\' | b';' | b' ' | b','));
        if !p.starts_with('/') || p.starts_with("//") || bad_char || p.contains("/.") {
            self.err(field, format!("{p:?} must be an absolute path like {default}"));
        }
        p.to_owned()
    }

    fn header_name(&mut self, field: &str, name: &str) {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            self.err(field, format!("{name:?} is not a valid HTTP header name"));
        }
        if matches!(name.to_ascii_lowercase().as_str(), "cookie" | "host" | "content-length" | "transfer-encoding")
            || name.starts_with(':')
        {
            self.err(field, format!("{name:?} cannot be injected or stripped"));
        }
    }

    fn header_names(&mut self, field: &str, raw: &RawHeaderNames, base: &HeaderNames) -> HeaderNames {
        let mut pick = |sub: &str, v: &Option<String>, b: &Option<Arc<str>>| match v {
            None => b.clone(),
            Some(s) if s.is_empty() => None,
            Some(s) => {
                self.header_name(&format!("{field}.{sub}"), s);
                Some(Arc::from(s.as_str()))
            }
        };
        HeaderNames {
            user: pick("user", &raw.user, &base.user),
            email: pick("email", &raw.email, &base.email),
            groups: pick("groups", &raw.groups, &base.groups),
            name: pick("name", &raw.name, &base.name),
        }
    }

    fn sidecar(&mut self, raw: &RawSidecar) -> SidecarConfig {
        let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:4180");
        let listen = listen_text.parse().unwrap_or_else(|_| {
            self.err("sidecar.listen", format!("{listen_text:?} is not an address; write ip:port, e.g. 127.0.0.1:4180"));
            std::net::SocketAddr::from(([127, 0, 0, 1], 4180))
        });
        let default_trusted = ["127.0.0.1".to_owned(), "::1".to_owned()];
        let mut trusted_proxies = Vec::new();
        for (i, t) in raw.trusted_proxies.as_deref().unwrap_or(&default_trusted).iter().enumerate() {
            match crate::net::IpNet::parse(t) {
                Some(net) => trusted_proxies.push(net),
                None => self.err(
                    &format!("sidecar.trusted_proxies[{i}]"),
                    format!("{t:?} is not an address or range; write e.g. 10.0.0.2 or 172.16.0.0/12"),
                ),
            }
        }
        let log_level = match raw.log_level.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("info") => LogLevel::Info,
            Some("warn") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some(other) => {
                self.err("sidecar.log_level", format!("{other:?}: use warn, info or debug"));
                LogLevel::Info
            }
        };
        let proxy_token = raw.proxy_token.as_ref().and_then(|t| self.secret("sidecar.proxy_token", t)).and_then(|t| {
            // Written into nginx and Caddy configs by `oidc-edge render`.
            let ok = t.len() >= 24 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b));
            if !ok {
                self.err("sidecar.proxy_token", "use at least 24 characters of base64; generate one with: openssl rand -base64 32");
            }
            ok.then(|| SecretString::new(t))
        });
        SidecarConfig { listen, trusted_proxies, log_level, proxy_token }
    }

    fn url(&mut self, field: &str, url: &str) {
        if split_url(url).is_none() {
            self.err(field, format!("{url:?} must be an absolute http(s) URL"));
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

impl Config {
    /// Parses and validates the filter's JSON configuration.
    pub fn from_json(text: &str, secrets: &dyn SecretSource) -> Result<Config, ConfigErrors> {
        Config::parse(text, secrets, Front::Filter)
    }

    /// Parses and validates a YAML (or JSON, which is YAML) configuration for
    /// `front`: it becomes JSON for the one parser, so every error names its
    /// field the same way whichever format it came in.
    #[cfg(feature = "yaml")]
    pub fn parse_yaml(text: &str, secrets: &dyn SecretSource, front: Front) -> Result<Config, ConfigErrors> {
        let value: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors(vec![format!("configuration: not valid YAML: {e}")]))?;
        Config::parse(&value.to_string(), secrets, front)
    }

    /// Parses and validates a JSON configuration for `front`.
    pub fn parse(text: &str, secrets: &dyn SecretSource, front: Front) -> Result<Config, ConfigErrors> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // serde_path_to_error spells "no field yet" as `.` or a leading `?`.
            let field = if path == "." || path.starts_with('?') { "configuration".to_owned() } else { path };
            ConfigErrors(vec![format!("{field}: {inner}")])
        })?;
        de.end().map_err(|e| ConfigErrors(vec![format!("configuration: unexpected text after the JSON object ({e})")]))?;
        Config::from_raw(raw, secrets, front)
    }

    fn from_raw(raw: RawConfig, secrets: &dyn SecretSource, front: Front) -> Result<Config, ConfigErrors> {
        let mut c = Checker { errors: Vec::new(), warnings: Vec::new(), secrets };
        let p = &raw.provider;

        match split_url(&p.issuer) {
            None => c.err("provider.issuer", format!("{:?} must be an absolute https URL", p.issuer)),
            Some((scheme, authority, _)) => {
                if p.issuer.ends_with('/') {
                    c.err(
                        "provider.issuer",
                        format!(
                            "{:?} ends with '/'; the issuer is compared exactly with the provider's, which usually has \
                             no trailing slash (Pocket ID: https://id.example.com)",
                            p.issuer
                        ),
                    );
                }
                let host = crate::redirect::authority_host(authority);
                if scheme == "http" && !is_loopback(host) && !p.insecure_allow_http_issuer {
                    c.err(
                        "provider.issuer",
                        "uses http://; use the provider's https URL, or set provider.insecure_allow_http_issuer \
                         for a provider on a trusted network",
                    );
                }
            }
        }
        if p.client_id.is_empty() {
            c.err("provider.client_id", "is empty; copy the client id from the provider");
        }
        let client_secret = c.secret("provider.client_secret", &p.client_secret).unwrap_or_default();
        let user_claim = match p.user_claim.as_deref() {
            None => UserClaim::PreferredUsername,
            Some(name) => UserClaim::parse(name).unwrap_or_else(|| {
                c.err("provider.user_claim", format!("{name:?} is not a claim we can use; use preferred_username, email, name or sub"));
                UserClaim::PreferredUsername
            }),
        };
        let client_auth = match p.client_auth.as_deref() {
            None | Some("client_secret_basic") => ClientAuth::Basic,
            Some("client_secret_post") => ClientAuth::Post,
            Some(other) => {
                c.err("provider.client_auth", format!("{other:?}: use client_secret_basic or client_secret_post"));
                ClientAuth::Basic
            }
        };
        let scopes = p.scopes.clone().unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into(), "groups".into()]);
        if !scopes.iter().any(|s| s == "openid") {
            c.err("provider.scopes", "must include \"openid\"");
        }
        if scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            c.err("provider.scopes", "each scope is one word without spaces");
        }
        if p.callouts.is_empty() && front == Front::Filter {
            c.err(
                "provider.callouts",
                "is empty; map the provider's host to a callout target, e.g. {\"id.example.com\": \"pocket_id\"} \
                 (an Envoy cluster name) or {\"id.example.com\": \"10.0.0.5:443\"} (nginx)",
            );
        }
        if let Some((_, authority, _)) = split_url(&p.issuer) {
            let host = crate::redirect::authority_host(authority);
            if !p.callouts.is_empty()
                && front == Front::Filter
                && !p.callouts.contains_key(authority)
                && !p.callouts.contains_key(host)
            {
                c.err(
                    "provider.callouts",
                    format!("has no target for the issuer's host {authority:?}; add {{\"{authority}\": \"<cluster>\"}}"),
                );
            }
        }
        for (host, target) in &p.callouts {
            if host.is_empty() || host.contains('/') || target.is_empty() {
                c.err(&format!("provider.callouts.{host}"), "keys are host or host:port, values a cluster or host:port");
            }
        }
        let timeout_ms = p.timeout_ms.unwrap_or(5000);
        if !(100..=60_000).contains(&timeout_ms) {
            c.err("provider.timeout_ms", format!("{timeout_ms} is out of range; use 100 to 60000"));
        }
        let clock_skew = c.duration("provider.clock_skew", p.clock_skew.as_ref(), 60, 0);
        if clock_skew > 600 {
            c.err("provider.clock_skew", "more than 600s of skew is not a clock problem; fix the clocks");
        }

        let s = &raw.session;
        let cookie_name = s.cookie_name.clone().unwrap_or_else(|| "_oidc_edge".into());
        let cookie_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if cookie_name.is_empty() || !cookie_name.bytes().all(cookie_token) {
            c.err("session.cookie_name", format!("{cookie_name:?} is not a valid cookie name"));
        }
        if cookie_name.starts_with("__Host-") && s.domain.is_some() {
            c.err("session.domain", "cannot be set with a __Host- cookie name");
        }
        let mut keys = Vec::new();
        if s.secrets.is_empty() {
            c.err("session.secrets", "is empty; add one secret, generate it with: openssl rand -base64 32");
        }
        for (i, raw_secret) in s.secrets.iter().enumerate() {
            let field = format!("session.secrets[{i}]");
            let Some(value) = c.secret(&field, raw_secret) else { continue };
            if looks_human_made(&value) {
                c.warn(
                    &field,
                    format!(
                        "is used as {} raw characters and looks chosen by a person, which makes it guessable; \
                         generate a random one with: oidc-edge secret",
                        value.len()
                    ),
                );
            }
            match decode_cookie_secret(&value) {
                Some(bytes) => keys.push(bytes),
                None => c.err(
                    &field,
                    format!(
                        "is {} bytes; a cookie secret must be 16, 24 or 32 bytes, or base64 of that many. \
                         Generate one with: openssl rand -base64 32",
                        value.len()
                    ),
                ),
            }
        }
        let lifetime = c.duration("session.lifetime", s.lifetime.as_ref(), 7 * 86400, 60);
        if lifetime > 400 * 86400 {
            c.err("session.lifetime", "is longer than 400 days, which browsers cap cookies at; use at most 400d");
        }
        let login_timeout = c.duration("session.login_timeout", s.login_timeout.as_ref(), 600, 30);
        if login_timeout > 86400 {
            c.err("session.login_timeout", "is longer than a day; a login takes minutes (default 10m)");
        }
        let refresh_interval = c.duration("session.refresh_interval", s.refresh_interval.as_ref(), 3600, 1);
        let same_site = match s.same_site.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("lax") => SameSite::Lax,
            Some("strict") => SameSite::Strict,
            Some("none") => SameSite::None,
            Some(_) => {
                c.err("session.same_site", "use Lax (recommended), Strict or None");
                SameSite::Lax
            }
        };
        let secure = s.secure.unwrap_or(true);
        if same_site == SameSite::None && !secure {
            c.err("session.same_site", "None requires session.secure = true (browsers drop the cookie otherwise)");
        }
        if (cookie_name.starts_with("__Host-") || cookie_name.starts_with("__Secure-")) && !secure {
            c.err("session.secure", "must be true for a __Host- or __Secure- cookie name");
        }
        if let Some(d) = &s.domain {
            if d.is_empty() || d.contains(['/', ':', ';', ' ', ',']) || d.bytes().any(|b| b.is_ascii_control()) {
                c.err("session.domain", format!("{d:?} is not a domain; write e.g. example.com"));
            }
        }

        let paths = Paths {
            callback: c.path("paths.callback", raw.paths.callback.as_ref(), "/oauth2/callback"),
            sign_out: c.path("paths.sign_out", raw.paths.sign_out.as_ref(), "/oauth2/sign_out"),
            start: c.path("paths.start", raw.paths.start.as_ref(), "/oauth2/start"),
            sign_in: c.path("paths.sign_in", raw.paths.sign_in.as_ref(), "/oauth2/sign_in"),
            auth: c.path("paths.auth", raw.paths.auth.as_ref(), "/oauth2/auth"),
            forward_auth: c.path("paths.forward_auth", raw.paths.forward_auth.as_ref(), "/oauth2/forward_auth"),
        };
        let own = [&paths.callback, &paths.sign_out, &paths.start, &paths.sign_in, &paths.auth, &paths.forward_auth];
        for (i, a) in own.iter().enumerate() {
            // Written into nginx and Caddy configs by `oidc-edge render`, where
            // `$`, `{`, `*` or `%` would mean something else.
            if !a.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._~-".contains(&b)) {
                c.err("paths", format!("{a:?}: use letters, digits and / . _ ~ - only"));
            }
            if own[..i].contains(a) {
                c.err("paths", format!("{a:?} is used for two purposes; give each path its own value"));
            }
        }
        let sidecar = c.sidecar(&raw.sidecar);
        if let Some(u) = &raw.redirect_url {
            c.url("redirect_url", u);
        }
        if let Some(u) = &raw.post_logout_redirect_url {
            c.url("post_logout_redirect_url", u);
        }
        let mut allowed_redirect_hosts = Vec::new();
        for (i, h) in raw.allowed_redirect_hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Some(HostPattern::Any) => c.err(
                    &format!("allowed_redirect_hosts[{i}]"),
                    "\"*\" would allow redirects to any site; list hosts or *.example.com",
                ),
                Some(p) => allowed_redirect_hosts.push(p),
                None => c.err(&format!("allowed_redirect_hosts[{i}]"), format!("{h:?} is not a host or *.domain")),
            }
        }

        let base_headers = c.header_names("identity_headers", &raw.identity_headers, &HeaderNames::default());
        let mut strip_names: Vec<String> =
            FOREIGN_IDENTITY_HEADERS.iter().chain(ROUTING_OVERRIDE_HEADERS).map(|s| s.to_string()).collect();
        for (i, h) in raw.strip_headers.iter().enumerate() {
            c.header_name(&format!("strip_headers[{i}]"), h);
            strip_names.push(h.clone());
        }
        strip_names.extend(base_headers.all().map(str::to_owned));

        if raw.routes.is_empty() {
            c.err("routes", "is empty; every request would be denied. Add e.g. {\"path\": \"/\", \"groups\": []}");
        }
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            let host = match HostPattern::parse(r.host.as_deref().unwrap_or("*")) {
                Some(h) => h,
                None => {
                    c.err(&format!("{field}.host"), "must be a host, *.domain or *");
                    HostPattern::Any
                }
            };
            let prefix = c.path(&format!("{field}.path"), r.path.as_ref(), "/");
            let has_requirement = !(r.groups.is_empty() && r.emails.is_empty() && r.email_domains.is_empty());
            if r.public && has_requirement {
                c.err(&field, "is public but also lists groups/emails/email_domains; drop one or the other");
            }
            let rule = if r.public {
                Rule::Public
            } else {
                Rule::Protected(Requirement {
                    groups: r.groups.clone(),
                    emails: r.emails.iter().map(|e| e.to_ascii_lowercase()).collect(),
                    email_domains: r.email_domains.iter().map(|d| d.trim_start_matches('@').to_ascii_lowercase()).collect(),
                })
            };
            let mut inject = Vec::new();
            for (name, src) in &r.inject_headers {
                let f = format!("{field}.inject_headers.{name}");
                c.header_name(&f, name);
                if let Some(v) = c.secret(&f, src) {
                    if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                        c.err(&f, "value contains control characters");
                    }
                    inject.push((Arc::from(name.as_str()), SecretString::new(v)));
                }
                strip_names.push(name.clone());
            }
            let headers = match &r.identity_headers {
                Some(h) => c.header_names(&format!("{field}.identity_headers"), h, &base_headers),
                None => base_headers.clone(),
            };
            strip_names.extend(headers.all().map(str::to_owned));
            routes.push(Route { index: i, host, prefix, rule, api: r.api, inject, headers });
        }

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        Ok(Config {
            provider: ProviderConfig {
                issuer: p.issuer.clone(),
                client_id: p.client_id.clone(),
                client_secret: SecretString::new(client_secret),
                client_auth,
                scopes: scopes.join(" "),
                callouts: p.callouts.clone(),
                timeout_ms,
                clock_skew,
                trust_unverified_email: p.trust_unverified_email,
                user_claim,
                display_name: p.display_name.clone().unwrap_or_else(|| "your identity provider".into()),
                direct_calls: front == Front::Sidecar,
                http_endpoints_allowed: p.insecure_allow_http_issuer
                    || split_url(&p.issuer).is_some_and(|(_, a, _)| is_loopback(crate::redirect::authority_host(a))),
            },
            session: SessionConfig {
                cookie_name,
                rng_key: keys.first().map_or([0u8; 32], |k| crate::seal::derive_key(k, b"oidc-edge/v1/drbg-key")),
                sealer: Sealer::new(&keys),
                lifetime,
                login_timeout,
                refresh_interval,
                same_site,
                secure,
                domain: s.domain.clone(),
            },
            paths,
            redirect_url: raw.redirect_url,
            post_logout_redirect_url: raw.post_logout_redirect_url,
            allowed_redirect_hosts,
            strip: StripSet::new(strip_names.iter().map(String::as_str)),
            routes: RouteTable::new(routes),
            sidecar,
            warnings: c.warnings,
        })
    }
}

/// A cookie secret is 16, 24 or 32 raw bytes, or base64 of that many
/// (the oauth2-proxy convention, so existing secrets can be reused).
fn decode_cookie_secret(value: &str) -> Option<Vec<u8>> {
    let ok = |n: usize| matches!(n, 16 | 24 | 32);
    if let Some(bytes) = b64_any_decode(value).filter(|b| ok(b.len())) {
        return Some(bytes);
    }
    ok(value.len()).then(|| value.as_bytes().to_vec())
}

/// A secret taken as raw characters (not base64 of 16/24/32 bytes) made only
/// of printable ASCII other than hex digits: oauth2-proxy accepted such
/// strings, and people typed them. Hex (`openssl rand -hex 16`) is random.
fn looks_human_made(value: &str) -> bool {
    let raw = b64_any_decode(value).is_none_or(|b| !matches!(b.len(), 16 | 24 | 32));
    raw && matches!(value.len(), 16 | 24 | 32)
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !value.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
