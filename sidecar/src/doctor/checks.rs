//! The checks that ask the provider: discovery, issuer, JWKS, clock, the
//! client's credentials, its redirect URIs, and whether it has groups.

use oidc_edge::config::IdpCalls;
use oidc_edge::encoding::{b64url, build_query, split_url};
use oidc_edge::provider::{Discovery, ProviderError};
use oidc_edge::{Config, HttpCall, HttpResponse};
use serde_json::Value;

use super::{issuer_difference, parse_http_date, Check, Options};
use crate::idp::IdpClient;

/// A call straight to `url`'s host, whatever `provider.callouts` says: a
/// filter's callouts name Envoy clusters, which mean nothing here.
fn direct(config: &Config, method: &'static str, url: &str) -> Option<HttpCall> {
    let (scheme, authority, path) = split_url(url)?;
    Some(HttpCall {
        target: authority.to_owned(),
        method,
        scheme: if scheme == "https" { "https" } else { "http" },
        authority: authority.to_owned(),
        path: path.to_owned(),
        headers: vec![("accept".into(), "application/json, text/html".into())],
        body: Vec::new(),
        timeout_ms: config.provider.timeout_ms.max(5000),
    })
}

async fn fetch(client: &IdpClient, call: Option<HttpCall>) -> Result<(HttpResponse, hyper::HeaderMap), String> {
    let call = call.ok_or("not an absolute URL")?;
    client.call_with_headers(&call).await.map_err(|e| e.to_string())
}

fn text_of(resp: &HttpResponse) -> String {
    String::from_utf8_lossy(&resp.body).to_ascii_lowercase()
}

