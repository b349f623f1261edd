//! A login signed with a key the worker does not have yet (the provider
//! rotated its keys): one JWKS refetch per cooldown, whoever asks, then the
//! login finishes with the new keys or fails with a page.

use super::login::TokenResponse;
use super::{Engine, Env, Pending, PendingKind, Step};
use crate::events::Event;
use crate::http::HttpResponse;
use crate::provider::{jwks_call, jwks_from_response};
use crate::session::LoginState;

impl Engine {
    pub(super) fn key_not_known(&self, env: &mut Env<'_>, cookies: Vec<String>) -> Step {
        self.login_failed(
            env,
            502,
            "ID token signed with unknown key (refetch cooling down)",
            "The identity provider signed in with a key that is not yet known. Try again in a minute.",
            cookies,
        )
    }

    pub(super) fn on_jwks_cooldown(&self, login: LoginState, tokens: TokenResponse, claimed: bool, env: &mut Env<'_>) -> Step {
        let clear = self.clear_login_cookie(&login.state);
        let call = env.provider.and_then(|pr| jwks_call(&self.config.provider, &pr.discovery).ok());
        match call {
            Some(call) if claimed => Step::Fetch { call, pending: Pending::new(PendingKind::JwksForLogin { login, tokens }) },
            _ => self.key_not_known(env, clear),
        }
    }

    pub(super) fn on_jwks_for_login(&self, login: LoginState, tokens: TokenResponse, response: HttpResponse, env: &mut Env<'_>) -> Step {
        let clear = self.clear_login_cookie(&login.state);
        match jwks_from_response(&response) {
            Ok(jwks) => {
                env.fetched_jwks = Some(response.body);
                self.finish_login(login, clear, tokens, &jwks, true, env)
            }
            Err(_) if response.status == 0 => {
                env.events.push(Event::LoginFailed("JWKS refetch failed"));
                self.unavailable(env, clear)
            }
            Err(_) => self.login_failed(env, 502, "JWKS refetch invalid", "The identity provider's keys could not be read.", clear),
        }
    }
}
