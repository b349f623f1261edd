//! The configuration as written, before any check: what serde reads.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A secret as written: inline, `{env: NAME}` or `{file: PATH}`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum RawSecret {
    /// The value itself (fine in a file only root can read).
    Inline(String),
    /// An environment variable.
    Env {
        /// Its name.
        env: String,
    },
    /// A file (the sidecar only), relative to the config file.
    File {
        /// Its path.
        file: String,
    },
}

/// A duration as written: seconds, or `90s`, `15m`, `12h`, `7d`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    /// Seconds.
    Seconds(u64),
    /// With a unit.
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) provider: RawProvider,
    pub(crate) session: RawSession,
    #[serde(default)]
    pub(crate) paths: RawPaths,
    #[serde(default)]
    pub(crate) identity_headers: RawHeaderNames,
    #[serde(default)]
    pub(crate) strip_headers: Vec<String>,
    #[serde(default)]
    pub(crate) allowed_redirect_hosts: Vec<String>,
    pub(crate) redirect_url: Option<String>,
    pub(crate) post_logout_redirect_url: Option<String>,
    pub(crate) routes: Vec<RawRoute>,
    pub(crate) fleet: Option<RawFleet>,
    pub(crate) client_address: Option<RawClientAddress>,
    pub(crate) bearer: Option<RawBearer>,
    pub(crate) signed_identity: Option<RawSignedIdentity>,
}

/// Where the client's address comes from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientAddress {
    #[serde(default)]
    pub(crate) forwarded_hops: u8,
}

/// Filters in a fleet: the sidecar that coordinates them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub(crate) coordinator: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvider {
    pub(crate) issuer: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: RawSecret,
    #[serde(default)]
    pub(crate) client_auth: Option<String>,
    pub(crate) scopes: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) callouts: BTreeMap<String, String>,
    pub(crate) timeout_ms: Option<u32>,
    pub(crate) clock_skew: Option<RawDuration>,
    #[serde(default)]
    pub(crate) trust_unverified_email: bool,
    pub(crate) user_claim: Option<String>,
    pub(crate) display_name: Option<String>,
    #[serde(default)]
    pub(crate) insecure_allow_http_issuer: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSession {
    pub(crate) cookie_name: Option<String>,
    pub(crate) secrets: Vec<RawSecret>,
    pub(crate) lifetime: Option<RawDuration>,
    pub(crate) login_timeout: Option<RawDuration>,
    pub(crate) refresh_interval: Option<RawDuration>,
    pub(crate) same_site: Option<String>,
    pub(crate) secure: Option<bool>,
    pub(crate) domain: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPaths {
    pub(crate) callback: Option<String>,
    pub(crate) sign_out: Option<String>,
    pub(crate) start: Option<String>,
    pub(crate) sign_in: Option<String>,
    pub(crate) auth: Option<String>,
    pub(crate) forward_auth: Option<String>,
    pub(crate) backchannel_logout: Option<String>,
    pub(crate) jwks: Option<String>,
}

/// Each field: absent = inherit, `""` = disabled, else the header name.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderNames {
    pub(crate) user: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) groups: Option<String>,
    pub(crate) name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) host: Option<String>,
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) public: bool,
    #[serde(default)]
    pub(crate) groups: Vec<String>,
    #[serde(default)]
    pub(crate) emails: Vec<String>,
    #[serde(default)]
    pub(crate) email_domains: Vec<String>,
    #[serde(default)]
    pub(crate) api: bool,
    #[serde(default)]
    pub(crate) inject_headers: BTreeMap<String, RawSecret>,
    pub(crate) identity_headers: Option<RawHeaderNames>,
    pub(crate) methods: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) allow_networks: Vec<String>,
    #[serde(default)]
    pub(crate) deny_networks: Vec<String>,
    #[serde(default)]
    pub(crate) cors_preflight: bool,
    pub(crate) bearer: Option<RawRouteBearer>,
    pub(crate) signed_identity: Option<RawRouteIdentity>,
    pub(crate) max_auth_age: Option<RawDuration>,
    #[serde(default)]
    pub(crate) acr: Vec<String>,
    #[serde(default)]
    pub(crate) amr: Vec<String>,
}

/// A route's `signed_identity`: on (the default header) or the header's name.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRouteIdentity {
    Switch(bool),
    Header(String),
}

/// The key and settings of signed identity tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSignedIdentity {
    pub(crate) key: RawSecret,
    pub(crate) algorithm: Option<String>,
    pub(crate) lifetime: Option<RawDuration>,
    pub(crate) issuer: Option<String>,
}

/// A route's `bearer`: on or off (with the global settings), or its own.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRouteBearer {
    Switch(bool),
    Rule(RawBearer),
}

/// Bearer-token settings.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBearer {
    pub(crate) audiences: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) forward: bool,
}
