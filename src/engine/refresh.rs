//! Refreshing a session with its refresh token: one refresh per session
//! generation across workers (a lock and a successor record), the request
//! served on the old session while another refresh runs, and the end of the
//! session when the provider refuses.

use std::sync::Arc;

use super::{oauth_error_code, Allow, Engine, Env, Pending, PendingKind, Step, TokenResponse, MAX_COOKIE_BYTES};
use crate::cache::OpenedSession;
use crate::events::Event;
use crate::fleet::{self, RefreshAnswer};
use crate::http::HttpResponse;
use crate::jose::{profile_claims, verify_id_token, Expected, IdClaims, TokenError};
use crate::pages::Response;
use crate::session::Session;
use crate::store::{RecordKey, StoreOp, StoreWrite};

/// Seconds before a refresh that could not reach the IdP is tried again.
const REFRESH_RETRY: u64 = 10;

/// A session refresh in progress, with everything needed to finish it:
/// the old session, its sealed cookie, and who waits for the result.
pub(super) struct Refresh {
    /// Identifies the session generation (derived from its refresh token).
    pub(super) generation: [u8; 16],
    pub(super) old: Arc<OpenedSession>,
    /// The old session's sealed cookie, handed to a fleet coordinator.
    pub(super) cookie: String,
    pub(super) waiting: Waiting,
}

/// Who waits for a refresh.
pub(super) enum Waiting {
    /// A request to this gate: the prepared upstream changes, and where to
    /// send the user if the IdP has ended the session.
    Request { route: usize, allow: Allow, api: bool, scheme: String, authority: String, return_to: String },
    /// A filter of the fleet (this is its coordinator): answered with the
    /// new cookie, "ended", or "not now".
    Fleet,
}

impl Engine {
    /// A session past its refresh interval: take over a refresh another
    /// worker finished, start one if nobody holds the lock, else serve the
    /// request on the still-valid session while the other refresh runs.
    pub(super) fn refresh(&self, refresh: Refresh) -> Step {
        let op = StoreOp::Read(RecordKey::Successor(refresh.generation));
        Step::Store { op, pending: Pending::new(PendingKind::Successor(refresh)) }
    }

    /// What the generation's successor record says, if another request
    /// finished its refresh.
    pub(super) fn on_successor(&self, refresh: Refresh, record: Option<Vec<u8>>, env: &mut Env<'_>) -> Step {
        if let Some(record) = record {
            return self.take_successor(refresh, &record, env);
        }
        let timeout = u64::from(self.config.provider.timeout_ms).div_ceil(1000);
        // Sized to outlast the refresh and a possible userinfo call (two
        // callouts, or the coordinator's call that makes them), with a
        // margin; released or shortened as soon as the outcome is known.
        let op = StoreOp::Claim { key: RecordKey::RefreshLock(refresh.generation), until: env.now + 2 * timeout + 2 };
        Step::Store { op, pending: Pending::new(PendingKind::RefreshLock(refresh)) }
    }

    pub(super) fn on_refresh_lock(&self, refresh: Refresh, claimed: bool, env: &mut Env<'_>) -> Step {
        if !claimed {
            env.events.push(Event::RefreshCoalesced);
            if let Waiting::Fleet = refresh.waiting {
                return fleet_answer(409, b"busy");
            }
            return self.serve_old(refresh, env);
        }
        // Read again under the lock: the holder before us may have stored
        // the successor and released the lock between our read and our claim.
        let op = StoreOp::Read(RecordKey::Successor(refresh.generation));
        Step::Store { op, pending: Pending::new(PendingKind::SuccessorUnderLock(refresh)) }
    }

    /// Another request's successor: its new cookie, or the end of the session.
    fn take_successor(&self, refresh: Refresh, record: &[u8], env: &mut Env<'_>) -> Step {
        env.events.push(Event::RefreshCoalesced);
        match record.strip_prefix(b"ok:").and_then(|v| std::str::from_utf8(v).ok()) {
            Some(cookie) => match self.open_session(cookie, env) {
                Ok(new) => self.serve_refreshed(refresh, new, cookie, env),
                Err(_) => self.serve_old(refresh, env),
            },
            None => self.session_ended(refresh, env),
        }
    }

