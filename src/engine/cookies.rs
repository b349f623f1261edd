//! Every `Set-Cookie` the gate writes: the session, the login (CSRF) cookie
//! of each login in flight, and the ID token kept for sign-out.

use super::Engine;
use crate::config::SameSite;

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

    pub(super) fn csrf_cookie_name(&self, state: &str) -> Option<String> {
        let prefix = state.get(..12)?;
        prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .then(|| format!("{}_csrf_{prefix}", self.config.session.cookie_name))
    }

    pub(super) fn id_token_cookie_name(&self) -> String {
        format!("{}_idt", self.config.session.cookie_name)
    }
}
