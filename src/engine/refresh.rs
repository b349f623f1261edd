//! Refreshing a session with its refresh token: one refresh per session
//! generation across workers (a lock and a successor record), the request
//! served on the old session while another refresh runs, and the end of the
//! session when the provider refuses.

use std::sync::Arc;

use super::{oauth_error_code, Allow, Engine, Env, Pending, PendingKind, Step, TokenResponse, MAX_COOKIE_BYTES};
use crate::cache::OpenedSession;
use crate::events::Event;
use crate::http::HttpResponse;
use crate::jose::{profile_claims, verify_id_token, Expected, IdClaims, TokenError};
use crate::session::Session;
use crate::store::{RecordKey, StoreOp, StoreWrite};

/// Seconds before a refresh that could not reach the IdP is tried again.
const REFRESH_RETRY: u64 = 10;

/// A request waiting on a session refresh, with everything needed to finish
/// it: the prepared upstream changes, the old session, and where to send the
/// user if the IdP has ended the session.
pub(super) struct Refresh {
    pub(super) route: usize,
    pub(super) allow: Allow,
    /// Identifies the session generation (derived from its refresh token).
    pub(super) generation: [u8; 16],
    pub(super) old: Arc<OpenedSession>,
    pub(super) api: bool,
    pub(super) scheme: String,
    pub(super) authority: String,
    pub(super) return_to: String,
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
            env.events.push(Event::RefreshCoalesced);
            return match record.strip_prefix(b"ok:").and_then(|v| std::str::from_utf8(v).ok()) {
                Some(cookie) => match self.open_session(cookie, env) {
                    Ok(new) => self.serve_refreshed(refresh, new, cookie, env),
                    Err(_) => self.serve_old(refresh, env),
                },
                None => self.session_ended(refresh, env),
            };
        }
        let timeout = u64::from(self.config.provider.timeout_ms).div_ceil(1000);
        // Held across the refresh and a possible userinfo call (two callouts),
        // and it spaces out retries while the IdP is unreachable.
        let op = StoreOp::Claim { key: RecordKey::RefreshLock(refresh.generation), until: env.now + 2 * timeout + REFRESH_RETRY };
        Step::Store { op, pending: Pending::new(PendingKind::RefreshLock(refresh)) }
    }

    pub(super) fn on_refresh_lock(&self, refresh: Refresh, claimed: bool, env: &mut Env<'_>) -> Step {
        if !claimed {
            env.events.push(Event::RefreshCoalesced);
            return self.serve_old(refresh, env);
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
                self.serve_old(refresh, env)
            }
        }
    }

    /// Finishes the waiting request with `session` (the old one or its successor).
    pub(super) fn serve(&self, refresh: Refresh, session: &OpenedSession, env: &mut Env<'_>) -> Step {
        match self.config.routes.get(refresh.route) {
            Some(route) => {
                let api = refresh.api;
                self.decide(route, refresh.allow, &|| api, session, env)
            }
            None => Step::Respond(self.deny_response(refresh.api, "No service is configured at this address.")),
        }
    }

    pub(super) fn serve_old(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        let old = Arc::clone(&refresh.old);
        self.serve(refresh, &old, env)
    }

    pub(super) fn serve_refreshed(&self, mut refresh: Refresh, new: Arc<OpenedSession>, cookie: &str, env: &mut Env<'_>) -> Step {
        let s = &self.config.session;
        let max_age = new.expires_at.saturating_sub(env.now);
        refresh.allow.set_cookies.push(format!("{}={cookie}{}", s.cookie_name, self.cookie_attrs("/", max_age, s.same_site)));
        self.serve(refresh, &new, env)
    }

    /// The IdP has ended the session (revoked grant, disabled user): every
    /// request still carrying it goes back to login.
    pub(super) fn session_ended(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        let clear = vec![self.clear_cookie(&self.config.session.cookie_name, "/")];
        self.login_again(refresh.api, &refresh.scheme, &refresh.authority, refresh.return_to, clear, env)
    }

    pub(super) fn successor_grace(&self) -> u64 {
        self.config.session.refresh_interval.clamp(60, 3600)
    }

    pub(super) fn end_refreshed_session(&self, refresh: Refresh, why: &'static str, env: &mut Env<'_>) -> Step {
        let until = env.now + self.successor_grace();
        env.writes.push(StoreWrite { key: RecordKey::Successor(refresh.generation), value: b"dead".to_vec(), until });
        env.events.push(Event::RefreshFailed(why));
        self.session_ended(refresh, env)
    }

    pub(super) fn on_refresh_response(&self, refresh: Refresh, resp: HttpResponse, env: &mut Env<'_>) -> Step {
        // Only "could not ask" keeps the session: no answer, 5xx, or 429.
        // Any other refusal ends it, whatever its error code: Pocket ID
        // answers a revoked token or a disabled user with its own codes, not
        // always `invalid_grant`.
        if resp.status == 0 || resp.status >= 500 || resp.status == 429 {
            env.events.push(Event::RefreshFailed("provider unreachable; session kept, retrying later"));
            return self.serve_old(refresh, env);
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
            env.events.push(Event::RefreshFailed("refresh response malformed; session kept"));
            return self.serve_old(refresh, env);
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
        env.events.push(Event::RefreshSucceeded);
        match self.open_session(&sealed, env) {
            Ok(new) => self.serve_refreshed(refresh, new, &sealed, env),
            Err(_) => self.serve_old(refresh, env),
        }
    }
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
    }
}
