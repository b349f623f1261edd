//! JWKS parsing and ID-token verification (OpenID Connect Core §3.1.3.7).
//! Signature, issuer, audience, authorized party, times and nonce are checked
//! in one place, next to parsing, so a token is never half-validated.

use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::encoding::b64url_decode;

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    Malformed,
    /// `alg` is `none`, an HMAC, unknown, or does not fit the key.
    UnsupportedAlgorithm(String),
    /// No JWKS key has this `kid`: refresh the JWKS (once, with a cooldown) and retry.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not contain the client id, or `azp` names another client.
    WrongAudience,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    NotYetValid,
    /// `nonce` is missing or differs from the one sent.
    WrongNonce,
    /// A required claim (`sub`, `exp`, `iat`) is missing or of the wrong type.
    MissingClaim(&'static str),
    /// A claim this kind of token must not carry (a logout token's `nonce`).
    ForbiddenClaim(&'static str),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for TokenError {}

/// Why a JWKS document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not JSON of the JWKS shape (the parser's message).
    NotJson(String),
    /// No key we can verify with.
    NoUsableKey,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::NotJson(e) => write!(f, "JWKS is not valid JSON: {e}"),
            JwksError::NoUsableKey => f.write_str("JWKS holds no usable signing key (RSA ≥ 2048 bits, P-256, P-384 or Ed25519)"),
        }
    }
}

impl std::error::Error for JwksError {}

impl TokenError {
    /// A reason for logs and error pages; never includes the token.
    pub fn reason(&self) -> String {
        match self {
            TokenError::Malformed => "ID token is malformed".into(),
            TokenError::UnsupportedAlgorithm(a) => format!("ID token algorithm {a:?} is not accepted"),
            TokenError::UnknownKey => "ID token signed with a key not in the JWKS".into(),
            TokenError::BadSignature => "ID token signature is invalid".into(),
            TokenError::WrongIssuer => "ID token issuer does not match the configured issuer".into(),
            TokenError::WrongAudience => "ID token audience does not contain the client id".into(),
            TokenError::Expired => "ID token has expired (check the clocks)".into(),
            TokenError::NotYetValid => "ID token is not yet valid (check the clocks)".into(),
            TokenError::WrongNonce => "ID token nonce does not match this login".into(),
            TokenError::MissingClaim(c) => format!("ID token lacks the {c} claim"),
            TokenError::ForbiddenClaim(c) => format!("token carries a {c} claim, which its kind must not"),
        }
    }
}

enum KeyMaterial {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: KeyMaterial,
}

/// The IdP's signing keys.
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

impl Jwks {
    /// Parses a JWKS document, keeping the signature keys we can use. Keys of
    /// other types are skipped; a document with none usable is an error.
    pub fn parse(bytes: &[u8]) -> Result<Jwks, JwksError> {
        let raw: RawJwks = serde_json::from_slice(bytes).map_err(|e| JwksError::NotJson(e.to_string()))?;
        let keys: Vec<Jwk> = raw.keys.iter().filter_map(parse_jwk).collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Jwks { keys })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable (never true for a parsed JWKS).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

fn parse_jwk(v: &Value) -> Option<Jwk> {
    if field(v, "use").is_some_and(|u| u != "sig") {
        return None;
    }
    let key = match field(v, "kty")? {
        "RSA" => {
            let n = rsa::BigUint::from_bytes_be(&b64url_decode(field(v, "n")?)?);
            let e = rsa::BigUint::from_bytes_be(&b64url_decode(field(v, "e")?)?);
            let key = rsa::RsaPublicKey::new(n, e).ok()?;
            if rsa::traits::PublicKeyParts::size(&key) * 8 < MIN_RSA_BITS {
                return None;
            }
            KeyMaterial::Rsa(key)
        }
        "EC" => {
            let x = b64url_decode(field(v, "x")?)?;
            let y = b64url_decode(field(v, "y")?)?;
            let mut sec1 = vec![0x04];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            match field(v, "crv")? {
                "P-256" if x.len() == 32 && y.len() == 32 => KeyMaterial::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?),
                "P-384" if x.len() == 48 && y.len() == 48 => KeyMaterial::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?),
                _ => return None,
            }
        }
        "OKP" if field(v, "crv")? == "Ed25519" => {
            let x: [u8; 32] = b64url_decode(field(v, "x")?)?.try_into().ok()?;
            KeyMaterial::Ed25519(ed25519_dalek::VerifyingKey::from_bytes(&x).ok()?)
        }
        _ => return None,
    };
    Some(Jwk { kid: field(v, "kid").map(str::to_owned), alg: field(v, "alg").map(str::to_owned), key })
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
    typ: Option<String>,
    /// A nested token (`cty: JWT`) or compressed payload (`zip`): never
    /// what a provider signs for us, refused rather than unwrapped.
    cty: Option<Value>,
    zip: Option<Value>,
}

