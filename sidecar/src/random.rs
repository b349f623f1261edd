//! The OS random source. (The sidecar's shared records are the core's
//! reference store, `oidc_edge::MemoryStore`.)

use oidc_edge::SecureRandom;

/// The kernel's CSPRNG.
pub struct OsRandom;

impl SecureRandom for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        if getrandom::getrandom(buf).is_err() {
            // No randomness means no safe state, nonce or PKCE verifier: stop
            // rather than mint guessable ones.
            crate::log::event(crate::log::Level::Warn, "the OS random source failed; stopping", &[]);
            std::process::abort();
        }
    }
}
