//! Step-up: a route that wants a recent sign-in (`max_auth_age`) or a given
//! method (`acr`, `amr`) sends the browser back to the provider asking for
//! it, and says so plainly when the provider did not deliver, rather than
//! sending the browser round in a loop.

use super::{Allow, Engine, Env, Step, Visit};
use crate::bearer::quoted;
use crate::cache::OpenedSession;
use crate::events::Event;
use crate::pages::{self, Response};
use crate::policy::{Route, StepUp, StepUpNeed};

/// A sign-in this recent that still falls short was the provider's answer
/// to our request: show a page instead of asking again.
const JUST_SIGNED_IN: u64 = 120;

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
        let s = &opened.session;
        if env.now.saturating_sub(s.login_at) < JUST_SIGNED_IN {
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
                pages::page(403, "A stronger sign-in is needed", message, None)
            };
            return Step::Respond(resp.with_cookies(allow.set_cookies));
        }
        if (visit.api)() {
            env.events.push(Event::Unauthorized);
            let login = format!("{}?{}", self.config.paths.start, crate::encoding::build_query(&[("rd", &(visit.return_to)())]));
            let resp = pages::json(401, "step_up_required", "Sign in again to use this service.", &[("login", &login)]);
            return Step::Respond(resp.with_cookies(allow.set_cookies));
        }
        let extra = authorization_params(&route.step_up, need);
        let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.start_login_with(visit.head, visit.scheme, visit.authority, (visit.return_to)(), allow.set_cookies, &pairs, env)
    }
}

/// What to ask the provider for: `max_age` (and `prompt=login`, for
/// providers that ignore it) for a fresher sign-in, `acr_values` for a
/// method; a method by `amr` only can be asked for with `prompt=login`.
fn authorization_params(step_up: &StepUp, need: StepUpNeed) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let (StepUpNeed::Fresher, Some(max)) = (need, step_up.max_auth_age) {
        out.push(("max_age", max.to_string()));
    }
    if !step_up.acr.is_empty() {
        out.push(("acr_values", step_up.acr.join(" ")));
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
