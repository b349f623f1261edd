//! API clients: `Authorization: Bearer <JWT>` from the same provider.
//! Scripts, apps and other services call the routes that accept it with a
//! token the provider signed (an access token in JWT form, RFC 9068, or an
//! ID token): its signature from the provider's JWKS, `iss` exact, `aud`
//! among the route's audiences, its times within the clock skew. The
//! route's rules then apply to its claims as to a session's.

use serde_json::Value;

use crate::jose::{profile_claims, verified_claims, IdClaims, Jwks, TokenError};
use crate::request::RequestHead;

/// What a route accepts from API clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerRule {
    /// `aud` must name one of these (default: the client id).
    pub audiences: Vec<String>,
    /// Which cache holds tokens verified for these audiences: a token
    /// accepted for one route's audiences is never taken from the cache
    /// for a route with others.
    pub cache: usize,
    /// Forward the `Authorization` header to the upstream (default: removed).
    pub forward: bool,
}

/// The token of an `Authorization: Bearer …` header (scheme in any case).
pub fn bearer_token<'h>(head: &RequestHead<'h>) -> Option<&'h str> {
    let value = head.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.as_str())?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Verifies a bearer token; its claims, with `exp`.
pub fn verify_bearer(token: &str, jwks: &Jwks, issuer: &str, audiences: &[String], now: u64, leeway: u64) -> Result<IdClaims, TokenError> {
    let claims = verified_claims(token, jwks, None)?;
    // A logout token is never a credential, whatever its header says.
    if claims.get("events").is_some() {
        return Err(TokenError::ForbiddenClaim("events"));
    }
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(TokenError::WrongIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(|a| audiences.iter().any(|x| x == a)),
        _ => false,
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }
    let time = |name| claims.get(name).and_then(Value::as_u64);
    let exp = time("exp").ok_or(TokenError::MissingClaim("exp"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(TokenError::Expired);
    }
    if time("nbf").is_some_and(|t| t > now + leeway) || time("iat").is_some_and(|t| t > now + leeway) {
        return Err(TokenError::NotYetValid);
    }
    let mut id = profile_claims(&claims).ok_or(TokenError::MissingClaim("sub"))?;
    id.exp = exp;
    id.iat = time("iat").unwrap_or(now);
    Ok(id)
}

/// A quoted-string for `WWW-Authenticate` (RFC 6750 §3: no `"` or `\`).
pub fn quoted(text: &str) -> String {
    text.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect()
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
        let mut claims = json!({"iss": ISSUER, "aud": [CLIENT_ID, "other"], "sub": "svc-1", "exp": NOW + 300, "iat": NOW,
                                "preferred_username": "backup-job", "groups": ["backups"]});
        edit(&mut claims);
        sign_ed(&ed_key(), Some("ed1"), &claims)
    }

    fn verify(t: &str) -> Result<IdClaims, TokenError> {
        verify_bearer(t, &jwks(), ISSUER, &[CLIENT_ID.to_owned()], NOW, 60)
    }

    #[test]
    fn a_token_from_the_provider_for_us_verifies() {
        let c = verify(&token(|_| {})).unwrap();
        assert_eq!((c.sub.as_str(), c.groups.clone(), c.exp), ("svc-1", vec!["backups".to_owned()], NOW + 300));
        assert!(verify(&token(|c| c["aud"] = json!(CLIENT_ID))).is_ok());
        assert!(verify(&token(|c| c["exp"] = json!(NOW - 30))).is_ok(), "within the clock skew");
    }

    #[test]
    fn anything_else_is_refused() {
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("another audience", token(|c| c["aud"] = json!("someone-else")), TokenError::WrongAudience),
            ("no audience", token(|c| drop(c.as_object_mut().unwrap().remove("aud"))), TokenError::WrongAudience),
            ("another issuer", token(|c| c["iss"] = json!("https://evil.example.com")), TokenError::WrongIssuer),
            ("expired", token(|c| c["exp"] = json!(NOW - 61)), TokenError::Expired),
            ("no expiry", token(|c| drop(c.as_object_mut().unwrap().remove("exp"))), TokenError::MissingClaim("exp")),
            ("not yet valid", token(|c| c["nbf"] = json!(NOW + 600)), TokenError::NotYetValid),
            (
                "a logout token",
                token(|c| c["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}})),
                TokenError::ForbiddenClaim("events"),
            ),
        ];
        for (what, t, want) in cases {
            assert_eq!(verify(&t).err(), Some(want), "{what}");
        }
        let good = token(|_| {});
        // The same claims, signed as a logout token.
        let input =
            format!("{}.{}", crate::encoding::b64url(br#"{"alg":"EdDSA","kid":"ed1","typ":"logout+jwt"}"#), good.split('.').nth(1).unwrap());
        let sig = ed25519_dalek::Signer::sign(&ed_key(), input.as_bytes());
        let typed_logout = format!("{input}.{}", crate::encoding::b64url(&sig.to_bytes()));
        assert_eq!(verify(&typed_logout).err(), Some(TokenError::ForbiddenClaim("typ")));
        let (head, rest) = good.split_once('.').unwrap();
        let none = format!("{}.{rest}", crate::encoding::b64url(br#"{"alg":"none"}"#));
        assert!(matches!(verify(&none), Err(TokenError::UnsupportedAlgorithm(_))));
        let tampered = format!("{head}.{}", rest.replacen('e', "f", 1));
        assert!(verify(&tampered).is_err());
    }

    #[test]
    fn the_header_is_read_in_any_case_and_nothing_else_is_a_token() {
        let token_of = |value: &str| {
            let req = crate::testing::Req::get("/").header("Authorization", value);
            bearer_token(&req.head()).map(str::to_owned)
        };
        assert_eq!(token_of("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(token_of("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(token_of("Basic abc"), None);
        assert_eq!(token_of("Bearer "), None);
        assert_eq!(quoted("a \"quoted\" \\ value"), "a quoted  value");
    }
}