fn oauth_error(resp: &HttpResponse) -> String {
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Origins people reach the gate at: `--host`, else the routes' exact hosts,
/// on https when the session cookie is `Secure`.
pub fn origins(config: &Config, opts: &Options) -> Vec<String> {
    // Without --host the scheme is not known; production hosts are https,
    // and assuming it is what lets `secure: false` be caught.
    let scheme = "https";
    let mut out: Vec<String> = Vec::new();
    let mut add = |o: String| {
        if !out.contains(&o) {
            out.push(o);
        }
    };
    for h in &opts.hosts {
        add(if h.contains("://") { h.trim_end_matches('/').to_owned() } else { format!("{scheme}://{h}") });
    }
    if opts.hosts.is_empty() {
        for route in config.routes.iter() {
            if let oidc_edge::policy::HostPattern::Exact(h) = &route.host {
                add(format!("{scheme}://{h}"));
            }
        }
    }
    out
}

fn redirect_uris(config: &Config, origins: &[String]) -> Vec<String> {
    match &config.redirect_url {
        Some(u) => vec![u.clone()],
        None => origins.iter().map(|o| format!("{o}{}", config.paths.callback)).collect(),
    }
}

fn post_logout_uris(config: &Config, origins: &[String]) -> Vec<String> {
    match &config.post_logout_redirect_url {
        Some(u) => vec![u.clone()],
        None => origins.iter().map(|o| format!("{o}/")).collect(),
    }
}

/// Every check that needs the provider, in the order a person fixes them.
pub async fn live(client: &IdpClient, config: &Config, opts: &Options) -> Vec<Check> {
    let mut out = Vec::new();
    let p = &config.provider;
    let url = format!("{}/.well-known/openid-configuration", p.issuer.trim_end_matches('/'));
    let sent_at = crate::app::now();
    let (resp, headers) = match fetch(client, direct(config, "GET", &url)).await {
        Ok(r) => r,
        Err(e) => {
            out.push(Check::fail(
                "discovery",
                format!("{url}: {e}"),
                "check provider.issuer, and that this machine reaches the provider (DNS, firewall; for https a trusted CA, SSL_CERT_FILE)",
            ));
            return out;
        }
    };
    let discovery = match (resp.status, serde_json::from_slice::<Value>(&resp.body)) {
        (200, Ok(v)) if v.is_object() => v,
        (200, _) => {
            out.push(Check::fail("discovery", format!("{url} is not a JSON object"), "provider.issuer must be the provider's issuer URL"));
            return out;
        }
        (status, _) => {
            out.push(Check::fail(
                "discovery",
                format!("{url} answered {status}"),
                "provider.issuer must be the URL whose /.well-known/openid-configuration the provider serves (Pocket ID: https://id.example.com)",
            ));
            return out;
        }
    };
    out.push(Check::pass("discovery", format!("{url} answered")));
    out.push(clock(config, &headers, sent_at));
    let issuer = discovery["issuer"].as_str().unwrap_or_default();
    if issuer == p.issuer {
        out.push(Check::pass("issuer", format!("{issuer:?} is the provider's, byte for byte")));
    } else {
        out.push(Check::fail(
            "issuer",
            format!("the provider says {issuer:?}, the configuration {:?}: {}", p.issuer, issuer_difference(&p.issuer, issuer)),
            format!("set provider.issuer to {issuer:?} exactly; ID tokens carry it and are compared byte for byte"),
        ));
        return out;
    }
    // The gates' own check of the document, before any credential is sent
    // to an endpoint it names: an http token endpoint of a remote provider
    // would receive the client secret in clear.
    let mut direct_view = p.clone();
    direct_view.callouts.clear();
    direct_view.calls = IdpCalls::Direct;
    if let Err(e) = Discovery::parse(&resp.body, &direct_view) {
        out.push(Check::fail(
            "discovery",
            e.to_string(),
            "the gates refuse this discovery document; fix it at the provider (its public URL settings)",
        ));
        return out;
    }
    let endpoint = |name: &str| discovery[name].as_str().unwrap_or_default().to_owned();
    out.push(jwks(client, config, &endpoint("jwks_uri"), &discovery).await);
    out.push(callouts(config, &resp.body));
    let origins = origins(config, opts);
    let redirects = redirect_uris(config, &origins);
    out.push(client_secret(client, config, &endpoint("token_endpoint"), redirects.first()).await);
    if redirects.is_empty() {
        out.push(Check::warn(
            "redirect_uri",
            "no host to check: the routes match any host",
            "pass each host people use: --host https://app.example.com (repeatable)",
        ));
    }
    for uri in &redirects {
        out.push(redirect_uri(client, config, &endpoint("authorization_endpoint"), uri).await);
    }
    let end_session = endpoint("end_session_endpoint");
    if !end_session.is_empty() {
        for uri in post_logout_uris(config, &origins) {
            out.push(post_logout(client, config, &end_session, &uri).await);
        }
    }
    out.extend(scopes(config, &discovery));
    out
}

fn clock(config: &Config, headers: &hyper::HeaderMap, sent_at: u64) -> Check {
    let Some(date) = headers.get("date").and_then(|d| d.to_str().ok()).and_then(parse_http_date) else {
        return Check::warn(
            "clock",
            "the provider sent no Date header to compare clocks with",
            "make sure this machine's clock is synchronized (NTP)",
        );
    };
    let skew = date.abs_diff(sent_at);
    let allowed = config.provider.clock_skew;
    let direction = if date > sent_at { "ahead of" } else { "behind" };
    if skew > allowed {
        Check::fail(
            "clock",
            format!("the provider's clock is {skew} s {direction} this machine's; provider.clock_skew allows {allowed} s"),
            "synchronize both clocks (NTP): ID tokens would otherwise be refused as not yet valid or expired",
        )
    } else if skew > 2 {
        Check::warn("clock", format!("{skew} s {direction} this machine's (within clock_skew, {allowed} s)"), "synchronize both clocks (NTP)")
    } else {
        Check::pass("clock", format!("within {} s of the provider's (clock_skew allows {allowed} s)", skew.max(1)))
    }
}

/// Signature algorithms the gates verify ID tokens with.
const VERIFIED_ALGS: [&str; 7] = ["RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA", "Ed25519"];

async fn jwks(client: &IdpClient, config: &Config, url: &str, discovery: &Value) -> Check {
    let signing: Vec<&str> = discovery["id_token_signing_alg_values_supported"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !signing.is_empty() && !signing.iter().any(|a| VERIFIED_ALGS.contains(a)) {
        return Check::fail(
            "jwks",
            format!("the provider signs ID tokens with {} only; the gates verify {}", signing.join(", "), VERIFIED_ALGS.join(", ")),
            "choose RS256, ES256 or EdDSA for the client's ID tokens at the provider",
        );
    }
    let resp = match fetch(client, direct(config, "GET", url)).await {
        Ok((r, _)) if r.status == 200 => r,
        Ok((r, _)) => {
            return Check::fail(
                "jwks",
                format!("{url} answered {}", r.status),
                "the provider's discovery names a jwks_uri that does not serve keys",
            )
        }
        Err(e) => return Check::fail("jwks", format!("{url}: {e}"), "this machine must reach the provider's jwks_uri"),
    };
    let usable = match oidc_edge::jose::Jwks::parse(&resp.body) {
        Ok(jwks) => jwks.len(),
        Err(e) => {
            return Check::fail(
                "jwks",
                format!("{url}: no key we can verify with ({e:?})"),
                "sign ID tokens with RS256, ES256 or EdDSA at the provider",
            )
        }
    };
    let raw: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    let keys = raw["keys"].as_array().cloned().unwrap_or_default();
    let algs: Vec<String> =
        keys.iter().map(|k| k["alg"].as_str().or(k["crv"].as_str()).or(k["kty"].as_str()).unwrap_or("?").to_owned()).collect();
    let without_kid = keys.iter().filter(|k| k["kid"].as_str().is_none_or(str::is_empty)).count();
    if without_kid > 0 && keys.len() > 1 {
        return Check::warn(
            "jwks",
            format!("{without_kid} of {} keys have no kid", keys.len()),
            "give every key a kid at the provider, or tokens signed with a key rotated in may be refused until the next JWKS load",
        );
    }
    Check::pass("jwks", format!("{usable} usable of {} keys ({})", keys.len(), algs.join(", ")))
}

/// Whether a filter reaches every endpoint it calls: through the configured
/// `provider.callouts`, or, without any, through the issuer's host alone
/// (what `render envoy|nginx-wasm` maps).
fn callouts(config: &Config, discovery: &[u8]) -> Check {
    let mut filter_view = config.provider.clone();
    filter_view.calls = IdpCalls::Callouts;
    let rendered = filter_view.callouts.is_empty();
    if rendered {
        if let Some((_, authority, _)) = split_url(&config.provider.issuer) {
            filter_view.callouts.insert(authority.to_owned(), "issuer".into());
        }
    }
    match Discovery::parse(discovery, &filter_view) {
        Ok(_) if rendered => Check::pass("callouts", "the provider's endpoints are all on the issuer's host (what render maps for a filter)"),
        Ok(_) => Check::pass("callouts", "provider.callouts covers the token, JWKS and userinfo endpoints"),
        Err(ProviderError::NoCalloutTarget { what, authority }) if rendered => Check::warn(
            "callouts",
            format!("a filter would not reach the {what} host {authority} (the sidecar does)"),
            format!(
                "for Envoy or nginx-wasm, list every provider host in provider.callouts, e.g. {{\"{authority}\": \"<cluster or host:port>\"}}"
            ),
        ),
        Err(ProviderError::NoCalloutTarget { what, authority }) => Check::fail(
            "callouts",
            format!("the filter cannot reach the {what} host {authority}: provider.callouts has no target for it"),
            format!("add {{\"{authority}\": \"<cluster or host:port>\"}} to provider.callouts (oidc-edge render envoy writes the cluster)"),
        ),
        Err(e) => Check::fail("callouts", e.to_string(), "fix the provider's discovery document"),
    }
}

async fn client_secret(client: &IdpClient, config: &Config, token_endpoint: &str, redirect: Option<&String>) -> Check {
    let mut provider = config.provider.clone();
    provider.callouts.clear();
    provider.calls = IdpCalls::Direct;
    let verifier = b64url(&[7u8; 32]);
    let fallback = format!("{}/", config.provider.issuer);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "oidc-edge-doctor-not-a-code"),
        ("redirect_uri", redirect.map_or(fallback.as_str(), String::as_str)),
        ("code_verifier", verifier.as_str()),
    ];
    let resp = match fetch(client, provider.token_call(token_endpoint, &form)).await {
        Ok((r, _)) => r,
        Err(e) => {
            return Check::fail("client_secret", format!("{token_endpoint}: {e}"), "this machine must reach the provider's token endpoint")
        }
    };
    match oauth_error(&resp).as_str() {
        "invalid_grant" => Check::pass("client_secret", "accepted (a made-up code is refused as invalid_grant, not invalid_client)"),
        "invalid_client" => Check::fail(
            "client_secret",
            format!("the provider refused client {:?} and its secret (invalid_client, {})", config.provider.client_id, resp.status),
            "copy the client id and secret from the provider again; with client_secret_post clients set provider.client_auth",
        ),
        "unauthorized_client" => Check::fail(
            "client_secret",
            "the provider does not allow this client the authorization_code grant",
            "allow the authorization_code (and refresh_token) grant for the client at the provider",
        ),
        other => Check::warn(
            "client_secret",
            format!(
                "inconclusive: the token endpoint answered {} {}",
                resp.status,
                if other.is_empty() { "without an OAuth error" } else { other }
            ),
            "check the client id and secret at the provider",
        ),
    }
}

