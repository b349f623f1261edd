//! The sidecar's request handling: which endpoint, whose word to take for
//! the original request, one engine decision, and how each proxy wants the
//! answer (nginx `auth_request`, forward-auth, or a plain response).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use oidc_edge::events::{Counter, Severity};
use oidc_edge::fleet::RevocationLog;
use oidc_edge::provider::{Load, Progress, Schedule};
use oidc_edge::{Config, Driver, Lend, MemoryStore, Outcome, Pending, RequestHead, Response, Step};
use serde_json::json;
use tokio::sync::Notify;

use crate::idp::IdpClient;
use crate::log::{self, Level};
use crate::metrics::{self, Metrics};
use crate::random::OsRandom;
use crate::settings::SidecarConfig;
use crate::store::RedisStore;

/// Opened sessions kept per process.
const SESSION_CACHE: usize = 10_000;
/// Shared records kept at most: login states, and separately locks and successors.
const RECORDS: usize = 100_000;

/// How the answer is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Our own pages and redirects (start, callback, sign-out, sign-in).
    Direct,
    /// nginx `auth_request`: 2xx, 401 or 403 only; nginx shows its own
    /// `error_page` for the rest.
    AuthRequest,
    /// Caddy `forward_auth`, Traefik `forwardAuth`: non-2xx answers go to
    /// the browser unchanged.
    ForwardAuth,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::AuthRequest => "auth_request",
            Mode::ForwardAuth => "forward_auth",
        }
    }
}

struct State {
    driver: Driver,
    records: MemoryStore,
    /// Every revocation this instance knows, for the filters it coordinates.
    log: RevocationLog,
}

pub struct App {
    pub config: Arc<Config>,
    pub settings: SidecarConfig,
    state: Mutex<State>,
    counters: Metrics,
    pub idp: IdpClient,
    /// Wakes the metadata loader when a request finds no metadata.
    pub wake_loader: Notify,
    /// The fleet's shared store; `None` keeps records in this process.
    pub redis: Option<RedisStore>,
}

/// An answer, ready for the HTTP layer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn plain(status: u16, body: &str) -> Answer {
        Answer::text(status, "text/plain; charset=utf-8", body)
    }

    fn text(status: u16, content_type: &str, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), content_type.into()), ("cache-control".into(), "no-store".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn from_response(r: Response) -> Answer {
        Answer { status: r.status, headers: r.headers, body: r.body }
    }

    /// A refusal for the proxy (JSON), logged at most every 10 s: outsiders
    /// can trigger these at will.
    fn refused(status: u16, code: &str, message: &str, level: Level, log_msg: &str, fields: &[(&str, serde_json::Value)]) -> Answer {
        log::event_limited(level, log_msg, fields);
        Answer::from_response(oidc_edge::pages::json(status, code, message, &[]))
    }
}

