use super::*;
use crate::encoding::b64url;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::json;

const NOW: u64 = 1_700_000_000;

fn rsa_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("test-rsa-key.pem")).unwrap()
}
fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
}
fn ed_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[9u8; 32])
}

fn jwks_json() -> Value {
    let rsa = rsa_key().to_public_key();
    let p = p256_key().verifying_key().to_encoded_point(false);
    json!({"keys": [
        {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256",
         "n": b64url(&rsa.n().to_bytes_be()), "e": b64url(&rsa.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec1", "crv": "P-256",
         "x": b64url(p.x().unwrap()), "y": b64url(p.y().unwrap())},
        {"kty": "OKP", "kid": "ed1", "crv": "Ed25519",
         "x": b64url(ed_key().verifying_key().as_bytes())},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
    ]})
}

fn jwks() -> Jwks {
    Jwks::parse(jwks_json().to_string().as_bytes()).unwrap()
}

fn claims() -> Value {
    json!({"iss": "https://id.example.com", "aud": ["edge"], "sub": "u-1", "exp": NOW + 300,
           "iat": NOW - 5, "nonce": "n-1", "preferred_username": "alice", "email": "a@x.io",
           "email_verified": true, "name": "Alice", "groups": ["admins", "users"]})
}

fn sign(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let signing_input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let sig: Vec<u8> = match alg {
        "RS256" => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(rsa_key()).sign(signing_input.as_bytes()).to_vec(),
        "RS384" => rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(rsa_key()).sign(signing_input.as_bytes()).to_vec(),
        "ES256" => {
            let s: p256::ecdsa::Signature = p256_key().sign(signing_input.as_bytes());
            s.to_bytes().to_vec()
        }
        "EdDSA" => ed_key().sign(signing_input.as_bytes()).to_bytes().to_vec(),
        "HS256" => {
            // The classic confusion attack: HMAC keyed with the RSA public key.
            let rsa = rsa_key().to_public_key();
            crate::seal::hmac_sha256(&rsa.n().to_bytes_be(), &[signing_input.as_bytes()]).to_vec()
        }
        _ => Vec::new(),
    };
    format!("{signing_input}.{}", b64url(&sig))
}

fn expected(nonce: Option<&'static str>) -> Expected<'static> {
    Expected { issuer: "https://id.example.com", client_id: "edge", nonce, now: NOW, leeway: 60 }
}

#[test]
fn jwks_skips_unusable_keys() {
    assert_eq!(jwks().len(), 3);
    assert!(Jwks::parse(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#).is_err());
    assert!(Jwks::parse(b"nope").is_err());
}

#[test]
fn each_supported_algorithm_verifies() {
    for (alg, kid) in [("RS256", "rsa1"), ("ES256", "ec1"), ("EdDSA", "ed1")] {
        let token = sign(alg, Some(kid), &claims());
        let c = verify_id_token(&token, &jwks(), &expected(Some("n-1"))).unwrap();
        assert_eq!(c.sub, "u-1");
        assert_eq!(c.groups, vec!["admins", "users"]);
        assert_eq!(c.preferred_username.as_deref(), Some("alice"));
        assert!(c.email_verified);
    }
}

#[test]
fn key_without_kid_is_found_by_algorithm() {
    let token = sign("ES256", None, &claims());
    assert!(verify_id_token(&token, &jwks(), &expected(Some("n-1"))).is_ok());
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let none = format!("{}.{}.", b64url(br#"{"alg":"none"}"#), b64url(claims().to_string().as_bytes()));
    assert_eq!(verify_id_token(&none, &jwks(), &expected(Some("n-1"))), Err(TokenError::UnsupportedAlgorithm("none".into())));
    let hs = sign("HS256", Some("rsa1"), &claims());
    assert_eq!(verify_id_token(&hs, &jwks(), &expected(Some("n-1"))), Err(TokenError::UnsupportedAlgorithm("HS256".into())));
}

#[test]
fn algorithm_must_fit_the_key() {
    // An RS384 token naming the RS256-only key, and an ES256 token naming the RSA key.
    let t = sign("RS384", Some("rsa1"), &claims());
    assert!(matches!(verify_id_token(&t, &jwks(), &expected(None)), Err(TokenError::UnsupportedAlgorithm(_))));
    let t = sign("ES256", Some("rsa1"), &claims());
    assert!(matches!(verify_id_token(&t, &jwks(), &expected(None)), Err(TokenError::UnsupportedAlgorithm(_))));
}

#[test]
fn unknown_kid_asks_for_a_refetch() {
    let t = sign("RS256", Some("rotated"), &claims());
    assert_eq!(verify_id_token(&t, &jwks(), &expected(None)), Err(TokenError::UnknownKey));
}

#[test]
fn tampered_payload_fails_signature() {
    let t = sign("EdDSA", Some("ed1"), &claims());
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["groups"] = json!(["admins", "root"]);
    parts[1] = b64url(c.to_string().as_bytes());
    assert_eq!(verify_id_token(&parts.join("."), &jwks(), &expected(None)), Err(TokenError::BadSignature));
}

#[test]
fn claim_checks() {
    let cases: Vec<(Value, Option<&'static str>, TokenError)> = vec![
        (json!({"iss": "https://id.example.com/"}), Some("n-1"), TokenError::WrongIssuer),
        (json!({"iss": "https://evil.example"}), Some("n-1"), TokenError::WrongIssuer),
        (json!({"aud": "other"}), Some("n-1"), TokenError::WrongAudience),
        (json!({"aud": ["other", "x"]}), Some("n-1"), TokenError::WrongAudience),
        (json!({"azp": "other"}), Some("n-1"), TokenError::WrongAudience),
        (json!({"exp": NOW - 61}), Some("n-1"), TokenError::Expired),
        (json!({"iat": NOW + 120}), Some("n-1"), TokenError::NotYetValid),
        (json!({"nbf": NOW + 120}), Some("n-1"), TokenError::NotYetValid),
        (json!({"nonce": "n-2"}), Some("n-1"), TokenError::WrongNonce),
        (json!({"nonce": null}), Some("n-1"), TokenError::WrongNonce),
        (json!({"sub": ""}), Some("n-1"), TokenError::MissingClaim("sub")),
        (json!({"exp": null}), Some("n-1"), TokenError::MissingClaim("exp")),
        (json!({"exp": "soon"}), Some("n-1"), TokenError::MissingClaim("exp")),
    ];
    for (patch, nonce, want) in cases {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        let t = sign("ES256", Some("ec1"), &c);
        assert_eq!(verify_id_token(&t, &jwks(), &expected(nonce)), Err(want), "patch {patch}");
    }
}

#[test]
fn leeway_and_audience_forms() {
    let mut c = claims();
    c["exp"] = json!(NOW - 30);
    c["aud"] = json!("edge");
    c["azp"] = json!("edge");
    let t = sign("ES256", Some("ec1"), &c);
    assert!(verify_id_token(&t, &jwks(), &expected(Some("n-1"))).is_ok());
}

#[test]
fn structural_garbage_is_malformed() {
    for t in ["", "a", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
        assert!(verify_id_token(t, &jwks(), &expected(None)).is_err(), "{t}");
    }
}

/// An EdDSA token with these header fields, signed with the test key.
fn sign_with_header(extra: &Value, claims: &Value) -> String {
    let mut header = json!({"alg": "EdDSA", "kid": "ed1"});
    for (k, v) in extra.as_object().into_iter().flatten() {
        header[k] = v.clone();
    }
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    format!("{input}.{}", b64url(&ed_key().sign(input.as_bytes()).to_bytes()))
}

#[test]
fn tokens_signed_for_another_purpose_or_wrapped_are_refused() {
    let claims = claims();
    for extra in [
        json!({"typ": "dpop+jwt"}),
        json!({"typ": "logout+jwt"}),
        json!({"typ": "secevent+jwt"}),
        json!({"typ": "JOSE"}),
        json!({"cty": "JWT"}),
        json!({"zip": "DEF"}),
        json!({"crit": ["exp"], "exp": 1}),
    ] {
        let token = sign_with_header(&extra, &claims);
        assert!(verified_claims(&token, &jwks(), None).is_err(), "{extra}");
    }
    for extra in [json!({}), json!({"typ": "JWT"}), json!({"typ": "at+jwt"}), json!({"typ": "application/at+jwt"})] {
        let token = sign_with_header(&extra, &claims);
        assert!(verified_claims(&token, &jwks(), None).is_ok(), "{extra}");
    }
    // The header names its own key: never used, only the JWKS counts.
    let attacker = ed25519_dalek::SigningKey::from_bytes(&[66; 32]);
    let x = b64url(attacker.verifying_key().as_bytes());
    let header = json!({"alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": x}, "jku": "http://127.0.0.1:1/jwks"});
    let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
    let forged = format!("{input}.{}", b64url(&attacker.sign(input.as_bytes()).to_bytes()));
    assert!(verified_claims(&forged, &jwks(), None).is_err());
    // An all-zero ECDSA signature (CVE-2022-21449) never verifies.
    let zero = format!("{}.{}.{}", b64url(br#"{"alg":"ES256","kid":"ec1"}"#), b64url(claims.to_string().as_bytes()), b64url(&[0; 64]));
    assert!(verified_claims(&zero, &jwks(), None).is_err());
    // A duplicate header field is not read either way.
    let dup = format!("{}.{}.AA", b64url(br#"{"alg":"none","alg":"EdDSA","kid":"ed1"}"#), b64url(claims.to_string().as_bytes()));
    assert_eq!(verified_claims(&dup, &jwks(), None).err(), Some(TokenError::Malformed));
}