/// Whether a token of this `typ` may be an ID token or an access token:
/// none, `JWT`, or RFC 9068's `at+jwt`. Every other explicit type (a DPoP
/// proof's `dpop+jwt`, a logout token's `logout+jwt`, a security event's
/// `secevent+jwt`) is signed for another purpose.
fn credential_type(typ: &str) -> bool {
    let t = typ.strip_prefix("application/").unwrap_or(typ);
    t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("at+jwt")
}

/// `aud` is a string or an array of strings (Pocket ID sends an array).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<Value>),
}

/// Claims we read from a verified ID token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdClaims {
    /// Subject.
    pub sub: String,
    /// `preferred_username`.
    pub preferred_username: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `email_verified` (false when absent).
    pub email_verified: bool,
    /// `name`.
    pub name: Option<String>,
    /// `groups` (non-string entries are ignored).
    pub groups: Vec<String>,
    /// `sid`: the provider's session, for back-channel logout.
    pub sid: Option<String>,
    /// `exp`.
    pub exp: u64,
    /// `iat`.
    pub iat: u64,
    /// `auth_time`.
    pub auth_time: Option<u64>,
    /// `acr`.
    pub acr: Option<String>,
    /// `amr`.
    pub amr: Vec<String>,
}

/// What the token must match.
pub struct Expected<'a> {
    /// The configured issuer, compared exactly.
    pub issuer: &'a str,
    /// Our client id.
    pub client_id: &'a str,
    /// The nonce sent with this login; `None` after a refresh, where the
    /// provider may omit it.
    pub nonce: Option<&'a str>,
    /// Current time, unix seconds.
    pub now: u64,
    /// Allowed clock skew in seconds.
    pub leeway: u64,
}

/// Verifies the signature and claims of an ID token.
pub fn verify_id_token(token: &str, jwks: &Jwks, expected: &Expected<'_>) -> Result<IdClaims, TokenError> {
    check_claims(&verified_claims(token, jwks, None)?, expected)
}

/// The claims of a JWT whose signature verifies against the JWKS; `typ`,
/// when given, is the only header type accepted besides none and `JWT`,
/// and without it a logout token's type is refused.
pub(crate) fn verified_claims(token: &str, jwks: &Jwks, typ: Option<&str>) -> Result<Value, TokenError> {
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header: Header = serde_json::from_slice(&b64url_decode(h64).ok_or(TokenError::Malformed)?).map_err(|_| TokenError::Malformed)?;
    if header.crit.is_some() {
        return Err(TokenError::UnsupportedAlgorithm("crit".into()));
    }
    if header.cty.is_some() || header.zip.is_some() {
        return Err(TokenError::Malformed);
    }
    match (typ, header.typ.as_deref()) {
        (Some(want), Some(got)) if !got.eq_ignore_ascii_case(want) && !got.eq_ignore_ascii_case("JWT") => return Err(TokenError::Malformed),
        // A logout token or a DPoP proof may be signed with the same keys:
        // each only where one is asked for.
        (None, Some(got)) if !credential_type(got) => return Err(TokenError::ForbiddenClaim("typ")),
        _ => {}
    }
    let signature = b64url_decode(s64).ok_or(TokenError::Malformed)?;
    let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
    check_signature(&header, signed, &signature, jwks)?;
    serde_json::from_slice(&b64url_decode(p64).ok_or(TokenError::Malformed)?).map_err(|_| TokenError::Malformed)
}

fn alg_fits(alg: &str, key: &KeyMaterial) -> bool {
    matches!(
        (alg, key),
        ("RS256" | "RS384" | "RS512", KeyMaterial::Rsa(_))
            | ("ES256", KeyMaterial::P256(_))
            | ("ES384", KeyMaterial::P384(_))
            | ("EdDSA" | "Ed25519", KeyMaterial::Ed25519(_))
    )
}

