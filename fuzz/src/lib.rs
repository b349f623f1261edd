//! Fuzz targets for the oidc-edge core, one function per parser or
//! validator that hostile input reaches. Each takes arbitrary bytes and
//! panics only when it finds a bug: a crash in the code under test, or an
//! answer that breaks the property the target states (an oracle).
//!
//! The same functions run two ways: under libFuzzer (`make fuzz`, cargo fuzz
//! on nightly, one binary per target in `fuzz_targets/`), and as bounded
//! property tests on stable (`tests/bounded.rs`, part of `make test`), which
//! replay the committed seeds in `corpus/<target>/` and then mutate them.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use oidc_edge::config::{Config, IdpCalls, SecretSource};
use oidc_edge::encoding::{build_query, parse_query};
use oidc_edge::jose::{verify_id_token, Expected, Jwks};
use oidc_edge::path::{lenient_reading as lenient, normalize};
use oidc_edge::policy::HostPattern;
use oidc_edge::redirect::safe_redirect;
use oidc_edge::seal::Sealer;
use oidc_edge::session::{LoginState, Session};
use oidc_edge::{RequestHead, SharedProvider};
use serde_json::{json, Value};

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target, by name, for the bounded runner.
pub const TARGETS: &[(&str, Target)] = &[
    ("path_normalization", path_normalization),
    ("path_differential", path_differential),
    ("lenient_reading", lenient_reading),
    ("redirect", redirect),
    ("cookie_header", cookie_header),
    ("session", session),
    ("jwks", jwks),
    ("id_token", id_token),
    ("config_json", config_json),
    ("config_yaml", config_yaml),
    ("shared_records", shared_records),
    ("query", query),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Normalization never yields a spelling an upstream could read otherwise:
/// the result starts with one `/`, has no empty, `.` or `..` segment and no
/// escaped unreserved character, and normalizing it again changes nothing
/// (a redirect to it is never redirected again).
pub fn path_normalization(data: &[u8]) {
    let input = text(data);
    let Ok(once) = normalize(&input) else { return };
    assert!(once.starts_with('/') && !once.starts_with("//"), "{input:?} -> {once:?}");
    // Only printable ASCII is ever decided on: what the proxy forwards.
    assert!(input.bytes().all(|b| (0x21..0x7f).contains(&b)), "{input:?} accepted with a byte that is not printable ASCII");
    let segments: Vec<&str> = once.split('/').skip(1).collect();
    let inner = &segments[..segments.len().saturating_sub(1)];
    assert!(!inner.contains(&""), "{input:?} -> {once:?}: empty segment");
    assert!(!segments.contains(&".") && !segments.contains(&".."), "{input:?} -> {once:?}: dot segment");
    for (i, _) in once.match_indices('%') {
        let hex = once.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
        let b = hex.unwrap_or_else(|| panic!("{input:?} -> {once:?}: bad escape"));
        assert!(!(b.is_ascii_alphanumeric() || b"-._~".contains(&b)), "{input:?} -> {once:?}: escaped unreserved");
        assert!(once[i + 1..i + 3].bytes().all(|c| !c.is_ascii_lowercase()), "{input:?} -> {once:?}: lower-case escape");
    }
    assert_eq!(normalize(&once).as_deref(), Ok(&*once), "{input:?}: not idempotent");
    // A refused spelling stays refused whatever precedes it.
    let prefixed = format!("/x{input}");
    if input.starts_with('/') {
        assert!(normalize(&prefixed).is_ok(), "{input:?} accepted, /x{input:?} refused");
    }
}

/// How lenient servers read a normalized path: whatever the input, the
/// reading is a plain path with nothing left for a server to fold again (no
/// dot segment, no segment ending in a dot or whitespace, no fullwidth
/// ASCII, no query), and reading it again changes nothing.
pub fn lenient_reading(data: &[u8]) {
    let input = text(data);
    let Ok(path) = normalize(&input) else { return };
    let Some(reading) = lenient(&path) else { return };
    assert!(reading.starts_with('/'), "{input:?} -> {reading:?}");
    assert!(!reading.contains('?') && !reading.contains("//"), "{input:?} -> {reading:?}");
    for seg in reading.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "{input:?} -> {reading:?}: dot segment");
        assert!(!seg.ends_with('.') && seg.trim() == seg, "{input:?} -> {reading:?}: {seg:?} would be trimmed");
        assert!(!seg.chars().any(|c| ('\u{FF01}'..='\u{FF5E}').contains(&c)), "{input:?} -> {reading:?}: fullwidth left");
    }
}

