//! Logins: the redirect to the provider, the callback, the code exchange,
//! and the ID token that becomes a session cookie.

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{
    clean_header_value, header_safe, oauth_error_code, random_token, sha256, shared_key, Engine, Env, Pending, PendingKind, Step,
    MAX_COOKIE_BYTES,
};
use crate::config::{SameSite, UserClaim};
use crate::encoding::{b64url, build_query, parse_query, split_url};
use crate::events::Event;
use crate::http::{HttpCall, HttpResponse};
use crate::jose::{verify_id_token, Expected, IdClaims, Jwks, TokenError};
use crate::pages;
use crate::policy::Route;
use crate::provider::{jwks_call, ProviderSnapshot, JWKS_REFETCH_COOLDOWN};
use crate::redirect::safe_redirect;
use crate::request::RequestHead;
use crate::session::{LoginState, Session};
use crate::store::{RecordKey, StoreOp};

#[derive(Clone, Deserialize)]
pub(super) struct TokenResponse {
    pub(super) id_token: Option<String>,
    pub(super) refresh_token: Option<String>,
    pub(super) access_token: Option<String>,
}

const UNKNOWN_LOGIN: &str =
    "This sign-in attempt is not known to this browser: it expired, was already completed, or was started in another browser.";

impl Engine {
    pub(super) fn login_or_401(
        &self,
        head: &RequestHead<'_>,
        route: &Route,
        return_to: String,
        cookies: Vec<String>,
        env: &mut Env<'_>,
    ) -> Step {
        let return_to = if matches!(head.method, "GET" | "HEAD") { return_to } else { "/".to_owned() };
        let step = self.login_again(Some(head), route.api || head.looks_like_api(), head.scheme, head.authority, return_to, cookies, env);
        match step {
            // A route that takes bearer tokens says so to API clients (RFC 6750 §3).
            Step::Respond(mut r) if r.status == 401 && route.bearer.is_some() => {
                r.headers.push(("www-authenticate".to_owned(), "Bearer realm=\"oidc-edge\"".to_owned()));
                Step::Respond(r)
            }
            other => other,
        }
    }