    /// Under the lock: take the successor if one appeared, else refresh.
    pub(super) fn on_successor_under_lock(&self, refresh: Refresh, record: Option<Vec<u8>>, env: &mut Env<'_>) -> Step {
        if let Some(record) = record {
            self.unlock(refresh.generation, 0, env);
            return self.take_successor(refresh, &record, env);
        }
        // A filter in a fleet: the coordinator refreshes under the fleet's
        // lock; this instance's lock keeps it to one call at a time.
        if let Some(coordinator) = &self.config.coordinator {
            env.events.push(Event::RefreshStarted);
            let call = coordinator.refresh_call(&refresh.cookie);
            return Step::Fetch { call, pending: Pending::new(PendingKind::FleetRefresh(refresh)) };
        }
        let call = match (env.provider, refresh.old.session.refresh_token.as_deref()) {
            (Some(p), Some(token)) => self.token_call(p, &[("grant_type", "refresh_token"), ("refresh_token", token)]),
            _ => None,
        };
        match call {
            Some(call) => {
                env.events.push(Event::RefreshStarted);
                Step::Fetch { call, pending: Pending::new(PendingKind::Refresh(refresh)) }
            }
            None => {
                env.events.push(Event::RefreshFailed("provider metadata not loaded; session kept"));
                self.unlock(refresh.generation, 0, env);
                self.serve_old(refresh, env)
            }
        }
    }

    /// Finishes the waiting request with `session` (the old one or its successor).
    fn serve(&self, waiting: Waiting, session: &OpenedSession, env: &mut Env<'_>) -> Step {
        let Waiting::Request { route, allow, api, scheme, authority, return_to } = waiting else { return fleet_answer(503, b"later") };
        match self.config.routes.get(route) {
            Some(route) => {
                let visit = super::Visit { head: None, scheme: &scheme, authority: &authority, api: &|| api, return_to: &|| return_to.clone() };
                self.decide(route, allow, session, &visit, env)
            }
            None => Step::Respond(self.deny_response(api, "No service is configured at this address.")),
        }
    }

    pub(super) fn serve_old(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        self.serve(refresh.waiting, &refresh.old, env)
    }

    pub(super) fn serve_refreshed(&self, refresh: Refresh, new: Arc<OpenedSession>, cookie: &str, env: &mut Env<'_>) -> Step {
        let mut waiting = refresh.waiting;
        match &mut waiting {
            Waiting::Fleet => {
                let mut body = fleet::REFRESHED.to_vec();
                body.extend_from_slice(cookie.as_bytes());
                return fleet_answer(200, &body);
            }
            Waiting::Request { allow, .. } => {
                let s = &self.config.session;
                let max_age = new.expires_at.saturating_sub(env.now);
                allow.set_cookies.push(format!("{}={cookie}{}", s.cookie_name, self.cookie_attrs("/", max_age, s.same_site)));
            }
        }
        self.serve(waiting, &new, env)
    }

    /// The IdP has ended the session (revoked grant, disabled user): every
    /// request still carrying it goes back to login.
    pub(super) fn session_ended(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        match refresh.waiting {
            Waiting::Request { api, scheme, authority, return_to, .. } => {
                let clear = vec![self.clear_cookie(&self.config.session.cookie_name, "/")];
                self.login_again(None, api, &scheme, &authority, return_to, clear, env)
            }
            Waiting::Fleet => fleet_answer(200, fleet::ENDED),
        }
    }

    /// Ends this worker's hold on the generation's refresh lock: released
    /// (`after` = 0) once the outcome is recorded, or turned into a pause
    /// of `after` seconds before the next attempt when the refresh could
    /// not be made. Either way no lock outlives its refresh.
    fn unlock(&self, generation: [u8; 16], after: u64, env: &mut Env<'_>) {
        env.writes.push(StoreWrite { key: RecordKey::RefreshLock(generation), value: Vec::new(), until: env.now + after });
    }

    /// The request goes on with the old session; the next attempt waits
    /// [`REFRESH_RETRY`] seconds.
    fn keep_and_retry(&self, refresh: Refresh, why: &'static str, env: &mut Env<'_>) -> Step {
        env.events.push(Event::RefreshFailed(why));
        self.unlock(refresh.generation, REFRESH_RETRY, env);
        self.serve_old(refresh, env)
    }

    pub(super) fn successor_grace(&self) -> u64 {
        self.config.session.refresh_interval.clamp(60, 3600)
    }

    pub(super) fn end_refreshed_session(&self, refresh: Refresh, why: &'static str, env: &mut Env<'_>) -> Step {
        let until = env.now + self.successor_grace();
        env.writes.push(StoreWrite { key: RecordKey::Successor(refresh.generation), value: b"dead".to_vec(), until });
        self.unlock(refresh.generation, 0, env);
        env.events.push(Event::RefreshFailed(why));
        self.session_ended(refresh, env)
    }

