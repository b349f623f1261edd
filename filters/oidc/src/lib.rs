//! oidc-edge as a proxy-wasm filter. This crate only adapts the host: it reads
//! the request once, hands it to the core engine, and performs the returned
//! step. Every decision lives in the `oidc-edge` core.
//!
//! No `unwrap`/`expect` here: a panic traps the VM and drops traffic, so every
//! host error becomes a local response (fail closed).
#![forbid(unsafe_code)]

mod host;
mod shared;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use oidc_edge::provider::{Load, Progress};
use oidc_edge::{Answer, Config, Driver, HttpResponse, Lend, Outcome, SharedProvider, Step};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use host::{unix_now, FilterRng, HostSecrets, Metrics};
use shared::HostShared;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Sessions cached per worker; enough for a household or a small team many times over.
const SESSION_CACHE_CAPACITY: usize = 4096;

/// How often each worker polls shared provider metadata and flushes its counters.
const TICK_MS: u64 = 500;

/// What a worker's root context shares with its HTTP contexts.
struct Worker {
    driver: Driver,
    /// Version of the shared provider documents the driver has installed.
    provider_version: Option<u32>,
    rng: FilterRng,
    metrics: Metrics,
    keys: shared::Keys,
    /// Version of the shared revocation list the driver has learned, and
    /// of its change marker.
    revocations_version: Option<u32>,
    revocations_marker: Option<u32>,
    /// Whether the last poll of the fleet coordinator got an answer (a
    /// change is logged once, not every poll).
    coordinator_answers: bool,
    /// Whether the host forwards the path the filter sets; asked at the
    /// first request (ngx_wasm_module answers properties in request phases).
    rewrites_path: Option<bool>,
}

impl Worker {
    /// Picks up provider documents another worker (or this one) published.
    fn load_provider(&mut self, ctx: &dyn Context) {
        let (data, version) = ctx.get_shared_data(&self.keys.provider);
        if version.is_none() || version == self.provider_version {
            return;
        }
        self.provider_version = version;
        let Some(docs) = data.and_then(|d| SharedProvider::decode(&d)) else { return };
        if let Err(e) = self.driver.install(docs) {
            log::warn!("oidc-edge: shared provider metadata refused: {e}");
        }
    }

    /// Learns the revocations other workers shared since the last look: on
    /// every request (a sign-out on one worker is refused by all at once),
    /// at the cost of reading the small change marker.
    fn load_revocations(&mut self, ctx: &dyn Context, now: u64) {
        let marker = ctx.get_shared_data(&self.keys.revoked_changed).1;
        if marker == self.revocations_marker {
            return;
        }
        self.revocations_marker = marker;
        if let Some((list, version)) = shared::changed_revocations(ctx, &self.keys.revoked, self.revocations_version) {
            self.driver.learn(&list, now);
            self.revocations_version = version;
        }
    }

    /// Shares provider documents with the other workers.
    fn publish(&mut self, ctx: &dyn Context, docs: &SharedProvider) {
        let _ = shared::overwrite(ctx, &self.keys.provider, &docs.encode());
        self.provider_version = ctx.get_shared_data(&self.keys.provider).1;
    }

    /// Starts loading discovery and JWKS if they are missing or stale and
    /// nobody else (no other request, no other worker) is loading them.
    /// Returns the callout in flight.
    ///
    /// Loading is driven by requests rather than `on_tick`: ngx_wasm_module
    /// 0.6.0 crashes reading the answer of a call dispatched from the root
    /// context, and a request that needs the metadata would wait for it anyway.
    fn start_provider_load(&mut self, ctx: &dyn Context, now: u64) -> Option<(u32, Load)> {
        let (schedule, version) = shared::load_schedule(ctx, &self.keys.sync);
        if !schedule.due(self.driver.loaded_at(), now) {
            return None;
        }
        let config = &self.driver.config().provider;
        // Claim the load; a CAS conflict means another request or worker has it.
        if !shared::store_schedule(ctx, &self.keys.sync, schedule.leased(config, now), version) {
            return None;
        }
        let progress = Load::start(config, schedule, now);
        self.continue_load(ctx, progress, now)
    }