/// Dot-segment resolution against an independent implementation: the WHATWG
/// URL parser of the `url` crate (which resolves `%2e` as `.` too, and treats
/// an empty segment before `..` as a segment, as RFC 3986 §5.2.4 does). The
/// input is built from an alphabet both read alike; the `url` crate's path,
/// with its remaining empty segments merged and its remaining escapes of
/// unreserved characters decoded, must equal ours.
pub fn path_differential(data: &[u8]) {
    const PIECES: &[&str] = &["/", "/", "/", ".", "..", "%2e", "%2E", "a", "b", "%41", "-", "~"];
    let mut path = String::from("/");
    for &b in data.iter().take(64) {
        path.push_str(PIECES[usize::from(b) % PIECES.len()]);
    }
    let ours = match normalize(&path) {
        Ok(p) => p.into_owned(),
        Err(e) => panic!("{path:?} refused ({e:?}) though it has only unreserved characters"),
    };
    let Ok(url) = url::Url::parse(&format!("http://h{path}")) else { return };
    // WHATWG resolves `.%2e`-style segments but keeps other escapes as sent.
    let theirs = url.path().replace("%41", "A").replace("%2e", ".").replace("%2E", ".");
    let mut merged = String::new();
    for seg in theirs.split('/').skip(1) {
        if !seg.is_empty() {
            merged.push('/');
            merged.push_str(seg);
        }
    }
    if merged.is_empty() || theirs.ends_with('/') {
        merged.push('/');
    }
    assert_eq!(ours, merged, "{path:?}: ours {ours:?}, url crate {theirs:?}");
}

fn allowed_hosts() -> &'static [HostPattern] {
    static HOSTS: OnceLock<Vec<HostPattern>> = OnceLock::new();
    HOSTS.get_or_init(|| ["*.example.com", "app.test"].iter().filter_map(|h| HostPattern::parse(h)).collect())
}

/// A redirect target that passes is a same-site path that no browser reads
/// as another host, or an absolute https URL on an allow-listed host.
pub fn redirect(data: &[u8]) {
    let input = text(data);
    for scheme in ["https", "http"] {
        let Some(target) = safe_redirect(&input, allowed_hosts(), scheme) else { continue };
        assert_eq!(target, input);
        assert!(!target.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'), "{input:?}: control or backslash");
        if target.starts_with('/') {
            let decoded = oidc_edge::encoding::percent_decode(&target, false).unwrap_or_default();
            assert!(!target.starts_with("//") && !decoded.starts_with("//"), "{input:?}: protocol-relative");
            continue;
        }
        let url = url::Url::parse(&target).unwrap_or_else(|e| panic!("{input:?} passed but is no URL: {e}"));
        assert!(url.scheme() == "https" || (url.scheme() == "http" && scheme == "http"), "{input:?} from {scheme}");
        let host = url.host_str().unwrap_or_default().trim_end_matches('.').to_ascii_lowercase();
        assert!(host == "app.test" || host.ends_with(".example.com"), "{input:?}: browsers go to {host:?}");
        assert!(url.username().is_empty() && url.password().is_none(), "{input:?}: userinfo");
    }
}

/// Every value `cookies()` yields is a value of that exact name from some
/// `Cookie` line, and holds no separator.
pub fn cookie_header(data: &[u8]) {
    let input = text(data);
    let headers: Vec<(String, String)> = input.split('\n').map(|line| ("cookie".to_owned(), line.to_owned())).collect();
    let head = RequestHead {
        method: "GET",
        scheme: "https",
        authority: "a",
        path: "/",
        headers: &headers,
        rewrites_path: true,
        client: None,
    };
    for name in ["_oidc_edge", "a", ""] {
        for value in head.cookies(name) {
            assert!(!value.contains(';'), "{input:?}: value {value:?}");
            assert!(input.contains(value), "{input:?}: invented {value:?}");
        }
    }
}

fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| Sealer::new(&[vec![7u8; 32], vec![9u8; 32]]))
}

struct Counter(u64);

impl oidc_edge::SecureRandom for Counter {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.0 >> 33) as u8;
        }
    }
}

