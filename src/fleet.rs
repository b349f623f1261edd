//! Filters in a fleet. A proxy-wasm filter cannot reach Redis, so with
//! `fleet.coordinator` set it hands what must be fleet-wide to a sidecar
//! over HTTP callouts: the refresh of a session (the sidecar holds the
//! fleet's lock and successor record, and answers with the new cookie or
//! "session ended"), its sign-outs, and a short poll for the revocations
//! made anywhere else.
//!
//! The wire format lives here, on both sides of the call: the filter builds
//! the calls and reads the answers, the sidecar reads the calls and writes
//! the answers. Calls carry a key derived from the session secret, which
//! both sides share and nobody else has.

use std::collections::HashSet;

use crate::http::{HttpCall, HttpResponse};
use crate::revocation::{Revocation, Revoked, RECORD};
use crate::seal::Sealer;

/// The sidecar's endpoint that refreshes a session for a filter.
pub const REFRESH_PATH: &str = "/oauth2/fleet/refresh";
/// The sidecar's endpoint that takes (POST) and lists (GET) revocations.
pub const REVOCATIONS_PATH: &str = "/oauth2/fleet/revocations";
/// The header that carries the fleet key.
pub const KEY_HEADER: &str = "x-oidc-edge-fleet";

/// How often a filter instance asks for revocations (seconds).
pub const POLL_INTERVAL: u64 = 1;

/// A refresh the coordinator made or knew: `ok:` and the new sealed cookie.
pub const REFRESHED: &[u8] = b"ok:";
/// The provider has ended the session (or it was revoked).
pub const ENDED: &[u8] = b"dead";

/// The key a filter shows the coordinator: hex, derived from the session secret.
pub fn key(sealer: &Sealer) -> String {
    hex(&sealer.derive(b"oidc-edge/v1/fleet-key")[..16])
}

/// Whether `sent` is the fleet key (constant time).
pub fn key_matches(sealer: &Sealer, sent: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = key(sealer);
    sent.len() == expected.len() && bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where and how a filter reaches its coordinator.
#[derive(Clone)]
pub struct Coordinator {
    /// Callout target: an Envoy cluster, or `host:port` for nginx.
    pub target: String,
    key: String,
    /// A refresh waits for the coordinator's token call and a userinfo call.
    refresh_timeout_ms: u32,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator at `target`, for a provider answering within `provider_timeout_ms`.
    pub fn new(target: String, sealer: &Sealer, provider_timeout_ms: u32) -> Coordinator {
        Coordinator {
            target,
            key: key(sealer),
            refresh_timeout_ms: provider_timeout_ms.saturating_mul(2).saturating_add(1000),
        }
    }

    fn call(&self, method: &'static str, path: String, body: Vec<u8>, timeout_ms: u32) -> HttpCall {
        let mut headers = vec![(KEY_HEADER.to_owned(), self.key.clone())];
        if !body.is_empty() {
            headers.push(("content-type".to_owned(), "application/octet-stream".to_owned()));
        }
        HttpCall {
            target: self.target.clone(),
            method,
            scheme: "http",
            authority: self.target.clone(),
            path,
            headers,
            body,
            timeout_ms,
        }
    }

    /// Asks the coordinator to refresh the session sealed in `cookie`.
    pub fn refresh_call(&self, cookie: &str) -> HttpCall {
        self.call("POST", REFRESH_PATH.to_owned(), cookie.as_bytes().to_vec(), self.refresh_timeout_ms)
    }

    /// Hands sign-outs made here to the fleet.
    pub fn revoke_call(&self, revoked: &[Revocation]) -> HttpCall {
        let mut body = Vec::with_capacity(revoked.len() * RECORD);
        for r in revoked {
            r.encode(&mut body);
        }
        self.call("POST", REVOCATIONS_PATH.to_owned(), body, 2000)
    }

    /// Asks for the revocations after `cursor` (empty: all of them).
    pub fn poll_call(&self, cursor: &str) -> HttpCall {
        let path = if cursor.is_empty() { REVOCATIONS_PATH.to_owned() } else { format!("{REVOCATIONS_PATH}?after={cursor}") };
        self.call("GET", path, Vec::new(), 2000)
    }
}

/// What the coordinator answered a refresh with.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshAnswer<'a> {
    /// The new sealed cookie.
    Refreshed(&'a str),
    /// The session is over.
    Ended,
    /// Another instance is refreshing it: keep the session, take the
    /// successor later.
    Busy,
    /// No answer, or "not now" (the provider or the store is unreachable):
    /// keep the session, try later.
    Later,
    /// The coordinator could not open the cookie: it is configured with
    /// another session secret. Keep the session.
    Misconfigured,
}

/// Reads the coordinator's answer to a refresh.
pub fn refresh_answer(resp: &HttpResponse) -> RefreshAnswer<'_> {
    match resp.status {
        200 => match resp.body.strip_prefix(REFRESHED).and_then(|c| std::str::from_utf8(c).ok()) {
            Some(cookie) => RefreshAnswer::Refreshed(cookie),
            None if resp.body == ENDED => RefreshAnswer::Ended,
            None => RefreshAnswer::Later,
        },
        409 => RefreshAnswer::Busy,
        422 => RefreshAnswer::Misconfigured,
        _ => RefreshAnswer::Later,
    }
}

