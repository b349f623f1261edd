//! Sealed values: XChaCha20-Poly1305 boxes bound to a name and carrying their
//! own expiry. Cookies are sealed, not just signed, so that groups, emails and
//! refresh tokens are neither readable nor forgeable by the browser.
//!
//! XChaCha20 rather than AES-GCM: wasm32 has no AES instructions, and a 24-byte
//! random nonce makes nonce reuse a non-issue without a counter shared by workers.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::encoding::{b64url, b64url_decode};
use crate::SecureRandom;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 2 + NONCE_LEN;

/// Why a sealed value was refused. All of them mean "log in again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not base64url, too short, or an unknown format version.
    Malformed,
    /// No configured key opens it: tampered, truncated, sealed for another
    /// cookie name, or sealed with a key that has since been removed.
    Forged,
    /// Authentic, but its embedded expiry has passed.
    Expired,
}

impl Reject {
    /// A short reason for log lines and counters.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Forged => "forged or sealed with an unknown key",
            Reject::Expired => "expired",
        }
    }
}

/// A set of keys: the first seals, every one opens (rotation without logouts).
pub struct Sealer {
    keys: Vec<(u8, XChaCha20Poly1305)>,
    /// Root for other keys derived from the primary secret.
    derivation_root: [u8; 32],
}

impl Sealer {
    /// Builds the sealer from cookie secrets (16, 24 or 32 bytes each, already
    /// validated by the config). Each secret is stretched into a 32-byte key
    /// under a fixed label, so a secret shared with another tool never yields
    /// the same key as that tool.
    pub fn new(secrets: &[Vec<u8>]) -> Sealer {
        let keys = secrets
            .iter()
            .map(|secret| {
                let key = derive_key(secret, b"oidc-edge/v1/cookie-seal");
                let id = derive_key(&key, b"oidc-edge/v1/key-id")[0];
                (id, XChaCha20Poly1305::new((&key).into()))
            })
            .collect();
        let derivation_root = secrets.first().map_or([0u8; 32], |s| derive_key(s, b"oidc-edge/v1/derivation-root"));
        Sealer { keys, derivation_root }
    }

    /// A key for another purpose (`label`), derived from the primary secret:
    /// independent of the sealing keys, stable across restarts.
    pub fn derive(&self, label: &[u8]) -> [u8; 32] {
        derive_key(&self.derivation_root, label)
    }

    /// Seals `payload` for the cookie or field `name`, valid until `expires_at`
    /// (unix seconds).
    pub fn seal(&self, name: &str, expires_at: u64, payload: &[u8], rng: &mut dyn SecureRandom) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce);
        let Some((key_id, cipher)) = self.keys.first() else {
            return String::new();
        };
        let mut plain = Vec::with_capacity(8 + payload.len());
        plain.extend_from_slice(&expires_at.to_be_bytes());
        plain.extend_from_slice(payload);
        let aad = aad(*key_id, name);
        // Encryption cannot fail for in-memory buffers of this size; an empty
        // value would simply fail to open later, which is the safe outcome.
        let sealed = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad }).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(VERSION);
        out.push(*key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        b64url(&out)
    }

    /// Opens a value sealed by [`Sealer::seal`] under the same `name`.
    /// Returns the payload and its expiry.
    pub fn open(&self, name: &str, value: &str, now: u64) -> Result<(Vec<u8>, u64), Reject> {
        let raw = b64url_decode(value).ok_or(Reject::Malformed)?;
        if raw.len() < HEADER_LEN + 16 + 8 || raw[0] != VERSION {
            return Err(Reject::Malformed);
        }
        let key_id = raw[1];
        let nonce = XNonce::from_slice(&raw[2..HEADER_LEN]);
        let aad = aad(key_id, name);
        let body = &raw[HEADER_LEN..];
        // The key id is a hint: try the matching key first, then the others,
        // since a one-byte id can collide.
        let ordered = self.keys.iter().filter(|(id, _)| *id == key_id).chain(self.keys.iter().filter(|(id, _)| *id != key_id));
        for (_, cipher) in ordered {
            if let Ok(plain) = cipher.decrypt(nonce, Payload { msg: body, aad: &aad }) {
                let (expiry, body) = plain.split_at(8);
                let mut be = [0u8; 8];
                be.copy_from_slice(expiry);
                let expires_at = u64::from_be_bytes(be);
                if now >= expires_at {
                    return Err(Reject::Expired);
                }
                return Ok((body.to_vec(), expires_at));
            }
        }
        Err(Reject::Forged)
    }

    /// Whether the value was sealed with a key other than the sealing one
    /// (worth re-sealing when convenient).
    pub fn needs_reseal(&self, value: &str) -> bool {
        match (b64url_decode(value), self.keys.first()) {
            (Some(raw), Some((id, _))) if raw.len() > 1 => raw[1] != *id,
            _ => false,
        }
    }
}

