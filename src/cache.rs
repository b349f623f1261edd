//! A per-worker cache of opened sessions keyed by the exact cookie value, so
//! the common request costs one map lookup instead of an AEAD open.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::revocation::SessionKeys;
use crate::session::Session;

/// An opened session and the header values derived from it, computed once
/// and shared, so that a cached request allocates nothing for them.
#[derive(Debug)]
pub struct OpenedSession {
    /// The session.
    pub session: Session,
    /// When the sealed cookie expires (unix seconds).
    pub expires_at: u64,
    /// Header value for the user.
    pub user: Arc<str>,
    /// Header value for the email.
    pub email: Option<Arc<str>>,
    /// `groups` comma-joined; `None` without groups.
    pub groups: Option<Arc<str>>,
    /// Header value for the display name.
    pub name: Option<Arc<str>>,
    /// What revocations of this session would name.
    pub revocation: SessionKeys,
}

/// Groups comma-joined for the upstream. A group whose name holds a comma is
/// left out: an upstream splitting the header would read it as several groups
/// (`users,admins` as `admins`). Policy still matches it by its exact name.
fn groups_header(groups: &[String]) -> Option<Arc<str>> {
    let joined = groups.iter().filter(|g| !g.contains(',')).map(String::as_str).collect::<Vec<_>>().join(",");
    (!joined.is_empty()).then(|| joined.into())
}

impl OpenedSession {
    /// Derives the header values from a session.
    pub fn new(session: Session, expires_at: u64) -> OpenedSession {
        OpenedSession {
            user: session.user.as_str().into(),
            email: session.email.as_deref().map(Arc::from),
            groups: groups_header(&session.groups),
            name: session.name.as_deref().map(Arc::from),
            revocation: SessionKeys::of(&session),
            session,
            expires_at,
        }
    }
}

/// FxHash (rustc's hasher): several times cheaper than SipHash on a 300-byte
/// cookie in wasm. Flooding is not a concern: only cookies that opened, that
/// is, sealed by us, are ever inserted, and the map is bounded.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Bounded map of cookie value → opened session.
pub struct SessionCache {
    map: HashMap<String, Arc<OpenedSession>, BuildHasherDefault<FxHasher>>,
    capacity: usize,
}

impl SessionCache {
    /// A cache holding at most `capacity` sessions.
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache { map: HashMap::default(), capacity }
    }

    /// The cached session for this exact cookie value, if still valid.
    pub fn get(&mut self, cookie: &str, now: u64) -> Option<Arc<OpenedSession>> {
        let hit = self.map.get(cookie)?;
        if now >= hit.expires_at {
            self.map.remove(cookie);
            return None;
        }
        Some(Arc::clone(hit))
    }

    /// Remembers an opened session. When full, expired entries go first; if
    /// none, the cache starts over (cheap, and only costs re-opening).
    pub fn insert(&mut self, cookie: &str, opened: Arc<OpenedSession>, now: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity {
            self.map.retain(|_, v| v.expires_at > now);
            if self.map.len() >= self.capacity {
                self.map.clear();
            }
        }
        self.map.insert(cookie.to_owned(), opened);
    }

    /// Forgets a cookie value (sign-out).
    pub fn remove(&mut self, cookie: &str) {
        self.map.remove(cookie);
    }

    /// Number of cached sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
