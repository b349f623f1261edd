//! oauth2-proxy's configuration as people keep it, read into one shape:
//! each instance's options by their TOML names (`client_id`,
//! `allowed_groups` …), whether they came from `OAUTH2_PROXY_*` variables,
//! command-line flags or a TOML file, with `${VAR}` references kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One option's value as written: text that may be a `${VAR}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The text.
    pub text: String,
    /// The variable it was defined under (`OAUTH2_PROXY_CLIENT_SECRET`), if any.
    pub variable: Option<String>,
}

/// One oauth2-proxy (a compose service, or a TOML file).
#[derive(Debug, Default)]
pub struct Instance {
    /// The compose service's name, or the file's.
    pub name: String,
    /// Where it was read from.
    pub source: String,
    /// Options by TOML name; list options hold every value.
    pub options: BTreeMap<String, Vec<Written>>,
    /// Hosts the compose labels route to it (Traefik `Host(...)`, `VIRTUAL_HOST`).
    pub label_hosts: Vec<String>,
    /// `host path → container path` mounts, to find files it read.
    pub volumes: Vec<(PathBuf, String)>,
    /// Files it read that could not be read here: its settings are unknown.
    pub unread: Vec<String>,
    /// Where each option's value came from: the source that wins is the
    /// one oauth2-proxy and compose believe, never a blend of several.
    ranks: BTreeMap<String, Source>,
}

/// Where a value is written, weakest first: oauth2-proxy takes flags over
/// its environment over its config file, and compose takes `environment:`
/// over `env_file:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    ConfigFile,
    EnvFile,
    Environment,
    Flag,
}

impl Instance {
    /// An instance with no options yet.
    pub fn new(name: String, source: String) -> Instance {
        Instance { name, source, ..Instance::default() }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&Written> {
        self.options.get(key).and_then(|v| v.first())
    }

    /// Every value of a list option, split at commas as oauth2-proxy does.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.options
            .get(key)
            .into_iter()
            .flatten()
            .flat_map(|w| w.text.split(',').map(|s| s.trim().to_owned()).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A file the instance read, as a path on this machine (through its mounts).
    pub fn host_path(&self, container_path: &str, base: &Path) -> PathBuf {
        for (host, inside) in &self.volumes {
            if let Some(rest) = container_path.strip_prefix(inside.as_str()) {
                return base.join(host).join(rest.trim_start_matches('/'));
            }
        }
        base.join(container_path)
    }

    fn set(&mut self, raw_name: &str, text: String, variable: Option<String>, source: Source) {
        let key = canonical(raw_name);
        let rank = self.ranks.entry(key.clone()).or_insert(source);
        if source > *rank {
            *rank = source;
            self.options.remove(&key);
        } else if source < *rank {
            return;
        }
        self.options.entry(key).or_default().push(Written { text, variable });
    }
}

/// The TOML name of a flag (`--email-domain`) or variable (`EMAIL_DOMAINS`):
/// flags are singular where TOML is plural.
fn canonical(name: &str) -> String {
    let key = name.trim_start_matches('-').to_ascii_lowercase().replace('-', "_");
    match key.as_str() {
        "email_domain" => "email_domains",
        "allowed_group" => "allowed_groups",
        "upstream" => "upstreams",
        "skip_auth_route" => "skip_auth_routes",
        "cookie_domain" => "cookie_domains",
        "whitelist_domain" => "whitelist_domains",
        "allowed_role" => "allowed_roles",
        _ => return key,
    }
    .to_owned()
}

/// `KEY=VALUE` lines of an env file: comments, `export`, quotes.
pub fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// A compose value: `$$` is compose's escape for a literal `$`.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.replace("$$", "$")),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `KEY=VALUE` pairs of a compose `environment:` (a list or a mapping).
fn compose_env(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Array(items) => {
            items.iter().filter_map(|i| i.as_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.replace("$$", "$")))).collect()
        }
        Value::Object(map) => map.iter().filter_map(|(k, v)| Some((k.clone(), scalar(v)?))).collect(),
        _ => Vec::new(),
    }
}

