//! From the configuration as written to a [`Config`]: the parsers, and the
//! checks and defaults of the core's sections.

use serde::Deserialize;

use super::check::{decode_cookie_secret, is_loopback, looks_human_made, Checker};
use super::raw::RawConfig;
use super::routes::{compile_identity, compile_routes};
use super::*;
use crate::headers::{FOREIGN_IDENTITY_HEADERS, ROUTING_OVERRIDE_HEADERS};

/// Deserializes `value`, naming the failing field by its path.
fn deserialize<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = without_values(&e.into_inner().to_string());
        // serde_path_to_error spells "no field yet" as `.` or a leading `?`.
        let field = if path == "." || path.starts_with('?') { "configuration".to_owned() } else { path };
        ConfigErrors(vec![FieldIssue::new(&field, inner)])
    })
}

/// serde's message without the value it quotes (`invalid type: string
/// "…", expected …`): a secret written in the wrong place must not reach
/// `check`'s output or a log line.
fn without_values(message: &str) -> String {
    let mut out = message.to_owned();
    for kind in ["string \"", "invalid value: \""] {
        if let Some(start) = out.find(kind) {
            let open = start + kind.len() - 1;
            if let Some(close) = out[open + 1..].rfind("\", expected").or_else(|| out[open + 1..].rfind('"')) {
                out.replace_range(open..open + 1 + close + 1, "(value not shown)");
            }
        }
    }
    out
}

impl Config {
    /// Parses and validates the filter's JSON configuration.
    pub fn from_json(text: &str, secrets: &dyn SecretSource) -> Result<Config, ConfigErrors> {
        Config::parse(text, secrets, IdpCalls::Callouts)
    }

    /// Parses and validates a JSON configuration, skipping front-end sections.
    pub fn parse(text: &str, secrets: &dyn SecretSource, calls: IdpCalls) -> Result<Config, ConfigErrors> {
        Config::parse_with::<()>(text, secrets, calls).map(|(config, ())| config)
    }

