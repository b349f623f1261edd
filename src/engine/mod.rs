//! The decision engine: request head in, [`Step`] out. No clock, socket or
//! random source of its own: the [`Driver`](crate::driver::Driver) lends it
//! an [`Env`] for one call and turns what it returns and records into an
//! [`Outcome`](crate::driver::Outcome) for the host.
//!
//! One concern per file: this one routes a request and applies the route's
//! rule; `login` starts logins and finishes callbacks; `refresh` renews
//! sessions with the refresh token; `sign_out` ends them; `cookies` writes
//! every `Set-Cookie`.

mod bearer;
mod cookies;
mod login;
mod refresh;
mod rotation;
mod sign_out;
mod step;
mod step_up;
mod upstream;

use std::sync::Arc;

use serde::Deserialize;

use crate::cache::OpenedSession;
use crate::config::Config;
use crate::encoding::{b64url, build_query, escape_non_visible, parse_query};
use crate::events::Event;
use crate::http::HttpResponse;
use crate::pages::{self, Response};
use crate::path::{lenient_reading, normalize, PathError};
use crate::policy::{Denial, NetworkVerdict, Route, Rule};
use crate::redirect::{authority_host, safe_redirect};
use crate::request::RequestHead;
use crate::seal::{hmac_sha256, Reject};
use crate::session::Session;
use crate::store::StoreAnswer;
use crate::SecureRandom;

pub use cookies::{LOGIN_SLOTS, MAX_COOKIE_BYTES};
use login::TokenResponse;
use refresh::{Refresh, Waiting};
pub(crate) use step::Env;
use step::PendingKind;
pub use step::{Allow, Pending, Step};
use upstream::identity_headers;

/// The `error` code of an OAuth error response (RFC 6749 §5.2), or "".
fn oauth_error_code(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: Option<String>,
    }
    serde_json::from_slice::<ErrorBody>(body).ok().and_then(|e| e.error).unwrap_or_default()
}

/// The engine: a compiled config and nothing else.
pub struct Engine {
    config: Arc<Config>,
}

fn random_token(rng: &mut dyn SecureRandom) -> String {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes);
    b64url(&bytes)
}

/// A display value as it may go into a header: no control characters (no
/// CR/LF injection, no NEL) and no surrounding whitespace.
fn clean_header_value(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect::<String>().trim().to_owned()
}

/// Whether a value that decides access (a user name, an email, a group, a
/// method) can go into a header as it is: not empty, no control character,
/// no surrounding whitespace. Others are left out rather than cleaned: an
/// upstream that trims would read ` admins ` as `admins` while the gate's
/// policy did not, and `alice\u{85}` cleaned would be alice.
fn header_safe(v: &str) -> bool {
    !v.is_empty() && !v.chars().any(char::is_control) && v.trim() == v
}

