//! Sessions ended on the server. Sign-out revokes the session it ends, so a
//! copy of the cookie replayed afterwards is refused; back-channel logout
//! revokes by the provider's session id or by subject. Each worker keeps the
//! revocations in memory (the hot path is a map lookup, only when any
//! exist); hosts spread them to their other workers and instances.
//!
//! Keys are keyed digests, never a session's identifiers themselves.

use std::collections::HashMap;

use crate::seal::hmac_sha256;

/// What is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// One session (by its id): sign-out.
    Session([u8; 16]),
    /// Every session of the provider session (`sid`).
    IdpSession([u8; 16]),
    /// Every session of a subject that started at or before `before`.
    Subject {
        /// Digest of the subject.
        key: [u8; 16],
        /// Unix seconds.
        before: u64,
    },
}

/// A revocation and how long it must be remembered: until every session it
/// can match has expired anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// What.
    pub revoked: Revoked,
    /// Unix seconds.
    pub until: u64,
}

fn digest(label: &[u8], value: &[u8]) -> [u8; 16] {
    let mac = hmac_sha256(b"oidc-edge/v1/revocation", &[label, value]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac[..16]);
    out
}

/// The revocation keys of one session, computed once when its cookie is
/// opened (and cached with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKeys {
    session: [u8; 16],
    subject: [u8; 16],
    idp_session: Option<[u8; 16]>,
}

impl SessionKeys {
    /// The keys of a session.
    pub fn of(session: &crate::session::Session) -> SessionKeys {
        SessionKeys {
            session: digest(b"session", &session.id),
            subject: digest(b"subject", session.sub.as_bytes()),
            idp_session: session.idp_sid.as_deref().map(|sid| digest(b"idp-session", sid.as_bytes())),
        }
    }
}

impl Revocation {
    /// Revokes one session until it expires (`until`).
    pub fn of_session(keys: &SessionKeys, until: u64) -> Revocation {
        Revocation { revoked: Revoked::Session(keys.session), until }
    }

    /// Revokes every session of a provider session, for `lifetime` seconds.
    pub fn of_idp_session(sid: &str, now: u64, lifetime: u64) -> Revocation {
        Revocation { revoked: Revoked::IdpSession(digest(b"idp-session", sid.as_bytes())), until: now + lifetime }
    }

    /// Revokes every session of `sub` that began at or before `now`.
    pub fn of_subject(sub: &str, now: u64, lifetime: u64) -> Revocation {
        Revocation {
            revoked: Revoked::Subject { key: digest(b"subject", sub.as_bytes()), before: now },
            until: now + lifetime,
        }
    }

    /// `kind (1) | key (16) | before (8) | until (8)`, for hosts that share
    /// revocations as bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, key, before) = match self.revoked {
            Revoked::Session(k) => (1u8, k, 0),
            Revoked::IdpSession(k) => (2, k, 0),
            Revoked::Subject { key, before } => (3, key, before),
        };
        out.push(kind);
        out.extend_from_slice(&key);
        out.extend_from_slice(&before.to_be_bytes());
        out.extend_from_slice(&self.until.to_be_bytes());
    }

    /// Every whole record in `bytes`; a malformed one ends the list.
    pub fn decode_all(bytes: &[u8]) -> Vec<Revocation> {
        bytes.chunks_exact(RECORD).map_while(Revocation::decode).collect()
    }

    fn decode(r: &[u8]) -> Option<Revocation> {
        let key: [u8; 16] = r.get(1..17)?.try_into().ok()?;
        let before = u64::from_be_bytes(r.get(17..25)?.try_into().ok()?);
        let until = u64::from_be_bytes(r.get(25..33)?.try_into().ok()?);
        let revoked = match r.first()? {
            1 => Revoked::Session(key),
            2 => Revoked::IdpSession(key),
            3 => Revoked::Subject { key, before },
            _ => return None,
        };
        Some(Revocation { revoked, until })
    }
}

/// Bytes of one encoded revocation.
pub const RECORD: usize = 33;

/// The revocations a worker knows, bounded.
#[derive(Debug, Default)]
pub struct Revocations {
    sessions: HashMap<[u8; 16], u64>,
    idp_sessions: HashMap<[u8; 16], u64>,
    /// Subject digest → (before, until).
    subjects: HashMap<[u8; 16], (u64, u64)>,
    /// Since when this worker knows every revocation: `None` where they
    /// outlive it (a shared store), else when the memory that holds them began.
    known_since: Option<u64>,
}

/// Revocations kept per kind at most: enough for every sign-out of a large
/// site within a session lifetime; past it, the oldest go first.
const CAPACITY: usize = 100_000;

