//! Signed identity for the upstream: a short-lived JWT with the user's
//! identity and groups, in a header of the routes that ask for it, signed
//! with a key from the configuration (ES256 or EdDSA). An upstream that
//! verifies it against the gate's JWKS (`paths.jwks`) cannot be fooled by
//! someone who reaches it directly with forged `Remote-User` headers.
//!
//! Signed once per session, route and host for half the token's lifetime,
//! not per request.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use crate::cache::OpenedSession;
use crate::encoding::b64url;

/// The signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

enum Key {
    Ed(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// The gate's identity key.
pub struct IdentitySigner {
    key: Key,
    kid: String,
    /// `iss` of every token.
    pub issuer: String,
    /// Seconds a token is valid.
    pub lifetime: u64,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner").field("kid", &self.kid).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// A signer from 32 secret bytes (an Ed25519 seed, or a P-256 scalar);
    /// `None` if they are not a valid P-256 scalar.
    pub fn new(algorithm: Algorithm, secret: &[u8; 32], issuer: String, lifetime: u64) -> Option<IdentitySigner> {
        let key = match algorithm {
            Algorithm::EdDSA => Key::Ed(ed25519_dalek::SigningKey::from_bytes(secret)),
            Algorithm::ES256 => Key::P256(p256::ecdsa::SigningKey::from_slice(secret).ok()?),
        };
        let public = match &key {
            Key::Ed(k) => k.verifying_key().to_bytes().to_vec(),
            Key::P256(k) => k.verifying_key().to_encoded_point(false).as_bytes().to_vec(),
        };
        let kid = b64url(&crate::seal::hmac_sha256(b"oidc-edge/v1/identity-kid", &[&public])[..12]);
        Some(IdentitySigner { key, kid, issuer, lifetime })
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Ed(_) => "EdDSA",
            Key::P256(_) => "ES256",
        }
    }

    /// The public key as a JWKS document, for upstreams to verify with.
    pub fn jwks(&self) -> String {
        let jwk = match &self.key {
            Key::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&k.verifying_key().to_bytes())}),
            Key::P256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                let (x, y) = (point.x().map(|x| b64url(x)), point.y().map(|y| b64url(y)));
                json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg());
        jwk["use"] = json!("sig");
        json!({"keys": [jwk]}).to_string()
    }

    /// A token for `session` at `host`, issued at `now`.
    pub fn sign(&self, opened: &OpenedSession, host: &str, now: u64) -> String {
        let s = &opened.session;
        let mut claims = json!({
            "iss": self.issuer, "aud": host, "sub": s.sub, "preferred_username": s.user,
            "groups": s.groups, "iat": now, "exp": now + self.lifetime, "auth_time": s.auth_time,
        });
        if let Some(email) = &s.email {
            claims["email"] = json!(email);
            claims["email_verified"] = json!(s.email_verified);
        }
        if let Some(name) = &s.name {
            claims["name"] = json!(name);
        }
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid});
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let signature = match &self.key {
            Key::Ed(k) => {
                use ed25519_dalek::Signer;
                k.sign(input.as_bytes()).to_bytes().to_vec()
            }
            Key::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(input.as_bytes());
                sig.to_bytes().to_vec()
            }
        };
        format!("{input}.{}", b64url(&signature))
    }
}

/// Tokens already signed, per session (its id and the time it was last
/// confirmed, so a refresh re-signs) and route; one host each.
#[derive(Default)]
pub struct SignedCache {
    map: HashMap<([u8; 16], u64, usize), Signed>,
    capacity: usize,
}

struct Signed {
    host: String,
    token: Arc<str>,
    reuse_until: u64,
}

impl SignedCache {
    /// A cache of at most `capacity` tokens.
    pub fn new(capacity: usize) -> SignedCache {
        SignedCache { map: HashMap::new(), capacity }
    }

    /// The token for this session, route and host: the cached one while it
    /// has more than half its lifetime left, else a new one.
    pub fn token(&mut self, signer: &IdentitySigner, opened: &OpenedSession, route: usize, host: &str, now: u64) -> Arc<str> {
        let key = (opened.session.id, opened.session.checked_at, route);
        if let Some(hit) = self.map.get(&key) {
            if hit.host == host && now < hit.reuse_until {
                return Arc::clone(&hit.token);
            }
        }
        let token: Arc<str> = signer.sign(opened, host, now).into();
        if self.map.len() >= self.capacity {
            self.map.retain(|_, v| v.reuse_until > now);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        let reuse_until = now + signer.lifetime / 2;
        self.map.insert(key, Signed { host: host.to_owned(), token: Arc::clone(&token), reuse_until });
        token
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::jose::{verified_claims, Jwks};
    use crate::session::Session;

    fn opened(id: u8, groups: &[&str]) -> OpenedSession {
        let session = Session {
            sub: "u-1".into(),
            user: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            id: [id; 16],
            login_at: 100,
            checked_at: 100,
            auth_time: 40,
            ..Session::default()
        };
        OpenedSession::new(session, 10_000)
    }

    #[test]
    fn tokens_verify_against_the_published_keys_for_both_algorithms() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let signer = IdentitySigner::new(alg, &[7; 32], "oidc-edge".into(), 300).unwrap();
            let jwks = Jwks::parse(signer.jwks().as_bytes()).unwrap();
            let token = signer.sign(&opened(1, &["admins"]), "app.example.com", 1000);
            let claims: Value = verified_claims(&token, &jwks, None).unwrap();
            assert_eq!(claims["preferred_username"], "alice");
            assert_eq!(claims["groups"], json!(["admins"]));
            assert_eq!(claims["auth_time"], 40, "when the provider signed the user in, not when the gate's session began");
            assert_eq!((claims["aud"].as_str(), claims["exp"].as_u64()), (Some("app.example.com"), Some(1300)));
            let other = IdentitySigner::new(alg, &[8; 32], "oidc-edge".into(), 300).unwrap();
            assert!(verified_claims(&token, &Jwks::parse(other.jwks().as_bytes()).unwrap(), None).is_err());
        }
    }

    #[test]
    fn a_token_is_reused_for_half_its_life_then_signed_again() {
        let signer = IdentitySigner::new(Algorithm::EdDSA, &[7; 32], "oidc-edge".into(), 300).unwrap();
        let mut cache = SignedCache::new(10);
        let alice = opened(1, &["admins"]);
        let first = cache.token(&signer, &alice, 0, "a.example.com", 1000);
        assert_eq!(cache.token(&signer, &alice, 0, "a.example.com", 1149), first);
        assert_ne!(cache.token(&signer, &alice, 0, "a.example.com", 1150), first);
        let other_host = cache.token(&signer, &alice, 0, "b.example.com", 1151);
        assert!(other_host.contains('.') && other_host != first);
        let bob = opened(2, &["users"]);
        assert_ne!(cache.token(&signer, &bob, 0, "b.example.com", 1151), other_host, "another session, another token");
    }
}
