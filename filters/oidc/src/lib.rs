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

use oidc_edge::provider::{discovery_call, jwks_call, jwks_from_response, retry_delay, Discovery, METADATA_MAX_AGE};
use oidc_edge::{Config, Engine, HttpResponse, ProviderSnapshot, SessionCache, SharedProvider, Step};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use host::{unix_now, FilterRng, HostSecrets, Metrics};
use shared::{HostShared, SyncRecord};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Sessions cached per worker; enough for a household or a small team many times over.
const SESSION_CACHE_CAPACITY: usize = 4096;

/// How often each worker polls shared provider metadata, schedules fetches
/// and flushes its counters.
const TICK_MS: u64 = 500;

/// What a worker's root context shares with its HTTP contexts.
struct Worker {
    engine: Rc<Engine>,
    sessions: SessionCache,
    provider: Option<Rc<ProviderSnapshot>>,
    /// Version of the shared provider blob the snapshot came from.
    provider_version: Option<u32>,
    rng: FilterRng,
    metrics: Metrics,
    keys: shared::Keys,
    /// Reused for each request's events.
    events: Vec<oidc_edge::Event>,
    /// Whether the host forwards the path the filter sets; asked at the
    /// first request (ngx_wasm_module answers properties in request phases).
    rewrites_path: Option<bool>,
}

impl Worker {
    /// Picks up provider metadata another worker (or this one) published.
    fn load_provider(&mut self, ctx: &dyn Context) {
        let (data, version) = ctx.get_shared_data(&self.keys.provider);
        if version.is_none() || version == self.provider_version {
            return;
        }
        self.provider_version = version;
        let Some(blob) = data.and_then(|d| SharedProvider::decode(&d)) else { return };
        match blob.snapshot(&self.engine.config().provider) {
            Ok(snap) => self.provider = Some(Rc::new(snap)),
            Err(e) => log::warn!("oidc-edge: shared provider metadata refused: {}", e.0),
        }
    }

    /// Publishes a JWKS fetched during a login (unknown `kid`).
    fn publish_jwks(&mut self, ctx: &dyn Context, jwks: Vec<u8>, now: u64) {
        let (data, version) = ctx.get_shared_data(&self.keys.provider);
        let Some(mut blob) = data.and_then(|d| SharedProvider::decode(&d)) else { return };
        blob.jwks = jwks;
        blob.fetched_at = now;
        if ctx.set_shared_data(&self.keys.provider, Some(&blob.encode()), version).is_ok() {
            self.provider_version = None;
            self.load_provider(ctx);
        }
    }

    /// Starts loading discovery and JWKS if they are missing or stale and
    /// nobody else (no other request, no other worker) is loading them.
    /// Returns the callout in flight.
    ///
    /// Loading is driven by requests rather than `on_tick`: ngx_wasm_module
    /// 0.6.0 crashes reading the answer of a call dispatched from the root
    /// context, and a request that needs the metadata would wait for it anyway.
    fn start_provider_load(&mut self, ctx: &dyn Context, now: u64) -> Option<(u32, Fetching)> {
        let fresh = self.provider.as_ref().is_some_and(|p| now < p.fetched_at + METADATA_MAX_AGE);
        if fresh {
            return None;
        }
        let (record, version) = SyncRecord::load(ctx, &self.keys.sync);
        if now < record.next_attempt {
            return None;
        }
        let config = self.engine.config();
        // Claim the load; a CAS conflict means another request or worker has it.
        let lease = SyncRecord { next_attempt: now + 2 * u64::from(config.provider.timeout_ms).div_ceil(1000) + 2, ..record };
        if !lease.store(ctx, &self.keys.sync, version) {
            return None;
        }
        let started = discovery_call(&config.provider).map_err(|e| e.0).and_then(|call| host::dispatch(ctx, &call));
        match started {
            Ok(token) => Some((token, Fetching::Discovery)),
            Err(why) => {
                self.provider_load_failed(ctx, &why, now);
                None
            }
        }
    }

    /// Continues a load with the answer to `stage`; returns the next callout.
    fn on_provider_response(&mut self, ctx: &dyn Context, stage: Fetching, resp: HttpResponse, now: u64) -> Option<(u32, Fetching)> {
        let config = self.engine.config().provider.clone();
        match stage {
            Fetching::Discovery => match Discovery::from_response(&resp, &config) {
                Ok(discovery) => match jwks_call(&config, &discovery).map_err(|e| e.0).and_then(|c| host::dispatch(ctx, &c)) {
                    Ok(token) => return Some((token, Fetching::Jwks { discovery: resp.body })),
                    Err(why) => self.provider_load_failed(ctx, &why, now),
                },
                Err(e) => self.provider_load_failed(ctx, &e.0, now),
            },
            Fetching::Jwks { discovery } => match jwks_from_response(&resp) {
                Ok(_) => {
                    let blob = SharedProvider { fetched_at: now, discovery, jwks: resp.body };
                    let _ = ctx.set_shared_data(&self.keys.provider, Some(&blob.encode()), None);
                    let _ = SyncRecord { next_attempt: now + METADATA_MAX_AGE, failures: 0 }.store(ctx, &self.keys.sync, None);
                    let first = self.provider.is_none();
                    self.provider_version = None;
                    self.load_provider(ctx);
                    if first {
                        log::info!("oidc-edge: provider metadata loaded for {}", config.issuer);
                    }
                }
                Err(e) => self.provider_load_failed(ctx, &e.0, now),
            },
        }
        None
    }