fn check_signature(header: &Header, signed: &[u8], sig: &[u8], jwks: &Jwks) -> Result<(), TokenError> {
    let alg = header.alg.as_str();
    if !matches!(alg, "RS256" | "RS384" | "RS512" | "ES256" | "ES384" | "EdDSA" | "Ed25519") {
        // `none` and every HS* land here: an HMAC keyed with a public key is forgeable.
        return Err(TokenError::UnsupportedAlgorithm(header.alg.clone()));
    }
    let candidates: Vec<&Jwk> = match &header.kid {
        Some(kid) => {
            let by_kid: Vec<&Jwk> = jwks.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if by_kid.is_empty() {
                return Err(TokenError::UnknownKey);
            }
            by_kid
        }
        None => jwks.keys.iter().collect(),
    };
    let usable: Vec<&Jwk> = candidates.into_iter().filter(|k| alg_fits(alg, &k.key) && k.alg.as_deref().is_none_or(|a| a == alg)).collect();
    if usable.is_empty() {
        return Err(if header.kid.is_some() { TokenError::UnsupportedAlgorithm(header.alg.clone()) } else { TokenError::UnknownKey });
    }
    if usable.iter().any(|k| verify_with(alg, &k.key, signed, sig)) {
        Ok(())
    } else {
        Err(TokenError::BadSignature)
    }
}

fn verify_with(alg: &str, key: &KeyMaterial, signed: &[u8], sig: &[u8]) -> bool {
    use rsa::signature::Verifier;
    match key {
        KeyMaterial::Rsa(pk) => {
            let Ok(signature) = rsa::pkcs1v15::Signature::try_from(sig) else { return false };
            match alg {
                "RS256" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk.clone()).verify(signed, &signature),
                "RS384" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new(pk.clone()).verify(signed, &signature),
                "RS512" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(pk.clone()).verify(signed, &signature),
                _ => return false,
            }
            .is_ok()
        }
        KeyMaterial::P256(vk) => p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| vk.verify(signed, &s).is_ok()),
        KeyMaterial::P384(vk) => p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| vk.verify(signed, &s).is_ok()),
        KeyMaterial::Ed25519(vk) => ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| vk.verify_strict(signed, &s).is_ok()),
    }
}

fn num(claims: &Value, name: &'static str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or(TokenError::MissingClaim(name)),
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn check_claims(claims: &Value, exp: &Expected<'_>) -> Result<IdClaims, TokenError> {
    if claims.get("iss").and_then(Value::as_str) != Some(exp.issuer) {
        return Err(TokenError::WrongIssuer);
    }
    let aud: Audience = claims.get("aud").cloned().and_then(|a| serde_json::from_value(a).ok()).ok_or(TokenError::WrongAudience)?;
    let audiences: Vec<&str> = match &aud {
        Audience::One(a) => vec![a.as_str()],
        Audience::Many(list) => list.iter().filter_map(Value::as_str).collect(),
    };
    if !audiences.contains(&exp.client_id) {
        return Err(TokenError::WrongAudience);
    }
    match claims.get("azp") {
        None | Some(Value::Null) => {}
        Some(azp) if azp.as_str() == Some(exp.client_id) => {}
        Some(_) => return Err(TokenError::WrongAudience),
    }
    let expiry = num(claims, "exp")?.ok_or(TokenError::MissingClaim("exp"))?;
    let iat = num(claims, "iat")?.ok_or(TokenError::MissingClaim("iat"))?;
    if exp.now >= expiry.saturating_add(exp.leeway) {
        return Err(TokenError::Expired);
    }
    if iat > exp.now.saturating_add(exp.leeway) {
        return Err(TokenError::NotYetValid);
    }
    if let Some(nbf) = num(claims, "nbf")? {
        if nbf > exp.now.saturating_add(exp.leeway) {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(nonce) = exp.nonce {
        match claims.get("nonce").and_then(Value::as_str) {
            Some(n) if ct_eq(n, nonce) => {}
            _ => return Err(TokenError::WrongNonce),
        }
    }
    let mut profile = profile_claims(claims).ok_or(TokenError::MissingClaim("sub"))?;
    profile.exp = expiry;
    profile.iat = iat;
    Ok(profile)
}

/// The identity claims of an ID token or a userinfo response: `sub` (required),
/// `preferred_username`, `email`, `email_verified`, `name`, `groups`.
pub fn profile_claims(claims: &Value) -> Option<IdClaims> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        // Some providers send the string form.
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    let groups = match claims.get("groups") {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Some(IdClaims {
        sub: text("sub")?,
        preferred_username: text("preferred_username"),
        email: text("email"),
        email_verified,
        name: text("name"),
        groups,
        sid: text("sid"),
        exp: 0,
        iat: 0,
        auth_time: claims.get("auth_time").and_then(Value::as_u64),
        acr: text("acr"),
        amr: match claims.get("amr") {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).take(16).map(str::to_owned).collect(),
            _ => Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests;
