//! Every `Set-Cookie` the gate writes: the session, the login (CSRF) cookie
//! of each login in flight, and the ID token kept for sign-out.

use super::{Engine, Env};
use crate::config::SameSite;
use crate::request::RequestHead;

/// Login states a browser carries at most. Each login in flight has its own
/// cookie, so a browser restoring thirty tabs would send thirty on the
/// callback, past the proxy's header limit (nginx's 8 KB, Caddy's and
/// Traefik's 1 MB but with its own 431 on far less in front of some CDNs):
/// the sign-in would be refused until they expire. With slots, a new login
/// takes a free one, else the oldest, and the Cookie header stays small.
pub const LOGIN_SLOTS: u8 = 4;

/// Marks a `state` that names its slot (`~3…`); `~` is never in base64url,
/// so a state from before slots keeps its own cookie name.
const SLOT_MARK: char = '~';

/// Largest cookie we ever write; browsers drop cookies above ~4096 bytes.
pub const MAX_COOKIE_BYTES: usize = 4000;

impl Engine {
    pub(super) fn cookie_attrs(&self, path: &str, max_age: u64, same_site: SameSite) -> String {
        let s = &self.config.session;
        let mut attrs = format!("; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={}", same_site.as_str());
        if s.secure {
            attrs.push_str("; Secure");
        }
        if let Some(d) = &s.domain {
            attrs.push_str("; Domain=");
            attrs.push_str(d);
        }
        attrs
    }

    pub(super) fn clear_cookie(&self, name: &str, path: &str) -> String {
        format!("{name}={}", self.cookie_attrs(path, 0, self.config.session.same_site))
    }

    /// The cookie that holds the login of `state`, and its path: slot
    /// `n` (`{name}_csrf_{n}`, on `/`, so that a new login sees which slots
    /// are taken), or for a login started before slots, the cookie named by
    /// the state's first 12 characters on the callback path.
    pub(super) fn login_cookie(&self, state: &str) -> Option<(String, &str)> {
        let name = &self.config.session.cookie_name;
        if let Some(rest) = state.strip_prefix(SLOT_MARK) {
            let slot = rest.bytes().next().filter(|b| (b'0'..b'0' + LOGIN_SLOTS).contains(b))?;
            return Some((self.slot_cookie_name(slot), "/"));
        }
        let prefix = state.get(..12)?;
        prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .then(|| (format!("{name}_csrf_{prefix}"), self.config.paths.callback.as_str()))
    }

    /// The cookie of login slot `slot` (an ASCII digit).
    fn slot_cookie_name(&self, slot: u8) -> String {
        format!("{}_csrf_{}", self.config.session.cookie_name, char::from(slot))
    }

    /// The slot a new login takes, as the `state` prefix that names it: a
    /// free slot at random (logins started at once, before any of their
    /// cookies came back, spread over the slots), else the one whose login
    /// expires first. `head` is the request that starts the login, when
    /// there is one (not after a refresh the provider refused).
    pub(super) fn login_slot(&self, head: Option<&RequestHead<'_>>, env: &mut Env<'_>) -> String {
        let s = &self.config.session;
        let mut expiries = [None; LOGIN_SLOTS as usize];
        if let Some(head) = head {
            for (slot, expiry) in (b'0'..).zip(expiries.iter_mut()) {
                let name = self.slot_cookie_name(slot);
                *expiry = head.cookies(&name).find_map(|v| s.sealer.open(&name, v, env.now).ok().map(|(_, exp)| exp));
            }
        }
        let free: Vec<u8> = (b'0'..).zip(&expiries).filter(|(_, e)| e.is_none()).map(|(slot, _)| slot).collect();
        let slot = if free.is_empty() {
            (b'0'..).zip(&expiries).min_by_key(|(_, e)| **e).map_or(b'0', |(slot, _)| slot)
        } else {
            let mut pick = [0u8; 1];
            env.rng.fill(&mut pick);
            free[usize::from(pick[0]) % free.len()]
        };
        format!("{SLOT_MARK}{}", char::from(slot))
    }

    pub(super) fn id_token_cookie_name(&self) -> String {
        format!("{}_idt", self.config.session.cookie_name)
    }
}