/// The answer to a poll: the cursor to send next time, a newline, then the
/// revocations (binary records).
pub fn encode_poll(cursor: &str, revoked: &[Revocation]) -> Vec<u8> {
    let mut body = Vec::with_capacity(cursor.len() + 1 + revoked.len() * RECORD);
    body.extend_from_slice(cursor.as_bytes());
    body.push(b'\n');
    for r in revoked {
        r.encode(&mut body);
    }
    body
}

/// Reads a poll answer; `None` for anything but a well-formed 200.
pub fn decode_poll(resp: &HttpResponse) -> Option<(String, Vec<Revocation>)> {
    if resp.status != 200 {
        return None;
    }
    let split = resp.body.iter().position(|b| *b == b'\n')?;
    let cursor = std::str::from_utf8(&resp.body[..split]).ok().filter(|c| is_cursor(c))?;
    let records = &resp.body[split + 1..];
    records.len().is_multiple_of(RECORD).then(|| (cursor.to_owned(), Revocation::decode_all(records)))
}

fn is_cursor(c: &str) -> bool {
    c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
}

/// When a filter instance polls next and from where, shared by its workers
/// (one poll per instance and interval).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollSchedule {
    /// Unix seconds.
    pub next_at: u64,
    /// The coordinator's cursor.
    pub cursor: String,
}

impl PollSchedule {
    /// Whether a poll is due.
    pub fn due(&self, now: u64) -> bool {
        now >= self.next_at
    }

    /// Claimed by a request for the time its poll may take.
    pub fn leased(&self, now: u64) -> PollSchedule {
        PollSchedule { next_at: now + 5, cursor: self.cursor.clone() }
    }

    /// After a poll: its cursor if it answered, the old one if not.
    pub fn after(&self, cursor: Option<String>, now: u64) -> PollSchedule {
        PollSchedule { next_at: now + POLL_INTERVAL, cursor: cursor.unwrap_or_else(|| self.cursor.clone()) }
    }

    /// Byte form for shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.next_at.to_le_bytes().to_vec();
        out.extend_from_slice(self.cursor.as_bytes());
        out
    }

    /// Reads [`PollSchedule::encode`]; anything else is a fresh schedule.
    pub fn decode(bytes: &[u8]) -> PollSchedule {
        let Some((at, cursor)) = bytes.split_first_chunk::<8>() else { return PollSchedule::default() };
        match std::str::from_utf8(cursor) {
            Ok(c) if is_cursor(c) => PollSchedule { next_at: u64::from_le_bytes(*at), cursor: c.to_owned() },
            _ => PollSchedule::default(),
        }
    }
}

/// The revocations a coordinator knows, in the order it learned them, for
/// filters that poll. A cursor is `{epoch}.{position}`: a filter whose
/// cursor names another epoch (this coordinator restarted, or another one
/// behind the same address answered) gets every live revocation again,
/// which it already ignores if known.
pub struct RevocationLog {
    epoch: String,
    /// Position of `entries[0]`.
    start: u64,
    entries: Vec<Revocation>,
    known: HashSet<Revoked>,
}

impl RevocationLog {
    /// An empty log; `epoch` tells this log from others (random, per process).
    pub fn new(epoch: u64) -> RevocationLog {
        RevocationLog { epoch: format!("{epoch:x}"), start: 0, entries: Vec::new(), known: HashSet::new() }
    }

    /// Adds the revocations not known yet.
    pub fn add(&mut self, revoked: &[Revocation], now: u64) {
        for r in revoked {
            if r.until > now && self.known.insert(r.revoked) {
                self.entries.push(*r);
            }
        }
        // Forget expired entries once they are a good part of the log:
        // positions stay stable, so cursors of the same epoch stay valid.
        let expired = self.entries.iter().take_while(|r| r.until <= now).count();
        if expired > 0 && expired * 4 >= self.entries.len() {
            for r in self.entries.drain(..expired) {
                self.known.remove(&r.revoked);
            }
            self.start += expired as u64;
        }
    }

