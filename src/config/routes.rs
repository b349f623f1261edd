//! The routes and the identity key: what each route demands, accepts and
//! hands over, checked field by field.

use std::sync::Arc;

use super::check::Checker;
use super::raw::{RawConfig, RawRouteBearer, RawRouteIdentity, RawSignedIdentity};
use crate::headers::{HeaderNames, METHOD_OVERRIDE_HEADERS};
use crate::policy::{HostPattern, Networks, Requirement, Route, Rule, StepUp};
use crate::secret::SecretString;

/// The routes, and how many distinct bearer audience sets they use.
pub(super) fn compile_routes(
    raw: &RawConfig,
    c: &mut Checker<'_>,
    base_headers: &HeaderNames,
    strip_names: &mut Vec<String>,
) -> (Vec<Route>, Vec<Vec<String>>) {
    let p = &raw.provider;
    if raw.routes.is_empty() {
        c.err("routes", "is empty; every request would be denied. Add e.g. {\"path\": \"/\", \"groups\": []}");
    }
    let mut routes = Vec::new();
    let mut audience_sets: Vec<Vec<String>> = Vec::new();
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
            Some(h) => c.header_names(&format!("{field}.identity_headers"), h, base_headers),
            None => base_headers.clone(),
        };
        strip_names.extend(headers.all().map(str::to_owned));
        let methods = r.methods.as_ref().map(|list| {
            if list.is_empty() {
                c.err(&format!("{field}.methods"), "is empty; list the methods the route covers, e.g. [GET, HEAD], or drop it");
            }
            for m in list {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    c.err(&format!("{field}.methods"), format!("{m:?} is not an HTTP method; write e.g. GET, HEAD, POST"));
                }
            }
            list.iter().map(|m| m.to_ascii_uppercase()).collect::<Vec<_>>()
        });
        if methods.is_some() {
            // Frameworks that take the method from these headers would
            // see a method the route was not chosen for.
            strip_names.extend(METHOD_OVERRIDE_HEADERS.iter().map(|h| (*h).to_owned()));
        }
        let networks = Networks {
            allow: c.networks(&format!("{field}.allow_networks"), &r.allow_networks),
            deny: c.networks(&format!("{field}.deny_networks"), &r.deny_networks),
        };
        if r.public && !networks.allow.is_empty() {
            c.warn(&format!("{field}.allow_networks"), "has no effect on a public route (everyone passes)");
        }
        if r.public && r.cors_preflight {
            c.warn(&format!("{field}.cors_preflight"), "has no effect on a public route (everyone passes)");
        }
        let mut bearer_rule = |raw: &super::raw::RawBearer| {
            let mut audiences = raw.audiences.clone().unwrap_or_else(|| vec![p.client_id.clone()]);
            audiences.sort();
            audiences.dedup();
            let cache = audience_sets.iter().position(|a| *a == audiences).unwrap_or_else(|| {
                audience_sets.push(audiences.clone());
                audience_sets.len() - 1
            });
            crate::bearer::BearerRule { audiences, cache, forward: raw.forward }
        };
        let bearer = match (&r.bearer, &raw.bearer) {
            (_, _) if r.public => None,
            (None, global) => global.as_ref().map(bearer_rule),
            (Some(RawRouteBearer::Switch(false)), _) => None,
            (Some(RawRouteBearer::Switch(true)), global) => Some(bearer_rule(&global.clone().unwrap_or_default())),
            (Some(RawRouteBearer::Rule(own)), _) => Some(bearer_rule(own)),
        };
        if bearer.as_ref().is_some_and(|b| b.audiences.iter().any(String::is_empty) || b.audiences.is_empty()) {
            c.err(&format!("{field}.bearer.audiences"), "lists no audience; name the client id or the API's audience");
        }
        if r.public && r.bearer.is_some() {
            c.warn(&format!("{field}.bearer"), "has no effect on a public route (everyone passes)");
        }
        let signed_identity = match &r.signed_identity {
            None | Some(RawRouteIdentity::Switch(false)) => None,
            Some(RawRouteIdentity::Switch(true)) => Some("X-Oidc-Edge-Identity".to_owned()),
            Some(RawRouteIdentity::Header(h)) => {
                c.header_name(&format!("{field}.signed_identity"), h);
                Some(h.clone())
            }
        };
        if signed_identity.is_some() && raw.signed_identity.is_none() {
            c.err(&format!("{field}.signed_identity"), "needs the top-level signed_identity section (its key)");
        }
        if let Some(h) = &signed_identity {
            strip_names.push(h.clone());
        }
        let step_up = StepUp {
            max_auth_age: r.max_auth_age.as_ref().map(|d| c.duration(&format!("{field}.max_auth_age"), Some(d), 0, 30)),
            acr: r.acr.clone(),
            amr: r.amr.clone(),
        };
        if r.public && !step_up.is_empty() {
            c.warn(&field, "is public: max_auth_age, acr and amr have no effect there");
        }
        routes.push(Route {
            step_up,
            signed_identity: signed_identity.map(|h| Arc::from(h.as_str())),
            bearer,
            index: i,
            host,
            prefix,
            rule,
            api: r.api,
            inject,
            headers,
            methods,
            networks,
            cors_preflight: r.cors_preflight,
        });
    }
    (routes, audience_sets)
}

/// The key of signed identity tokens.
pub(super) fn compile_identity(si: &RawSignedIdentity, c: &mut Checker<'_>) -> Option<crate::identity::IdentitySigner> {
    let algorithm = match si.algorithm.as_deref() {
        None | Some("EdDSA") => crate::identity::Algorithm::EdDSA,
        Some("ES256") => crate::identity::Algorithm::ES256,
        Some(other) => {
            c.err("signed_identity.algorithm", format!("{other:?}: use EdDSA or ES256"));
            crate::identity::Algorithm::EdDSA
        }
    };
    let lifetime = c.duration("signed_identity.lifetime", si.lifetime.as_ref(), 300, 30);
    if lifetime > 3600 {
        c.err("signed_identity.lifetime", "is over an hour; identity tokens are short-lived (default 5m)");
    }
    let key = c.secret("signed_identity.key", &si.key)?;
    let bytes = decode_identity_key(&key);
    let Some(bytes) = bytes else {
        c.err("signed_identity.key", "must be 32 random bytes in base64; generate one with: openssl rand -base64 32");
        return None;
    };
    let signer = crate::identity::IdentitySigner::new(algorithm, &bytes, si.issuer.clone().unwrap_or_else(|| "oidc-edge".into()), lifetime);
    if signer.is_none() {
        c.err("signed_identity.key", "is not a valid P-256 key; generate another with: openssl rand -base64 32");
    }
    signer
}

/// 32 bytes from base64 (standard or URL-safe, padded or not).
fn decode_identity_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let t = text.trim();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines.iter().find_map(|e| e.decode(t).ok()).and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}