    /// Starts this instance's poll of the fleet coordinator for revocations
    /// made elsewhere, if one is due and no other request or worker has it.
    /// Driven by requests, as provider loading is, and before the decision:
    /// a replayed cookie arriving after a quiet spell is checked against
    /// what the fleet knows now.
    fn start_fleet_poll(&mut self, ctx: &dyn Context, now: u64) -> Option<u32> {
        let coordinator = self.driver.config().coordinator.as_ref()?;
        let (schedule, cas) = shared::poll_schedule(ctx, &self.keys.fleet);
        if !schedule.due(now) || !shared::store_poll_schedule(ctx, &self.keys.fleet, &schedule.leased(now), cas) {
            return None;
        }
        match host::dispatch(ctx, &coordinator.poll_call(&schedule.cursor)) {
            Ok(token) => Some(token),
            Err(why) => {
                self.coordinator_reached(false, &why);
                let _ = shared::store_poll_schedule(ctx, &self.keys.fleet, &schedule.after(None, now), None);
                None
            }
        }
    }

    /// Learns what the coordinator answered and shares it with the other workers.
    fn on_fleet_poll(&mut self, ctx: &dyn Context, resp: &HttpResponse, now: u64) {
        let (schedule, _) = shared::poll_schedule(ctx, &self.keys.fleet);
        let cursor = match oidc_edge::fleet::decode_poll(resp) {
            Some((cursor, revoked)) => {
                self.coordinator_reached(true, "");
                if !revoked.is_empty() {
                    self.driver.learn(&revoked, now);
                    if !shared::append_revocations(ctx, &self.keys, &revoked, now) {
                        log::warn!("oidc-edge: revocations from the fleet could not be shared with the other workers");
                    }
                }
                Some(cursor)
            }
            None => {
                self.coordinator_reached(false, &format!("status {}", resp.status));
                None
            }
        };
        let _ = shared::store_poll_schedule(ctx, &self.keys.fleet, &schedule.after(cursor, now), None);
    }

    fn coordinator_reached(&mut self, answered: bool, why: &str) {
        if answered != self.coordinator_answers {
            self.coordinator_answers = answered;
            if answered {
                log::info!("oidc-edge: fleet coordinator reachable again");
            } else {
                log::warn!(
                    "oidc-edge: fleet coordinator unreachable ({why}): sessions go on; refreshes wait; sign-outs elsewhere are not learned"
                );
            }
        }
    }

    /// Continues a load with the answer to its last callout.
    fn on_provider_response(&mut self, ctx: &dyn Context, load: Load, resp: HttpResponse, now: u64) -> Option<(u32, Load)> {
        let (schedule, _) = shared::load_schedule(ctx, &self.keys.sync);
        let progress = load.advance(&self.driver.config().provider, resp, schedule, now);
        self.continue_load(ctx, progress, now)
    }

    /// Performs what a load needs next; returns the callout in flight.
    fn continue_load(&mut self, ctx: &dyn Context, progress: Progress, now: u64) -> Option<(u32, Load)> {
        if let Some((severity, line)) = progress.log_line(&self.driver.config().provider) {
            host::log(severity, &line);
        }
        match progress {
            Progress::Fetch(load, call) => match host::dispatch(ctx, &call) {
                Ok(token) => Some((token, load)),
                Err(why) => {
                    log::warn!("oidc-edge: callout to {} failed to start: {why}", call.target);
                    self.on_provider_response(ctx, load, HttpResponse { status: 0, body: Vec::new() }, now)
                }
            },
            Progress::Loaded { docs, schedule } => {
                self.publish(ctx, &docs);
                let _ = shared::store_schedule(ctx, &self.keys.sync, schedule, None);
                if let Err(e) = self.driver.install(docs) {
                    log::warn!("oidc-edge: provider metadata refused: {e}");
                }
                None
            }
            Progress::Failed { schedule, .. } => {
                let _ = shared::store_schedule(ctx, &self.keys.sync, schedule, None);
                None
            }
        }
    }
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<RefCell<Worker>>>,
    ticking: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let config = match Config::from_json(&text, &HostSecrets) {
            Ok(c) => c,
            Err(errors) => {
                for line in errors.to_string().lines() {
                    log::error!("oidc-edge: {line}");
                }
                return false;
            }
        };
        for warning in &config.warnings {
            log::warn!("oidc-edge: {warning}");
        }
        let keys = shared::Keys::for_issuer(&config.provider.issuer);
        let rng = FilterRng::new(&config.session.sealer.derive(b"oidc-edge/v1/drbg-key"));
        let metrics = match &self.worker {
            Some(w) => {
                let mut old = w.borrow_mut();
                old.metrics.flush();
                old.metrics.clone()
            }
            None => Metrics::define(),
        };
        let worker = Worker {
            driver: Driver::new(config, SESSION_CACHE_CAPACITY),
            provider_version: None,
            revocations_version: None,
            revocations_marker: None,
            rng,
            metrics,
            keys,
            rewrites_path: None,
            coordinator_answers: true,
        };
        HostShared::create_shards(self, &worker.keys.claims);
        // Dated when the worker starts, not at its first request: a session
        // another instance made after this one started owes it no refresh.
        let mut worker = worker;
        let began = shared::revocations_began(self, &worker.keys.revocations_began, unix_now(self));
        worker.driver.revocations_known_since(began);
        let worker = Rc::new(RefCell::new(worker));
        worker.borrow_mut().load_provider(self);
        self.worker = Some(worker);
        // Once per root context: ngx_wasm_module traps on a second call.
        if !self.ticking {
            self.set_tick_period(Duration::from_millis(TICK_MS));
            self.ticking = true;
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            let mut w = worker.borrow_mut();
            w.metrics.flush();
            w.load_provider(self);
            let now = unix_now(self);
            w.load_revocations(self, now);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // With no valid config, every request is refused rather than let through.
        Some(Box::new(Request { worker: self.worker.clone(), pending: None, waiting: None, set_cookies: Vec::new() }))
    }
}

