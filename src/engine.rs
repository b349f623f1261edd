//! The decision engine: request head in, [`Step`] out. No clock, socket or
//! random source of its own; the host passes them in [`Env`] and performs
//! every [`Step`] exactly.

use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::cache::{OpenedSession, SessionCache};
use crate::config::{ClientAuth, Config, HeaderNames, SameSite, UserClaim};
use crate::encoding::{b64std, b64url, build_query, escape_non_visible, parse_query, percent_encode, split_url};
use crate::events::Event;
use crate::jose::{profile_claims, verify_id_token, Expected, IdClaims, Jwks, TokenError};
use crate::pages::{self, Response};
use crate::path::{normalize, PathError};
use crate::policy::{Denial, Route, Rule};
use crate::provider::{jwks_call, jwks_from_response, HttpCall, HttpResponse, ProviderSnapshot, JWKS_REFETCH_COOLDOWN};
use crate::redirect::{authority_host, safe_redirect};
use crate::seal::{hmac_sha256, Reject};
use crate::session::{LoginState, Session};
use crate::store::{RecordKey, SharedState};
use crate::SecureRandom;

/// Largest cookie we ever write; browsers drop cookies above ~4096 bytes.
pub const MAX_COOKIE_BYTES: usize = 4000;

/// Seconds before a refresh that could not reach the IdP is tried again.
const REFRESH_RETRY: u64 = 10;

/// The parts of a request the engine reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Method.
    pub method: &'a str,
    /// `http` or `https`, as the client used it.
    pub scheme: &'a str,
    /// Host header / `:authority`.
    pub authority: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    /// Every header (names in any case).
    pub headers: &'a [(String, String)],
    /// Whether the host forwards [`Allow::set_path`] in place of the received
    /// path (Envoy does). Where it does not (nginx, forward-auth proxies), a
    /// path that normalization changes is never forwarded: the upstream would
    /// read the spelling, not the decision.
    pub rewrites_path: bool,
}

