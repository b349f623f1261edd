//! Thin wrappers over host calls: time, randomness, secrets, metrics, callouts.

use std::time::{Duration, UNIX_EPOCH};

use oidc_edge::drbg::KeyedDrbg;
use oidc_edge::events::{Counter, Severity};
use oidc_edge::{HttpCall, HttpResponse, SecretSource, SecureRandom};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::MetricType;

pub fn unix_now(ctx: &dyn Context) -> u64 {
    ctx.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The filter's random source: a DRBG keyed from the cookie secret and
/// reseeded from the host's `random_get` and the clock each time randomness
/// is needed (logins only, never the hot path). On Envoy `random_get` is
/// already a CSPRNG; on ngx_wasm_module it is libc `random()`, which the
/// secret key makes harmless.
pub struct FilterRng {
    drbg: KeyedDrbg,
    uses: u64,
    /// Whether the worker's identity has been mixed in (once, from the first
    /// request: nginx workers forked at the same instant with the same libc
    /// `random()` seed must still diverge).
    worker_mixed: bool,
}

fn host_entropy(uses: u64) -> Vec<u8> {
    let mut input = vec![0u8; 32];
    let _ = getrandom::getrandom(&mut input);
    let nanos = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    input.extend_from_slice(&nanos.to_be_bytes());
    input.extend_from_slice(&uses.to_be_bytes());
    input
}

impl FilterRng {
    pub fn new(key: &[u8; 32]) -> FilterRng {
        FilterRng { drbg: KeyedDrbg::new(key, &host_entropy(0)), uses: 0, worker_mixed: false }
    }

    /// Mixes in what distinguishes this worker: nginx's `$pid` (the
    /// `ngx.pid` property). Envoy has no such property and needs none: its
    /// `random_get` is a CSPRNG. Uses the host call that returns errors
    /// instead of the SDK wrapper that would panic on them.
    pub fn mix_worker_identity(&mut self) {
        if self.worker_mixed {
            return;
        }
        self.worker_mixed = true;
        if let Ok(Some(pid)) = hostcalls::get_property(vec!["ngx", "pid"]) {
            self.drbg.reseed(&pid);
        }
    }
}

impl SecureRandom for FilterRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.uses += 1;
        self.drbg.reseed(&host_entropy(self.uses));
        self.drbg.fill(buf);
    }
}

/// Whether the host forwards a `:path` the filter sets. Envoy does (the
/// filter's rewrite is what the upstream receives). ngx_wasm_module 0.6.0
/// changes nginx's `$uri` but `proxy_pass` still sends the original request
/// line; a host we cannot identify is assumed to do the same.
pub fn host_rewrites_path() -> bool {
    let has = |path: Vec<&str>| matches!(hostcalls::get_property(path), Ok(Some(_)));
    let rewrites = !has(vec!["ngx", "pid"]) && (has(vec!["xds", "node"]) || has(vec!["node"]));
    if rewrites {
        log::info!("oidc-edge: the host forwards rewritten paths; paths are forwarded in normal form");
    } else {
        log::info!("oidc-edge: the host forwards paths as received; paths not in normal form are redirected (GET, HEAD) or refused");
    }
    rewrites
}

/// The request target as received on the wire (`request.path`: nginx's
/// `$request_uri`), which is what a host that does not rewrite paths forwards.
/// Bytes that are not UTF-8 become U+FFFD one sequence at a time, never
/// swallowing a `/` or `.`, so segments and dot segments read as on the wire.
pub fn received_request_target() -> Option<String> {
    match hostcalls::get_property(vec!["request", "path"]) {
        Ok(Some(raw)) if !raw.is_empty() => Some(String::from_utf8_lossy(&raw).into_owned()),
        _ => None,
    }
}

/// The address of the proxy's peer (Envoy: `ip:port`; ngx_wasm_module: `ip`).
pub fn client_address() -> Option<std::net::IpAddr> {
    match hostcalls::get_property(vec!["source", "address"]) {
        Ok(Some(raw)) => oidc_edge::request::parse_address(&String::from_utf8_lossy(&raw)),
        _ => None,
    }
}

/// Secrets from the VM's environment (Envoy: `vm_config.environment_variables`).
pub struct HostSecrets;

impl SecretSource for HostSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, _path: &str) -> Result<String, String> {
        Err("the filter cannot read files; pass the secret as {\"env\": \"NAME\"}".into())
    }
}

/// Counters, defined once per VM. Increments are kept in the worker and
/// flushed to the host on each tick: one host call per counter per second
/// instead of one per request.
#[derive(Clone)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
    pending: Vec<u64>,
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            ids: Counter::ALL.iter().map(|c| hostcalls::define_metric(MetricType::Counter, c.name()).ok()).collect(),
            pending: vec![0; Counter::ALL.len()],
        }
    }

    pub fn add(&mut self, counter: Counter) {
        if let Some(n) = self.pending.get_mut(counter.index()) {
            *n += 1;
        }
    }

    pub fn flush(&mut self) {
        for (id, n) in self.ids.iter().zip(self.pending.iter_mut()) {
            if let (Some(id), true) = (id, *n > 0) {
                let _ = hostcalls::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
                *n = 0;
            }
        }
    }
}

/// Logs a line the core wrote, at the level it chose.
pub fn log(severity: Severity, line: &str) {
    match severity {
        Severity::Warn => log::warn!("oidc-edge: {line}"),
        Severity::Info => log::info!("oidc-edge: {line}"),
    }
}

pub fn dispatch(ctx: &dyn Context, call: &HttpCall) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> =
        vec![(":method", call.method), (":scheme", call.scheme), (":path", &call.path), (":authority", &call.authority)];
    headers.extend(call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let body = (!call.body.is_empty()).then_some(call.body.as_slice());
    ctx.dispatch_http_call(&call.target, headers, body, vec![], Duration::from_millis(u64::from(call.timeout_ms)))
        .map_err(|status| format!("host refused the call ({status:?}); is {:?} a defined cluster?", call.target))
}

/// The callout's answer; a missing status (reset, timeout, no such cluster) is 0.
pub fn call_response(ctx: &dyn Context, body_size: usize) -> HttpResponse {
    let status = ctx.get_http_call_response_header(":status").and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    let body = if body_size > 0 { ctx.get_http_call_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
    HttpResponse { status, body }
}