/// A request's headers as read once from the host.
type Headers = Vec<(String, String)>;

/// What a request waits for before it is decided.
enum Wait {
    /// Provider metadata being loaded.
    Provider(Load),
    /// The fleet coordinator's revocations.
    Revocations,
}

struct Request {
    worker: Option<Rc<RefCell<Worker>>>,
    pending: Option<(u32, oidc_edge::Pending)>,
    /// A callout this request waits on before it is decided (its token),
    /// and the request's headers, kept for that decision.
    waiting: Option<(u32, Wait, Headers)>,
    set_cookies: Vec<String>,
}

impl Request {
    /// One turn of the worker's driver, with shared data as its store, then
    /// the outcome performed. `fresh_provider`: re-read the shared provider
    /// metadata first (cheap when unchanged), for requests that verify
    /// tokens: another worker may have just fetched keys this one has not
    /// seen on its tick yet.
    fn run(&mut self, resumed: bool, fresh_provider: bool, now: u64, turn: impl FnOnce(&mut Driver, Lend<'_>) -> Outcome) -> Action {
        let Some(worker) = self.worker.clone() else {
            self.respond_error(500, "The sign-in gate is not configured.");
            return Action::Pause;
        };
        let mut guard = worker.borrow_mut();
        let w = &mut *guard;
        if fresh_provider || w.driver.provider().is_none() {
            w.load_provider(self);
        }
        w.load_revocations(self, now);
        w.rng.mix_worker_identity();
        let mut shared = HostShared { ctx: self, prefix: &w.keys.claims };
        let outcome = turn(&mut w.driver, Lend { now, rng: &mut w.rng, store: Some(&mut shared) });
        for counter in outcome.counters() {
            w.metrics.add(counter);
        }
        for (severity, line) in outcome.log_lines() {
            host::log(severity, &line);
        }
        if let Some(docs) = &outcome.publish {
            w.publish(self, docs);
        }
        // Every worker of this proxy learns a sign-out on its next tick.
        if !outcome.revoked.is_empty() && !shared::append_revocations(self, &w.keys, &outcome.revoked, now) {
            log::warn!("oidc-edge: a sign-out could not be shared with the other workers; they accept the cookie until it expires");
        }
        drop(guard);
        self.perform(outcome.step, resumed)
    }

    fn perform(&mut self, step: Step, resumed: bool) -> Action {
        match step {
            Step::Allow(allow) => {
                for name in &allow.strip {
                    self.set_http_request_header(name, None);
                }
                // Replace, not append, even though every inbound spelling was
                // stripped above: on a host whose removal is unreliable, a
                // replaced value still cannot sit next to a client's copy.
                for (name, value) in &allow.set {
                    self.set_http_request_header(name, Some(&**value));
                }
                if let Some(path) = &allow.set_path {
                    self.set_http_request_header(":path", Some(path));
                }
                self.set_cookies = allow.set_cookies;
                if resumed {
                    self.resume_http_request();
                }
                Action::Continue
            }
            Step::Respond(resp) => {
                // ngx_wasm_module keeps only the last of several same-name
                // headers in a local response; the cookies are checked again
                // when the response headers pass through this filter.
                self.set_cookies = resp.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v.clone()).collect();
                let headers: Vec<(&str, &str)> = resp.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                self.send_http_response(u32::from(resp.status), headers, Some(&resp.body));
                Action::Pause
            }
            Step::Fetch { call, pending } => match host::dispatch(self, &call) {
                Ok(token) => {
                    self.pending = Some((token, pending));
                    Action::Pause
                }
                Err(why) => {
                    log::warn!("oidc-edge: callout to {} failed to start: {why}", call.target);
                    let unreachable = Answer::Http(HttpResponse { status: 0, body: Vec::new() });
                    let now = unix_now(self);
                    self.run(resumed, true, now, |driver, lend| driver.on_answer(pending, unreachable, lend))
                }
            },
            // Shared data answers store operations within the turn: an
            // operation left over means the driver was misused. Fail closed.
            Step::Store { .. } => {
                self.respond_error(500, "Internal error.");
                Action::Pause
            }
        }
    }