async fn redirect_uri(client: &IdpClient, config: &Config, authorization_endpoint: &str, uri: &str) -> Check {
    let p = &config.provider;
    let challenge = b64url(&[9u8; 32]);
    let query = build_query(&[
        ("response_type", "code"),
        ("client_id", &p.client_id),
        ("redirect_uri", uri),
        ("scope", &p.scopes),
        ("state", "oidc-edge-doctor"),
        ("nonce", "oidc-edge-doctor"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let sep = if authorization_endpoint.contains('?') { '&' } else { '?' };
    let (resp, headers) = match fetch(client, direct(config, "GET", &format!("{authorization_endpoint}{sep}{query}"))).await {
        Ok(r) => r,
        Err(e) => return Check::fail("redirect_uri", format!("{authorization_endpoint}: {e}"), "this machine must reach the provider"),
    };
    let location = headers.get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
    let register = format!("register {uri} as a redirect (callback) URI of client {:?} at the provider", p.client_id);
    match resp.status {
        300..=399 if location.starts_with(uri) && location.contains("error=") => {
            let error = location.split(['?', '&']).find_map(|kv| kv.strip_prefix("error=")).unwrap_or("?");
            Check::warn(
                "redirect_uri",
                format!("{uri}: accepted, but the provider refused the sign-in: {error}"),
                "check provider.scopes and the client's settings",
            )
        }
        300..=399 if location.starts_with(uri) => Check::pass("redirect_uri", format!("{uri}: accepted")),
        // Some providers refuse on a page of their own (Google: /signin/oauth/error?authError=…).
        300..=399 if location.to_ascii_lowercase().contains("error") => {
            let mismatch = location.to_ascii_lowercase().contains("redirect_uri") || location.to_ascii_lowercase().contains("mismatch");
            let detail = if mismatch {
                format!("{uri}: not registered with the provider")
            } else {
                format!("{uri}: the provider sent the sign-in to an error page")
            };
            Check::fail("redirect_uri", format!("{detail} ({location})"), register)
        }
        300..=399 => Check::pass("redirect_uri", format!("{uri}: accepted (the provider started a sign-in)")),
        400..=499 if text_of(&resp).contains("redirect_uri") => {
            Check::fail("redirect_uri", format!("{uri}: not registered with the provider"), register)
        }
        400..=499 if text_of(&resp).contains("client") => Check::fail(
            "redirect_uri",
            format!("the provider does not know client {:?}", p.client_id),
            "copy provider.client_id from the provider",
        ),
        200 => Check::warn(
            "redirect_uri",
            format!("{uri}: the provider answered with a page, without saying whether it accepts the URI (Pocket ID checks after sign-in)"),
            register,
        ),
        status => Check::fail("redirect_uri", format!("{uri}: the provider refused the sign-in request ({status})"), register),
    }
}

async fn post_logout(client: &IdpClient, config: &Config, end_session: &str, uri: &str) -> Check {
    let query = build_query(&[("client_id", &config.provider.client_id), ("post_logout_redirect_uri", uri)]);
    let sep = if end_session.contains('?') { '&' } else { '?' };
    let (resp, headers) = match fetch(client, direct(config, "GET", &format!("{end_session}{sep}{query}"))).await {
        Ok(r) => r,
        Err(e) => return Check::warn("post_logout_redirect_uri", format!("{end_session}: {e}"), "this machine must reach the provider"),
    };
    let location = headers.get("location").and_then(|l| l.to_str().ok()).unwrap_or_default();
    let register = format!("register {uri} as a post-logout redirect URI of the client, or set post_logout_redirect_url to one that is");
    let unverified = "the provider may check it only with a signed-in user's id_token_hint; sign out once to see";
    match resp.status {
        300..=399 if location.starts_with(uri) => Check::pass("post_logout_redirect_uri", format!("{uri}: accepted")),
        300..=399 if location.to_ascii_lowercase().contains("error") => {
            Check::fail("post_logout_redirect_uri", format!("{uri}: the provider sent the sign-out to an error page ({location})"), register)
        }
        300..=399 => {
            Check::warn("post_logout_redirect_uri", format!("{uri}: not confirmed (the provider redirected to {location})"), unverified)
        }
        200..=299 if text_of(&resp).contains("error") => {
            Check::warn("post_logout_redirect_uri", format!("{uri}: the provider answered with a page that mentions an error"), register)
        }
        200..=299 => Check::pass("post_logout_redirect_uri", format!("{uri}: accepted (the provider asks the user to confirm)")),
        _ if text_of(&resp).contains("post_logout_redirect_uri") => Check::fail(
            "post_logout_redirect_uri",
            format!("{uri}: not registered with the provider; sign-out would stop at the provider"),
            register,
        ),
        status => Check::warn("post_logout_redirect_uri", format!("{uri}: the provider answered {status}"), unverified),
    }
}

fn scopes(config: &Config, discovery: &Value) -> Vec<Check> {
    let listed = |key: &str| discovery[key].as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>());
    let (scopes, claims) = (listed("scopes_supported"), listed("claims_supported"));
    let requested: Vec<&str> = config.provider.scopes.split(' ').collect();
    let mut out = Vec::new();
    let unknown: Vec<&str> = match &scopes {
        Some(s) => requested.iter().copied().filter(|r| !s.iter().any(|x| x == r)).collect(),
        None => Vec::new(),
    };
    let needs_groups = config.routes.iter().any(|r| matches!(&r.rule, oidc_edge::policy::Rule::Protected(req) if !req.groups.is_empty()));
    if needs_groups {
        let offered =
            scopes.as_ref().is_some_and(|s| s.iter().any(|x| x == "groups")) || claims.as_ref().is_some_and(|c| c.iter().any(|x| x == "groups"));
        if offered && requested.contains(&"groups") {
            out.push(Check::pass("groups", "routes need groups, and the provider offers a groups scope or claim"));
        } else if offered {
            out.push(Check::fail(
                "groups",
                "routes need groups, but provider.scopes does not ask for them",
                "add \"groups\" to provider.scopes",
            ));
        } else if scopes.is_none() && claims.is_none() {
            out.push(Check::warn(
                "groups",
                "routes need groups; the provider lists no scopes or claims to confirm it sends them",
                "sign in once and check the Remote-Groups header",
            ));
        } else {
            out.push(Check::fail(
                "groups",
                "routes need groups, but the provider lists no groups scope or claim: everyone would be refused",
                "have the provider send a groups claim (Pocket ID: the groups scope; Authentik, Keycloak: a groups mapper), or remove the routes' groups rules",
            ));
        }
    }
    let unknown: Vec<&str> = unknown.into_iter().filter(|s| *s != "groups" || !needs_groups).collect();
    if unknown.is_empty() {
        out.push(Check::pass("scopes", format!("the provider offers every scope asked for ({})", config.provider.scopes)));
    } else {
        out.push(Check::warn(
            "scopes",
            format!("the provider does not list {}: it may refuse the sign-in (invalid_scope)", unknown.join(", ")),
            "remove them from provider.scopes, or enable them at the provider",
        ));
    }
    out
}