    /// The live revocations after `cursor`, and the cursor for next time.
    pub fn after(&self, cursor: &str, now: u64) -> (String, Vec<Revocation>) {
        let end = self.start + self.entries.len() as u64;
        let from = match cursor.split_once('.') {
            Some((epoch, pos)) if epoch == self.epoch => pos.parse::<u64>().ok().filter(|p| *p <= end),
            _ => None,
        }
        .map_or(0, |p| p.saturating_sub(self.start) as usize);
        let live = self.entries[from.min(self.entries.len())..].iter().filter(|r| r.until > now).copied().collect();
        (format!("{}.{end}", self.epoch), live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: u8, until: u64) -> Revocation {
        Revocation { revoked: Revoked::Session([n; 16]), until }
    }

    #[test]
    fn a_poll_gets_what_came_after_its_cursor_and_everything_from_another_epoch() {
        let mut log = RevocationLog::new(7);
        log.add(&[rev(1, 100), rev(2, 100)], 10);
        let (c1, all) = log.after("", 10);
        assert_eq!(all, vec![rev(1, 100), rev(2, 100)]);
        log.add(&[rev(2, 100), rev(3, 100)], 11);
        let (c2, new) = log.after(&c1, 11);
        assert_eq!(new, vec![rev(3, 100)], "known ones are not repeated");
        assert_eq!(log.after(&c2, 11).1, vec![]);
        assert_eq!(log.after("8.2", 11).1.len(), 3, "another epoch: everything");
        assert_eq!(log.after("7.999", 11).1.len(), 3, "a position from the future: everything");
    }

    #[test]
    fn expired_revocations_leave_the_log_and_cursors_stay_valid() {
        let mut log = RevocationLog::new(1);
        log.add(&[rev(1, 20), rev(2, 20), rev(3, 100)], 10);
        let (cursor, _) = log.after("", 10);
        log.add(&[rev(4, 100)], 30);
        assert_eq!(log.entries.len(), 2, "the expired two are gone");
        assert_eq!(log.after(&cursor, 30).1, vec![rev(4, 100)]);
        assert_eq!(log.after("", 30).1, vec![rev(3, 100), rev(4, 100)]);
    }

    #[test]
    fn poll_answers_round_trip_and_junk_is_refused() {
        let body = encode_poll("a1.3", &[rev(9, 50)]);
        let ok = HttpResponse { status: 200, body: body.clone() };
        assert_eq!(decode_poll(&ok), Some(("a1.3".to_owned(), vec![rev(9, 50)])));
        assert_eq!(decode_poll(&HttpResponse { status: 503, body }), None);
        assert_eq!(decode_poll(&HttpResponse { status: 200, body: b"x y\n".to_vec() }), None);
        assert_eq!(decode_poll(&HttpResponse { status: 200, body: b"a.1\nshort".to_vec() }), None);
    }

    #[test]
    fn refresh_answers() {
        let r = |status, body: &[u8]| HttpResponse { status, body: body.to_vec() };
        assert_eq!(refresh_answer(&r(200, b"ok:abc")), RefreshAnswer::Refreshed("abc"));
        assert_eq!(refresh_answer(&r(200, b"dead")), RefreshAnswer::Ended);
        assert_eq!(refresh_answer(&r(503, b"dead")), RefreshAnswer::Later);
        assert_eq!(refresh_answer(&r(0, b"")), RefreshAnswer::Later);
        assert_eq!(refresh_answer(&r(422, b"")), RefreshAnswer::Misconfigured);
    }

    #[test]
    fn the_schedule_round_trips() {
        let s = PollSchedule { next_at: 42, cursor: "ab.7".into() };
        assert_eq!(PollSchedule::decode(&s.encode()), s);
        assert_eq!(PollSchedule::decode(b"short"), PollSchedule::default());
        assert!(s.due(42) && !s.due(41));
        assert_eq!(s.after(None, 50), PollSchedule { next_at: 51, cursor: "ab.7".into() });
    }

    #[test]
    fn the_key_is_derived_and_compared_exactly() {
        let sealer = Sealer::new(&[[7u8; 32].to_vec()]);
        let k = key(&sealer);
        assert_eq!(k.len(), 32);
        assert!(key_matches(&sealer, &k));
        assert!(!key_matches(&sealer, &k[..31]) && !key_matches(&sealer, ""));
        assert!(!key_matches(&Sealer::new(&[[8u8; 32].to_vec()]), &k));
    }
}
