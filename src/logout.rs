//! OpenID Connect Back-Channel Logout 1.0: the provider posts a signed
//! logout token when a user's session ends there (signed out at the
//! provider, or in another application), and the gate revokes the sessions
//! it names: those of the provider session (`sid`), else every session of
//! the subject begun before now.

use serde_json::Value;

use crate::jose::{verified_claims, Jwks, TokenError};
use crate::revocation::Revocation;

/// The event a logout token must carry.
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How old a logout token may be (its `iat`), besides the clock skew.
const MAX_AGE: u64 = 300;

/// What a logout token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    /// The provider's session.
    pub sid: Option<String>,
    /// The user.
    pub sub: Option<String>,
    /// Its identifier: a token is used once (§2.6, step 9).
    pub jti: String,
    /// Unix seconds.
    pub iat: u64,
}

impl LogoutToken {
    /// A digest of the issuer and `jti`, under which the token is claimed.
    pub fn replay_key(&self, issuer: &str) -> [u8; 16] {
        let mac = crate::seal::hmac_sha256(b"oidc-edge/v1/logout-jti", &[issuer.as_bytes(), b"\0", self.jti.as_bytes()]);
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac[..16]);
        out
    }

    /// Until when a replay would still verify, so the claim must last.
    pub fn replayable_until(&self, leeway: u64) -> u64 {
        self.iat + MAX_AGE + 2 * leeway
    }

    /// The revocation it asks for, remembered for `lifetime` (no session
    /// outlives `session.lifetime`).
    pub fn revocation(&self, now: u64, lifetime: u64) -> Option<Revocation> {
        match (&self.sid, &self.sub) {
            (Some(sid), _) => Some(Revocation::of_idp_session(sid, now, lifetime)),
            // Sessions begun before the token was issued: a replay ends no
            // session begun since.
            (None, Some(sub)) => Some(Revocation::of_subject(sub, self.iat.min(now), lifetime)),
            (None, None) => None,
        }
    }
}

/// Verifies a logout token (§2.6): the signature from the provider's JWKS,
/// `iss` exact, `aud` containing our client, a recent `iat`, a `jti`, the
/// back-channel logout event, `sub` or `sid`, and no `nonce` (which would
/// make an ID token pass as a logout token).
pub fn verify_logout_token(token: &str, jwks: &Jwks, issuer: &str, client_id: &str, now: u64, leeway: u64) -> Result<LogoutToken, TokenError> {
    let claims = verified_claims(token, jwks, Some("logout+jwt"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(TokenError::WrongIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }
    let iat = claims.get("iat").and_then(Value::as_u64).ok_or(TokenError::MissingClaim("iat"))?;
    if iat > now + leeway {
        return Err(TokenError::NotYetValid);
    }
    if iat + MAX_AGE + leeway < now {
        return Err(TokenError::Expired);
    }
    if claims.get("exp").and_then(Value::as_u64).is_some_and(|exp| exp + leeway < now) {
        return Err(TokenError::Expired);
    }
    let Some(jti) = claims.get("jti").and_then(Value::as_str).filter(|j| !j.is_empty()) else {
        return Err(TokenError::MissingClaim("jti"));
    };
    if !claims.get("events").and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT)).is_some_and(Value::is_object) {
        return Err(TokenError::MissingClaim("events"));
    }
    if claims.get("nonce").is_some() {
        return Err(TokenError::ForbiddenClaim("nonce"));
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let token = LogoutToken { sid: text("sid"), sub: text("sub"), jti: jti.to_owned(), iat };
    if token.sid.is_none() && token.sub.is_none() {
        return Err(TokenError::MissingClaim("sub or sid"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{ed_key, jwks_json, sign_ed, CLIENT_ID, ISSUER, NOW};

    fn jwks() -> Jwks {
        Jwks::parse(jwks_json().to_string().as_bytes()).unwrap()
    }

    fn token(edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = json!({
            "iss": ISSUER, "aud": CLIENT_ID, "iat": NOW - 5, "jti": "j-1", "sid": "sid-1", "sub": "alice",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}}
        });
        edit(&mut claims);
        sign_ed(&ed_key(), Some("ed1"), &claims)
    }

    fn verify(t: &str) -> Result<LogoutToken, TokenError> {
        verify_logout_token(t, &jwks(), ISSUER, CLIENT_ID, NOW, 60)
    }

    #[test]
    fn a_valid_logout_token_names_the_provider_session_or_the_subject() {
        let t = verify(&token(|_| {})).unwrap();
        assert_eq!(t, LogoutToken { sid: Some("sid-1".into()), sub: Some("alice".into()), jti: "j-1".into(), iat: NOW - 5 });
        let by_sub = verify(&token(|c| drop(c.as_object_mut().unwrap().remove("sid")))).unwrap();
        // Sessions begun before the token was issued, even when it is replayed later.
        assert_eq!(by_sub.revocation(NOW, 3600), Some(Revocation::of_subject("alice", NOW - 5, 3600)));
        assert_eq!(by_sub.revocation(NOW + 100, 3600), by_sub.revocation(NOW, 3600));
        assert_ne!(t.replay_key(ISSUER), verify(&token(|c| c["jti"] = json!("j-2"))).unwrap().replay_key(ISSUER));
        assert_eq!(t.replayable_until(60), NOW - 5 + 300 + 120);
        assert_eq!(t.revocation(NOW, 3600), Some(Revocation::of_idp_session("sid-1", NOW, 3600)));
    }

    #[test]
    fn anything_else_is_refused() {
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("another issuer", token(|c| c["iss"] = json!("https://evil.example.com")), TokenError::WrongIssuer),
            ("another client", token(|c| c["aud"] = json!(["other"])), TokenError::WrongAudience),
            ("an ID token (nonce)", token(|c| c["nonce"] = json!("n")), TokenError::ForbiddenClaim("nonce")),
            ("no event", token(|c| c["events"] = json!({})), TokenError::MissingClaim("events")),
            ("no jti", token(|c| drop(c.as_object_mut().unwrap().remove("jti"))), TokenError::MissingClaim("jti")),
            ("old", token(|c| c["iat"] = json!(NOW - 600)), TokenError::Expired),
            ("from the future", token(|c| c["iat"] = json!(NOW + 600)), TokenError::NotYetValid),
            (
                "no one named",
                token(|c| {
                    let o = c.as_object_mut().unwrap();
                    o.remove("sid");
                    o.remove("sub");
                }),
                TokenError::MissingClaim("sub or sid"),
            ),
        ];
        for (what, t, want) in cases {
            assert_eq!(verify(&t), Err(want), "{what}");
        }
        let mut forged = token(|_| {});
        // Another last character, whatever the signature ended with (it
        // ends in 'A' once in sixteen runs).
        let last = forged.pop();
        forged.push(if last == Some('A') { 'Q' } else { 'A' });
        assert!(verify(&forged).is_err(), "a forged signature");
    }
}
