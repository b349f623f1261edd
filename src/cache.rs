//! A per-worker cache of opened sessions keyed by the exact cookie value, so
//! the common request costs one map lookup instead of an AEAD open.

use std::collections::HashMap;
use std::sync::Arc;

use crate::session::Session;

/// An opened session and the header values derived from it.
#[derive(Debug)]
pub struct OpenedSession {
    /// The session.
    pub session: Session,
    /// `groups` comma-joined, computed once.
    pub groups_joined: String,
    /// When the sealed cookie expires (unix seconds).
    pub expires_at: u64,
}

/// Bounded map of cookie value → opened session.
pub struct SessionCache {
    map: HashMap<String, Arc<OpenedSession>>,
    capacity: usize,
}

impl SessionCache {
    /// A cache holding at most `capacity` sessions.
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache { map: HashMap::new(), capacity }
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