/// Sealed cookies: garbage never opens; a sealed value opens to exactly what
/// was sealed, under its own name only; any one-byte change is refused.
/// Session and login-state decoders take any bytes without panicking, and
/// what they accept encodes back to the same bytes.
pub fn session(data: &[u8]) {
    let input = text(data);
    assert!(sealer().open("_oidc_edge", &input, 1000).is_err() || input.len() > 40, "short garbage opened");
    if let Some(s) = Session::decode(data) {
        if matches!(data.first(), Some(&(1..=3))) {
            // Versions 1 to 3 are read, never written: they come back in the current one.
            assert_eq!(Session::decode(&s.encode()), Some(s), "an older session changed when rewritten");
        } else {
            assert_eq!(s.encode(), data, "session decode/encode differ");
        }
    }
    if let Some(l) = LoginState::decode(data) {
        if data.first() == Some(&1) {
            // Version 1 (before step-up logins were marked) is read, never written.
            assert_eq!(LoginState::decode(&l.encode()), Some(l), "an older login state changed when rewritten");
        } else {
            assert_eq!(l.encode(), data, "login state decode/encode differ");
        }
    }
    let sealed = sealer().seal("_oidc_edge", 5000, data, &mut Counter(data.len() as u64));
    assert_eq!(sealer().open("_oidc_edge", &sealed, 1000), Ok((data.to_vec(), 5000)));
    assert!(sealer().open("_oidc_edge_idt", &sealed, 1000).is_err(), "opened under another name");
    assert!(sealer().open("_oidc_edge", &sealed, 5000).is_err(), "opened after expiry");
    if let Some(&b) = data.first() {
        let mut bytes = sealed.into_bytes();
        let i = usize::from(b) % bytes.len();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8_lossy(&bytes);
        assert!(sealer().open("_oidc_edge", &tampered, 1000).is_err(), "tampered at {i} opened");
    }
}

/// JWKS documents of any shape parse or are refused without panicking.
pub fn jwks(data: &[u8]) {
    let _ = Jwks::parse(data);
}

const ISSUER: &str = "https://id.example.com";
const CLIENT: &str = "edge";
const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 60;

struct Keys {
    ed: ed25519_dalek::SigningKey,
    es: p256::ecdsa::SigningKey,
    jwks: Jwks,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ed = ed25519_dalek::SigningKey::from_bytes(&[11u8; 32]);
        let es = p256::ecdsa::SigningKey::from_slice(&[13u8; 32]).unwrap_or_else(|e| panic!("fixed P-256 key: {e}"));
        let point = es.verifying_key().to_encoded_point(false);
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let doc = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": b64(ed.verifying_key().as_bytes()), "kid": "ed", "alg": "EdDSA", "use": "sig"},
            {"kty": "EC", "crv": "P-256", "x": b64(point.x().map(|x| x.as_slice()).unwrap_or_default()),
             "y": b64(point.y().map(|y| y.as_slice()).unwrap_or_default()), "kid": "es", "alg": "ES256"},
        ]});
        let jwks = Jwks::parse(doc.to_string().as_bytes()).unwrap_or_else(|e| panic!("fixed JWKS: {e}"));
        Keys { ed, es, jwks }
    })
}

/// Reads the fuzzer's bytes one at a time, 0 once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
}