    /// 401 JSON for API clients, else the redirect to the IdP. `head`: the
    /// request that asks, when this turn has it (see [`Engine::login_slot`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn login_again(
        &self,
        head: Option<&RequestHead<'_>>,
        api: bool,
        scheme: &str,
        authority: &str,
        return_to: String,
        cookies: Vec<String>,
        env: &mut Env<'_>,
    ) -> Step {
        let return_to = safe_redirect(&return_to, &[], scheme).unwrap_or_else(|| "/".to_owned());
        if api {
            env.events.push(Event::Unauthorized);
            let login = format!("{}?{}", self.config.paths.start, build_query(&[("rd", &return_to)]));
            return Step::Respond(pages::json(401, "unauthorized", "Sign in first.", &[("login", &login)]).with_cookies(cookies));
        }
        self.start_login(head, scheme, authority, return_to, cookies, env)
    }

    /// The 503 page. `cookies` lets a failed callback clear its login cookie,
    /// so that "try again" starts a fresh login instead of replaying a used state.
    pub(super) fn unavailable(&self, env: &mut Env<'_>, cookies: Vec<String>) -> Step {
        env.events.push(Event::ProviderUnavailable);
        let again = format!("{}?rd=%2F", self.config.paths.start);
        Step::Respond(
            pages::page(
                503,
                "Sign-in temporarily unavailable",
                "The identity provider cannot be reached right now. Please try again in a moment.",
                Some((&again, "Try again")),
            )
            .with_header("retry-after", "5")
            .with_cookies(cookies),
        )
    }

    pub(super) fn redirect_uri(&self, scheme: &str, authority: &str) -> String {
        match &self.config.redirect_url {
            Some(u) => u.clone(),
            None => format!("{scheme}://{authority}{}", self.config.paths.callback),
        }
    }

    /// Sends the browser to the provider. A login to come back to a
    /// step-up route asks for what that route wants from the start (a
    /// provider with a live single sign-on would otherwise answer with its
    /// old sign-in), and is marked as such in the session it makes.
    pub(super) fn start_login(
        &self,
        head: Option<&RequestHead<'_>>,
        scheme: &str,
        authority: &str,
        return_to: String,
        mut cookies: Vec<String>,
        env: &mut Env<'_>,
    ) -> Step {
        let Some(provider) = env.provider else {
            return self.unavailable(env, cookies);
        };
        let slot = self.login_slot(head, env);
        let asked = self.step_up_for(authority, &return_to);
        let login = LoginState {
            state: slot + &random_token(env.rng),
            nonce: random_token(env.rng),
            verifier: random_token(env.rng),
            return_to: bounded_return(return_to),
            redirect_uri: self.redirect_uri(scheme, authority),
            asked,
        };
        let challenge = b64url(&sha256(login.verifier.as_bytes()));
        let p = &self.config.provider;
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", p.client_id.as_str()),
            ("redirect_uri", login.redirect_uri.as_str()),
            ("scope", p.scopes.as_str()),
            ("state", login.state.as_str()),
            ("nonce", login.nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let extra = login.asked.as_ref().map(super::step_up::step_up_params).unwrap_or_default();
        params.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let query = build_query(&params);
        let endpoint = &provider.discovery.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!("{endpoint}{sep}{query}");
        let Some((cookie_name, cookie_path)) = self.login_cookie(&login.state) else {
            return self.unavailable(env, cookies);
        };
        let s = &self.config.session;
        let sealed = s.sealer.seal(&cookie_name, env.now + s.login_timeout, &login.encode(), env.rng);
        // The login cookie is always Lax (or None): the callback is a cross-site
        // navigation from the IdP, and a Strict cookie would not come back with it.
        let same_site = if s.same_site == SameSite::None { SameSite::None } else { SameSite::Lax };
        cookies.push(format!("{cookie_name}={sealed}{}", self.cookie_attrs(cookie_path, s.login_timeout, same_site)));
        env.events.push(Event::LoginStarted);
        Step::Respond(pages::redirect(&location).with_cookies(cookies))
    }

    /// The `Set-Cookie` that ends the login of `state`, once it is used.
    pub(super) fn clear_login_cookie(&self, state: &str) -> Vec<String> {
        self.login_cookie(state).map(|(name, path)| self.clear_cookie(&name, path)).into_iter().collect()
    }

    pub(super) fn login_failed(&self, env: &mut Env<'_>, status: u16, reason: &'static str, message: &str, cookies: Vec<String>) -> Step {
        env.events.push(Event::LoginFailed(reason));
        let again = format!("{}?rd=%2F", self.config.paths.start);
        Step::Respond(pages::page(status, "Sign-in failed", message, Some((&again, "Sign in again"))).with_cookies(cookies))
    }

    pub(super) fn callback(&self, head: &RequestHead<'_>, query: &str, env: &mut Env<'_>) -> Step {
        let params = parse_query(query);
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let login_cookie = param("state").and_then(|s| self.login_cookie(s));
        let clear: Vec<String> = login_cookie.iter().map(|(n, path)| self.clear_cookie(n, path)).collect();
        if let Some(error) = param("error") {
            let code: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            let status = if code == "access_denied" { 403 } else { 400 };
            return self.login_failed(
                env,
                status,
                "provider returned an error",
                &format!("The identity provider did not sign you in (error: {code})."),
                clear,
            );
        }
        let (Some(state), Some((cookie_name, _))) = (param("state"), login_cookie.as_ref()) else {
            return self.login_failed(env, 400, "callback without state", "The sign-in response is incomplete (no state).", clear);
        };
        // A slot's cookie may come twice (another path or domain): the one
        // holding this state counts, the others say nothing.
        let s = &self.config.session;
        let mut found = Err("no login cookie for this state");
        for sealed in head.cookies(cookie_name) {
            found = match s.sealer.open(cookie_name, sealed, env.now).map(|(bytes, _)| LoginState::decode(&bytes)) {
                Ok(Some(l)) if bool::from(l.state.as_bytes().ct_eq(state.as_bytes())) => Ok(l),
                Ok(Some(_)) => Err("state mismatch"),
                Ok(None) => Err("login cookie malformed"),
                Err(_) => Err("login cookie invalid or expired"),
            };
            if found.is_ok() {
                break;
            }
        }
        let login = match found {
            Ok(l) => l,
            Err(reason) => return self.login_failed(env, 400, reason, UNKNOWN_LOGIN, clear),
        };
        match param("iss") {
            Some(iss) if iss != self.config.provider.issuer => {
                return self.login_failed(
                    env,
                    400,
                    "iss parameter mismatch",
                    "The sign-in response came from an unexpected identity provider.",
                    clear,
                );
            }
            None if env.provider.is_some_and(|p| p.discovery.authorization_response_iss_parameter_supported) => {
                return self.login_failed(
                    env,
                    400,
                    "callback without iss",
                    "The sign-in response does not say which identity provider sent it.",
                    clear,
                );
            }
            _ => {}
        }
        let Some(code) = param("code").filter(|c| !c.is_empty()) else {
            return self.login_failed(env, 400, "callback without code", "The sign-in response is incomplete (no code).", clear);
        };
        if env.provider.is_none() {
            env.events.push(Event::LoginFailed("provider unavailable at callback"));
            return self.unavailable(env, clear);
        }
        let op = StoreOp::Claim { key: RecordKey::LoginState(shared_key(b"state", state.as_bytes())), until: env.now + s.login_timeout };
        Step::Store { op, pending: Pending::new(PendingKind::StateClaim { login, code: code.to_owned() }) }
    }

    /// The login's `state` is used once: a replayed callback finds it claimed.
    pub(super) fn on_state_claimed(&self, login: LoginState, code: &str, claimed: bool, env: &mut Env<'_>) -> Step {
        let clear = self.clear_login_cookie(&login.state);
        if !claimed {
            return self.login_failed(env, 400, "state replayed", UNKNOWN_LOGIN, clear);
        }
        let Some(call) = env.provider.and_then(|provider| {
            self.token_call(
                provider,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &login.redirect_uri),
                    ("code_verifier", &login.verifier),
                ],
            )
        }) else {
            return self.unavailable(env, clear);
        };
        Step::Fetch { call, pending: Pending::new(PendingKind::CodeExchange { login }) }
    }

    pub(super) fn token_call(&self, provider: &ProviderSnapshot, form: &[(&str, &str)]) -> Option<HttpCall> {
        self.config.provider.token_call(&provider.discovery.token_endpoint, form)
    }

    pub(super) fn on_token_response(&self, login: LoginState, resp: HttpResponse, env: &mut Env<'_>) -> Step {
        let clear = self.clear_login_cookie(&login.state);
        if resp.status == 0 {
            env.events.push(Event::LoginFailed("token endpoint unreachable"));
            return self.unavailable(env, clear);
        }
        if resp.status != 200 {
            let code = oauth_error_code(&resp.body);
            let (status, reason, msg) = if code == "invalid_grant" {
                (400, "token endpoint: invalid_grant", "The sign-in code was refused (expired or already used).")
            } else {
                let reason = match code.as_str() {
                    "invalid_client" => "token endpoint: invalid_client (check provider.client_secret and client_auth)",
                    "unauthorized_client" => "token endpoint: unauthorized_client (allow the authorization_code grant for this client)",
                    "invalid_request" => "token endpoint: invalid_request",
                    "" => "token endpoint error (no OAuth error code)",
                    _ => "token endpoint error",
                };
                (502, reason, "The identity provider refused to complete the sign-in.")
            };
            return self.login_failed(env, status, reason, msg, clear);
        }
        let tokens: TokenResponse = match serde_json::from_slice(&resp.body) {
            Ok(t) => t,
            Err(_) => return self.login_failed(env, 502, "token response malformed", "The identity provider sent an unreadable answer.", clear),
        };
        let Some(provider) = env.provider else {
            return self.unavailable(env, clear);
        };
        self.finish_login(login, clear, tokens, &provider.jwks, false, env)
    }

    pub(super) fn finish_login(
        &self,
        login: LoginState,
        mut cookies: Vec<String>,
        tokens: TokenResponse,
        jwks: &Jwks,
        refetched: bool,
        env: &mut Env<'_>,
    ) -> Step {
        let Some(id_token) = tokens.id_token.as_deref() else {
            return self.login_failed(
                env,
                502,
                "token response without id_token",
                "The identity provider sent no ID token (is the openid scope allowed?).",
                cookies,
            );
        };
        let p = &self.config.provider;
        let expected = Expected {
            issuer: &p.issuer,
            client_id: &p.client_id,
            nonce: Some(&login.nonce),
            now: env.now,
            leeway: p.clock_skew,
        };
        let claims = match verify_id_token(id_token, jwks, &expected) {
            Ok(c) => c,
            Err(TokenError::UnknownKey) if !refetched => {
                // Refetch the JWKS once per cooldown, whoever asks: a forged
                // token with a random `kid` must not make us hammer the IdP.
                if env.provider.and_then(|pr| jwks_call(p, &pr.discovery).ok()).is_none() {
                    return self.key_not_known(env, cookies);
                }
                let op = StoreOp::Claim { key: RecordKey::JwksCooldown, until: env.now + JWKS_REFETCH_COOLDOWN };
                return Step::Store { op, pending: Pending::new(PendingKind::JwksCooldown { login, tokens }) };
            }
            Err(e) => {
                env.events.push(Event::TokenRejected(e.reason()));
                return self.login_failed(env, 400, "ID token rejected", "The identity provider's answer did not pass verification.", cookies);
            }
        };
        let mut id = [0u8; 16];
        env.rng.fill(&mut id);
        let mut session = self.session_from_claims(&claims, tokens.refresh_token, env.now, id);
        session.asked = login.asked.clone();
        let s = &self.config.session;
        let expires_at = env.now + s.lifetime;
        let sealed = s.sealer.seal(&s.cookie_name, expires_at, &session.encode(), env.rng);
        let session_cookie = format!("{}={sealed}{}", s.cookie_name, self.cookie_attrs("/", s.lifetime, s.same_site));
        if session_cookie.len() > MAX_COOKIE_BYTES {
            return self.login_failed(
                env,
                400,
                "session cookie too large",
                "Your account carries too much data (groups) to fit in a cookie.",
                cookies,
            );
        }
        cookies.push(session_cookie);
        // The ID token is only needed as `id_token_hint` at sign-out: keep it in
        // its own cookie scoped to that path so normal requests stay small.
        let idt_name = self.id_token_cookie_name();
        let idt = s.sealer.seal(&idt_name, expires_at, id_token.as_bytes(), env.rng);
        let idt_cookie = format!("{idt_name}={idt}{}", self.cookie_attrs(&self.config.paths.sign_out, s.lifetime, s.same_site));
        if idt_cookie.len() <= MAX_COOKIE_BYTES {
            cookies.push(idt_cookie);
        }
        env.events.push(Event::LoginCompleted);
        // The scheme the login started on, which the callback URL kept.
        let scheme = split_url(&login.redirect_uri).map_or("https", |(scheme, _, _)| scheme);
        let target = safe_redirect(&login.return_to, &self.config.allowed_redirect_hosts, scheme).unwrap_or_else(|| "/".into());
        let resp = if s.same_site == SameSite::Strict { pages::continue_page(&target) } else { pages::redirect(&target) };
        Step::Respond(resp.with_cookies(cookies))
    }

    /// A session for these claims; `id` names it for revocation (new at
    /// login, the same across refreshes).
    pub(super) fn session_from_claims(&self, c: &IdClaims, refresh_token: Option<String>, now: u64, id: [u8; 16]) -> Session {
        let clean = |v: &Option<String>| v.as_deref().map(clean_header_value);
        // Values that decide who someone is pass as they are or not at all:
        // `alice\u{85}` cleaned into `alice` would be someone else.
        let exact = |v: &Option<String>| v.as_deref().filter(|v| header_safe(v)).map(str::to_owned);
        let user = match self.config.provider.user_claim {
            UserClaim::Email => exact(&c.email),
            UserClaim::Name => exact(&c.name),
            UserClaim::Sub => None,
            UserClaim::PreferredUsername => exact(&c.preferred_username),
        }
        .unwrap_or_else(|| clean_header_value(&c.sub));
        Session {
            sub: c.sub.clone(),
            user,
            email: exact(&c.email),
            email_verified: c.email_verified,
            name: clean(&c.name),
            groups: c.groups.iter().filter(|g| header_safe(g)).cloned().collect(),
            login_at: now,
            checked_at: now,
            refresh_token,
            id,
            idp_sid: c.sid.clone(),
            auth_time: c.auth_time.filter(|t| *t <= now).unwrap_or(now),
            acr: clean(&c.acr),
            amr: c.amr.iter().filter(|m| header_safe(m)).cloned().collect(),
            asked: None,
        }
    }
}

/// The page to come back to, as the login cookie keeps it: a very long
/// address (a query of kilobytes) would make every login cookie of the
/// browser that large; past the bound its query is dropped, then the path.
/// With every slot taken by such a login, the Cookie header stays within
/// nginx's 8 KB header line (`oidc-edge doctor` shows the sum).
fn bounded_return(return_to: String) -> String {
    const MAX: usize = 512;
    if return_to.len() <= MAX {
        return return_to;
    }
    match return_to.split_once('?') {
        Some((path, _)) if path.len() <= MAX => path.to_owned(),
        _ => "/".to_owned(),
    }
}
