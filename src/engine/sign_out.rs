//! Sign-out: clear our cookies and end the provider's session, only when the
//! request comes from our own pages or the user.

use super::step::PendingKind;
use super::{Engine, Env, Pending, Step};
use crate::encoding::{build_query, parse_query};
use crate::events::Event;
use crate::http::HttpResponse;
use crate::jose::TokenError;
use crate::logout::verify_logout_token;
use crate::pages;
use crate::pages::Response;
use crate::redirect::safe_redirect;
use crate::request::RequestHead;
use crate::revocation::Revocation;
use crate::store::{RecordKey, StoreOp};

impl Engine {
    pub(super) fn sign_out(&self, head: &RequestHead<'_>, query: &str, env: &mut Env<'_>) -> Step {
        // Signing out also ends the IdP session: another site must not be
        // able to do it with an `<img>` or an auto-submitted form.
        if !head.same_origin() {
            let action = if query.is_empty() { self.config.paths.sign_out.clone() } else { format!("{}?{query}", self.config.paths.sign_out) };
            return Step::Respond(pages::confirm("Sign out?", "Do you want to sign out?", &action, "Sign out"));
        }
        let s = &self.config.session;
        let idt_name = self.id_token_cookie_name();
        // Every session cookie the browser sent is revoked, so a copy taken
        // before sign-out is refused everywhere.
        for value in head.cookies(&s.cookie_name) {
            if let Ok(opened) = self.open_session(value, env) {
                env.revoked.push(Revocation::of_session(&opened.revocation, opened.expires_at));
            }
            env.sessions.remove(value);
        }
        let hint = head
            .cookie(&idt_name)
            .and_then(|v| s.sealer.open(&idt_name, v, env.now).ok())
            .and_then(|(bytes, _)| String::from_utf8(bytes).ok());
        let cookies = vec![self.clear_cookie(&s.cookie_name, "/"), self.clear_cookie(&idt_name, &self.config.paths.sign_out)];
        env.events.push(Event::SignedOut);
        let rd = parse_query(query).into_iter().find(|(k, _)| k == "rd").map(|(_, v)| v);
        let local = rd.and_then(|rd| safe_redirect(&rd, &self.config.allowed_redirect_hosts, head.scheme)).unwrap_or_else(|| "/".into());
        let end_session = env.provider.and_then(|p| p.discovery.end_session_endpoint.as_deref());
        let location = match end_session {
            Some(endpoint) => {
                let post_logout =
                    self.config.post_logout_redirect_url.clone().unwrap_or_else(|| format!("{}://{}/", head.scheme, head.authority));
                let mut q = vec![("client_id", self.config.provider.client_id.as_str()), ("post_logout_redirect_uri", post_logout.as_str())];
                if let Some(h) = hint.as_deref() {
                    q.insert(0, ("id_token_hint", h));
                }
                let sep = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{sep}{}", build_query(&q))
            }
            None => local,
        };
        let page = pages::redirect(&location).with_cookies(cookies);
        // In a fleet of filters the coordinator spreads the revocations; the
        // browser is answered once it has them (or could not be reached).
        match &self.config.coordinator {
            Some(coordinator) if !env.revoked.is_empty() => {
                Step::Fetch { call: coordinator.revoke_call(&env.revoked), pending: Pending::new(PendingKind::FleetSignOut(page)) }
            }
            _ => Step::Respond(page),
        }
    }

    pub(super) fn on_fleet_sign_out(&self, page: Response, resp: &HttpResponse, env: &mut Env<'_>) -> Step {
        if !(200..300).contains(&resp.status) {
            env.events.push(Event::StoreUnavailable("fleet coordinator unreachable: the sign-out reaches only this instance"));
        }
        Step::Respond(page)
    }

    /// A back-channel logout from the provider (a POSTed form with
    /// `logout_token`): 200 once the sessions it names are revoked, 400 for
    /// anything that is not a valid logout token (§2.8).
    pub(super) fn backchannel_logout(&self, body: &[u8], env: &mut Env<'_>) -> Step {
        let form = std::str::from_utf8(body).map(parse_query).unwrap_or_default();
        let token = form.iter().find(|(k, _)| k == "logout_token").map(|(_, v)| v.as_str());
        let Some(provider) = env.provider else {
            env.events.push(Event::ProviderUnavailable);
            return Step::Respond(pages::json(503, "temporarily_unavailable", "Provider keys not loaded yet.", &[]));
        };
        let p = &self.config.provider;
        let verified = token
            .ok_or(TokenError::Malformed)
            .and_then(|t| verify_logout_token(t, &provider.jwks, &p.issuer, &p.client_id, env.now, p.clock_skew));
        let claim = verified.ok().and_then(|t| {
            let revocation = t.revocation(env.now, self.config.session.lifetime)?;
            Some((StoreOp::Claim { key: RecordKey::LogoutToken(t.replay_key(&p.issuer)), until: t.replayable_until(p.clock_skew) }, revocation))
        });
        match claim {
            Some((op, revocation)) => Step::Store { op, pending: Pending::new(PendingKind::LogoutToken(revocation)) },
            None => {
                let why = if token.is_some() { "back-channel logout token rejected" } else { "back-channel logout without logout_token" };
                env.events.push(Event::Denied(why));
                Step::Respond(pages::json(400, "invalid_request", "Not a valid logout token.", &[]))
            }
        }
    }

    /// A verified logout token, once its `jti` claim is answered: a replay
    /// (within the time the token still verifies) is refused.
    pub(super) fn on_logout_token_claimed(&self, revocation: Revocation, claimed: bool, env: &mut Env<'_>) -> Step {
        if !claimed {
            env.events.push(Event::Denied("back-channel logout token replayed"));
            return Step::Respond(pages::json(400, "invalid_request", "This logout token was already used.", &[]));
        }
        env.revoked.push(revocation);
        env.events.push(Event::BackchannelLogout);
        Step::Respond(Response { status: 200, headers: vec![("cache-control".into(), "no-store".into())], body: Vec::new() })
    }
}