/// Structure-aware: a valid ID token (Ed25519 or ES256, from the JWKS) whose
/// header and claims the input edits before it is signed, and whose encoded
/// form the input may then alter. An independent oracle states when the
/// token must verify; the verifier must agree exactly.
pub fn id_token(data: &[u8]) {
    let mut input = Bytes(data);
    let mut claims = json!({"iss": ISSUER, "aud": [CLIENT], "azp": CLIENT, "sub": "u-1", "exp": NOW + 300,
                            "iat": NOW - 5, "nonce": "n-1", "preferred_username": "alice", "groups": ["admins"]});
    let fields = ["iss", "aud", "azp", "sub", "exp", "iat", "nbf", "nonce", "groups"];
    for _ in 0..usize::from(input.next() % 4) {
        let field = fields[usize::from(input.next()) % fields.len()];
        let v = input.next();
        let value = match input.next() % 10 {
            0 => Value::Null,
            1 => json!(ISSUER.to_owned() + "/"),
            2 => json!(CLIENT),
            3 => json!([CLIENT, "other"]),
            4 => json!(["other"]),
            5 => json!(NOW - 120 + u64::from(v) * 2),
            6 => json!((NOW as f64) - 120.0 + f64::from(v) * 2.5),
            7 => json!(format!("n-{v}")),
            8 => json!(true),
            _ => json!(-1),
        };
        if let Some(obj) = claims.as_object_mut() {
            if value.is_null() && input.next() % 2 == 0 {
                obj.remove(field);
            } else {
                obj.insert(field.to_owned(), value);
            }
        }
    }
    let use_es = input.next() % 2 == 1;
    let algs = ["EdDSA", "ES256", "none", "HS256", "RS256", "Ed25519"];
    let alg = match input.next() % 4 {
        0 => algs[usize::from(input.next()) % algs.len()],
        _ if use_es => "ES256",
        _ => "EdDSA",
    };
    let kids = [Some("ed"), Some("es"), Some("gone"), None];
    let kid = match input.next() % 4 {
        0 => kids[usize::from(input.next()) % kids.len()],
        _ if use_es => Some("es"),
        _ => Some("ed"),
    };
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let k = keys();
    let signature = if use_es {
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = k.es.sign(signing_input.as_bytes());
        sig.to_bytes().to_vec()
    } else {
        use ed25519_dalek::Signer;
        k.ed.sign(signing_input.as_bytes()).to_bytes().to_vec()
    };
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&signature));
    let mut altered = token.clone().into_bytes();
    for _ in 0..usize::from(input.next() % 3) {
        let i = usize::from(input.next()) * 7 % altered.len();
        altered[i] = input.next();
    }
    let altered = String::from_utf8_lossy(&altered).into_owned();
    let expected = Expected { issuer: ISSUER, client_id: CLIENT, nonce: Some("n-1"), now: NOW, leeway: LEEWAY };
    let verdict = verify_id_token(&altered, &k.jwks, &expected);

    let time = |name: &str| claims.get(name).and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)));
    let present = |name: &str| claims.get(name).is_some_and(|v| !v.is_null());
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == CLIENT,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(CLIENT)),
        _ => false,
    };
    let signed_right = matches!((alg, kid, use_es), ("ES256", Some("es") | None, true) | ("EdDSA", Some("ed") | None, false));
    let must_verify = altered == token
        && signed_right
        && claims.get("iss").and_then(Value::as_str) == Some(ISSUER)
        && audience_ok
        && claims.get("azp").is_none_or(|a| a.is_null() || a.as_str() == Some(CLIENT))
        && time("exp").is_some_and(|e| NOW < e.saturating_add(LEEWAY))
        && time("iat").is_some_and(|i| i <= NOW + LEEWAY)
        && (!present("exp") || time("exp").is_some())
        && (!present("iat") || time("iat").is_some())
        && (!present("nbf") || time("nbf").is_some_and(|n| n <= NOW + LEEWAY))
        && claims.get("nonce").and_then(Value::as_str) == Some("n-1")
        && claims.get("sub").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    assert_eq!(verdict.is_ok(), must_verify, "claims {claims} alg {alg} kid {kid:?} altered {}: {verdict:?}", altered != token);
}

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn env(&self, name: &str) -> Option<String> {
        match name {
            "COOKIE_SECRET" => Some("K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=".into()),
            _ => Some("x".into()),
        }
    }
    fn file(&self, _path: &str) -> Result<String, String> {
        Err("no files here".into())
    }
}

/// Errors may quote the configuration (an unknown field's name), so the
/// secret counts as shown only when the input did not contain it.
fn check_config(input: &str, result: Result<Config, oidc_edge::ConfigErrors>) {
    if let Err(e) = result {
        assert!(!e.0.is_empty(), "refused with no reason");
        for line in e.0.iter().map(ToString::to_string) {
            assert!(!line.contains("K7gNU3sdo") || input.contains("K7gNU3sdo"), "an error shows a secret: {line}");
        }
    }
}

/// Any JSON configuration is accepted or refused with named errors that
/// never show a secret; never a panic.
pub fn config_json(data: &[u8]) {
    let input = text(data);
    check_config(&input, Config::parse(&input, &NoSecrets, IdpCalls::Callouts));
    check_config(&input, Config::parse(&input, &NoSecrets, IdpCalls::Direct));
}

/// The same for YAML, as the sidecar reads it.
pub fn config_yaml(data: &[u8]) {
    let input = text(data);
    check_config(&input, Config::parse_yaml_with::<()>(&input, &NoSecrets, IdpCalls::Direct).map(|(c, ())| c));
}

/// Shared-record shards and the provider blob decode from any bytes; every
/// record read lies inside the shard, and a write leaves a shard whose records
/// all decode, the new one included.
pub fn shared_records(data: &[u8]) {
    use oidc_edge::records::{lookup, records, write, Write};
    let mut total = 0usize;
    for r in records(data) {
        assert_eq!(r.digest.len(), 16);
        total += 26 + r.value.len();
    }
    assert!(total <= data.len());
    let digest = [5u8; 16];
    let value = data.get(..data.len().min(40)).unwrap_or_default();
    if let Some((shard, _)) = write(data, &digest, value, 2000, 1000, Write::Always, 1 << 16) {
        assert_eq!(lookup(&shard, &digest, 1000).as_deref(), Some(value), "written record not found");
    }
    if let Some(blob) = SharedProvider::decode(data) {
        assert_eq!(blob.encode(), data, "provider blob decode/encode differ");
    }
}

/// Query parsing takes any string; what `build_query` writes parses back to
/// the same pairs.
pub fn query(data: &[u8]) {
    let input = text(data);
    let pairs = parse_query(&input);
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let rebuilt = build_query(&borrowed);
    assert_eq!(parse_query(&rebuilt), pairs, "{input:?} -> {rebuilt:?}");
}
