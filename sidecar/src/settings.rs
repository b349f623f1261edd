//! The sidecar's own section of the configuration (`sidecar:`), checked with
//! the core's checker so its errors read like every other field's.

use std::net::SocketAddr;

use oidc_edge::config::{Checker, RawSecret, SecretString, Section};
use oidc_edge::net::IpNet;
use serde::Deserialize;

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Failures that need an operator.
    Warn,
    /// Also refused requests and sign-ins.
    Info,
    /// Also one line per decision.
    Debug,
}

/// Settings only the sidecar reads (the filter skips the section).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-*` / `X-Original-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// When set, decisions are answered only to requests carrying it in
    /// `X-Oidc-Edge-Proxy` (the rendered snippets send it): a decision
    /// endpoint routed to browsers by mistake then gives them nothing.
    pub proxy_token: Option<SecretString>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSidecar {
    listen: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    log_level: Option<String>,
    proxy_token: Option<RawSecret>,
}

impl Section for SidecarConfig {
    const KEY: &'static str = "sidecar";
    type Raw = RawSidecar;

    fn compile(raw: RawSidecar, c: &mut Checker<'_>) -> SidecarConfig {
        let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:4180");
        let listen = listen_text.parse().unwrap_or_else(|_| {
            c.err("sidecar.listen", format!("{listen_text:?} is not an address; write ip:port, e.g. 127.0.0.1:4180"));
            SocketAddr::from(([127, 0, 0, 1], 4180))
        });
        let default_trusted = ["127.0.0.1".to_owned(), "::1".to_owned()];
        let mut trusted_proxies = Vec::new();
        for (i, t) in raw.trusted_proxies.as_deref().unwrap_or(&default_trusted).iter().enumerate() {
            match IpNet::parse(t) {
                Some(net) => trusted_proxies.push(net),
                None => c.err(
                    &format!("sidecar.trusted_proxies[{i}]"),
                    format!("{t:?} is not an address or range; write e.g. 10.0.0.2 or 172.16.0.0/12"),
                ),
            }
        }
        let log_level = match raw.log_level.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("info") => LogLevel::Info,
            Some("warn") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some(other) => {
                c.err("sidecar.log_level", format!("{other:?}: use warn, info or debug"));
                LogLevel::Info
            }
        };
        let proxy_token = raw.proxy_token.as_ref().and_then(|t| c.secret("sidecar.proxy_token", t)).and_then(|t| {
            // Written into nginx and Caddy configs by `oidc-edge render`.
            let ok = t.len() >= 24 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b));
            if !ok {
                c.err("sidecar.proxy_token", "use at least 24 characters of base64; generate one with: openssl rand -base64 32");
            }
            ok.then(|| SecretString::new(t))
        });
        SidecarConfig { listen, trusted_proxies, log_level, proxy_token }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oidc_edge::config::IdpCalls;
    use oidc_edge::{Config, SecretSource};
    use serde_json::{json, Value};

    use super::*;

    struct Env(HashMap<&'static str, &'static str>);

    impl SecretSource for Env {
        fn env(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn file(&self, path: &str) -> Result<String, String> {
            Err(format!("{path}: no files here"))
        }
    }

    fn parse(sidecar: Value) -> Result<(Config, SidecarConfig), Vec<String>> {
        let v = json!({
            "provider": {"issuer": "https://id.example.com", "client_id": "edge", "client_secret": {"env": "S"}},
            "session": {"secrets": [{"env": "C"}]},
            "routes": [{"path": "/"}],
            "sidecar": sidecar,
        });
        let env = Env(HashMap::from([("S", "client-secret"), ("C", "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=")]));
        Config::parse_with::<SidecarConfig>(&v.to_string(), &env, IdpCalls::Direct).map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn each_error_names_its_field_and_the_fix() {
        let cases: &[(Value, &str, &[&str])] = &[
            (json!({"listen": "localhost"}), "sidecar.listen", &["ip:port", "127.0.0.1:4180"]),
            (json!({"trusted_proxies": ["127.0.0.1", "10.0.0.0/40"]}), "sidecar.trusted_proxies[1]", &["172.16.0.0/12"]),
            (json!({"log_level": "trace"}), "sidecar.log_level", &["warn, info or debug"]),
            (json!({"proxy_token": "short"}), "sidecar.proxy_token", &["openssl rand -base64 32"]),
            (json!({"proxy_token": "abcdefghijklmnopqrstuvwxyz\""}), "sidecar.proxy_token", &["base64"]),
            (json!({"port": 4180}), "sidecar.port", &["unknown field `port`", "listen"]),
        ];
        for (section, field, phrases) in cases {
            let errors = parse(section.clone()).err().unwrap_or_else(|| panic!("{section} accepted"));
            assert_eq!(errors.len(), 1, "{section}: {errors:?}");
            assert!(errors[0].starts_with(&format!("{field}: ")), "{section}: {errors:?}");
            for p in *phrases {
                assert!(errors[0].contains(p), "{section}: {errors:?} lacks {p:?}");
            }
        }
    }

    #[test]
    fn defaults_listen_on_loopback_and_trust_only_it() {
        let (config, sidecar) = parse(json!({})).unwrap();
        assert_eq!(sidecar.listen.to_string(), "127.0.0.1:4180");
        assert!(sidecar.trusted_proxies.iter().any(|n| n.contains("127.0.0.1".parse().unwrap())));
        assert!(!sidecar.trusted_proxies.iter().any(|n| n.contains("10.0.0.1".parse().unwrap())));
        assert_eq!(sidecar.log_level, LogLevel::Info);
        // Unmapped provider hosts are called at their own address.
        let call = config.provider.call("GET", "https://id.example.com:8443/jwks", vec![], vec![]).unwrap();
        assert_eq!(call.target, "id.example.com:8443");
    }
}