    pub(super) fn on_refresh_response(&self, refresh: Refresh, resp: HttpResponse, env: &mut Env<'_>) -> Step {
        // Only "could not ask" keeps the session: no answer, 5xx, or 429.
        // Any other refusal ends it, whatever its error code: Pocket ID
        // answers a revoked token or a disabled user with its own codes, not
        // always `invalid_grant`.
        if resp.status == 0 || resp.status >= 500 || resp.status == 429 {
            return self.keep_and_retry(refresh, "provider unreachable; session kept, retrying later", env);
        }
        if resp.status != 200 {
            let code = oauth_error_code(&resp.body);
            let why = if code == "invalid_grant" {
                "refresh refused (invalid_grant): session ended"
            } else {
                "refresh refused by the provider: session ended"
            };
            return self.end_refreshed_session(refresh, why, env);
        }
        let Ok(tokens) = serde_json::from_slice::<TokenResponse>(&resp.body) else {
            return self.keep_and_retry(refresh, "refresh response malformed; session kept", env);
        };
        let p = &self.config.provider;
        let verified = match (tokens.id_token.as_deref(), env.provider) {
            (Some(token), Some(provider)) => {
                let expected = Expected { issuer: &p.issuer, client_id: &p.client_id, nonce: None, now: env.now, leeway: p.clock_skew };
                Some(verify_id_token(token, &provider.jwks, &expected))
            }
            _ => None,
        };
        match verified {
            Some(Ok(claims)) => self.finish_refresh(refresh, &claims, tokens.refresh_token, env),
            Some(Err(TokenError::UnknownKey)) | None => {
                // No ID token (Pocket ID's refresh may omit it) or one signed
                // with a key we do not have yet: ask userinfo instead.
                let call = match (env.provider.and_then(|pr| pr.discovery.userinfo_endpoint.as_deref()), tokens.access_token.as_deref()) {
                    (Some(url), Some(access)) => {
                        let headers = vec![("accept".into(), "application/json".into()), ("authorization".into(), format!("Bearer {access}"))];
                        p.call("GET", url, headers, Vec::new())
                    }
                    _ => None,
                };
                match call {
                    Some(call) => {
                        Step::Fetch { call, pending: Pending::new(PendingKind::Userinfo { refresh, refresh_token: tokens.refresh_token }) }
                    }
                    None => {
                        // The IdP accepted the refresh: keep the claims we have, with the new token.
                        let claims = claims_of(&refresh.old.session);
                        self.finish_refresh(refresh, &claims, tokens.refresh_token, env)
                    }
                }
            }
            Some(Err(e)) => {
                env.events.push(Event::TokenRejected(e.reason()));
                self.end_refreshed_session(refresh, "refreshed ID token rejected: session ended", env)
            }
        }
    }

    /// The coordinator's answer to a refresh this filter handed it.
    pub(super) fn on_fleet_refresh(&self, refresh: Refresh, resp: HttpResponse, env: &mut Env<'_>) -> Step {
        match fleet::refresh_answer(&resp) {
            RefreshAnswer::Refreshed(cookie) => match self.open_session(cookie, env) {
                Ok(new) => {
                    // This instance's other requests and workers take it over.
                    let mut record = b"ok:".to_vec();
                    record.extend_from_slice(cookie.as_bytes());
                    let until = env.now + self.successor_grace();
                    env.writes.push(StoreWrite { key: RecordKey::Successor(refresh.generation), value: record, until });
                    self.unlock(refresh.generation, 0, env);
                    env.events.push(Event::RefreshSucceeded);
                    self.serve_refreshed(refresh, new, cookie, env)
                }
                Err(_) => {
                    self.keep_and_retry(refresh, "the fleet coordinator's cookie does not open here (other session secrets?); session kept", env)
                }
            },
            RefreshAnswer::Ended => self.end_refreshed_session(refresh, "refresh refused: session ended (fleet coordinator)", env),
            RefreshAnswer::Busy => {
                // Another instance is refreshing: ask again in a second (by
                // then the coordinator holds its successor), not when this
                // instance's lock runs out.
                self.unlock(refresh.generation, 1, env);
                env.events.push(Event::RefreshCoalesced);
                self.serve_old(refresh, env)
            }
            RefreshAnswer::Later => self.keep_and_retry(refresh, "fleet coordinator could not refresh now; session kept, retrying later", env),
            RefreshAnswer::Misconfigured => {
                self.keep_and_retry(refresh, "fleet coordinator cannot open our cookies: give it the same session.secrets; session kept", env)
            }
        }
    }

