//! The sidecar's adapter: whose word it takes for the original request, and
//! how it shapes the core's answer for each proxy. A real `App` on a real
//! config; no provider is loaded, so logins answer 503.

use std::net::IpAddr;

use oidc_edge::config::IdpCalls;
use oidc_edge::{Config, SecretSource};
use serde_json::{json, Value};

use super::*;
use crate::settings::SidecarConfig;

struct Env;

impl SecretSource for Env {
    fn env(&self, name: &str) -> Option<String> {
        match name {
            "CLIENT_SECRET" => Some("client-secret".into()),
            "COOKIE_SECRET" => Some("QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".into()),
            "PROXY_TOKEN" => Some("cHJveHktdG9rZW4tZm9yLXRoZS10ZXN0cw==".into()),
            _ => None,
        }
    }
    fn file(&self, path: &str) -> Result<String, String> {
        Err(format!("{path}: no files here"))
    }
}

fn app_with(sidecar: Value) -> App {
    let v = json!({
        "provider": {"issuer": "https://id.example.com", "client_id": "edge", "client_secret": {"env": "CLIENT_SECRET"}},
        "session": {"secrets": [{"env": "COOKIE_SECRET"}]},
        "routes": [{"path": "/public/", "public": true}, {"path": "/"}],
        "sidecar": sidecar,
    });
    match Config::parse_with::<SidecarConfig>(&v.to_string(), &Env, IdpCalls::Direct) {
        Ok((config, settings)) => App::new(config, settings, None),
        Err(e) => panic!("{e}"),
    }
}

fn app() -> App {
    app_with(json!({}))
}

const PROXY: &str = "127.0.0.1";

