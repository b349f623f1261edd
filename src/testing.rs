//! Deterministic stand-ins for the host: a seeded RNG, in-memory shared state,
//! an environment-variable map for secrets, signing keys and a hand-built
//! provider, and a [`Host`] that lends a driver its clock and store at a fixed time.

use std::collections::HashMap;

use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::config::{Config, ProviderConfig, SecretSource};
use crate::driver::{Driver, Lend, Outcome};
use crate::encoding::{b64std, b64url, parse_query};
use crate::engine::Step;
use crate::events::Event;
use crate::pages::Response;
use crate::provider::{Discovery, SharedProvider};
use crate::request::RequestHead;
use crate::store::{MemoryStore, RecordKey, SharedState};
use crate::SecureRandom;

/// ChaCha20 seeded from a number: repeatable randomness for tests.
pub struct SeededRng(rand_chacha::ChaCha20Rng);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }
}

impl SecureRandom for SeededRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }
}

/// Shared state that cannot record anything: must make every claim fail (fail closed).
pub struct UnavailableShared;

impl SharedState for UnavailableShared {
    fn claim(&mut self, _key: &RecordKey, _until: u64, _now: u64) -> bool {
        false
    }

    fn get(&mut self, _key: &RecordKey, _now: u64) -> Option<Vec<u8>> {
        None
    }

    fn put(&mut self, _key: &RecordKey, _value: &[u8], _until: u64, _now: u64) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------
// Fixed facts of the test world.

/// The fixed clock: 2023-11-14T22:13:20Z.
pub const NOW: u64 = 1_700_000_000;
/// The provider (Pocket ID's layout).
pub const ISSUER: &str = "https://id.example.com";
/// Our client.
pub const CLIENT_ID: &str = "edge";
/// Has characters that must be form-encoded before Basic auth (RFC 6749 §2.3.1).
pub const CLIENT_SECRET: &str = "top secret/+=";
/// Injected toward `/sonarr/`.
pub const API_KEY: &str = "k-123-sonarr";
/// The 32 raw bytes behind [`cookie_secret`].
pub const COOKIE_KEY: [u8; 32] = [0x42; 32];
/// Where the test requests arrive.
pub const APP_HOST: &str = "app.example.com";

/// `openssl rand -base64 32`-style text for [`COOKIE_KEY`].
pub fn cookie_secret() -> String {
    b64std(&COOKIE_KEY)
}

/// Secrets from an environment-variable map; no files.
#[derive(Default, Clone)]
pub struct EnvSecrets(pub HashMap<String, String>);

impl EnvSecrets {
    /// `CLIENT_SECRET`, `COOKIE_SECRET`, `SONARR_KEY`.
    pub fn standard() -> EnvSecrets {
        let mut m = HashMap::new();
        m.insert("CLIENT_SECRET".to_owned(), CLIENT_SECRET.to_owned());
        m.insert("COOKIE_SECRET".to_owned(), cookie_secret());
        m.insert("OTHER_COOKIE_SECRET".to_owned(), "another-secret-32-bytes-long-xyz".to_owned());
        m.insert("SONARR_KEY".to_owned(), API_KEY.to_owned());
        EnvSecrets(m)
    }
}

impl SecretSource for EnvSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn file(&self, path: &str) -> Result<String, String> {
        Err(format!("{path}: no files in unit tests"))
    }
}

// ---------------------------------------------------------------------------
// Keys and tokens (the small helpers of `jose/tests.rs`, without RSA).

/// The provider's current Ed25519 key (kid `ed1`).
pub fn ed_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
}

/// A key the provider rotates to later (kid `ed2`); not in [`jwks_json`].
pub fn rotated_ed_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[11u8; 32])
}

/// The provider's P-256 key (kid `ec1`).
pub fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).expect("valid scalar")
}

/// The JWK of an Ed25519 public key.
pub fn ed_jwk(kid: &str, key: &ed25519_dalek::SigningKey) -> Value {
    json!({"kty": "OKP", "kid": kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519",
           "x": b64url(key.verifying_key().as_bytes())})
}