impl RequestHead<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name`, across all `cookie` headers (the first one).
    pub fn cookie<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.cookies(name).next()
    }

    /// Every value of cookie `name`: a browser sends several when cookies of
    /// the same name exist for different paths or domains.
    pub fn cookies<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(move |pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v.trim_matches('"'))
            })
    }

    /// Whether the request was made by one of our own pages or by the user
    /// (a typed URL, a bookmark), never by another site: Fetch Metadata where
    /// the browser sends it, else an `Origin` equal to ours. A request with
    /// neither (an old browser's `<img>`, a script) is not.
    fn same_origin(&self) -> bool {
        match self.header("sec-fetch-site") {
            Some(site) => site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"),
            None => self.header("origin").is_some_and(|origin| {
                origin.split_once("://").is_some_and(|(scheme, host)| {
                    scheme.eq_ignore_ascii_case(self.scheme) && host.eq_ignore_ascii_case(self.authority)
                })
            }),
        }
    }

    fn looks_like_api(&self) -> bool {
        let accept = self.header("accept").unwrap_or("");
        (accept.contains("application/json") && !accept.contains("text/html"))
            || self.header("sec-fetch-mode").is_some_and(|m| m.eq_ignore_ascii_case("cors"))
            || self.header("x-requested-with").is_some_and(|m| m.eq_ignore_ascii_case("xmlhttprequest"))
    }
}

/// What the host lends the engine for one call.
pub struct Env<'a> {
    /// Current time, unix seconds.
    pub now: u64,
    /// A CSPRNG (or the filter's keyed DRBG).
    pub rng: &'a mut dyn SecureRandom,
    /// State shared by all workers.
    pub shared: &'a mut dyn SharedState,
    /// Provider metadata; `None` while it has not been loaded.
    pub provider: Option<&'a ProviderSnapshot>,
    /// This worker's cache of opened sessions.
    pub sessions: &'a mut SessionCache,
    /// What happened, for counters and log lines (the host drains it).
    pub events: Vec<Event>,
    /// A JWKS fetched during this call, for the host to share with other workers.
    pub fetched_jwks: Option<Vec<u8>>,
}

/// Continue upstream with these changes. `Debug` names the headers set but
/// not their values (they include injected API keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Allow {
    /// Inbound header names (as received) to remove.
    pub strip: Vec<String>,
    /// Headers to set (overwriting) toward the upstream. Shared strings:
    /// names come from the config, values from the cached session.
    pub set: Vec<(Arc<str>, Arc<str>)>,
    /// A normalized `:path` to forward instead of the received one.
    pub set_path: Option<String>,
    /// `set-cookie` values to add to the upstream's response.
    pub set_cookies: Vec<String>,
}

impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allow")
            .field("strip", &self.strip)
            .field("set", &self.set.iter().map(|(n, _)| &**n).collect::<Vec<_>>())
            .field("set_path", &self.set_path)
            .field("set_cookies", &self.set_cookies.len())
            .finish()
    }
}

/// What the host must do next.
#[must_use]
#[derive(Debug)]
pub enum Step {
    /// Forward the request upstream with these changes.
    Allow(Allow),
    /// Answer locally.
    Respond(Response),
    /// Make this call, then hand the response to [`Engine::on_fetched`] with `pending`.
    Fetch {
        /// The call.
        call: HttpCall,
        /// Opaque state to pass back.
        pending: Pending,
    },
}

/// Login state carried across a callout. Opaque, and its `Debug` shows
/// nothing: it holds a PKCE verifier and tokens.
pub struct Pending(Box<PendingKind>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending([redacted])")
    }
}

enum PendingKind {
    CodeExchange { login: LoginState, csrf_cookie: String },
    Refresh(Refresh),
    Userinfo { refresh: Refresh, refresh_token: Option<String> },
    JwksForLogin { login: LoginState, csrf_cookie: String, tokens: TokenResponse },
}

#[derive(Clone, Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
    access_token: Option<String>,
}

/// A request waiting on a session refresh, with everything needed to finish
/// it: the prepared upstream changes, the old session, and where to send the
/// user if the IdP has ended the session.
struct Refresh {
    route: usize,
    allow: Allow,
    /// Identifies the session generation (derived from its refresh token).
    generation: [u8; 16],
    old: Arc<OpenedSession>,
    api: bool,
    scheme: String,
    authority: String,
    return_to: String,
}

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
    config: Config,
}

fn random_token(rng: &mut dyn SecureRandom) -> String {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes);
    b64url(&bytes)
}

fn clean_header_value(v: &str) -> String {
    v.chars().filter(|c| !c.is_control()).collect()
}

impl Engine {
    /// Wraps a validated configuration.
    pub fn new(config: Config) -> Engine {
        Engine { config }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides a request.
    pub fn on_request(&self, head: &RequestHead<'_>, env: &mut Env<'_>) -> Step {
        let (raw_path, query) = head.path.split_once('?').map_or((head.path, None), |(p, q)| (p, Some(q)));
        let path = match normalize(raw_path) {
            Ok(p) => p,
            Err(e) => {
                env.events.push(Event::Denied("ambiguous or invalid path"));
                let msg = match e {
                    PathError::Ambiguous => "The request path contains an encoded slash, a backslash or a control character.",
                    PathError::Invalid => "The request path is not valid.",
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
        if path == paths.start.as_str() || path == paths.sign_in.as_str() {
            let rd = parse_query(query.unwrap_or("")).into_iter().find(|(k, _)| k == "rd").map(|(_, v)| v);
            let return_to = rd
                .and_then(|rd| safe_redirect(&rd, &self.config.allowed_redirect_hosts, head.scheme))
                .unwrap_or_else(|| "/".to_owned());
            if path == paths.start.as_str() {
                return self.start_login(head.scheme, head.authority, return_to, Vec::new(), env);
            }
            let start = format!("{}?{}", paths.start, build_query(&[("rd", &return_to)]));
            let label = format!("Continue with {}", self.config.provider.display_name);
            return Step::Respond(pages::page(200, "Sign in", "You need to sign in to continue.", Some((&start, &label))));
        }

        let host = authority_host(head.authority);
        let Some(route) = self.config.routes.find(host, &path) else {
            env.events.push(Event::Denied("no route matches"));
            return Step::Respond(self.deny_response(head.looks_like_api(), "No service is configured at this address."));
        };
        let mut allow = Allow {
            strip: head
                .headers
                .iter()
                .filter(|(n, _)| self.config.strip.contains(n))
                .map(|(n, _)| n.clone())
                .collect(),
            set: route.inject.iter().map(|(n, v)| (Arc::clone(n), v.expose_shared())).collect(),
            set_path: (path.as_ref() != raw_path).then(|| path_and_query(&path, query)),
            set_cookies: Vec::new(),
        };
        if route.rule == Rule::Public {
            self.hide_own_cookies(head, &mut allow);
            env.events.push(Event::Allowed);
            return Step::Allow(allow);
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
                Ok(o) => {
                    opened = Some((o, value));
                    break;
                }
                Err(reject) => {
                    first_error.get_or_insert(reject);
                }
            }
        }
        if let (None, Some(reject)) = (&opened, first_error) {
            env.events.push(Event::InvalidCookie(reject.reason()));
            clear_cookie = Some(self.clear_cookie(name, "/"));
        }
        let opened = opened.map(|(o, _)| o);
        let return_to = || path_and_query(&path, query);
        let Some(opened) = opened else {
            return self.login_or_401(head, route, return_to(), clear_cookie.into_iter().collect(), env);
        };
        self.hide_own_cookies(head, &mut allow);
        // Only needed to pick 401/403 JSON over a page: not computed per request.
        let api = || route.api || head.looks_like_api();
        let s = &opened.session;
        if let Some(token) = s.refresh_token.as_deref() {
            if env.now >= s.checked_at.saturating_add(self.config.session.refresh_interval) {
                let refresh = Refresh {
                    route: route.index,
                    allow,
                    generation: shared_key(b"generation", token.as_bytes()),
                    old: Arc::clone(&opened),
                    api: api(),
                    scheme: head.scheme.to_owned(),
                    authority: head.authority.to_owned(),
                    return_to: return_to(),
                };
                return self.refresh(refresh, env);
            }
        }
        self.decide(route, allow, &api, &opened, env)
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
    fn decide(&self, route: &Route, mut allow: Allow, api: &dyn Fn() -> bool, opened: &OpenedSession, env: &mut Env<'_>) -> Step {
        let Rule::Protected(requirement) = &route.rule else {
            env.events.push(Event::Allowed);
            return Step::Allow(allow);
        };
        match requirement.check(&opened.session, self.config.provider.trust_unverified_email) {
            Ok(()) => {
                identity_headers(&route.headers, opened, &mut allow.set);
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
                let resp = self.deny_response(api(), "Your account is not allowed to use this service.");
                Step::Respond(resp.with_cookies(allow.set_cookies))
            }
        }
    }

    /// The sealed session is for this gate only: the upstream gets the
    /// identity headers, not a bearer cookie it could replay elsewhere.
    fn hide_own_cookies(&self, head: &RequestHead<'_>, allow: &mut Allow) {
        let name = self.config.session.cookie_name.as_str();
        let ours = |pair: &str| pair.trim().split_once('=').is_some_and(|(k, _)| k == name || k.starts_with(name) && k[name.len()..].starts_with('_'));
        let cookie_values =
            || head.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")).map(|(_, v)| v.as_str());
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

    fn login_or_401(
        &self,
        head: &RequestHead<'_>,
        route: &Route,
        return_to: String,
        cookies: Vec<String>,
        env: &mut Env<'_>,
    ) -> Step {
        let return_to = if matches!(head.method, "GET" | "HEAD") { return_to } else { "/".to_owned() };
        self.login_again(route.api || head.looks_like_api(), head.scheme, head.authority, return_to, cookies, env)
    }

    /// 401 JSON for API clients, else the redirect to the IdP.
    fn login_again(
        &self,
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
            return Step::Respond(
                pages::json(401, "unauthorized", "Sign in first.", &[("login", &login)]).with_cookies(cookies),
            );
        }
        self.start_login(scheme, authority, return_to, cookies, env)
    }

    /// The 503 page. `cookies` lets a failed callback clear its login cookie,
    /// so that "try again" starts a fresh login instead of replaying a used state.
    fn unavailable(&self, env: &mut Env<'_>, cookies: Vec<String>) -> Step {
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

    fn cookie_attrs(&self, path: &str, max_age: u64, same_site: SameSite) -> String {
        let s = &self.config.session;
        let mut attrs = format!("; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={}", same_site.as_str());
        if s.secure {
            attrs.push_str("; Secure");
        }
        if let Some(d) = &s.domain {
            attrs.push_str("; Domain=");
            attrs.push_str(d);
        }
        attrs
    }

    fn clear_cookie(&self, name: &str, path: &str) -> String {
        format!("{name}={}", self.cookie_attrs(path, 0, self.config.session.same_site))
    }

    fn csrf_cookie_name(&self, state: &str) -> Option<String> {
        let prefix = state.get(..12)?;
        prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .then(|| format!("{}_csrf_{prefix}", self.config.session.cookie_name))
    }

    fn id_token_cookie_name(&self) -> String {
        format!("{}_idt", self.config.session.cookie_name)
    }

    fn redirect_uri(&self, scheme: &str, authority: &str) -> String {
        match &self.config.redirect_url {
            Some(u) => u.clone(),
            None => format!("{scheme}://{authority}{}", self.config.paths.callback),
        }
    }

    fn start_login(&self, scheme: &str, authority: &str, return_to: String, mut cookies: Vec<String>, env: &mut Env<'_>) -> Step {
        let Some(provider) = env.provider else {
            return self.unavailable(env, cookies);
        };
        let login = LoginState {
            state: random_token(env.rng),
            nonce: random_token(env.rng),
            verifier: random_token(env.rng),
            return_to,
            redirect_uri: self.redirect_uri(scheme, authority),
        };
        let challenge = b64url(&sha256(login.verifier.as_bytes()));
        let p = &self.config.provider;
        let query = build_query(&[
            ("response_type", "code"),
            ("client_id", &p.client_id),
            ("redirect_uri", &login.redirect_uri),
            ("scope", &p.scopes),
            ("state", &login.state),
            ("nonce", &login.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let endpoint = &provider.discovery.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let location = format!("{endpoint}{sep}{query}");
        let Some(cookie_name) = self.csrf_cookie_name(&login.state) else {
            return self.unavailable(env, cookies);
        };
        let s = &self.config.session;
        let sealed = s.sealer.seal(&cookie_name, env.now + s.login_timeout, &login.encode(), env.rng);
        // The login cookie is always Lax (or None): the callback is a cross-site
        // navigation from the IdP, and a Strict cookie would not come back with it.
        let same_site = if s.same_site == SameSite::None { SameSite::None } else { SameSite::Lax };
        cookies.push(format!(
            "{cookie_name}={sealed}{}",
            self.cookie_attrs(&self.config.paths.callback, s.login_timeout, same_site)
        ));
        env.events.push(Event::LoginStarted);
        Step::Respond(pages::redirect(&location).with_cookies(cookies))
    }

    fn login_failed(&self, env: &mut Env<'_>, status: u16, reason: &'static str, message: &str, cookies: Vec<String>) -> Step {
        env.events.push(Event::LoginFailed(reason));
        let again = format!("{}?rd=%2F", self.config.paths.start);
        Step::Respond(pages::page(status, "Sign-in failed", message, Some((&again, "Sign in again"))).with_cookies(cookies))
    }

    fn callback(&self, head: &RequestHead<'_>, query: &str, env: &mut Env<'_>) -> Step {
        let params = parse_query(query);
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let csrf_cookie = param("state").and_then(|s| self.csrf_cookie_name(s));
        let clear: Vec<String> =
            csrf_cookie.iter().map(|n| self.clear_cookie(n, &self.config.paths.callback)).collect();
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
        let (Some(state), Some(cookie_name)) = (param("state"), csrf_cookie.as_deref()) else {
            return self.login_failed(env, 400, "callback without state", "The sign-in response is incomplete (no state).", clear);
        };
        let unknown = "This sign-in attempt is not known to this browser: it expired, was already completed, or was started in another browser.";
        let Some(sealed) = head.cookie(cookie_name) else {
            return self.login_failed(env, 400, "no login cookie for this state", unknown, clear);
        };
        let s = &self.config.session;
        let login = match s.sealer.open(cookie_name, sealed, env.now) {
            Ok((bytes, _)) => match LoginState::decode(&bytes) {
                Some(l) => l,
                None => return self.login_failed(env, 400, "login cookie malformed", unknown, clear),
            },
            Err(_) => return self.login_failed(env, 400, "login cookie invalid or expired", unknown, clear),
        };
        if !bool::from(login.state.as_bytes().ct_eq(state.as_bytes())) {
            return self.login_failed(env, 400, "state mismatch", unknown, clear);
        }
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
        let Some(provider) = env.provider else {
            env.events.push(Event::LoginFailed("provider unavailable at callback"));
            return self.unavailable(env, clear);
        };
        let key = RecordKey::LoginState(shared_key(b"state", state.as_bytes()));
        if !env.shared.claim(&key, env.now + s.login_timeout, env.now) {
            return self.login_failed(env, 400, "state replayed", unknown, clear);
        }
        let Some(call) = self.token_call(provider, &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &login.redirect_uri),
            ("code_verifier", &login.verifier),
        ]) else {
            return self.unavailable(env, clear);
        };
        Step::Fetch { call, pending: Pending(Box::new(PendingKind::CodeExchange { login, csrf_cookie: cookie_name.to_owned() })) }
    }

    fn token_call(&self, provider: &ProviderSnapshot, form: &[(&str, &str)]) -> Option<HttpCall> {
        let p = &self.config.provider;
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("client_id", &p.client_id));
        let mut headers = vec![
            ("content-type".to_owned(), "application/x-www-form-urlencoded".to_owned()),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        match p.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: form-encode both parts before base64.
                let creds = format!("{}:{}", percent_encode(&p.client_id), percent_encode(p.client_secret.expose()));
                headers.push(("authorization".to_owned(), format!("Basic {}", b64std(creds.as_bytes()))));
            }
            ClientAuth::Post => fields.push(("client_secret", p.client_secret.expose())),
        }
        p.call("POST", &provider.discovery.token_endpoint, headers, build_query(&fields).into_bytes())
    }

    /// Continues after a [`Step::Fetch`].
    pub fn on_fetched(&self, pending: Pending, response: HttpResponse, env: &mut Env<'_>) -> Step {
        match *pending.0 {
            PendingKind::CodeExchange { login, csrf_cookie } => self.on_token_response(login, csrf_cookie, response, env),
            PendingKind::Refresh(refresh) => self.on_refresh_response(refresh, response, env),
            PendingKind::Userinfo { refresh, refresh_token } => self.on_userinfo_response(refresh, refresh_token, response, env),
            PendingKind::JwksForLogin { login, csrf_cookie, tokens } => {
                let clear = vec![self.clear_cookie(&csrf_cookie, &self.config.paths.callback)];
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
    }

    fn on_token_response(&self, login: LoginState, csrf_cookie: String, resp: HttpResponse, env: &mut Env<'_>) -> Step {
        let clear = vec![self.clear_cookie(&csrf_cookie, &self.config.paths.callback)];
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

    fn finish_login(
        &self,
        login: LoginState,
        mut cookies: Vec<String>,
        tokens: TokenResponse,
        jwks: &Jwks,
        refetched: bool,
        env: &mut Env<'_>,
    ) -> Step {
        let Some(id_token) = tokens.id_token.as_deref() else {
            return self.login_failed(env, 502, "token response without id_token", "The identity provider sent no ID token (is the openid scope allowed?).", cookies);
        };
        let p = &self.config.provider;
        let expected = Expected { issuer: &p.issuer, client_id: &p.client_id, nonce: Some(&login.nonce), now: env.now, leeway: p.clock_skew };
        let claims = match verify_id_token(id_token, jwks, &expected) {
            Ok(c) => c,
            Err(TokenError::UnknownKey) if !refetched => {
                let call = env.provider.and_then(|pr| jwks_call(p, &pr.discovery).ok());
                let allowed = env.shared.claim(&RecordKey::JwksCooldown, env.now + JWKS_REFETCH_COOLDOWN, env.now);
                return match call {
                    Some(call) if allowed => {
                        let csrf_cookie = self.csrf_cookie_name(&login.state).unwrap_or_default();
                        Step::Fetch { call, pending: Pending(Box::new(PendingKind::JwksForLogin { login, csrf_cookie, tokens })) }
                    }
                    _ => self.login_failed(env, 502, "ID token signed with unknown key (refetch cooling down)", "The identity provider signed in with a key that is not yet known. Try again in a minute.", cookies),
                };
            }
            Err(e) => {
                env.events.push(Event::TokenRejected(e.reason()));
                return self.login_failed(env, 400, "ID token rejected", "The identity provider's answer did not pass verification.", cookies);
            }
        };
        let session = self.session_from_claims(&claims, tokens.refresh_token, env.now);
        let s = &self.config.session;
        let expires_at = env.now + s.lifetime;
        let sealed = s.sealer.seal(&s.cookie_name, expires_at, &session.encode(), env.rng);
        let session_cookie = format!("{}={sealed}{}", s.cookie_name, self.cookie_attrs("/", s.lifetime, s.same_site));
        if session_cookie.len() > MAX_COOKIE_BYTES {
            return self.login_failed(env, 400, "session cookie too large", "Your account carries too much data (groups) to fit in a cookie.", cookies);
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

    fn session_from_claims(&self, c: &IdClaims, refresh_token: Option<String>, now: u64) -> Session {
        let clean = |v: &Option<String>| v.as_deref().map(clean_header_value);
        let user = match self.config.provider.user_claim {
            UserClaim::Email => c.email.clone(),
            UserClaim::Name => c.name.clone(),
            UserClaim::Sub => None,
            UserClaim::PreferredUsername => c.preferred_username.clone(),
        }
        .map(|u| clean_header_value(&u))
        .unwrap_or_else(|| clean_header_value(&c.sub));
        Session {
            sub: c.sub.clone(),
            user,
            email: clean(&c.email),
            email_verified: c.email_verified,
            name: clean(&c.name),
            groups: c.groups.iter().map(|g| clean_header_value(g)).collect(),
            login_at: now,
            checked_at: now,
            refresh_token,
        }
    }

    /// A session past its refresh interval: take over a refresh another
    /// worker finished, start one if nobody holds the lock, else serve the
    /// request on the still-valid session while the other refresh runs.
    fn refresh(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        if let Some(record) = env.shared.get(&RecordKey::Successor(refresh.generation), env.now) {
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
        let lock_key = RecordKey::RefreshLock(refresh.generation);
        // Held across the refresh and a possible userinfo call (two callouts),
        // and it spaces out retries while the IdP is unreachable.
        if !env.shared.claim(&lock_key, env.now + 2 * timeout + REFRESH_RETRY, env.now) {
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
                Step::Fetch { call, pending: Pending(Box::new(PendingKind::Refresh(refresh))) }
            }
            None => {
                env.events.push(Event::RefreshFailed("provider metadata not loaded; session kept"));
                self.serve_old(refresh, env)
            }
        }
    }

    /// Finishes the waiting request with `session` (the old one or its successor).
    fn serve(&self, refresh: Refresh, session: &OpenedSession, env: &mut Env<'_>) -> Step {
        match self.config.routes.get(refresh.route) {
            Some(route) => {
                let api = refresh.api;
                self.decide(route, refresh.allow, &|| api, session, env)
            }
            None => Step::Respond(self.deny_response(refresh.api, "No service is configured at this address.")),
        }
    }

    fn serve_old(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        let old = Arc::clone(&refresh.old);
        self.serve(refresh, &old, env)
    }

    fn serve_refreshed(&self, mut refresh: Refresh, new: Arc<OpenedSession>, cookie: &str, env: &mut Env<'_>) -> Step {
        let s = &self.config.session;
        let max_age = new.expires_at.saturating_sub(env.now);
        refresh.allow.set_cookies.push(format!("{}={cookie}{}", s.cookie_name, self.cookie_attrs("/", max_age, s.same_site)));
        self.serve(refresh, &new, env)
    }

    /// The IdP has ended the session (revoked grant, disabled user): every
    /// request still carrying it goes back to login.
    fn session_ended(&self, refresh: Refresh, env: &mut Env<'_>) -> Step {
        let clear = vec![self.clear_cookie(&self.config.session.cookie_name, "/")];
        self.login_again(refresh.api, &refresh.scheme, &refresh.authority, refresh.return_to, clear, env)
    }

    fn successor_grace(&self) -> u64 {
        self.config.session.refresh_interval.clamp(60, 3600)
    }

    fn end_refreshed_session(&self, refresh: Refresh, why: &'static str, env: &mut Env<'_>) -> Step {
        env.shared.put(&RecordKey::Successor(refresh.generation), b"dead", env.now + self.successor_grace(), env.now);
        env.events.push(Event::RefreshFailed(why));
        self.session_ended(refresh, env)
    }

    fn on_refresh_response(&self, refresh: Refresh, resp: HttpResponse, env: &mut Env<'_>) -> Step {
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
                    Some(call) => Step::Fetch {
                        call,
                        pending: Pending(Box::new(PendingKind::Userinfo { refresh, refresh_token: tokens.refresh_token })),
                    },
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

    fn on_userinfo_response(&self, refresh: Refresh, refresh_token: Option<String>, resp: HttpResponse, env: &mut Env<'_>) -> Step {
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

    fn finish_refresh(&self, refresh: Refresh, claims: &IdClaims, refresh_token: Option<String>, env: &mut Env<'_>) -> Step {
        let old = &refresh.old.session;
        if claims.sub != old.sub {
            return self.end_refreshed_session(refresh, "refresh returned another subject: session ended", env);
        }
        let mut session = self.session_from_claims(claims, refresh_token.or_else(|| old.refresh_token.clone()), env.now);
        session.login_at = old.login_at;
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
        env.shared.put(&key, &record, env.now + self.successor_grace(), env.now);
        env.events.push(Event::RefreshSucceeded);
        match self.open_session(&sealed, env) {
            Ok(new) => self.serve_refreshed(refresh, new, &sealed, env),
            Err(_) => self.serve_old(refresh, env),
        }
    }

    fn sign_out(&self, head: &RequestHead<'_>, query: &str, env: &mut Env<'_>) -> Step {
        // Signing out also ends the IdP session: another site must not be
        // able to do it with an `<img>` or an auto-submitted form.
        if !head.same_origin() {
            let action = if query.is_empty() { self.config.paths.sign_out.clone() } else { format!("{}?{query}", self.config.paths.sign_out) };
            return Step::Respond(pages::confirm("Sign out?", "Do you want to sign out?", &action, "Sign out"));
        }
        let s = &self.config.session;
        let idt_name = self.id_token_cookie_name();
        if let Some(v) = head.cookie(&s.cookie_name) {
            env.sessions.remove(v);
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
                let post_logout = self
                    .config
                    .post_logout_redirect_url
                    .clone()
                    .unwrap_or_else(|| format!("{}://{}/", head.scheme, head.authority));
                let mut q = vec![("client_id", self.config.provider.client_id.as_str()), ("post_logout_redirect_uri", post_logout.as_str())];
                if let Some(h) = hint.as_deref() {
                    q.insert(0, ("id_token_hint", h));
                }
                let sep = if endpoint.contains('?') { '&' } else { '?' };
                format!("{endpoint}{sep}{}", build_query(&q))
            }
            None => local,
        };
        Step::Respond(pages::redirect(&location).with_cookies(cookies))
    }
}

/// The normalized path with the query as received.
fn path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
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
        exp: 0,
        iat: 0,
    }
}

fn identity_headers(names: &HeaderNames, opened: &OpenedSession, set: &mut Vec<(Arc<str>, Arc<str>)>) {
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
