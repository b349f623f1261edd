//! A keyed deterministic random bit generator (HMAC-DRBG style) for hosts
//! whose own random source cannot be trusted: ngx_wasm_module's WASI
//! `random_get` is libc `random()` seeded from pid and time. Output depends on
//! a configured secret, so knowing the host's seed does not reveal `state`,
//! `nonce` or PKCE verifiers.

use crate::seal::hmac_sha256;
use crate::SecureRandom;

/// HMAC-SHA256 generator keyed from a secret and reseeded with whatever
/// entropy the host has (host randomness, time, counters) before each use.
pub struct KeyedDrbg {
    key: [u8; 32],
    counter: u64,
}

impl KeyedDrbg {
    /// A generator keyed by `secret` and an initial `seed`.
    pub fn new(secret: &[u8], seed: &[u8]) -> KeyedDrbg {
        KeyedDrbg { key: hmac_sha256(secret, &[b"oidc-edge/v1/drbg-init", seed]), counter: 0 }
    }

    /// Mixes more input into the key; never reduces unpredictability.
    pub fn reseed(&mut self, input: &[u8]) {
        self.key = hmac_sha256(&self.key, &[b"reseed", input]);
    }
}

impl SecureRandom for KeyedDrbg {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(32) {
            self.counter += 1;
            let block = hmac_sha256(&self.key, &[b"out", &self.counter.to_be_bytes()]);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        // Ratchet: a later compromise of the key does not reveal past output.
        self.key = hmac_sha256(&self.key, &[b"ratchet", &self.counter.to_be_bytes()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_answer() {
        let mut d = KeyedDrbg::new(b"secret-0123456789", b"seed");
        let mut a = [0u8; 40];
        d.fill(&mut a);
        // Pinned output: a change in construction must be deliberate.
        assert_eq!(hex(&a), KAT_1);
        let mut b = [0u8; 8];
        d.fill(&mut b);
        assert_ne!(&a[..8], &b[..]);
    }

    #[test]
    fn same_host_seed_different_secret_differs() {
        let mut x = KeyedDrbg::new(b"secret-one-16byt", b"pid=1 t=5");
        let mut y = KeyedDrbg::new(b"secret-two-16byt", b"pid=1 t=5");
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        x.fill(&mut a);
        y.fill(&mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn reseeding_changes_the_stream() {
        let mut x = KeyedDrbg::new(b"s", b"seed");
        let mut y = KeyedDrbg::new(b"s", b"seed");
        y.reseed(b"worker-2");
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        x.fill(&mut a);
        y.fill(&mut b);
        assert_ne!(a, b);
    }

    // Computed independently with Python's hmac module from the construction above.
    const KAT_1: &str = "9a819aa8a61ab539cb3238d50493eb515ae05f3570e279f7b540889c5422f4392c09e967b2c1c783";
}