/// A compose `command:` as arguments (a list, or a string split at spaces).
fn compose_args(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        Value::String(s) => s.split_whitespace().map(|a| a.trim_matches(['"', '\'']).to_owned()).collect(),
        _ => Vec::new(),
    }
}

/// `env_file:` as a string, a list, or a list of `{path, required}`.
fn env_files(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => {
            items.iter().filter_map(|i| i.as_str().map(str::to_owned).or_else(|| i["path"].as_str().map(str::to_owned))).collect()
        }
        other => other.as_str().map(str::to_owned).into_iter().collect(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        Value::Object(map) => map.iter().map(|(k, v)| format!("{k}={}", scalar(v).unwrap_or_default())).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// Hosts in Traefik router rules (`Host(`a`) || Host(`b`)`) and `VIRTUAL_HOST`.
fn label_hosts(labels: &[String], env: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for label in labels {
        let Some((key, value)) = label.split_once('=') else { continue };
        if !key.ends_with(".rule") {
            continue;
        }
        let mut rest = value;
        while let Some(at) = rest.find("Host(") {
            rest = &rest[at + 5..];
            let inner = rest.split(')').next().unwrap_or("");
            out.extend(inner.split(',').map(|h| h.trim().trim_matches(['`', '"', '\'']).to_owned()).filter(|h| !h.is_empty()));
        }
    }
    for (k, v) in env {
        if k == "VIRTUAL_HOST" {
            out.extend(v.split(',').map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()));
        }
    }
    out
}

/// Whether a compose service is an oauth2-proxy.
fn is_oauth2_proxy(service: &Value, env: &[(String, String)], args: &[String]) -> bool {
    service["image"].as_str().is_some_and(|i| i.contains("oauth2-proxy") || i.contains("oauth2_proxy"))
        || env.iter().any(|(k, _)| k.starts_with("OAUTH2_PROXY_"))
        || args.iter().any(|a| a.starts_with("--oidc-issuer-url") || a.starts_with("--provider"))
}

/// Applies `--flag=value` / `--flag value` / `--bool-flag` arguments.
fn apply_flags(instance: &mut Instance, args: &[String]) {
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(flag) = arg.strip_prefix("--") else { continue };
        match flag.split_once('=') {
            Some((name, value)) => instance.set(name, value.to_owned(), None, Source::Flag),
            None if i < args.len() && !args[i].starts_with("--") => {
                instance.set(flag, args[i].clone(), None, Source::Flag);
                i += 1;
            }
            None => instance.set(flag, "true".into(), None, Source::Flag),
        }
    }
}

fn apply_env(instance: &mut Instance, env: &[(String, String)], source: Source) {
    for (k, v) in env {
        if let Some(name) = k.strip_prefix("OAUTH2_PROXY_") {
            instance.set(name, v.clone(), Some(k.clone()), source);
        }
    }
}

/// Reads oauth2-proxy's TOML config into `instance`.
pub fn apply_toml(instance: &mut Instance, text: &str) -> Result<(), String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
    for (k, v) in table {
        match v {
            toml::Value::Array(items) => {
                for item in items {
                    if let Some(s) = toml_scalar(&item) {
                        instance.set(&k, s, None, Source::ConfigFile);
                    }
                }
            }
            other => {
                if let Some(s) = toml_scalar(&other) {
                    instance.set(&k, s, None, Source::ConfigFile);
                }
            }
        }
    }
    Ok(())
}