/// The parts of an inbound request the sidecar reads.
pub struct Inbound {
    pub peer: IpAddr,
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Inbound {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Headers a trusted proxy uses to describe the original request; they are
/// not part of it and never reach the engine.
const FORWARDING: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-proto",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    PROXY_TOKEN_HEADER,
];

/// Where the proxy sends `sidecar.proxy_token` with each decision request.
pub const PROXY_TOKEN_HEADER: &str = "x-oidc-edge-proxy";

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

impl App {
    pub fn new(config: Config, settings: SidecarConfig, redis: Option<RedisStore>) -> App {
        let mut driver = Driver::new(config, SESSION_CACHE);
        // In memory, revocations end with the process; in Redis, every
        // instance reads them back from the start of the stream.
        if redis.is_none() {
            driver.revocations_known_since(now());
        }
        App {
            redis,
            config: driver.shared_config(),
            settings,
            state: Mutex::new(State { driver, records: MemoryStore::new(RECORDS), log: RevocationLog::new(fleet::epoch()) }),
            counters: Metrics::new(),
            idp: IdpClient::new(),
            wake_loader: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The release build aborts on panic (`panic = "abort"`: profiles are
        // workspace-wide and the wasm filter needs it), so there a panic ends
        // the process and no lock is ever poisoned. Debug and test builds
        // unwind, and tokio keeps serving after a task panics: there a
        // poisoned lock only means another request panicked mid-decision, and
        // the state (caches and records) stays consistent, so take it. Kept
        // for those builds; in release the branch is never taken.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ready(&self) -> bool {
        self.lock().driver.provider().is_some()
    }

    /// Whether the shared store answers (always, for the in-memory one).
    pub fn store_up(&self) -> bool {
        self.redis.as_ref().is_none_or(RedisStore::is_up)
    }

    pub fn trusted(&self, peer: IpAddr) -> bool {
        self.settings.trusted_proxies.iter().any(|n| n.contains(peer))
    }

    /// Answers one request.
    pub async fn handle(&self, req: Inbound) -> Answer {
        let path = path_only(&req.path_and_query);
        let paths = &self.config.paths;
        match path {
            "/healthz" => return Answer::plain(200, "ok\n"),
            "/readyz" => {
                if !self.ready() {
                    self.wake_loader.notify_one();
                    return Answer::plain(503, "identity provider metadata not loaded yet\n");
                }
                // Sessions still work without the store; the fleet's
                // guarantees (single refresh, sign-out everywhere) do not.
                if !self.store_up() {
                    return Answer::plain(503, "shared store unreachable\n");
                }
                return Answer::plain(200, "ready\n");
            }
            "/metrics" => return self.metrics(),
            _ => {}
        }
        if path == paths.backchannel_logout {
            return self.backchannel_logout(&req).await;
        }
        if let Some(answer) = self.fleet(path, &req).await {
            return answer;
        }
        let mode = if path == paths.auth {
            Mode::AuthRequest
        } else if path == paths.forward_auth {
            Mode::ForwardAuth
        } else if [&paths.start, &paths.callback, &paths.sign_out, &paths.sign_in, &paths.jwks].iter().any(|p| p.as_str() == path) {
            Mode::Direct
        } else {
            return Answer::plain(404, "not an oidc-edge endpoint\n");
        };
        let trusted = self.trusted(req.peer);
        let original = match self.original_request(&req, mode, trusted) {
            Ok(o) => o,
            Err(answer) => return answer,
        };
        let started = Instant::now();
        let head = RequestHead {
            method: &original.method,
            scheme: &original.scheme,
            authority: &original.authority,
            path: &original.path,
            headers: &original.headers,
            // The proxy forwards its own request line, not ours.
            rewrites_path: false,
            client: original.client,
        };
        let mut turns = Turns::default();
        let step = self.run(&mut turns, |driver, lend| driver.on_request(&head, lend));
        let step = self.finish(&mut turns, step).await;
        let answer = self.shape(step, mode, &original);
        // nginx follows an auth_request refusal with a second decision (its
        // error_page asks the forward-auth endpoint for the browser's answer):
        // that one is counted and logged, so each request counts once.
        if !(mode == Mode::AuthRequest && matches!(answer.status, 401 | 403)) {
            self.record(&turns.counted);
        }
        if log::enabled(Level::Debug) {
            log::event(
                Level::Debug,
                "decision",
                &[
                    ("mode", mode.name().into()),
                    ("status", answer.status.into()),
                    ("method", original.method.as_str().into()),
                    ("host", original.authority.as_str().into()),
                    ("path", path_only(&original.path).into()),
                    ("micros", json!(started.elapsed().as_micros() as u64)),
                ],
            );
        }
        answer
    }

    /// The request being decided: for the auth endpoints, the one the proxy
    /// describes; else this one. Forwarding headers count only from trusted peers.
    fn original_request(&self, req: &Inbound, mode: Mode, trusted: bool) -> Result<Original, Answer> {
        let fwd = |name: &str| if trusted { req.header(name).filter(|v| !v.is_empty()) } else { None };
        let mut scheme = match fwd("x-forwarded-proto") {
            Some(p) if p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        }
        .to_owned();
        let mut authority = fwd("x-forwarded-host").or_else(|| req.header("host")).unwrap_or("").to_owned();
        let headers: Vec<(String, String)> =
            req.headers.iter().filter(|(n, _)| !FORWARDING.iter().any(|f| n.eq_ignore_ascii_case(f))).cloned().collect();
        if mode == Mode::Direct {
            let client = Some(req.peer);
            return Ok(Original { method: req.method.clone(), scheme, authority, path: req.path_and_query.clone(), headers, client });
        }
        if !trusted {
            return Err(Answer::refused(
                403,
                "forbidden",
                "This peer is not a trusted proxy (sidecar.trusted_proxies).",
                Level::Warn,
                "auth request from an untrusted peer refused",
                &[("peer", req.peer.to_string().into()), ("hint", "add the proxy's address to sidecar.trusted_proxies".into())],
            ));
        }
        if let Some(token) = &self.settings.proxy_token {
            let sent = req.header(PROXY_TOKEN_HEADER).unwrap_or("");
            if !bool::from(subtle::ConstantTimeEq::ct_eq(sent.as_bytes(), token.expose().as_bytes())) {
                return Err(Answer::refused(
                    403,
                    "forbidden",
                    "Decisions are for the proxy only.",
                    Level::Warn,
                    "decision request without the proxy token refused",
                    &[
                        ("peer", req.peer.to_string().into()),
                        ("hint", "route decisions only through the snippets `oidc-edge render` writes".into()),
                    ],
                ));
            }
        }
        let method = fwd("x-forwarded-method").or_else(|| fwd("x-original-method")).unwrap_or("GET").to_ascii_uppercase();
        let path = if let Some(uri) = fwd("x-forwarded-uri") {
            uri.to_owned()
        } else if let Some(url) = fwd("x-original-url") {
            match oidc_edge::encoding::split_url(url) {
                Some((s, a, p)) => {
                    scheme = s.to_owned();
                    authority = a.to_owned();
                    p.to_owned()
                }
                None => url.to_owned(),
            }
        } else {
            return Err(Answer::refused(
                400,
                "bad_request",
                "The proxy did not say which request to decide: send X-Forwarded-Uri or X-Original-URL.",
                Level::Warn,
                "auth request without the original URI refused",
                &[("hint", "send X-Forwarded-Uri (nginx: proxy_set_header X-Forwarded-Uri $request_uri) or X-Original-URL".into())],
            ));
        };
        // A browser that reaches a decision endpoint through the proxy's
        // public /oauth2/ route must not read a decision (it would show the
        // route's injected secrets): no proxy asks to decide those paths.
        let paths = &self.config.paths;
        if oidc_edge::path::normalize(path_only(&path)).is_ok_and(|p| p == paths.auth.as_str() || p == paths.forward_auth.as_str()) {
            return Err(Answer::refused(
                404,
                "not_found",
                "Not found.",
                Level::Info,
                "decision about a decision endpoint refused",
                &[("peer", req.peer.to_string().into())],
            ));
        }
        let (headers, client) = client_from_proxy(headers);
        Ok(Original { method, scheme, authority, path, headers, client })
    }

    /// One turn of the driver with the in-memory store lent for its duration.
    /// The provider's back-channel logout: it calls the sidecar directly
    /// (any peer: the token is signed), and the revocations reach every
    /// instance of a fleet through the store.
    async fn backchannel_logout(&self, req: &Inbound) -> Answer {
        if req.method != "POST" {
            return Answer::plain(405, "back-channel logout takes a POST\n");
        }
        let mut turns = Turns::default();
        let step = self.run(&mut turns, |driver, lend| driver.on_backchannel_logout(&req.body, lend));
        let step = self.finish(&mut turns, step).await;
        self.record(&turns.counted);
        match step {
            Step::Respond(r) => Answer::from_response(r),
            _ => Answer::plain(500, "internal error\n"),
        }
    }

    /// One turn of the driver. The in-memory store is lent for its
    /// duration; with Redis, store operations come back as steps, and the
    /// writes and revocations are kept in `turns` for [`App::finish`].
    fn run(&self, turns: &mut Turns, turn: impl FnOnce(&mut Driver, Lend<'_>) -> Outcome) -> Step {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.driver.provider().is_none() {
            self.wake_loader.notify_one();
        }
        let store: Option<&mut dyn oidc_edge::SharedState> = if self.redis.is_some() { None } else { Some(&mut state.records) };
        let now = now();
        let mut outcome = turn(&mut state.driver, Lend { now, rng: &mut OsRandom, store });
        state.log.add(&outcome.revoked, now);
        drop(guard);
        turns.counted.push(Counted::from(&outcome));
        turns.writes.append(&mut outcome.writes);
        turns.revoked.append(&mut outcome.revoked);
        outcome.step
    }

    /// Performs IdP calls and store operations until the driver has an
    /// answer, then the records to write and the revocations to publish.
    async fn finish(&self, turns: &mut Turns, mut step: Step) -> Step {
        loop {
            let (pending, answer): (Pending, oidc_edge::Answer) = match step {
                Step::Fetch { call, pending } => (pending, oidc_edge::Answer::Http(self.call_idp(&call).await)),
                Step::Store { op, pending } => {
                    let answer = match &self.redis {
                        Some(redis) => redis.perform(&op, now()).await,
                        // The in-memory store answers within the turn.
                        None => oidc_edge::StoreAnswer::Unavailable,
                    };
                    (pending, oidc_edge::Answer::Store(answer))
                }
                done => {
                    self.settle(turns).await;
                    return done;
                }
            };
            step = self.run(turns, |driver, lend| driver.on_answer(pending, answer, lend));
        }
    }

    async fn settle(&self, turns: &mut Turns) {
        let Some(redis) = &self.redis else { return };
        let now = now();
        for write in turns.writes.drain(..) {
            redis.write(&write, now).await;
        }
        if !turns.revoked.is_empty() && !redis.publish(&turns.revoked).await {
            log::event(
                Level::Warn,
                "a sign-out could not be shared with the fleet",
                &[("hint", "the other instances accept the signed-out cookie until it expires; check the store".into())],
            );
        }
        turns.revoked.clear();
    }

    /// Learns revocations other instances published.
    pub fn learn(&self, revoked: &[oidc_edge::revocation::Revocation]) {
        if !revoked.is_empty() {
            let now = now();
            let mut state = self.lock();
            state.driver.learn(revoked, now);
            state.log.add(revoked, now);
        }
    }

    fn shape(&self, step: Step, mode: Mode, original: &Original) -> Answer {
        let allow = match step {
            Step::Respond(r) => return self.refusal(r, mode, original),
            Step::Fetch { .. } | Step::Store { .. } => return Answer::plain(500, "internal error\n"),
            Step::Allow(a) => a,
        };
        if mode == Mode::Direct {
            return Answer::plain(404, "not an oidc-edge endpoint\n");
        }
        if mode == Mode::ForwardAuth && !allow.set_cookies.is_empty() {
            // Forward-auth proxies copy headers of a 2xx into the upstream
            // request only, so a renewed session cookie would never reach the
            // browser (and Pocket ID revokes a reused refresh token). Send the
            // browser back to the same URL with the new cookie; 307 keeps the
            // method and body.
            let mut headers =
                vec![("location".to_owned(), original.absolute(&original.path)), ("cache-control".to_owned(), "no-store".to_owned())];
            headers.extend(allow.set_cookies.into_iter().map(|c| ("set-cookie".to_owned(), c)));
            return Answer { status: 307, headers, body: Vec::new() };
        }
        // A 2xx names every header the upstream request should carry; the
        // proxy config copies them and drops inbound spellings of the rest.
        let mut headers = Vec::new();
        let mut cookie_set = false;
        for (name, value) in &allow.set {
            if name.eq_ignore_ascii_case("cookie") {
                cookie_set = true;
            }
            headers.push((name.to_string(), value.to_string()));
        }
        if !cookie_set && !allow.strip.iter().any(|n| n.eq_ignore_ascii_case("cookie")) {
            let cookies: Vec<&str> =
                original.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")).map(|(_, v)| v.as_str()).collect();
            if !cookies.is_empty() {
                headers.push(("cookie".to_owned(), cookies.join("; ")));
            }
        }
        // The proxy copies Authorization from this answer where routes take
        // bearer tokens: handed back unless the token was for the gate only.
        if self.config.routes.strips_bearer_tokens() && !allow.strip.iter().any(|n| n.eq_ignore_ascii_case("authorization")) {
            if let Some((_, v)) = original.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
                headers.push(("authorization".to_owned(), v.clone()));
            }
        }
        headers.push(("cache-control".to_owned(), "no-store".to_owned()));
        headers.extend(allow.set_cookies.into_iter().map(|c| ("set-cookie".to_owned(), c)));
        Answer { status: 200, headers, body: Vec::new() }
    }

    fn refusal(&self, mut r: Response, mode: Mode, original: &Original) -> Answer {
        if mode != Mode::Direct && (200..300).contains(&r.status) {
            // A page of ours (sign-in, the SameSite=Strict continue page) asked
            // for through a decision: a forward-auth proxy would read its 2xx as
            // "allow" and send the request upstream. The proxy must route our
            // pages to us directly; say so instead.
            log::event_limited(
                Level::Warn,
                "a sidecar page was requested through a decision",
                &[("hint", "route the paths.start, callback, sign_out and sign_in paths to the sidecar itself (oidc-edge render)".into())],
            );
            let r = oidc_edge::pages::page(
                500,
                "Sign-in misrouted",
                "The proxy sends this sign-in page through an access check instead of to the sign-in service.",
                None,
            );
            return Answer::from_response(r);
        }
        if mode == Mode::ForwardAuth {
            for (name, value) in &mut r.headers {
                if name.eq_ignore_ascii_case("location") {
                    *value = original.absolute(value);
                }
            }
        }
        if mode != Mode::AuthRequest {
            return Answer::from_response(r);
        }
        // nginx accepts only 401 and 403 from auth_request (anything else is
        // a 500). 401 means "no usable session": the config's error_page asks
        // the forward-auth endpoint for the real answer (login redirect, JSON
        // 401 or the 503 page); 403 covers every other refusal the same way.
        let status = match r.status {
            302 | 401 | 503 => 401,
            _ => 403,
        };
        Answer { status, headers: vec![("cache-control".into(), "no-store".into())], body: Vec::new() }
    }

    fn record(&self, turns: &[Counted]) {
        for turn in turns {
            for counter in &turn.counters {
                self.counters.inc(*counter);
            }
            for (severity, line) in &turn.lines {
                let level = match severity {
                    Severity::Warn => Level::Warn,
                    Severity::Info => Level::Info,
                };
                log::event(level, line, &[]);
            }
        }
    }

    fn metrics(&self) -> Answer {
        match self.counters.render(self.ready(), self.store_up()) {
            Ok(text) => Answer::text(200, metrics::CONTENT_TYPE, &text),
            Err(_) => Answer::plain(500, "cannot encode the metrics\n"),
        }
    }

    /// Calls the provider. A call that got no answer is logged with its
    /// cause and becomes status 0, which the core reads as "unreachable".
    async fn call_idp(&self, call: &oidc_edge::HttpCall) -> oidc_edge::HttpResponse {
        self.idp.call(call).await.unwrap_or_else(|e| {
            log::event(
                Level::Warn,
                "identity provider call failed",
                &[("target", call.target.as_str().into()), ("path", path_only(&call.path).into()), ("reason", e.to_string().into())],
            );
            oidc_edge::HttpResponse { status: 0, body: Vec::new() }
        })
    }

    /// When the provider metadata in use was fetched.
    pub fn loaded_at(&self) -> Option<u64> {
        self.lock().driver.loaded_at()
    }

    /// Runs one provider load to its end and installs what it fetched.
    /// Returns the schedule for the next one.
    pub async fn load_provider(&self, schedule: Schedule) -> Schedule {
        let config = &self.config.provider;
        let mut progress = Load::start(config, schedule, now());
        loop {
            match progress {
                Progress::Fetch(load, call) => {
                    let response = self.call_idp(&call).await;
                    progress = load.advance(config, response, schedule, now());
                }
                Progress::Loaded { docs, schedule } => {
                    match self.lock().driver.install(docs) {
                        Ok(()) => log::event(Level::Info, "identity provider metadata loaded", &[("issuer", config.issuer.as_str().into())]),
                        Err(e) => log::event(Level::Warn, "identity provider metadata not loaded", &[("reason", e.to_string().into())]),
                    }
                    return schedule;
                }
                Progress::Failed { error, schedule } => {
                    log::event(
                        Level::Warn,
                        "identity provider metadata not loaded",
                        &[("reason", error.to_string().into()), ("retry_in_s", schedule.next_attempt.saturating_sub(now()).into())],
                    );
                    return schedule;
                }
            }
        }
    }
}

/// What a request's turns left for the host: counters and log lines, and
/// with Redis the records to write and the revocations to publish.
#[derive(Default)]
struct Turns {
    counted: Vec<Counted>,
    writes: Vec<oidc_edge::StoreWrite>,
    revoked: Vec<oidc_edge::revocation::Revocation>,
}

/// What one turn asks to count and log; recorded once the request's answer
/// is known (nginx's second decision after an `auth_request` refusal is not
/// recorded twice).
struct Counted {
    counters: Vec<Counter>,
    lines: Vec<(Severity, String)>,
}

impl From<&Outcome> for Counted {
    fn from(outcome: &Outcome) -> Counted {
        Counted { counters: outcome.counters().collect(), lines: outcome.log_lines().collect() }
    }
}

/// What a trusted proxy says about the client: its `X-Forwarded-For` ends
/// with the address it saw (the rendered snippets append it; Caddy and
/// Traefik do by themselves). That entry becomes the client's address and
/// the rest is the header as the proxy received it, so that
/// `client_address.forwarded_hops` counts from the same place as in the filter.
fn client_from_proxy(mut headers: Vec<(String, String)>) -> (Vec<(String, String)>, Option<IpAddr>) {
    let is_xff = |n: &str| n.eq_ignore_ascii_case("x-forwarded-for");
    let mut entries: Vec<String> =
        headers.iter().filter(|(n, _)| is_xff(n)).flat_map(|(_, v)| v.split(',')).map(|e| e.trim().to_owned()).collect();
    let Some(last) = entries.pop() else { return (headers, None) };
    headers.retain(|(n, _)| !is_xff(n));
    if !entries.is_empty() {
        headers.push(("x-forwarded-for".to_owned(), entries.join(", ")));
    }
    (headers, oidc_edge::request::parse_address(&last))
}

/// The request under decision.
struct Original {
    method: String,
    scheme: String,
    authority: String,
    path: String,
    headers: Vec<(String, String)>,
    /// The address the proxy saw the client at.
    client: Option<IpAddr>,
}

impl Original {
    /// `target` as an absolute URL on the original request's site when it is
    /// a path. A forward-auth proxy hands the sidecar's Location to the
    /// browser as it is, and Traefik resolves a relative one against the
    /// sidecar's own URL, which the browser cannot reach. An absolute URL (the
    /// IdP) is kept; a path that could leave the site becomes `/`.
    fn absolute(&self, target: &str) -> String {
        if !target.starts_with('/') && target.contains("://") {
            return target.to_owned();
        }
        let path = if target.starts_with('/') && !target.starts_with("//") && !target.starts_with("/\\") { target } else { "/" };
        let plain_host = !self.authority.is_empty() && self.authority.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
        if plain_host {
            format!("{}://{}{path}", self.scheme, self.authority)
        } else {
            path.to_owned()
        }
    }
}

mod fleet;
#[cfg(test)]
mod tests;
