//! Thin wrappers over host calls: time, randomness, secrets, metrics, callouts.

use std::time::{Duration, UNIX_EPOCH};

use oidc_edge::drbg::KeyedDrbg;
use oidc_edge::events::COUNTERS;
use oidc_edge::{Event, HttpCall, HttpResponse, SecretSource, SecureRandom};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::MetricType;

pub fn unix_now(ctx: &dyn Context) -> u64 {
    ctx.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn unix_nanos(ctx: &dyn Context) -> u128 {
    ctx.get_current_time().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The filter's random source: a DRBG keyed from the cookie secret and
/// reseeded from the host's `random_get` and the clock before each request.
/// On Envoy `random_get` is already a CSPRNG; on ngx_wasm_module it is libc
/// `random()`, which the secret key makes harmless.
pub struct FilterRng {
    drbg: KeyedDrbg,
    uses: u64,
}

impl FilterRng {
    pub fn new(key: &[u8; 32], now: u64) -> FilterRng {
        let mut seed = [0u8; 32];
        let _ = getrandom::getrandom(&mut seed);
        let mut init = seed.to_vec();
        init.extend_from_slice(&now.to_be_bytes());
        FilterRng { drbg: KeyedDrbg::new(key, &init), uses: 0 }
    }

    pub fn reseed(&mut self, nanos: u128) {
        self.uses += 1;
        let mut fresh = [0u8; 32];
        let _ = getrandom::getrandom(&mut fresh);
        let mut input = fresh.to_vec();
        input.extend_from_slice(&nanos.to_be_bytes());
        input.extend_from_slice(&self.uses.to_be_bytes());
        self.drbg.reseed(&input);
    }
}

impl SecureRandom for FilterRng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.drbg.fill(buf);
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

/// Counter ids, defined once per VM.
#[derive(Clone)]
pub struct Metrics(Vec<Option<u32>>);

impl Metrics {
    pub fn define() -> Metrics {
        Metrics(COUNTERS.iter().map(|name| hostcalls::define_metric(MetricType::Counter, name).ok()).collect())
    }

    pub fn record(&self, event: &Event) {
        for &i in event.counters() {
            if let Some(Some(id)) = self.0.get(i) {
                let _ = hostcalls::increment_metric(*id, 1);
            }
        }
        if let Some(line) = event.log_line() {
            log::warn!("oidc-edge: {line}");
        }
    }
}

pub fn dispatch(ctx: &dyn Context, call: &HttpCall) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> = vec![(":method", call.method), (":path", &call.path), (":authority", &call.authority)];
    headers.extend(call.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let body = (!call.body.is_empty()).then_some(call.body.as_slice());
    ctx.dispatch_http_call(&call.target, headers, body, vec![], Duration::from_millis(u64::from(call.timeout_ms)))
        .map_err(|status| format!("host refused the call ({status:?}); is {:?} a defined cluster?", call.target))
}

/// The callout's answer; a missing status (reset, timeout, no such cluster) is 0.
pub fn call_response(ctx: &dyn Context, body_size: usize) -> HttpResponse {
    let status = ctx
        .get_http_call_response_header(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let body = if body_size > 0 { ctx.get_http_call_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
    HttpResponse { status, body }
}