    /// The coordinator's side: a filter of the fleet asks to refresh the
    /// session sealed in `cookie` (the key was checked by the host).
    pub(super) fn refresh_for_fleet(&self, cookie: &str, env: &mut Env<'_>) -> Step {
        let Ok(opened) = self.open_session(cookie, env) else {
            return fleet_answer(422, b"the session cookie does not open here: give the filters and the sidecar the same session.secrets");
        };
        if env.revocations.revokes(&opened.revocation, opened.session.login_at, env.now) {
            return fleet_answer(200, fleet::ENDED);
        }
        let Some(token) = opened.session.refresh_token.as_deref() else { return fleet_answer(422, b"the session has no refresh token") };
        let generation = crate::engine::shared_key(b"generation", token.as_bytes());
        self.refresh(Refresh { generation, old: opened, cookie: cookie.to_owned(), waiting: Waiting::Fleet })
    }

    pub(super) fn on_userinfo_response(&self, refresh: Refresh, refresh_token: Option<String>, resp: HttpResponse, env: &mut Env<'_>) -> Step {
        let claims = match resp.status {
            200 => serde_json::from_slice::<serde_json::Value>(&resp.body).ok().and_then(|v| profile_claims(&v)),
            401 | 403 => return self.end_refreshed_session(refresh, "userinfo refused the new access token: session ended", env),
            // Unreachable: the refresh itself succeeded, so keep the claims we
            // have and, above all, the rotated refresh token.
            _ => Some(claims_of(&refresh.old.session)),
        };
        match claims {
            Some(c) => self.finish_refresh(refresh, &c, refresh_token, env),
            None => self.end_refreshed_session(refresh, "userinfo response malformed: session ended", env),
        }
    }

    pub(super) fn finish_refresh(&self, refresh: Refresh, claims: &IdClaims, refresh_token: Option<String>, env: &mut Env<'_>) -> Step {
        let old = &refresh.old.session;
        if claims.sub != old.sub {
            return self.end_refreshed_session(refresh, "refresh returned another subject: session ended", env);
        }
        let mut session = self.session_from_claims(claims, refresh_token.or_else(|| old.refresh_token.clone()), env.now, old.id);
        session.login_at = old.login_at;
        // A refresh is not an authentication: how and when the user last
        // signed in stays what the login said.
        session.auth_time = old.auth_time;
        session.acr.clone_from(&old.acr);
        session.amr.clone_from(&old.amr);
        session.asked.clone_from(&old.asked);
        if session.idp_sid.is_none() {
            session.idp_sid.clone_from(&old.idp_sid);
        }
        let s = &self.config.session;
        // The absolute lifetime set at login still caps the refreshed session.
        let sealed = s.sealer.seal(&s.cookie_name, refresh.old.expires_at, &session.encode(), env.rng);
        let attrs = self.cookie_attrs("/", refresh.old.expires_at.saturating_sub(env.now), s.same_site);
        if s.cookie_name.len() + 1 + sealed.len() + attrs.len() > MAX_COOKIE_BYTES {
            // A browser would drop the cookie and keep sending the old one.
            return self.end_refreshed_session(refresh, "refreshed session too large for a cookie (too many groups): session ended", env);
        }
        let key = RecordKey::Successor(refresh.generation);
        let mut record = b"ok:".to_vec();
        record.extend_from_slice(sealed.as_bytes());
        env.writes.push(StoreWrite { key, value: record, until: env.now + self.successor_grace() });
        self.unlock(refresh.generation, 0, env);
        env.events.push(Event::RefreshSucceeded);
        match self.open_session(&sealed, env) {
            Ok(new) => self.serve_refreshed(refresh, new, &sealed, env),
            Err(_) => self.serve_old(refresh, env),
        }
    }
}

/// An answer to a filter of the fleet (see [`crate::fleet`]).
fn fleet_answer(status: u16, body: &[u8]) -> Step {
    let headers = vec![("cache-control".to_owned(), "no-store".to_owned()), ("content-type".to_owned(), "text/plain".to_owned())];
    Step::Respond(Response { status, headers, body: body.to_vec() })
}

/// A session's claims, for a refresh that brought no new ones.
fn claims_of(s: &Session) -> IdClaims {
    IdClaims {
        sub: s.sub.clone(),
        preferred_username: Some(s.user.clone()),
        email: s.email.clone(),
        email_verified: s.email_verified,
        name: s.name.clone(),
        groups: s.groups.clone(),
        sid: s.idp_sid.clone(),
        exp: 0,
        iat: 0,
        auth_time: Some(s.auth_time),
        acr: s.acr.clone(),
        amr: s.amr.clone(),
    }
}
