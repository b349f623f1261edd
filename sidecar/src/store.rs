//! The sidecar's process-wide state for the engine: short-lived shared
//! records (single-use `state`, refresh locks, successors) and the OS random
//! source.

use std::collections::{BTreeSet, HashMap};

use oidc_edge::{SecureRandom, SharedState};

/// Records with an expiry, bounded: when full, the record closest to expiry
/// goes first, so a flood of forged callbacks can never make claims fail
/// (which would refuse every refresh lock).
pub struct Records {
    map: HashMap<Vec<u8>, (u64, Vec<u8>)>,
    by_expiry: BTreeSet<(u64, Vec<u8>)>,
    capacity: usize,
}

impl Records {
    pub fn new(capacity: usize) -> Records {
        Records { map: HashMap::new(), by_expiry: BTreeSet::new(), capacity: capacity.max(1) }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn prune(&mut self, now: u64) {
        while let Some((until, key)) = self.by_expiry.first().cloned() {
            if until > now {
                break;
            }
            self.by_expiry.remove(&(until, key.clone()));
            self.map.remove(&key);
        }
    }

    fn insert(&mut self, key: &[u8], value: &[u8], until: u64) {
        if let Some((old_until, _)) = self.map.remove(key) {
            self.by_expiry.remove(&(old_until, key.to_vec()));
        }
        if self.map.len() >= self.capacity {
            if let Some(first) = self.by_expiry.pop_first() {
                self.map.remove(&first.1);
            }
        }
        self.by_expiry.insert((until, key.to_vec()));
        self.map.insert(key.to_vec(), (until, value.to_vec()));
    }
}

impl SharedState for Records {
    fn claim(&mut self, key: &[u8], until: u64, now: u64) -> bool {
        self.prune(now);
        if self.map.contains_key(key) {
            return false;
        }
        self.insert(key, &[], until);
        true
    }

    fn get(&mut self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        self.map.get(key).filter(|(until, _)| *until > now).map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: &[u8], value: &[u8], until: u64, now: u64) -> bool {
        self.prune(now);
        self.insert(key, value, until);
        true
    }
}

/// The engine's shared state: single-use login `state` claims in a pool of
/// their own, so that a flood of forged callbacks (each claiming a state)
/// can only evict other states, never a refresh lock, a successor record or
/// the JWKS refetch cooldown.
pub struct SharedRecords {
    states: Records,
    others: Records,
}

impl SharedRecords {
    pub fn new(capacity_each: usize) -> SharedRecords {
        SharedRecords { states: Records::new(capacity_each), others: Records::new(capacity_each) }
    }

    fn pool(&mut self, key: &[u8]) -> &mut Records {
        if key.starts_with(b"state:") {
            &mut self.states
        } else {
            &mut self.others
        }
    }
}

impl SharedState for SharedRecords {
    fn claim(&mut self, key: &[u8], until: u64, now: u64) -> bool {
        self.pool(key).claim(key, until, now)
    }

    fn get(&mut self, key: &[u8], now: u64) -> Option<Vec<u8>> {
        self.pool(key).get(key, now)
    }

    fn put(&mut self, key: &[u8], value: &[u8], until: u64, now: u64) -> bool {
        self.pool(key).put(key, value, until, now)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_single_use_until_they_expire() {
        let mut r = Records::new(10);
        assert!(r.claim(b"state:a", 100, 10));
        assert!(!r.claim(b"state:a", 100, 50));
        assert!(r.claim(b"state:a", 200, 100), "expired claims can be made again");
        assert!(r.put(b"successor:x", b"ok:cookie", 150, 100));
        assert_eq!(r.get(b"successor:x", 149), Some(b"ok:cookie".to_vec()));
        assert_eq!(r.get(b"successor:x", 150), None);
    }

    #[test]
    fn a_flood_of_login_states_never_evicts_a_refresh_lock() {
        let mut r = SharedRecords::new(4);
        assert!(r.claim(b"refresh-lock:a", 10, 0));
        for i in 0..100u32 {
            assert!(r.claim(format!("state:{i}").as_bytes(), 600, 0));
        }
        assert!(!r.claim(b"refresh-lock:a", 10, 1), "the lock is still held");
    }

    #[test]
    fn a_full_store_evicts_the_record_closest_to_expiry() {
        let mut r = Records::new(3);
        assert!(r.claim(b"a", 300, 0));
        assert!(r.claim(b"b", 100, 0));
        assert!(r.claim(b"c", 200, 0));
        assert!(r.claim(b"lock", 400, 0), "a full store still takes claims");
        assert_eq!(r.len(), 3);
        assert!(r.claim(b"b", 500, 0), "the soonest-expiring record was the one evicted");
        assert!(!r.claim(b"lock", 400, 0));
        assert!(!r.claim(b"a", 400, 0) || !r.claim(b"c", 400, 0));
    }
}