    fn provider_load_failed(&mut self, ctx: &dyn Context, why: &str, now: u64) {
        let (record, version) = SyncRecord::load(ctx, &self.keys.sync);
        let failures = record.failures.saturating_add(1);
        let delay = retry_delay(failures);
        log::warn!("oidc-edge: provider metadata not loaded ({why}); next attempt in {delay}s");
        let _ = SyncRecord { next_attempt: now + delay, failures }.store(ctx, &self.keys.sync, version);
    }
}

/// Which document a provider-metadata callout fetches.
enum Fetching {
    Discovery,
    Jwks { discovery: Vec<u8> },
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
        let rng = FilterRng::new(&config.session.rng_key);
        let metrics = match &self.worker {
            Some(w) => {
                let mut old = w.borrow_mut();
                old.metrics.flush();
                old.metrics.clone()
            }
            None => Metrics::define(),
        };
        let worker = Worker {
            engine: Rc::new(Engine::new(config)),
            sessions: SessionCache::new(SESSION_CACHE_CAPACITY),
            provider: None,
            provider_version: None,
            rng,
            metrics,
            keys,
            events: Vec::with_capacity(4),
            rewrites_path: None,
        };
        HostShared::create_shards(self, &worker.keys.claims);
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
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // With no valid config, every request is refused rather than let through.
        Some(Box::new(Request { worker: self.worker.clone(), pending: None, loading: None, set_cookies: Vec::new() }))
    }
}

/// A request's headers as read once from the host.
type Headers = Vec<(String, String)>;

struct Request {
    worker: Option<Rc<RefCell<Worker>>>,
    pending: Option<(u32, oidc_edge::Pending)>,
    /// Provider metadata being loaded before this request is decided, and
    /// the request's headers, kept for that decision.
    loading: Option<(u32, Fetching, Headers)>,
    set_cookies: Vec<String>,
}

impl Request {
    /// Runs the engine with this worker's environment and performs the step.
    /// `fresh_provider`: re-read the shared provider metadata first (cheap
    /// when unchanged), for requests that verify tokens: another worker may
    /// have just fetched keys this one has not seen on its tick yet.
    fn run(&mut self, resumed: bool, fresh_provider: bool, now: u64, decide: impl FnOnce(&Engine, &mut oidc_edge::Env<'_>) -> Step) -> Action {
        let Some(worker) = self.worker.clone() else {
            self.respond_error(500, "The sign-in gate is not configured.");
            return Action::Pause;
        };
        let mut guard = worker.borrow_mut();
        let w = &mut *guard;
        if fresh_provider || w.provider.is_none() {
            w.load_provider(self);
        }
        w.rng.mix_worker_identity();
        let engine = Rc::clone(&w.engine);
        let provider = w.provider.clone();
        let mut shared = HostShared { ctx: self, prefix: &w.keys.claims };
        let mut env = oidc_edge::Env {
            now,
            rng: &mut w.rng,
            shared: &mut shared,
            provider: provider.as_deref(),
            sessions: &mut w.sessions,
            events: std::mem::take(&mut w.events),
            fetched_jwks: None,
        };
        let step = decide(&engine, &mut env);
        let mut events = std::mem::take(&mut env.events);
        let fetched = env.fetched_jwks.take();
        for event in events.drain(..) {
            w.metrics.record(&event);
        }
        // Keep the vector's capacity for the next request.
        w.events = events;
        if let Some(jwks) = fetched {
            w.publish_jwks(self, jwks, now);
        }
        drop(guard);
        self.perform(step, resumed)
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
                self.set_cookies =
                    resp.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v.clone()).collect();
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
                    let engine_resp = HttpResponse { status: 0, body: Vec::new() };
                    let now = unix_now(self);
                    self.run(resumed, true, now, |engine, env| engine.on_fetched(pending, engine_resp, env))
                }
            },
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
        let rewrites_path =
            self.worker.as_ref().is_some_and(|w| *w.borrow_mut().rewrites_path.get_or_insert_with(host::host_rewrites_path));
        // Where the host forwards its own request line, decide on that line:
        // ngx_wasm_module's `:path` is nginx's decoded and resolved `$uri`,
        // while `proxy_pass` sends `$request_uri`.
        let received = if rewrites_path { None } else { host::received_request_target() };
        let path = received.as_deref().or_else(|| find(":path")).unwrap_or("");
        let callback = self.worker.as_ref().is_some_and(|w| {
            let path_only = path.split('?').next().unwrap_or("");
            path_only == w.borrow().engine.config().paths.callback.as_str()
        });
        let head = oidc_edge::RequestHead { method, scheme, authority, path, headers: &all, rewrites_path };
        self.run(resumed, callback, now, |engine, env| engine.on_request(&head, env))
    }

    fn respond_error(&self, status: u32, message: &str) {
        let page = oidc_edge::pages::page(status as u16, "Error", message, None);
        let headers: Vec<(&str, &str)> = page.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        self.send_http_response(status, headers, Some(&page.body));
    }
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if let Some((expected, stage, headers)) = self.loading.take() {
            if expected != token {
                self.respond_error(502, "Unexpected callout response.");
                return;
            }
            let resp = host::call_response(self, body_size);
            let now = unix_now(self);
            let next = match self.worker.clone() {
                Some(w) => w.borrow_mut().on_provider_response(self, stage, resp, now),
                None => None,
            };
            match next {
                Some((token, stage)) => self.loading = Some((token, stage, headers)),
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
        let _ = self.run(true, true, now, |engine, env| engine.on_fetched(pending, resp, env));
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
        let load = self.worker.clone().and_then(|w| w.borrow_mut().start_provider_load(self, now));
        if let Some((token, stage)) = load {
            self.loading = Some((token, stage, all));
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