impl Engine {
    /// Wraps a validated configuration.
    pub fn new(config: Arc<Config>) -> Engine {
        Engine { config }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration, shared.
    pub fn shared_config(&self) -> Arc<Config> {
        Arc::clone(&self.config)
    }

    /// Decides a request.
    pub(crate) fn on_request(&self, head: &RequestHead<'_>, env: &mut Env<'_>) -> Step {
        if let Some(why) = head.refusal() {
            env.events.push(Event::Denied("malformed Host or an h2c upgrade"));
            return Step::Respond(pages::page(400, "Bad request", why, None));
        }
        let (raw_path, query) = head.path.split_once('?').map_or((head.path, None), |(p, q)| (p, Some(q)));
        let path = match normalize(raw_path) {
            Ok(p) => p,
            Err(e) => {
                env.events.push(Event::Denied("ambiguous or invalid path"));
                let msg = match e {
                    PathError::Ambiguous => "The request path contains an encoded slash, a backslash or a control character.",
                    PathError::Invalid => "The request path is not valid.",
                    PathError::NotAscii => "The request path has a byte that is not printable ASCII; send it percent-encoded as UTF-8.",
                };
                return Step::Respond(pages::page(400, "Bad request", msg, None));
            }
        };
        if path.as_ref() != raw_path && !head.rewrites_path {
            return Self::to_decided_path(head.method, &path, query, env);
        }
        let paths = &self.config.paths;
        if path == paths.callback.as_str() {
            return self.callback(head, query.unwrap_or(""), env);
        }
        if path == paths.sign_out.as_str() {
            return self.sign_out(head, query.unwrap_or(""), env);
        }
        if path == paths.jwks.as_str() {
            return Step::Respond(match &self.config.identity {
                Some(signer) => Response {
                    status: 200,
                    headers: vec![
                        ("content-type".into(), "application/jwk-set+json".into()),
                        ("cache-control".into(), "public, max-age=300".into()),
                    ],
                    body: signer.jwks().into_bytes(),
                },
                None => pages::page(404, "Not found", "No identity signing key is configured.", None),
            });
        }
        if path == paths.start.as_str() || path == paths.sign_in.as_str() {
            let rd = parse_query(query.unwrap_or("")).into_iter().find(|(k, _)| k == "rd").map(|(_, v)| v);
            let return_to =
                rd.and_then(|rd| safe_redirect(&rd, &self.config.allowed_redirect_hosts, head.scheme)).unwrap_or_else(|| "/".to_owned());
            if path == paths.start.as_str() {
                return self.start_login(Some(head), head.scheme, head.authority, return_to, Vec::new(), env);
            }
            let start = format!("{}?{}", paths.start, build_query(&[("rd", &return_to)]));
            let label = format!("Continue with {}", self.config.provider.display_name);
            return Step::Respond(pages::page(200, "Sign in", "You need to sign in to continue.", Some((&start, &label))));
        }

        let host = authority_host(head.authority);
        let route = self.config.routes.find(host, &path, head.method);
        if let Some(lenient) = lenient_reading(&path) {
            if self.config.routes.find(host, &lenient, head.method).map(|r| r.index) != route.map(|r| r.index) {
                env.events.push(Event::Denied("path that lenient servers read as another route"));
                return Step::Respond(pages::page(
                    400,
                    "Bad request",
                    "Some servers read this request path as another address (a trailing dot or space, an invisible or fullwidth character).",
                    None,
                ));
            }
        }
        let Some(route) = route else {
            env.events.push(Event::Denied("no route matches"));
            return Step::Respond(self.deny_response(head.looks_like_api(), "No service is configured at this address."));
        };
        let mut allow = Allow {
            strip: head
                .headers
                .iter()
                .filter(|(n, _)| self.config.strip.contains(n) || crate::headers::respells_proxy_header(n))
                .map(|(n, _)| n.clone())
                .collect(),
            set: route.inject.iter().map(|(n, v)| (Arc::clone(n), v.expose_shared())).collect(),
            set_path: (path.as_ref() != raw_path).then(|| path_and_query(&path, query)),
            set_cookies: Vec::new(),
        };
        if !route.networks.is_empty() {
            match route.networks.verdict(head.client_address(self.config.client_hops)) {
                NetworkVerdict::Denied => {
                    env.events.push(Event::Denied("client address in the route's deny_networks (or unknown)"));
                    return Step::Respond(self.deny_response(route.api || head.looks_like_api(), "Access from your network is not allowed."));
                }
                NetworkVerdict::Allowed => return self.pass_without_login(head, allow, env),
                NetworkVerdict::Unlisted => {}
            }
        }
        if route.rule == Rule::Public || route.cors_preflight && head.is_cors_preflight() {
            return self.pass_without_login(head, allow, env);
        }
        if let Some(rule) = &route.bearer {
            if let Some(token) = crate::bearer::bearer_token(head) {
                return self.decide_bearer(route, rule, token, head, allow, env);
            }
        }
        let name = &self.config.session.cookie_name;
        let mut clear_cookie = None;
        // With several values of our cookie (a stale one on another path or
        // domain, or one planted from a sibling subdomain), the first that
        // opens wins; a bad one must not shadow a good one and loop the login.
        let mut opened = None;
        let mut first_error = None;
        for value in head.cookies(name) {
            match self.open_session(value, env) {
                // Signed out (here or on another instance): a copy of the
                // cookie is worth nothing, as if it had never opened.
                Ok(o) if env.revocations.revokes(&o.revocation, o.session.login_at, env.now) => {
                    first_error.get_or_insert("session revoked (signed out)");
                }
                Ok(o) => {
                    opened = Some((o, value));
                    break;
                }
                Err(reject) => {
                    first_error.get_or_insert(reject.reason());
                }
            }
        }
        if let (None, Some(reason)) = (&opened, first_error) {
            env.events.push(Event::InvalidCookie(reason));
            clear_cookie = Some(self.clear_cookie(name, "/"));
        }
        let return_to = || path_and_query(&path, query);
        let Some((opened, cookie)) = opened else {
            return self.login_or_401(head, route, return_to(), clear_cookie.into_iter().collect(), env);
        };
        self.hide_own_cookies(head, &mut allow);
        // Only needed to pick 401/403 JSON over a page: not computed per request.
        let api = || route.api || head.looks_like_api();
        let s = &opened.session;
        // Checked before the revocations this worker knows began: a sign-out
        // may be what it forgot, so the provider is asked again first. (Times
        // are whole seconds: a session checked in that very second passes, or
        // each refresh in it would ask again, a loop.)
        let unchecked = env.revocations.known_since().is_some_and(|t| s.checked_at < t);
        if unchecked && s.refresh_token.is_none() {
            env.events.push(Event::InvalidCookie("session from before a restart, with nothing to refresh it"));
            let clear = vec![self.clear_cookie(name, "/")];
            return self.login_or_401(head, route, return_to(), clear, env);
        }
        if let Some(token) = s.refresh_token.as_deref() {
            if unchecked || env.now >= s.checked_at.saturating_add(self.config.session.refresh_interval) {
                let refresh = Refresh {
                    generation: shared_key(b"generation", token.as_bytes()),
                    old: Arc::clone(&opened),
                    cookie: cookie.to_owned(),
                    waiting: Waiting::Request {
                        route: route.index,
                        allow,
                        api: api(),
                        scheme: head.scheme.to_owned(),
                        authority: head.authority.to_owned(),
                        return_to: return_to(),
                    },
                };
                return self.refresh(refresh);
            }
        }
        let visit = Visit { head: Some(head), scheme: head.scheme, authority: head.authority, api: &api, return_to: &return_to };
        self.decide(route, allow, &opened, &visit, env)
    }

    /// Answers a request whose path normalization changed, on a host that
    /// would forward the path as received: `/admin/%2e%2e/public/x` decided as
    /// `/public/x` must not reach an upstream that routes it under `/admin/`.
    /// GET and HEAD are sent to the normalized path (308 keeps the method);
    /// other methods are refused, since a redirect would replay their body.
    fn to_decided_path(method: &str, path: &str, query: Option<&str>, env: &mut Env<'_>) -> Step {
        if !(method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD")) {
            env.events.push(Event::Denied("path not in normalized form"));
            return Step::Respond(pages::page(
                400,
                "Bad request",
                "The request path has dot segments, repeated slashes or needless escapes; send it in normalized form.",
                None,
            ));
        }
        env.events.push(Event::PathRedirected);
        // `path` starts with one '/' and never two: a same-site location.
        // Raw UTF-8 from the request line is escaped so a header can carry it.
        let location = escape_non_visible(&path_and_query(path, query));
        Step::Respond(Response { status: 308, ..pages::redirect(&location) })
    }

    /// Applies the route's rule to an authenticated user. `api` says whether
    /// a refusal should be JSON.
    fn decide(&self, route: &Route, mut allow: Allow, opened: &OpenedSession, visit: &Visit<'_>, env: &mut Env<'_>) -> Step {
        let Rule::Protected(requirement) = &route.rule else {
            env.events.push(Event::Allowed);
            return Step::Allow(allow);
        };
        match requirement.check(&opened.session, self.config.provider.trust_unverified_email) {
            Ok(()) => {
                if let Some(need) = route.step_up.unmet(&opened.session, env.now) {
                    return self.step_up(route, need, opened, visit, allow, env);
                }
                identity_headers(&route.headers, opened, &mut allow.set);
                self.signed_identity(route, opened, visit.authority, &mut allow, env);
                env.events.push(Event::Allowed);
                Step::Allow(allow)
            }
            Err(denial) => {
                let why = match denial {
                    Denial::NotAllowed => "user is not in the route's groups, emails or domains",
                    Denial::UnverifiedEmail => {
                        "email rule matched but the provider has not verified the address \
                         (set provider.trust_unverified_email if your provider, e.g. Pocket ID, does not verify emails)"
                    }
                };
                env.events.push(Event::Denied(why));
                let resp = self.deny_response((visit.api)(), "Your account is not allowed to use this service.");
                Step::Respond(resp.with_cookies(allow.set_cookies))
            }
        }
    }

    fn deny_response(&self, api: bool, message: &str) -> Response {
        if api {
            pages::json(403, "forbidden", message, &[])
        } else {
            pages::page(403, "Access denied", message, Some((&self.config.paths.sign_out, "Sign in as someone else")))
        }
    }

    fn open_session(&self, value: &str, env: &mut Env<'_>) -> Result<Arc<OpenedSession>, Reject> {
        if let Some(hit) = env.sessions.get(value, env.now) {
            return Ok(hit);
        }
        let name = &self.config.session.cookie_name;
        let (bytes, expires_at) = self.config.session.sealer.open(name, value, env.now)?;
        let session = Session::decode(&bytes).ok_or(Reject::Malformed)?;
        let opened = Arc::new(OpenedSession::new(session, expires_at));
        env.sessions.insert(value, Arc::clone(&opened), env.now);
        Ok(opened)
    }

    /// Answers a back-channel logout (its POSTed body).
    pub(crate) fn on_backchannel_logout(&self, body: &[u8], env: &mut Env<'_>) -> Step {
        self.backchannel_logout(body, env)
    }

    /// The coordinator's side of a fleet refresh (the host checked the key).
    pub(crate) fn on_fleet_refresh_request(&self, cookie: &str, env: &mut Env<'_>) -> Step {
        self.refresh_for_fleet(cookie, env)
    }

    /// Continues after a [`Step::Fetch`].
    pub(crate) fn on_fetched(&self, pending: Pending, response: HttpResponse, env: &mut Env<'_>) -> Step {
        match *pending.0 {
            PendingKind::CodeExchange { login } => self.on_token_response(login, response, env),
            PendingKind::JwksForLogin { login, tokens } => self.on_jwks_for_login(login, tokens, response, env),
            PendingKind::Refresh(refresh) => self.on_refresh_response(refresh, response, env),
            PendingKind::Userinfo { refresh, refresh_token } => self.on_userinfo_response(refresh, refresh_token, response, env),
            PendingKind::FleetRefresh(refresh) => self.on_fleet_refresh(refresh, response, env),
            PendingKind::FleetSignOut(page) => self.on_fleet_sign_out(page, &response, env),
            // A store answer was expected: an HTTP answer says nothing about it.
            kind => self.on_stored(Pending(Box::new(kind)), StoreAnswer::Claimed(false), env),
        }
    }

    /// Continues after a [`Step::Store`]. An answer of the wrong kind counts
    /// as "not found" / "not claimed" (fail closed).
    pub(crate) fn on_stored(&self, pending: Pending, answer: StoreAnswer, env: &mut Env<'_>) -> Step {
        let claimed = matches!(answer, StoreAnswer::Claimed(true));
        if answer == StoreAnswer::Unavailable {
            return self.without_store(pending, env);
        }
        match *pending.0 {
            PendingKind::StateClaim { login, code } => self.on_state_claimed(login, &code, claimed, env),
            PendingKind::JwksCooldown { login, tokens } => self.on_jwks_cooldown(login, tokens, claimed, env),
            PendingKind::Successor(refresh) => {
                let record = match answer {
                    StoreAnswer::Read(r) => r,
                    _ => None,
                };
                self.on_successor(refresh, record, env)
            }
            PendingKind::SuccessorUnderLock(refresh) => {
                let record = match answer {
                    StoreAnswer::Read(r) => r,
                    _ => None,
                };
                self.on_successor_under_lock(refresh, record, env)
            }
            PendingKind::RefreshLock(refresh) => self.on_refresh_lock(refresh, claimed, env),
            PendingKind::LogoutToken(revocation) => self.on_logout_token_claimed(revocation, claimed, env),
            // An HTTP answer was expected: treat as unreachable.
            kind => self.on_fetched(Pending(Box::new(kind)), HttpResponse { status: 0, body: Vec::new() }, env),
        }
    }
}

impl Engine {
    /// The store did not answer: what is safe without it goes on. A login
    /// goes on (its state is in the login cookie, checked; the provider
    /// accepts the code once); a refresh waits (two instances refreshing
    /// one session would end it at a provider that rotates refresh tokens),
    /// the request served on the still-valid session; a JWKS refetch waits.
    fn without_store(&self, pending: Pending, env: &mut Env<'_>) -> Step {
        match *pending.0 {
            PendingKind::StateClaim { login, code } => {
                env.events.push(Event::StoreUnavailable("login state not recorded; the login goes on"));
                self.on_state_claimed(login, &code, true, env)
            }
            PendingKind::Successor(refresh) | PendingKind::RefreshLock(refresh) | PendingKind::SuccessorUnderLock(refresh) => {
                env.events.push(Event::StoreUnavailable("refresh postponed; session kept"));
                self.serve_old(refresh, env)
            }
            PendingKind::LogoutToken(revocation) => {
                // Applying a logout twice only revokes again what it named.
                env.events.push(Event::StoreUnavailable("logout token's jti not recorded; the logout goes on"));
                self.on_logout_token_claimed(revocation, true, env)
            }
            PendingKind::JwksCooldown { login, tokens } => {
                env.events.push(Event::StoreUnavailable("JWKS refetch postponed"));
                self.on_jwks_cooldown(login, tokens, false, env)
            }
            kind => self.on_fetched(Pending(Box::new(kind)), HttpResponse { status: 0, body: Vec::new() }, env),
        }
    }
}

/// Where a request came from, for answers that send the browser somewhere.
/// Closures: computed only when a decision needs them, not per request.
pub(super) struct Visit<'a> {
    /// The request itself, when this turn has it (not after a refresh).
    pub(super) head: Option<&'a RequestHead<'a>>,
    pub(super) scheme: &'a str,
    pub(super) authority: &'a str,
    /// Whether refusals should be JSON.
    pub(super) api: &'a dyn Fn() -> bool,
    /// The path and query to come back to after a login.
    pub(super) return_to: &'a dyn Fn() -> String,
}

/// The normalized path with the query as received.
fn path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// A keyed digest for shared-state keys (never stores a raw state or token).
pub fn shared_key(label: &[u8], value: &[u8]) -> [u8; 16] {
    let mac = hmac_sha256(b"oidc-edge/v1/shared-key", &[label, value]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac[..16]);
    out
}

#[cfg(test)]
mod tests;