    /// Parses and validates a JSON configuration and the front end's section
    /// `S`, with every error of both in one list.
    pub fn parse_with<S: Section>(text: &str, secrets: &dyn SecretSource, calls: IdpCalls) -> Result<(Config, S), ConfigErrors> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let value = serde_json::Value::deserialize(&mut *de).map_err(|e| ConfigErrors(vec![FieldIssue::new("configuration", e)]))?;
        de.end()
            .map_err(|e| ConfigErrors(vec![FieldIssue::new("configuration", format!("unexpected text after the JSON object ({e})"))]))?;
        Config::from_value(value, secrets, calls)
    }

    /// Parses and validates a YAML (or JSON, which is YAML) configuration and
    /// the front end's section `S`: it becomes the same value the JSON parser
    /// reads, so every error names its field the same way.
    #[cfg(feature = "yaml")]
    pub fn parse_yaml_with<S: Section>(text: &str, secrets: &dyn SecretSource, calls: IdpCalls) -> Result<(Config, S), ConfigErrors> {
        let value: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors(vec![FieldIssue::new("configuration", format!("not valid YAML: {e}"))]))?;
        Config::from_value(value, secrets, calls)
    }

    fn from_value<S: Section>(mut value: serde_json::Value, secrets: &dyn SecretSource, calls: IdpCalls) -> Result<(Config, S), ConfigErrors> {
        let mut section = serde_json::Map::new();
        if let Some(top) = value.as_object_mut() {
            for key in S::KEYS {
                if let Some(v) = top.remove(*key) {
                    section.insert((*key).to_owned(), v);
                }
            }
            for key in FRONT_END_SECTIONS {
                top.remove(key);
            }
        }
        let raw: RawConfig = deserialize(value)?;
        let section_raw: S::Raw = if section.is_empty() { S::Raw::default() } else { deserialize(serde_json::Value::Object(section))? };
        let mut checker = Checker::new(secrets);
        let mut config = Config::compile(raw, &mut checker, calls);
        let section = S::compile(section_raw, &mut checker);
        if !checker.errors.is_empty() {
            return Err(ConfigErrors(checker.errors));
        }
        config.warnings = checker.warnings;
        Ok((config, section))
    }

    /// Checks the core's sections; builds the configuration even when an
    /// error was found (with defaults), so that every error is reported.
    fn compile(raw: RawConfig, c: &mut Checker<'_>, calls: IdpCalls) -> Config {
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
        if p.callouts.is_empty() && calls == IdpCalls::Callouts {
            c.err(
                "provider.callouts",
                "is empty; map the provider's host to a callout target, e.g. {\"id.example.com\": \"pocket_id\"} \
                 (an Envoy cluster name) or {\"id.example.com\": \"10.0.0.5:443\"} (nginx)",
            );
        }
        if let Some((_, authority, _)) = split_url(&p.issuer) {
            let host = crate::redirect::authority_host(authority);
            if !p.callouts.is_empty() && calls == IdpCalls::Callouts && !p.callouts.contains_key(authority) && !p.callouts.contains_key(host) {
                c.err("provider.callouts", format!("has no target for the issuer's host {authority:?}; add {{\"{authority}\": \"<cluster>\"}}"));
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
            backchannel_logout: c.path("paths.backchannel_logout", raw.paths.backchannel_logout.as_ref(), "/oauth2/backchannel_logout"),
            jwks: c.path("paths.jwks", raw.paths.jwks.as_ref(), "/oauth2/jwks"),
        };
        let own = [
            &paths.callback,
            &paths.sign_out,
            &paths.start,
            &paths.sign_in,
            &paths.auth,
            &paths.forward_auth,
            &paths.backchannel_logout,
            &paths.jwks,
        ];
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
        if let Some(u) = &raw.redirect_url {
            c.url("redirect_url", u);
        }
        if let Some(u) = &raw.post_logout_redirect_url {
            c.url("post_logout_redirect_url", u);
        }
        let mut allowed_redirect_hosts = Vec::new();
        for (i, h) in raw.allowed_redirect_hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Some(HostPattern::Any) => {
                    c.err(&format!("allowed_redirect_hosts[{i}]"), "\"*\" would allow redirects to any site; list hosts or *.example.com")
                }
                Some(p) => allowed_redirect_hosts.push(p),
                None => c.err(&format!("allowed_redirect_hosts[{i}]"), format!("{h:?} is not a host or *.domain")),
            }
        }

        let base_headers = c.header_names("identity_headers", &raw.identity_headers, &HeaderNames::default());
        let mut strip_names: Vec<String> = FOREIGN_IDENTITY_HEADERS.iter().chain(ROUTING_OVERRIDE_HEADERS).map(|s| s.to_string()).collect();
        for (i, h) in raw.strip_headers.iter().enumerate() {
            c.header_name(&format!("strip_headers[{i}]"), h);
            strip_names.push(h.clone());
        }
        strip_names.extend(base_headers.all().map(str::to_owned));

        let (routes, audience_sets) = compile_routes(&raw, c, &base_headers, &mut strip_names);
        let sealer = Sealer::new(&keys);
        let coordinator = match (&raw.fleet, calls) {
            (None, _) => None,
            (Some(_), IdpCalls::Direct) => {
                c.warn("fleet.coordinator", "is for filters; the sidecar is the coordinator and ignores it");
                None
            }
            (Some(f), IdpCalls::Callouts) => {
                if f.coordinator.is_empty() || f.coordinator.contains(['/', ' ']) {
                    c.err("fleet.coordinator", "names the sidecar as a callout target: an Envoy cluster, or host:port for nginx");
                }
                Some(crate::fleet::Coordinator::new(f.coordinator.clone(), &sealer, timeout_ms))
            }
        };
        let client_hops = raw.client_address.as_ref().map_or(0, |a| a.forwarded_hops);
        if client_hops > 10 {
            c.err("client_address.forwarded_hops", "counts the trusted proxies in front of this one; more than 10 is a mistake");
        }
        let identity = raw.signed_identity.as_ref().and_then(|si| compile_identity(si, c));
        Config {
            identity,
            bearer_caches: audience_sets.len(),
            client_hops,
            coordinator,
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
                calls,
                http_endpoints_allowed: p.insecure_allow_http_issuer
                    || split_url(&p.issuer).is_some_and(|(_, a, _)| is_loopback(crate::redirect::authority_host(a))),
            },
            session: SessionConfig {
                cookie_name,
                sealer,
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
            warnings: Vec::new(),
        }
    }
}