fn toml_scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every oauth2-proxy in a compose file, with the env files and TOML
/// configs it references read in; problems go to `notes`.
pub fn compose(path: &Path, text: &str) -> Result<Vec<Instance>, String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let services = doc["services"].as_object().ok_or_else(|| format!("{}: no `services:`", path.display()))?;
    let mut out = Vec::new();
    for (name, service) in services {
        let mut from_files = Vec::new();
        let mut unread = Vec::new();
        for file in env_files(&service["env_file"]) {
            match std::fs::read_to_string(base.join(&file)) {
                Ok(t) => from_files.extend(env_file(&t)),
                Err(e) => unread.push(format!("{file}: {e}")),
            }
        }
        let environment = compose_env(&service["environment"]);
        let args = compose_args(&service["command"]);
        let env: Vec<(String, String)> = from_files.iter().chain(&environment).cloned().collect();
        if !is_oauth2_proxy(service, &env, &args) {
            continue;
        }
        let mut instance = Instance::new(name.clone(), path.display().to_string());
        for v in strings(&service["volumes"]) {
            let mut parts = v.splitn(3, ':');
            if let (Some(host), Some(inside)) = (parts.next(), parts.next()) {
                instance.volumes.push((PathBuf::from(host), inside.to_owned()));
            }
        }
        instance.label_hosts = label_hosts(&strings(&service["labels"]), &env);
        instance.unread = unread;
        apply_env(&mut instance, &from_files, Source::EnvFile);
        apply_env(&mut instance, &environment, Source::Environment);
        apply_flags(&mut instance, &args);
        if let Some(cfg) = instance.get("config").map(|w| w.text.clone()) {
            let file = instance.host_path(&cfg, base);
            if let Err(e) = std::fs::read_to_string(&file).map_err(|e| e.to_string()).and_then(|t| apply_toml(&mut instance, &t)) {
                instance.unread.push(format!("its config file {cfg} ({}): {e}", file.display()));
            }
        }
        out.push(instance);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_env_and_toml_meet_under_toml_names() {
        let mut i = Instance::default();
        apply_flags(&mut i, &["--email-domain=*".into(), "--allowed-group".into(), "admins".into(), "--skip-provider-button".into()]);
        apply_env(&mut i, &[("OAUTH2_PROXY_ALLOWED_GROUPS".into(), "media, users".into()), ("OTHER".into(), "x".into())], Source::Environment);
        apply_env(&mut i, &[("OAUTH2_PROXY_EMAIL_DOMAINS".into(), "example.org".into())], Source::Environment);
        apply_toml(&mut i, "cookie_secure = false\nupstreams = [\"http://a:1\", \"http://b:2\"]\nallowed_groups = [\"users\"]\n").unwrap();
        // Flags win over the environment, which wins over the config file: never a blend.
        assert_eq!(i.list("allowed_groups"), ["admins"]);
        assert_eq!(i.list("email_domains"), ["*"]);
        assert_eq!(i.get("skip_provider_button").unwrap().text, "true");
        assert_eq!(i.get("cookie_secure").unwrap().text, "false");
        assert_eq!(i.list("upstreams"), ["http://a:1", "http://b:2"]);
        apply_env(&mut i, &[("OAUTH2_PROXY_COOKIE_SECRET".into(), "from-a-file".into())], Source::EnvFile);
        apply_env(&mut i, &[("OAUTH2_PROXY_COOKIE_SECRET".into(), "${SECRET}".into())], Source::Environment);
        assert_eq!(i.get("cookie_secret").unwrap().text, "${SECRET}");
        assert_eq!(i.get("cookie_secret").unwrap().variable.as_deref(), Some("OAUTH2_PROXY_COOKIE_SECRET"));
    }

    #[test]
    fn env_files_and_labels_read_as_people_write_them() {
        let pairs = env_file("# c\nexport A=1\nB=\"two words\"\nC='x'\n\nD=${E}\n");
        assert_eq!(pairs, [("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x".into()), ("D".into(), "${E}".into())]);
        let hosts = label_hosts(&["traefik.http.routers.s.rule=Host(`sonarr.example.com`) || Host(`s.example.com`)".into()], &[]);
        assert_eq!(hosts, ["sonarr.example.com", "s.example.com"]);
    }
}