/// The JWK of a P-256 public key.
pub fn p256_jwk(kid: &str, key: &p256::ecdsa::SigningKey) -> Value {
    let p = key.verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
           "x": b64url(p.x().expect("uncompressed")), "y": b64url(p.y().expect("uncompressed"))})
}

/// The provider's JWKS: `ed1` and `ec1`.
pub fn jwks_json() -> Value {
    json!({"keys": [ed_jwk("ed1", &ed_key()), p256_jwk("ec1", &p256_key())]})
}

fn signing_input(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
}

/// An EdDSA JWT.
pub fn sign_ed(key: &ed25519_dalek::SigningKey, kid: Option<&str>, claims: &Value) -> String {
    use ed25519_dalek::Signer;
    let input = signing_input("EdDSA", kid, claims);
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

/// An ES256 JWT.
pub fn sign_es256(key: &p256::ecdsa::SigningKey, kid: Option<&str>, claims: &Value) -> String {
    use p256::ecdsa::signature::Signer;
    let input = signing_input("ES256", kid, claims);
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(&sig.to_bytes()))
}

/// Pocket ID's endpoints on [`ISSUER`].
pub fn discovery() -> Discovery {
    Discovery {
        issuer: ISSUER.to_owned(),
        authorization_endpoint: format!("{ISSUER}/authorize"),
        token_endpoint: format!("{ISSUER}/api/oidc/token"),
        jwks_uri: format!("{ISSUER}/.well-known/jwks.json"),
        userinfo_endpoint: Some(format!("{ISSUER}/api/oidc/userinfo")),
        end_session_endpoint: Some(format!("{ISSUER}/api/oidc/end-session")),
        authorization_response_iss_parameter_supported: false,
    }
}

// ---------------------------------------------------------------------------
// The host side of one worker.

/// What a host keeps between turns: clock, randomness, shared records,
/// and everything the driver reported.
pub struct Host {
    pub now: u64,
    pub rng: SeededRng,
    pub shared: MemoryStore,
    pub events: Vec<Event>,
    /// Provider documents the driver asked to share.
    pub published: Vec<SharedProvider>,
}

impl Host {
    /// A worker at [`NOW`].
    pub fn new(seed: u64) -> Host {
        Host {
            now: NOW,
            rng: SeededRng::new(seed),
            shared: MemoryStore::new(4096),
            events: Vec::new(),
            published: Vec::new(),
        }
    }

    /// Lends the clock, the RNG and the store (synchronous) for one turn.
    pub fn lend(&mut self) -> Lend<'_> {
        Lend { now: self.now, rng: &mut self.rng, store: Some(&mut self.shared) }
    }

    /// Keeps what a turn reported and returns its step. With a synchronous
    /// store the driver performs every write itself.
    pub fn keep(&mut self, out: Outcome) -> Step {
        assert!(out.writes.is_empty(), "writes left to a synchronous host: {:?}", out.writes);
        assert!(!matches!(out.step, Step::Store { .. }), "store operation left to a synchronous host");
        self.events.extend(out.events);
        self.published.extend(out.publish);
        out.step
    }

    /// Events reported since the last call to this.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// The discovery document of [`discovery`], as the provider serves it.
pub fn discovery_json() -> Vec<u8> {
    let d = discovery();
    json!({
        "issuer": d.issuer, "authorization_endpoint": d.authorization_endpoint, "token_endpoint": d.token_endpoint,
        "jwks_uri": d.jwks_uri, "userinfo_endpoint": d.userinfo_endpoint, "end_session_endpoint": d.end_session_endpoint,
    })
    .to_string()
    .into_bytes()
}

/// Discovery and JWKS as fetched at [`NOW`].
pub fn docs() -> SharedProvider {
    SharedProvider { fetched_at: NOW, discovery: discovery_json(), jwks: jwks_json().to_string().into_bytes() }
}

/// A minimal valid configuration's provider section.
pub fn provider_config() -> ProviderConfig {
    let cfg = json!({
        "provider": {"issuer": ISSUER, "client_id": CLIENT_ID, "client_secret": {"env": "CLIENT_SECRET"}, "callouts": {"id.example.com": "idp"}},
        "session": {"secrets": [{"env": "COOKIE_SECRET"}]},
        "routes": [{"path": "/"}]
    });
    match Config::from_json(&cfg.to_string(), &EnvSecrets::standard()) {
        Ok(c) => c.provider,
        Err(e) => panic!("{e}"),
    }
}