    /// Decides the request from its headers; pseudo-headers are borrowed from
    /// the list and left in it (no strip rule matches a name starting with ':').
    fn decide(&mut self, all: Vec<(String, String)>, resumed: bool, now: u64) -> Action {
        let find = |name: &str| all.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let method = find(":method").unwrap_or("GET");
        let scheme = find(":scheme").filter(|s| !s.is_empty()).unwrap_or("http");
        // The Host header first: ngx_wasm_module's `:authority` is the
        // server's own name, Envoy folds Host into `:authority`.
        let authority = find("host").filter(|a| !a.is_empty()).or_else(|| find(":authority")).unwrap_or("");
        let rewrites_path = self.worker.as_ref().is_some_and(|w| *w.borrow_mut().rewrites_path.get_or_insert_with(host::host_rewrites_path));
        // Where the host forwards its own request line, decide on that line:
        // ngx_wasm_module's `:path` is nginx's decoded and resolved `$uri`,
        // while `proxy_pass` sends `$request_uri`.
        let received = if rewrites_path { None } else { host::received_request_target() };
        let path = received.as_deref().or_else(|| find(":path")).unwrap_or("");
        let callback = self.worker.as_ref().is_some_and(|w| {
            let path_only = path.split('?').next().unwrap_or("");
            path_only == w.borrow().driver.config().paths.callback.as_str()
        });
        // Read from the host only when a route decides on it.
        let client = self
            .worker
            .as_ref()
            .is_some_and(|w| w.borrow().driver.config().routes.use_client_address())
            .then(host::client_address)
            .flatten();
        let head = oidc_edge::RequestHead { method, scheme, authority, path, headers: &all, rewrites_path, client };
        self.run(resumed, callback, now, |driver, lend| driver.on_request(&head, lend))
    }

    fn respond_error(&self, status: u32, message: &str) {
        let page = oidc_edge::pages::page(status as u16, "Error", message, None);
        let headers: Vec<(&str, &str)> = page.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        self.send_http_response(status, headers, Some(&page.body));
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some((expected, wait, headers)) = self.waiting.take() {
            if expected != token {
                self.respond_error(502, "Unexpected callout response.");
                return;
            }
            let resp = host::call_response(self, body_size);
            let now = unix_now(self);
            let Some(worker) = self.worker.clone() else { return };
            let next = match wait {
                Wait::Provider(load) => worker.borrow_mut().on_provider_response(self, load, resp, now),
                Wait::Revocations => {
                    worker.borrow_mut().on_fleet_poll(self, &resp, now);
                    None
                }
            };
            match next {
                Some((token, load)) => self.waiting = Some((token, Wait::Provider(load), headers)),
                None => {
                    let _ = self.decide(headers, true, now);
                }
            }
            return;
        }
        let Some((expected, pending)) = self.pending.take() else { return };
        if expected != token {
            self.respond_error(502, "Unexpected callout response.");
            return;
        }
        let resp = host::call_response(self, body_size);
        let now = unix_now(self);
        let _ = self.run(true, true, now, |driver, lend| driver.on_answer(pending, Answer::Http(resp), lend));
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // One host call for the whole map. Values are read as bytes: the
        // SDK's string reader panics on a header value that is not UTF-8,
        // which Envoy accepts.
        let all: Vec<(String, String)> = self
            .get_http_request_headers_bytes()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())))
            .collect();
        let now = unix_now(self);
        let Some(worker) = self.worker.clone() else { return self.decide(all, false, now) };
        let load = worker.borrow_mut().start_provider_load(self, now);
        if let Some((token, load)) = load {
            self.waiting = Some((token, Wait::Provider(load), all));
            return Action::Pause;
        }
        let poll = worker.borrow_mut().start_fleet_poll(self, now);
        if let Some(token) = poll {
            self.waiting = Some((token, Wait::Revocations, all));
            return Action::Pause;
        }
        self.decide(all, false, now)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.set_cookies.is_empty() {
            return Action::Continue;
        }
        let present: Vec<Vec<u8>> = self
            .get_http_response_headers_bytes()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v)
            .collect();
        for cookie in std::mem::take(&mut self.set_cookies) {
            if !present.iter().any(|v| v.as_slice() == cookie.as_bytes()) {
                self.add_http_response_header("set-cookie", &cookie);
            }
        }
        Action::Continue
    }
}