/// The header bytes are authenticated too, so no byte of a sealed value can
/// change without it failing to open.
fn aad(key_id: u8, name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(name.len() + 16);
    aad.extend_from_slice(b"oidc-edge/v1\0");
    aad.push(VERSION);
    aad.push(key_id);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// HMAC-SHA256 as a key-derivation step.
pub(crate) fn derive_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    hmac_sha256(secret, &[label])
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0u8; 32],
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SeededRng;

    fn sealer(secrets: &[&[u8]]) -> Sealer {
        Sealer::new(&secrets.iter().map(|s| s.to_vec()).collect::<Vec<_>>())
    }

    #[test]
    fn round_trip_and_expiry() {
        let s = sealer(&[b"0123456789abcdef0123456789abcdef"]);
        let mut rng = SeededRng::new(1);
        let v = s.seal("sess", 1000, b"hello", &mut rng);
        assert_eq!(s.open("sess", &v, 999), Ok((b"hello".to_vec(), 1000)));
        assert_eq!(s.open("sess", &v, 1000), Err(Reject::Expired));
    }

    #[test]
    fn bound_to_name() {
        let s = sealer(&[b"0123456789abcdef"]);
        let v = s.seal("sess", 1000, b"hello", &mut SeededRng::new(1));
        assert_eq!(s.open("other", &v, 1), Err(Reject::Forged));
    }

    #[test]
    fn any_tampering_is_refused() {
        let s = sealer(&[b"0123456789abcdef"]);
        let v = s.seal("sess", 1000, b"hello world", &mut SeededRng::new(2));
        let raw = b64url_decode(&v).unwrap();
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 0x01;
            let r = s.open("sess", &b64url(&t), 1);
            assert!(r.is_err(), "flipping byte {i} must not open");
        }
        for len in 0..raw.len() {
            assert!(s.open("sess", &b64url(&raw[..len]), 1).is_err());
        }
        assert_eq!(s.open("sess", "not base64!", 1), Err(Reject::Malformed));
    }

    #[test]
    fn rotation_old_key_opens_new_key_seals() {
        let old = sealer(&[b"old-secret-16byt"]);
        let both = sealer(&[b"new-secret-16byt", b"old-secret-16byt"]);
        let only_new = sealer(&[b"new-secret-16byt"]);
        let v_old = old.seal("sess", 1000, b"x", &mut SeededRng::new(3));
        assert!(both.open("sess", &v_old, 1).is_ok());
        assert!(both.needs_reseal(&v_old));
        assert_eq!(only_new.open("sess", &v_old, 1), Err(Reject::Forged));
        let v_new = both.seal("sess", 1000, b"x", &mut SeededRng::new(4));
        assert!(!both.needs_reseal(&v_new));
        assert!(only_new.open("sess", &v_new, 1).is_ok());
        assert_eq!(old.open("sess", &v_new, 1), Err(Reject::Forged));
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            mac.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
