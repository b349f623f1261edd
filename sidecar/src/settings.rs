//! The sidecar's own sections of the configuration (`sidecar:` and
//! `store:`), checked with the core's checker so their errors read like
//! every other field's.

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
    /// Where records shared by a fleet live.
    pub store: StoreConfig,
}

/// Where login states, refresh locks, successors and revocations live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process: one instance (the default).
    Memory,
    /// Redis or Valkey: every instance sharing it acts as one gate.
    Redis(RedisConfig),
}

/// A Redis (or Valkey) server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://…` (TLS), without credentials.
    pub url: String,
    /// ACL user.
    pub username: Option<String>,
    /// Password (or the ACL user's).
    pub password: Option<SecretString>,
    /// Prefix of every key, so that several gates can share a server.
    pub key_prefix: String,
    /// Connecting, milliseconds.
    pub connect_timeout_ms: u32,
    /// One command, milliseconds.
    pub command_timeout_ms: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSections {
    #[serde(default)]
    sidecar: RawSidecar,
    store: Option<RawStore>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    username: Option<String>,
    password: Option<RawSecret>,
    key_prefix: Option<String>,
    connect_timeout_ms: Option<u32>,
    command_timeout_ms: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    listen: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    log_level: Option<String>,
    proxy_token: Option<RawSecret>,
}

impl Section for SidecarConfig {
    const KEYS: &'static [&'static str] = &["sidecar", "store"];
    type Raw = RawSections;

    fn compile(sections: RawSections, c: &mut Checker<'_>) -> SidecarConfig {
        let store = sections.store.map_or(StoreConfig::Memory, |raw| store(raw, c));
        let raw = sections.sidecar;
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
        SidecarConfig { listen, trusted_proxies, log_level, proxy_token, store }
    }
}

fn store(raw: RawStore, c: &mut Checker<'_>) -> StoreConfig {
    let url = match raw.url.as_deref() {
        None | Some("memory") => return StoreConfig::Memory,
        Some(url) => url,
    };
    let Some((scheme, rest)) = url.split_once("://").filter(|(s, _)| matches!(*s, "redis" | "rediss")) else {
        c.err("store.url", format!("{url:?}: write redis://host:6379/0 (rediss:// for TLS), or memory"));
        return StoreConfig::Memory;
    };
    // The URL is logged and shown by `check`: credentials go in their own fields.
    if rest.split('/').next().is_some_and(|authority| authority.contains('@')) {
        c.err("store.url", "holds credentials; put them in store.username and store.password (e.g. {env: REDIS_PASSWORD})");
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "oidc-edge:".to_owned());
    if key_prefix.is_empty() || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        c.err("store.key_prefix", format!("{key_prefix:?}: use printable characters without spaces, e.g. oidc-edge:"));
    }
    let timeout = |c: &mut Checker<'_>, field: &str, value: Option<u32>, default: u32| {
        let v = value.unwrap_or(default);
        if !(10..=60_000).contains(&v) {
            c.err(field, format!("{v} is out of range; use 10 to 60000"));
        }
        v
    };
    let connect_timeout_ms = timeout(c, "store.connect_timeout_ms", raw.connect_timeout_ms, 2000);
    let command_timeout_ms = timeout(c, "store.command_timeout_ms", raw.command_timeout_ms, 500);
    let password = raw.password.as_ref().and_then(|p| c.secret("store.password", p)).map(SecretString::new);
    StoreConfig::Redis(RedisConfig {
        url: format!("{scheme}://{rest}"),
        username: raw.username,
        password,
        key_prefix,
        connect_timeout_ms,
        command_timeout_ms,
    })
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
        parse_with(json!({"sidecar": sidecar}))
    }

    /// A configuration with `sections` added at the top.
    fn parse_with(sections: Value) -> Result<(Config, SidecarConfig), Vec<String>> {
        let mut v = json!({
            "provider": {"issuer": "https://id.example.com", "client_id": "edge", "client_secret": {"env": "S"}},
            "session": {"secrets": [{"env": "C"}]},
            "routes": [{"path": "/"}],
        });
        if let (Some(top), Some(extra)) = (v.as_object_mut(), sections.as_object()) {
            top.extend(extra.clone());
        }
        let env = Env(HashMap::from([
            ("S", "client-secret"),
            ("C", "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="),
            ("REDIS_PASSWORD", "redis-secret"),
        ]));
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

    #[test]
    fn the_store_is_memory_unless_a_redis_url_is_given() {
        let (_, sidecar) = parse(json!({})).unwrap();
        assert_eq!(sidecar.store, StoreConfig::Memory);
        let (_, sidecar) = parse_with(json!({"store": {
            "url": "rediss://cache.internal:6380/2", "username": "gate", "password": {"env": "REDIS_PASSWORD"},
            "key_prefix": "sso:", "command_timeout_ms": 250
        }}))
        .unwrap();
        let StoreConfig::Redis(redis) = sidecar.store else { panic!("not redis") };
        assert_eq!(
            (redis.url.as_str(), redis.username.as_deref(), redis.key_prefix.as_str()),
            ("rediss://cache.internal:6380/2", Some("gate"), "sso:")
        );
        assert_eq!(redis.password.map(|p| p.expose().to_owned()).as_deref(), Some("redis-secret"));
        assert_eq!((redis.connect_timeout_ms, redis.command_timeout_ms), (2000, 250));
    }

    #[test]
    fn store_errors_name_the_field_and_never_show_a_password() {
        let cases: &[(Value, &str)] = &[
            (json!({"url": "http://cache:6379"}), "store.url: "),
            (json!({"url": "redis://gate:hunter2@cache:6379"}), "store.url: holds credentials"),
            (json!({"url": "redis://cache", "key_prefix": "a b"}), "store.key_prefix: "),
            (json!({"url": "redis://cache", "command_timeout_ms": 0}), "store.command_timeout_ms: "),
            (json!({"url": "redis://cache", "password": {"env": "NOPE"}}), "store.password: "),
            (json!({"url": "redis://cache", "pasword": "x"}), "store.pasword: unknown field"),
        ];
        for (store, start) in cases {
            let errors = parse_with(json!({"store": store})).err().unwrap_or_else(|| panic!("{store} accepted"));
            assert!(errors.len() == 1 && errors[0].starts_with(start), "{store}: {errors:?}");
            assert!(!errors[0].contains("hunter2"), "{errors:?}");
        }
    }
}
