//! Deterministic stand-ins for the host: a seeded RNG and in-memory shared state.

use std::collections::HashMap;

use rand_core::{RngCore, SeedableRng};

use crate::{SecureRandom, SharedState};

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

/// Claims in a map, as one process would hold them.
#[derive(Default)]
pub struct MemoryShared(pub HashMap<Vec<u8>, u64>);

impl SharedState for MemoryShared {
    fn claim(&mut self, key: &[u8], until: u64, now: u64) -> bool {
        match self.0.get(key) {
            Some(&held) if held > now => false,
            _ => {
                self.0.insert(key.to_vec(), until);
                true
            }
        }
    }
}