impl Revocations {
    /// Whether the session with these keys, begun at `login_at`, is
    /// revoked. Free while nothing is.
    pub fn revokes(&self, keys: &SessionKeys, login_at: u64, now: u64) -> bool {
        if self.is_empty() {
            return false;
        }
        let live = |until: Option<&u64>| until.is_some_and(|&u| u > now);
        live(self.sessions.get(&keys.session))
            || keys.idp_session.is_some_and(|k| live(self.idp_sessions.get(&k)))
            || self.subjects.get(&keys.subject).is_some_and(|&(before, until)| until > now && login_at <= before)
    }

    /// Since when every revocation is known: a session the provider last
    /// vouched for before then may have been signed out in a memory that is
    /// gone, and is checked with the provider again before it is served.
    pub fn known_since(&self) -> Option<u64> {
        self.known_since
    }

    /// Says that revocations made before `t` may be unknown here (this
    /// memory began at `t`).
    pub fn forgotten_before(&mut self, t: u64) {
        self.known_since = Some(t);
    }

    /// Whether none are known.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.idp_sessions.is_empty() && self.subjects.is_empty()
    }

    /// Learns a revocation (from this worker or another).
    pub fn add(&mut self, r: &Revocation, now: u64) {
        if r.until <= now {
            return;
        }
        match r.revoked {
            Revoked::Session(k) => insert(&mut self.sessions, k, r.until, now),
            Revoked::IdpSession(k) => insert(&mut self.idp_sessions, k, r.until, now),
            Revoked::Subject { key, before } => {
                let entry = self.subjects.entry(key).or_insert((before, r.until));
                *entry = (entry.0.max(before), entry.1.max(r.until));
            }
        }
    }
}

fn insert(map: &mut HashMap<[u8; 16], u64>, key: [u8; 16], until: u64, now: u64) {
    if map.len() >= CAPACITY {
        map.retain(|_, u| *u > now);
        if map.len() >= CAPACITY {
            if let Some(oldest) = map.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
    }
    let entry = map.entry(key).or_insert(until);
    *entry = (*entry).max(until);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;

    /// A session's keys, its login time and its expiry (1000).
    struct Opened(SessionKeys, u64);

    fn opened(id: u8, sub: &str, sid: Option<&str>, login_at: u64) -> Opened {
        let s = Session {
            sub: sub.into(),
            user: sub.into(),
            id: [id; 16],
            idp_sid: sid.map(Into::into),
            login_at,
            ..Session::default()
        };
        Opened(SessionKeys::of(&s), login_at)
    }

    impl Revocations {
        fn refuses(&self, o: &Opened, now: u64) -> bool {
            self.revokes(&o.0, o.1, now)
        }
    }

    fn of_session(o: &Opened) -> Revocation {
        Revocation::of_session(&o.0, 1_000)
    }

    #[test]
    fn a_revoked_session_is_refused_until_it_expires_and_others_are_not() {
        let mut r = Revocations::default();
        let alice = opened(1, "alice", Some("sid-a"), 10);
        let alice_elsewhere = opened(2, "alice", Some("sid-b"), 10);
        assert!(!r.refuses(&alice, 20));
        r.add(&of_session(&alice), 20);
        assert!(r.refuses(&alice, 20));
        assert!(r.refuses(&alice, 999));
        assert!(!r.refuses(&alice, 1_000), "expired anyway: forgotten");
        assert!(!r.refuses(&alice_elsewhere, 20));
    }

    #[test]
    fn back_channel_logout_revokes_by_provider_session_or_by_subject_up_to_its_time() {
        let mut r = Revocations::default();
        let a = opened(1, "alice", Some("sid-a"), 10);
        let b = opened(2, "alice", Some("sid-b"), 10);
        r.add(&Revocation::of_idp_session("sid-a", 20, 3600), 20);
        assert!(r.refuses(&a, 20) && !r.refuses(&b, 20));
        r.add(&Revocation::of_subject("alice", 30, 3600), 30);
        assert!(r.refuses(&b, 30));
        let later_login = opened(3, "alice", Some("sid-c"), 31);
        assert!(!r.refuses(&later_login, 31), "a login after the logout is a new session");
        assert!(!r.refuses(&opened(4, "bob", None, 10), 31));
    }

    #[test]
    fn revocations_round_trip_as_bytes() {
        let list = [of_session(&opened(1, "alice", None, 10)), Revocation::of_idp_session("sid", 5, 60), Revocation::of_subject("bob", 7, 60)];
        let mut bytes = Vec::new();
        for r in &list {
            r.encode(&mut bytes);
        }
        assert_eq!(bytes.len(), 3 * RECORD);
        assert_eq!(Revocation::decode_all(&bytes), list);
        bytes[RECORD] = 9;
        assert_eq!(Revocation::decode_all(&bytes), list[..1]);
    }
}
