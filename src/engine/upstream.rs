//! What goes upstream with a request: the identity headers, the signed
//! identity token, and the request's cookies without the gate's own.

use std::sync::Arc;

use super::{Allow, Engine, Env, Step};
use crate::cache::OpenedSession;
use crate::events::Event;
use crate::headers::HeaderNames;
use crate::policy::Route;
use crate::redirect::authority_host;
use crate::request::RequestHead;

impl Engine {
    /// The route's signed identity header, from this worker's cache of
    /// tokens (signed again once half their lifetime has passed).
    pub(super) fn signed_identity(&self, route: &Route, opened: &OpenedSession, authority: &str, allow: &mut Allow, env: &mut Env<'_>) {
        if let (Some(header), Some(signer)) = (&route.signed_identity, &self.config.identity) {
            let host = authority_host(authority).to_ascii_lowercase();
            let token = env.signed.token(signer, opened, route.index, &host, env.now);
            allow.set.push((Arc::clone(header), token));
        }
    }

    /// A request that needs no login (a public route, an allowed network, a
    /// CORS preflight): no identity headers (the strip set removed every
    /// client copy), and not our cookies either.
    pub(super) fn pass_without_login(&self, head: &RequestHead<'_>, mut allow: Allow, env: &mut Env<'_>) -> Step {
        self.hide_own_cookies(head, &mut allow);
        env.events.push(Event::Allowed);
        Step::Allow(allow)
    }

    /// The sealed session is for this gate only: the upstream gets the
    /// identity headers, not a bearer cookie it could replay elsewhere.
    pub(super) fn hide_own_cookies(&self, head: &RequestHead<'_>, allow: &mut Allow) {
        let name = self.config.session.cookie_name.as_str();
        let ours =
            |pair: &str| pair.trim().split_once('=').is_some_and(|(k, _)| k == name || k.starts_with(name) && k[name.len()..].starts_with('_'));
        let cookie_values = || head.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")).map(|(_, v)| v.as_str());
        if !cookie_values().any(|v| v.split(';').any(ours)) {
            return;
        }
        let mut rest = String::new();
        for pair in cookie_values().flat_map(|v| v.split(';')).filter(|p| !ours(p)).map(str::trim).filter(|p| !p.is_empty()) {
            if !rest.is_empty() {
                rest.push_str("; ");
            }
            rest.push_str(pair);
        }
        if rest.is_empty() {
            allow.strip.push("cookie".to_owned());
        } else {
            allow.set.push(("cookie".into(), rest.into()));
        }
    }
}

pub(super) fn identity_headers(names: &HeaderNames, opened: &OpenedSession, set: &mut Vec<(Arc<str>, Arc<str>)>) {
    let mut put = |name: &Option<Arc<str>>, value: &Option<Arc<str>>| {
        if let (Some(n), Some(v)) = (name, value) {
            set.push((Arc::clone(n), Arc::clone(v)));
        }
    };
    put(&names.user, &Some(Arc::clone(&opened.user)));
    put(&names.email, &opened.email);
    put(&names.groups, &opened.groups);
    put(&names.name, &opened.name);
}