/// A driver for `config` with the provider loaded from [`docs`].
pub fn driver(config: Config) -> Driver {
    let mut d = Driver::new(config, 64);
    if let Err(e) = d.install(docs()) {
        panic!("test provider documents must install: {e}");
    }
    d
}

/// A request as a host would see it (owned, so tables can build it).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub rewrites_path: bool,
    pub client: Option<std::net::IpAddr>,
}

impl Req {
    /// A browser-ish `GET https://app.example.com{path}`.
    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    /// `method https://app.example.com{path}`.
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_owned(),
            scheme: "https".to_owned(),
            authority: APP_HOST.to_owned(),
            path: path.to_owned(),
            headers: vec![("accept".to_owned(), "text/html,application/xhtml+xml,*/*;q=0.8".to_owned())],
            rewrites_path: true,
            client: "198.51.100.7".parse().ok(),
        }
    }

    /// From the client at `ip` (as the proxy saw it).
    pub fn from(mut self, ip: &str) -> Req {
        self.client = ip.parse().ok();
        self
    }

    /// As seen by a host that forwards the path as received (nginx, forward-auth proxies).
    pub fn forwarded_as_received(mut self) -> Req {
        self.rewrites_path = false;
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the `accept` header.
    pub fn accept(mut self, value: &str) -> Req {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("accept"));
        self.header("accept", value)
    }

    /// Adds a `cookie` header with one cookie.
    pub fn cookie(self, name: &str, value: &str) -> Req {
        self.header("cookie", &format!("{name}={value}"))
    }

    /// Replaces the authority.
    pub fn host(mut self, authority: &str) -> Req {
        self.authority = authority.to_owned();
        self
    }

    /// The borrowed view the engine reads.
    pub fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            headers: &self.headers,
            rewrites_path: self.rewrites_path,
            client: self.client,
        }
    }
}

// ---------------------------------------------------------------------------
// Reading responses.

/// One `set-cookie` header, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    /// Attributes as written (`Path=/`, `HttpOnly`, …).
    pub attrs: Vec<String>,
}

impl SetCookie {
    /// Parses a `set-cookie` value.
    pub fn parse(header: &str) -> SetCookie {
        let mut parts = header.split(';').map(str::trim);
        let first = parts.next().unwrap_or("");
        let (name, value) = first.split_once('=').unwrap_or((first, ""));
        SetCookie { name: name.to_owned(), value: value.to_owned(), attrs: parts.map(str::to_owned).collect() }
    }

    /// Whether a flag attribute is present (case-insensitive).
    pub fn has(&self, flag: &str) -> bool {
        self.attrs.iter().any(|a| a.eq_ignore_ascii_case(flag))
    }

    /// The value of an attribute such as `Path` or `Max-Age`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find_map(|a| {
            let (k, v) = a.split_once('=')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    /// Whether this header deletes the cookie.
    pub fn clears(&self) -> bool {
        self.value.is_empty() && self.attr("Max-Age") == Some("0")
    }
}

/// Every `set-cookie` of a response.
pub fn set_cookies(resp: &Response) -> Vec<SetCookie> {
    resp.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| SetCookie::parse(v)).collect()
}

/// The `set-cookie` for `name`, if any.
pub fn set_cookie(resp: &Response, name: &str) -> Option<SetCookie> {
    set_cookies(resp).into_iter().find(|c| c.name == name)
}

/// Splits a `Location` into the part before `?` and its decoded query pairs.
pub fn split_location(location: &str) -> (String, Vec<(String, String)>) {
    match location.split_once('?') {
        Some((base, q)) => (base.to_owned(), parse_query(q)),
        None => (location.to_owned(), Vec::new()),
    }
}

/// The single value of query parameter `name`; panics if absent or repeated.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    let found: Vec<&str> = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect();
    assert_eq!(found.len(), 1, "parameter {name} should appear once in {params:?}");
    found[0]
}
