//! Short-lived records every worker (and, later, every instance) must agree
//! on: what they are ([`RecordKey`]), which pool each lives in ([`Pool`]),
//! the interface hosts implement ([`SharedState`]) and a reference in-memory
//! implementation ([`MemoryStore`]) that the sidecar runs and the tests use.
//!
//! Pools are bounded separately, so a flood of one kind of record can only
//! evict records of that kind: forged callbacks (each claiming a login state)
//! never push out a refresh lock, which would let two refreshes of one
//! session reach a provider that revokes the whole chain on a reused token.

use std::collections::{BTreeSet, HashMap};

/// A bounded group of records with its own capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Single-use login `state` claims: anyone can create them by starting
    /// or forging logins.
    LoginStates,
    /// Records about sessions and the provider: refresh locks, successors,
    /// the JWKS refetch cooldown.
    Sessions,
}

impl Pool {
    /// Every pool, for hosts that set them up front.
    pub const ALL: [Pool; 2] = [Pool::LoginStates, Pool::Sessions];

    /// A short name for host-side keys (shared-data entry names).
    pub fn name(self) -> &'static str {
        match self {
            Pool::LoginStates => "login",
            Pool::Sessions => "session",
        }
    }
}

/// What a shared record is for. Identifiers are keyed digests (of a `state`,
/// of a refresh token), never the values themselves: a reader of the store
/// learns nothing it could replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKey {
    /// A login's `state`, claimed once at its callback.
    LoginState([u8; 16]),
    /// Held while one worker refreshes a session generation.
    RefreshLock([u8; 16]),
    /// What a refreshed session generation became: `ok:` and the new
    /// cookie, or `dead`.
    Successor([u8; 16]),
    /// The pause between JWKS refetches triggered by an unknown `kid`.
    JwksCooldown,
    /// A back-channel logout token's `jti`, claimed once.
    LogoutToken([u8; 16]),
}

impl RecordKey {
    /// The pool the record lives in.
    pub fn pool(&self) -> Pool {
        match self {
            RecordKey::LoginState(_) | RecordKey::LogoutToken(_) => Pool::LoginStates,
            RecordKey::RefreshLock(_) | RecordKey::Successor(_) | RecordKey::JwksCooldown => Pool::Sessions,
        }
    }

    /// A stable byte form (a kind tag, then the digest) for hosts that key
    /// records by bytes.
    pub fn to_bytes(&self) -> [u8; 17] {
        let (tag, digest) = match self {
            RecordKey::LoginState(d) => (1, *d),
            RecordKey::RefreshLock(d) => (2, *d),
            RecordKey::Successor(d) => (3, *d),
            RecordKey::JwksCooldown => (4, [0; 16]),
            RecordKey::LogoutToken(d) => (5, *d),
        };
        let mut out = [0u8; 17];
        out[0] = tag;
        out[1..].copy_from_slice(&digest);
        out
    }
}

/// Short-lived records shared by every worker of the host.
pub trait SharedState {
    /// Claims `key` until `until` (unix seconds). Returns `true` if nobody
    /// holds an unexpired claim on it, `false` otherwise. Hosts that cannot
    /// record the claim must return `false` (fail closed).
    fn claim(&mut self, key: &RecordKey, until: u64, now: u64) -> bool;
    /// The unexpired value stored under `key`.
    fn get(&mut self, key: &RecordKey, now: u64) -> Option<Vec<u8>>;
    /// Stores `value` under `key` until `until`; `false` if it could not.
    fn put(&mut self, key: &RecordKey, value: &[u8], until: u64, now: u64) -> bool;
}

/// A store operation whose answer the engine waits for. A host with a
/// synchronous store answers it at once ([`StoreOp::perform`]); a host with a
/// networked store performs it and hands the answer back later, as it does
/// with HTTP calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Read the unexpired value under the key.
    Read(RecordKey),
    /// Claim the key until `until` unless someone holds an unexpired claim.
    Claim {
        /// The record.
        key: RecordKey,
        /// Unix seconds.
        until: u64,
    },
}

/// The answer to a [`StoreOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAnswer {
    /// What [`StoreOp::Read`] found.
    Read(Option<Vec<u8>>),
    /// Whether [`StoreOp::Claim`] got the claim.
    Claimed(bool),
    /// The store did not answer (unreachable, timed out). The engine goes on
    /// without it where that is safe (a login: the provider's code is single
    /// use anyway) and postpones what is not (a refresh).
    Unavailable,
}

/// A record to store; nothing waits for it. `Debug` omits the value (a
/// successor record holds a sealed session).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreWrite {
    /// The record.
    pub key: RecordKey,
    /// Its value.
    pub value: Vec<u8>,
    /// Unix seconds.
    pub until: u64,
}

impl std::fmt::Debug for StoreWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWrite").field("key", &self.key).field("until", &self.until).finish_non_exhaustive()
    }
}

impl StoreOp {
    /// Performs the operation on a synchronous store.
    pub fn perform(&self, store: &mut dyn SharedState, now: u64) -> StoreAnswer {
        match self {
            StoreOp::Read(key) => StoreAnswer::Read(store.get(key, now)),
            StoreOp::Claim { key, until } => StoreAnswer::Claimed(store.claim(key, *until, now)),
        }
    }
}

