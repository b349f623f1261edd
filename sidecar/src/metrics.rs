//! `/metrics`: the core's counters ([`oidc_edge::events::Counter::ALL`])
//! and `oidc_edge_provider_ready`, in the OpenMetrics text format
//! (prometheus-client). OpenMetrics names a counter's sample `<name>_total`,
//! so the sidecar exports `oidc_edge_logins_started_total` where Envoy's
//! stats say `oidc_edge_logins_started`; `# HELP` and `# TYPE` use the name
//! without the suffix.

use oidc_edge::events::Counter;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PROVIDER_READY: &str = "oidc_edge_provider_ready";
const PROVIDER_READY_HELP: &str = "1 when discovery and JWKS are loaded";
const STORE_UP: &str = "oidc_edge_store_up";
const STORE_UP_HELP: &str = "1 when the shared store answers (always 1 for the in-memory store)";

pub struct Metrics {
    registry: Registry,
    /// At each counter's [`Counter::index`].
    counters: Vec<PromCounter>,
    provider_ready: Gauge,
    store_up: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let counters: Vec<PromCounter> = Counter::ALL.iter().map(|_| PromCounter::default()).collect();
        for (counter, metric) in Counter::ALL.iter().zip(&counters) {
            // prometheus-client ends every help text with a period itself.
            let help = counter.help();
            registry.register(counter.name(), help.strip_suffix('.').unwrap_or(help), metric.clone());
        }
        let provider_ready = Gauge::default();
        registry.register(PROVIDER_READY, PROVIDER_READY_HELP, provider_ready.clone());
        let store_up = Gauge::default();
        registry.register(STORE_UP, STORE_UP_HELP, store_up.clone());
        Metrics { registry, counters, provider_ready, store_up }
    }

    pub fn inc(&self, counter: Counter) {
        if let Some(c) = self.counters.get(counter.index()) {
            c.inc();
        }
    }

    /// The exposition, `# EOF` included.
    pub fn render(&self, provider_ready: bool, store_up: bool) -> Result<String, std::fmt::Error> {
        self.provider_ready.set(i64::from(provider_ready));
        self.store_up.set(i64::from(store_up));
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use oidc_edge::events::Counter;

    use super::Metrics;

    #[test]
    fn every_counter_has_help_type_and_a_total() {
        let m = Metrics::new();
        m.inc(Counter::InvalidCookies);
        m.inc(Counter::InvalidCookies);
        m.inc(Counter::SignOuts);
        let text = m.render(true, true).unwrap();
        for c in Counter::ALL {
            let name = c.name();
            assert!(text.contains(&format!("# HELP {name} {}\n", c.help())), "{name}:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}:\n{text}");
            let want = match c {
                Counter::InvalidCookies => 2,
                Counter::SignOuts => 1,
                _ => 0,
            };
            assert!(text.contains(&format!("\n{name}_total {want}\n")), "{name}:\n{text}");
        }
        assert!(text.contains(
            "# HELP oidc_edge_provider_ready 1 when discovery and JWKS are loaded.\n# TYPE oidc_edge_provider_ready gauge\noidc_edge_provider_ready 1\n"
        ));
        assert!(text.ends_with("# EOF\n") && !text.contains(".."), "{text}");
        assert!(m.render(false, true).unwrap().contains("\noidc_edge_provider_ready 0\n"));
    }
}