fn request(peer: &str, path: &str, headers: &[(&str, &str)]) -> Inbound {
    Inbound {
        peer: peer.parse::<IpAddr>().unwrap(),
        method: "GET".into(),
        path_and_query: path.into(),
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        body: Vec::new(),
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The proxy describes the original request with these.
fn forwarded(uri: &str) -> Vec<(&str, &str)> {
    vec![("host", "sidecar"), ("x-forwarded-host", "app.example.com"), ("x-forwarded-proto", "https"), ("x-forwarded-uri", uri)]
}

#[tokio::test]
async fn decisions_are_for_trusted_proxies_only() {
    let app = app();
    let a = app.handle(request("10.0.0.9", "/oauth2/auth", &forwarded("/public/x"))).await;
    assert_eq!(a.status, 403);
    assert!(String::from_utf8_lossy(&a.body).contains("trusted_proxies"));
    let a = app.handle(request(PROXY, "/oauth2/auth", &forwarded("/public/x"))).await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_decision_needs_the_original_uri_and_is_never_about_a_decision_endpoint() {
    let app = app();
    let a = app.handle(request(PROXY, "/oauth2/auth", &[("host", "sidecar")])).await;
    assert_eq!(a.status, 400);
    assert!(String::from_utf8_lossy(&a.body).contains("X-Forwarded-Uri"));
    for uri in ["/oauth2/auth", "/oauth2/forward_auth", "/oauth2/./auth"] {
        let a = app.handle(request(PROXY, "/oauth2/forward_auth", &forwarded(uri))).await;
        assert_eq!(a.status, 404, "{uri}");
    }
}

#[tokio::test]
async fn with_a_proxy_token_a_decision_without_it_is_refused() {
    let app = app_with(json!({"proxy_token": {"env": "PROXY_TOKEN"}}));
    let a = app.handle(request(PROXY, "/oauth2/auth", &forwarded("/public/x"))).await;
    assert_eq!(a.status, 403);
    let mut headers = forwarded("/public/x");
    headers.push((PROXY_TOKEN_HEADER, "cHJveHktdG9rZW4tZm9yLXRoZS10ZXN0cw=="));
    assert_eq!(app.handle(request(PROXY, "/oauth2/auth", &headers)).await.status, 200);
}

/// nginx accepts only 2xx, 401 and 403 from `auth_request`: the 503 of a
/// login the provider cannot take becomes 401, which the rendered
/// `error_page` turns into the real answer through the forward-auth endpoint.
#[tokio::test]
async fn each_proxy_gets_the_answer_it_can_use() {
    let app = app();
    let a = app.handle(request(PROXY, "/oauth2/auth", &forwarded("/private"))).await;
    assert_eq!((a.status, a.body.len()), (401, 0));
    let a = app.handle(request(PROXY, "/oauth2/forward_auth", &forwarded("/private"))).await;
    assert_eq!(a.status, 503);
    assert_eq!(header(&a, "retry-after"), Some("5"));
    let a = app.handle(request(PROXY, "/oauth2/start?rd=%2F", &[("host", "app.example.com")])).await;
    assert_eq!(a.status, 503);
}

/// Traefik resolves a relative `Location` against the sidecar's own URL:
/// forward-auth answers name the original site.
#[tokio::test]
async fn forward_auth_redirects_are_absolute_on_the_original_site() {
    let app = app();
    let a = app.handle(request(PROXY, "/oauth2/forward_auth", &forwarded("/public/a/../b?q=1"))).await;
    assert_eq!(a.status, 308);
    assert_eq!(header(&a, "location"), Some("https://app.example.com/public/b?q=1"));
    let a = app.handle(request(PROXY, "/oauth2/auth", &forwarded("/public/a/../b"))).await;
    assert_eq!(a.status, 403, "auth_request cannot redirect: refused instead");
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_not_believed() {
    let app = app();
    // A direct request: the sidecar's own pages. An untrusted peer's
    // X-Forwarded-Proto does not make the callback URL https.
    let a = app
        .handle(request(
            "10.0.0.9",
            "/oauth2/sign_in?rd=https%3A%2F%2Fevil.example%2F",
            &[("host", "app.example.com"), ("x-forwarded-host", "evil.example")],
        ))
        .await;
    assert_eq!(a.status, 200);
    let body = String::from_utf8_lossy(&a.body);
    assert!(!body.contains("evil.example"), "{body}");
}

#[tokio::test]
async fn fleet_calls_need_the_fleet_key_and_revocations_come_back_to_pollers() {
    use oidc_edge::fleet::{self, KEY_HEADER, REVOCATIONS_PATH};
    use oidc_edge::revocation::{Revocation, Revoked};
    let app = app();
    let key = fleet::key(&app.config.session.sealer);
    // From any peer: the key is what counts.
    let without = app.handle(request("203.0.113.9", REVOCATIONS_PATH, &[])).await;
    assert_eq!(without.status, 403);
    let wrong = app.handle(request("203.0.113.9", REVOCATIONS_PATH, &[(KEY_HEADER, "00")])).await;
    assert_eq!(wrong.status, 403);

    let poll = |cursor: &str| request("203.0.113.9", &format!("{REVOCATIONS_PATH}?after={cursor}"), &[(KEY_HEADER, key.as_str())]);
    let first = app.handle(poll("")).await;
    let (cursor, none) = fleet::decode_poll(&oidc_edge::HttpResponse { status: first.status, body: first.body }).unwrap();
    assert!(none.is_empty());

    let revoked = Revocation { revoked: Revoked::Session([7; 16]), until: now() + 600 };
    let mut body = Vec::new();
    revoked.encode(&mut body);
    let mut post = request("203.0.113.9", REVOCATIONS_PATH, &[(KEY_HEADER, key.as_str())]);
    post.method = "POST".into();
    post.body = body;
    assert_eq!(app.handle(post).await.status, 204);
    let next = app.handle(poll(&cursor)).await;
    let (_, learned) = fleet::decode_poll(&oidc_edge::HttpResponse { status: next.status, body: next.body }).unwrap();
    assert_eq!(learned, vec![revoked]);

    // A body that is not a list of revocations, a cookie that does not open.
    let mut junk = request("203.0.113.9", REVOCATIONS_PATH, &[(KEY_HEADER, key.as_str())]);
    junk.method = "POST".into();
    junk.body = b"junk".to_vec();
    assert_eq!(app.handle(junk).await.status, 400);
    let mut refresh = request("203.0.113.9", fleet::REFRESH_PATH, &[(KEY_HEADER, key.as_str())]);
    refresh.method = "POST".into();
    refresh.body = b"not-a-cookie".to_vec();
    assert_eq!(app.handle(refresh).await.status, 422);
}
