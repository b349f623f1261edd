//! Step-up: a route that wants a recent sign-in (`max_auth_age`) or a given
//! method (`acr`, `amr`) sends the browser back to the provider asking for
//! it (the login marks itself, see [`crate::session::Asked`]), and says so
//! plainly when the session that login made still falls short, rather than
//! sending the browser round in a loop.

use super::{Allow, Engine, Env, Step, Visit};
use crate::bearer::quoted;
use crate::cache::OpenedSession;
use crate::encoding::{build_query, split_url};
use crate::events::Event;
use crate::pages::{self, Response};
use crate::path::normalize;
use crate::policy::{Route, StepUp, StepUpNeed};
use crate::redirect::authority_host;
use crate::session::Asked;

impl Engine {
    pub(super) fn step_up(
        &self,
        route: &Route,
        need: StepUpNeed,
        opened: &OpenedSession,
        visit: &Visit<'_>,
        allow: Allow,
        env: &mut Env<'_>,
    ) -> Step {
        let again = || format!("{}?{}", self.config.paths.start, build_query(&[("rd", &(visit.return_to)())]));
        if route.step_up.refused_by_provider(&opened.session) {
            env.events.push(Event::Denied("the provider's sign-in does not meet the route's max_auth_age, acr or amr"));
            let message = match need {
                StepUpNeed::Fresher => "This service needs a recent sign-in, and the identity provider did not sign you in again.",
                StepUpNeed::Stronger => {
                    "This service needs a stronger sign-in (for example with a passkey) than the one the identity provider reported."
                }
            };
            let resp = if (visit.api)() {
                pages::json(403, "insufficient_user_authentication", message, &[])
            } else {
                pages::page(403, "A stronger sign-in is needed", message, Some((&again(), "Sign in again")))
            };
            return Step::Respond(resp.with_cookies(allow.set_cookies));
        }
        if (visit.api)() {
            env.events.push(Event::Unauthorized);
            let resp = pages::json(401, "step_up_required", "Sign in again to use this service.", &[("login", &again())]);
            return Step::Respond(resp.with_cookies(allow.set_cookies));
        }
        self.start_login(visit.head, visit.scheme, visit.authority, (visit.return_to)(), allow.set_cookies, env)
    }

    /// What the route of `return_to` (on `authority` when it is relative)
    /// wants of the sign-in, when it wants anything.
    pub(super) fn step_up_for(&self, authority: &str, return_to: &str) -> Option<Asked> {
        let (authority, target) = split_url(return_to).map_or((authority, return_to), |(_, a, p)| (a, p));
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let path = normalize(path).ok()?;
        let route = self.config.routes.find(authority_host(authority), &path, "GET")?;
        (!route.step_up.is_empty()).then(|| route.step_up.to_ask())
    }
}

/// What a step-up login sends: `max_age` for a recent sign-in, `acr_values`
/// for a method, and `prompt=login` for providers that ignore `max_age` (a
/// method by `amr` can only be asked for that way).
pub(super) fn step_up_params(asked: &Asked) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(max) = asked.max_age {
        out.push(("max_age", max.to_string()));
    }
    if !asked.acr.is_empty() {
        out.push(("acr_values", asked.acr.join(" ")));
    }
    out.push(("prompt", "login".to_owned()));
    out
}

/// RFC 9470's challenge for an API client whose token's sign-in falls short.
pub(super) fn bearer_step_up(step_up: &StepUp) -> Response {
    let description = "The token's sign-in is too old or too weak for this service.";
    let mut r = pages::json(401, "insufficient_user_authentication", description, &[]);
    let mut challenge =
        format!("Bearer realm=\"oidc-edge\", error=\"insufficient_user_authentication\", error_description=\"{}\"", quoted(description));
    if let Some(max) = step_up.max_auth_age {
        challenge.push_str(&format!(", max_age={max}"));
    }
    if !step_up.acr.is_empty() {
        challenge.push_str(&format!(", acr_values=\"{}\"", quoted(&step_up.acr.join(" "))));
    }
    r.headers.push(("www-authenticate".to_owned(), challenge));
    r
}
