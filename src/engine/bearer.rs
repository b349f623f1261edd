//! Requests with `Authorization: Bearer <JWT>` on routes that take them:
//! verified once per token and audience set, then a cache lookup; refusals
//! as RFC 6750 says, never a redirect to a login page.

use std::sync::Arc;

use super::{identity_headers, Allow, Engine, Env, Step};
use crate::bearer::{quoted, verify_bearer, BearerRule};
use crate::cache::OpenedSession;
use crate::events::Event;
use crate::pages::{self, Response};
use crate::policy::{Route, Rule};
use crate::request::RequestHead;

impl Engine {
    pub(super) fn decide_bearer(
        &self,
        route: &Route,
        rule: &BearerRule,
        token: &str,
        head: &RequestHead<'_>,
        mut allow: Allow,
        env: &mut Env<'_>,
    ) -> Step {
        let cached = env.tokens.get_mut(rule.cache).and_then(|c| c.get(token, env.now));
        let opened = match cached {
            Some(opened) => opened,
            None => {
                let Some(provider) = env.provider else {
                    env.events.push(Event::ProviderUnavailable);
                    return Step::Respond(pages::json(503, "temporarily_unavailable", "The identity provider's keys are not loaded yet.", &[]));
                };
                let p = &self.config.provider;
                match verify_bearer(token, &provider.jwks, &p.issuer, &rule.audiences, env.now, p.clock_skew) {
                    Ok(claims) => {
                        // Its own id, for the signed identity cache.
                        let id = crate::engine::shared_key(b"bearer", token.as_bytes());
                        let session = self.session_from_claims(&claims, None, claims.iat, id);
                        let opened = Arc::new(OpenedSession::new(session, claims.exp.saturating_add(p.clock_skew)));
                        if let Some(cache) = env.tokens.get_mut(rule.cache) {
                            cache.insert(token, Arc::clone(&opened), env.now);
                        }
                        opened
                    }
                    Err(e) => {
                        let reason = e.reason();
                        env.events.push(Event::TokenRejected(format!("bearer token: {reason}")));
                        return Step::Respond(bearer_refusal(401, "invalid_token", &format!("The access token is not valid: {reason}.")));
                    }
                }
            }
        };
        if !rule.forward {
            allow.strip.push("authorization".to_owned());
        }
        self.hide_own_cookies(head, &mut allow);
        let allowed = match &route.rule {
            Rule::Public => true,
            Rule::Protected(requirement) => requirement.check(&opened.session, self.config.provider.trust_unverified_email).is_ok(),
        };
        if !allowed {
            env.events.push(Event::Denied("bearer token's claims do not satisfy the route"));
            return Step::Respond(bearer_refusal(403, "insufficient_scope", "The token's subject is not allowed to use this service."));
        }
        if route.step_up.unmet(&opened.session, env.now).is_some() {
            env.events.push(Event::Denied("bearer token's sign-in does not meet the route's max_auth_age, acr or amr"));
            return Step::Respond(super::step_up::bearer_step_up(&route.step_up));
        }
        identity_headers(&route.headers, &opened, &mut allow.set);
        self.signed_identity(route, &opened, head.authority, &mut allow, env);
        env.events.push(Event::Allowed);
        Step::Allow(allow)
    }
}

/// A refusal for an API client (RFC 6750 §3): the JSON body every 401/403
/// of ours has, and the challenge.
fn bearer_refusal(status: u16, code: &str, description: &str) -> Response {
    let mut r = pages::json(status, code, description, &[]);
    r.headers.push((
        "www-authenticate".to_owned(),
        format!("Bearer realm=\"oidc-edge\", error=\"{code}\", error_description=\"{}\"", quoted(description)),
    ));
    r
}