impl StoreWrite {
    /// Performs the write on a synchronous store.
    pub fn perform(&self, store: &mut dyn SharedState, now: u64) -> bool {
        store.put(&self.key, &self.value, self.until, now)
    }
}

/// One pool's records, bounded: when full, the record closest to expiry
/// goes first, so a full pool still takes new claims.
struct Records {
    map: HashMap<[u8; 17], (u64, Vec<u8>)>,
    by_expiry: BTreeSet<(u64, [u8; 17])>,
    capacity: usize,
}

impl Records {
    fn new(capacity: usize) -> Records {
        Records { map: HashMap::new(), by_expiry: BTreeSet::new(), capacity: capacity.max(1) }
    }

    fn prune(&mut self, now: u64) {
        while let Some(&(until, key)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            self.by_expiry.pop_first();
            self.map.remove(&key);
        }
    }

    fn insert(&mut self, key: [u8; 17], value: &[u8], until: u64) {
        if let Some((old_until, _)) = self.map.remove(&key) {
            self.by_expiry.remove(&(old_until, key));
        }
        if self.map.len() >= self.capacity {
            if let Some((_, evicted)) = self.by_expiry.pop_first() {
                self.map.remove(&evicted);
            }
        }
        self.by_expiry.insert((until, key));
        self.map.insert(key, (until, value.to_vec()));
    }
}

/// The in-memory store: one process's records, one bounded map per pool.
pub struct MemoryStore {
    login_states: Records,
    sessions: Records,
}

impl MemoryStore {
    /// A store holding at most `capacity_each` records in each pool.
    pub fn new(capacity_each: usize) -> MemoryStore {
        MemoryStore { login_states: Records::new(capacity_each), sessions: Records::new(capacity_each) }
    }

    fn pool(&mut self, key: &RecordKey) -> &mut Records {
        match key.pool() {
            Pool::LoginStates => &mut self.login_states,
            Pool::Sessions => &mut self.sessions,
        }
    }

    /// Records held in `pool`, expired ones included until the next write.
    pub fn len(&self, pool: Pool) -> usize {
        match pool {
            Pool::LoginStates => self.login_states.map.len(),
            Pool::Sessions => self.sessions.map.len(),
        }
    }
}

impl SharedState for MemoryStore {
    fn claim(&mut self, key: &RecordKey, until: u64, now: u64) -> bool {
        let pool = self.pool(key);
        pool.prune(now);
        let key = key.to_bytes();
        if pool.map.contains_key(&key) {
            return false;
        }
        pool.insert(key, &[], until);
        true
    }

    fn get(&mut self, key: &RecordKey, now: u64) -> Option<Vec<u8>> {
        self.pool(key).map.get(&key.to_bytes()).filter(|(until, _)| *until > now).map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: &RecordKey, value: &[u8], until: u64, now: u64) -> bool {
        let pool = self.pool(key);
        pool.prune(now);
        pool.insert(key.to_bytes(), value, until);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(i: u8) -> RecordKey {
        RecordKey::LoginState([i; 16])
    }

    #[test]
    fn claims_are_single_use_until_they_expire() {
        let mut s = MemoryStore::new(10);
        assert!(s.claim(&state(1), 100, 10));
        assert!(!s.claim(&state(1), 100, 50));
        assert!(s.claim(&state(1), 200, 100), "expired claims can be made again");
        let successor = RecordKey::Successor([2; 16]);
        assert!(s.put(&successor, b"ok:cookie", 150, 100));
        assert_eq!(s.get(&successor, 149), Some(b"ok:cookie".to_vec()));
        assert_eq!(s.get(&successor, 150), None);
    }

    #[test]
    fn a_flood_of_login_states_never_evicts_a_refresh_lock() {
        let mut s = MemoryStore::new(4);
        let lock = RecordKey::RefreshLock([9; 16]);
        assert!(s.claim(&lock, 10, 0));
        for i in 0..100u8 {
            assert!(s.claim(&state(i), 600, 0));
        }
        assert_eq!(s.len(Pool::LoginStates), 4);
        assert!(!s.claim(&lock, 10, 1), "the lock is still held");
    }

    #[test]
    fn a_full_pool_evicts_the_record_closest_to_expiry() {
        let mut s = MemoryStore::new(3);
        assert!(s.claim(&state(1), 300, 0));
        assert!(s.claim(&state(2), 100, 0));
        assert!(s.claim(&state(3), 200, 0));
        assert!(s.claim(&state(4), 400, 0), "a full pool still takes claims");
        assert_eq!(s.len(Pool::LoginStates), 3);
        assert!(s.claim(&state(2), 500, 0), "the soonest-expiring record was the one evicted");
        assert!(!s.claim(&state(4), 400, 0));
    }

    #[test]
    fn keys_of_different_kinds_never_collide() {
        let d = [7u8; 16];
        let all = [RecordKey::LoginState(d), RecordKey::RefreshLock(d), RecordKey::Successor(d), RecordKey::JwksCooldown];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.to_bytes(), b.to_bytes());
            }
        }
    }
}
