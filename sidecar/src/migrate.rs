//! `oidc-edge migrate oauth2-proxy FILE…`: one oidc-edge configuration from
//! the oauth2-proxy containers it replaces, secrets kept as references to
//! the same variables, and a report of every setting that did not carry
//! over and why. It never widens access silently: where oauth2-proxy
//! required two things at once and oidc-edge can require one, the report
//! says so first.

mod read;
mod sites;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use read::{Instance, Written};

/// Options that need nothing in oidc-edge, and why.
const NOT_NEEDED: [(&str, &str); 11] = [
    ("provider", "oidc-edge speaks OpenID Connect"),
    ("http_address", "one sidecar (sidecar.listen) or the filter replaces every listener"),
    ("https_address", "TLS ends at your proxy"),
    ("reverse_proxy", "the proxy is trusted through sidecar.trusted_proxies"),
    ("config", "read in"),
    ("code_challenge_method", "PKCE with S256 is always on"),
    ("skip_provider_button", "browsers go straight to the provider"),
    ("upstreams", "your proxy routes to the services (see the site blocks below)"),
    ("redirect_url", "the callback is /oauth2/callback on each host"),
    ("pass_user_headers", "identity headers are always set, and removed from clients"),
    ("set_xauthrequest", "identity headers are handed to your proxy"),
];

/// Options read into the configuration.
const CARRIED: [&str; 22] = [
    "oidc_issuer_url",
    "client_id",
    "client_secret",
    "client_secret_file",
    "cookie_secret",
    "cookie_name",
    "cookie_secure",
    "cookie_samesite",
    "cookie_domains",
    "cookie_expire",
    "cookie_refresh",
    "email_domains",
    "allowed_groups",
    "authenticated_emails_file",
    "skip_auth_routes",
    "skip_auth_regex",
    "skip_auth_preflight",
    "scope",
    "insecure_oidc_allow_unverified_email",
    "whitelist_domains",
    "provider_display_name",
    "user_id_claim",
];

/// oauth2-proxy options that restrict who gets in and that oidc-edge cannot
/// express: a service that used one gets no route (nobody passes) and a
/// line under Review, never a route that lets more people in.
const RESTRICTING: [&str; 13] = [
    "allowed_roles",
    "keycloak_group",
    "keycloak_groups",
    "google_group",
    "github_org",
    "github_team",
    "github_repo",
    "github_user",
    "gitlab_group",
    "gitlab_project",
    "bitbucket_team",
    "bitbucket_repository",
    "azure_tenant",
];

/// Settings of the one provider client and the one session cookie: an
/// instance that set them otherwise than the one taken is named.
const SHARED: [&str; 7] = ["cookie_expire", "cookie_refresh", "cookie_samesite", "cookie_domains", "cookie_name", "scope", "oidc_issuer_url"];

/// What the migration made.
pub struct Migration {
    pub config: Value,
    /// Host → upstream (`http://sonarr:8989`), for the proxy's site blocks.
    pub sites: Vec<(String, String)>,
    /// Access that oidc-edge grants more widely than oauth2-proxy did.
    pub review: Vec<String>,
    /// Settings not carried over, and why.
    pub left_out: Vec<String>,
    /// Things to do: variables to set, URIs to register.
    pub todo: Vec<String>,
    /// The instances read, and where from.
    pub read: Vec<String>,
}

/// `${VAR}`, `${VAR:-default}`, `$VAR`: the whole value a reference.
fn reference(text: &str) -> Option<(String, Option<String>)> {
    let inner = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')).or_else(|| text.strip_prefix('$'))?;
    let (name, default) = match inner.split_once(":-").or_else(|| inner.split_once('-')) {
        Some((n, d)) => (n, Some(d.to_owned())),
        None => (inner, None),
    };
    (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then(|| (name.to_owned(), default))
}

/// A secret as oidc-edge reads it: always a reference, never the value.
fn secret(w: &Written, fallback: &str, instance: &str, todo: &mut Vec<String>) -> Value {
    if let Some((name, _)) = reference(&w.text) {
        todo.push(format!("set {name} for oidc-edge (it holds the same secret as before)"));
        return json!({"env": name});
    }
    let name = w.variable.clone().unwrap_or_else(|| fallback.to_owned());
    todo.push(format!("set {name} for oidc-edge to the value service {instance} had (it is not copied into the configuration)"));
    json!({"env": name})
}

struct Resolver<'a> {
    project_env: &'a BTreeMap<String, String>,
}

impl Resolver<'_> {
    /// A plain value, with `${VAR}` taken from the compose project's `.env`.
    fn plain(&self, w: &Written, left_out: &mut Vec<String>, what: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = w.text.as_str();
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            let end = if tail.starts_with("${") {
                tail.find('}').map(|e| e + 1)
            } else {
                Some(1 + tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len() - 1))
            };
            let Some(end) = end else { break };
            let Some((name, default)) = reference(&tail[..end]) else {
                out.push_str(&tail[..end]);
                rest = &tail[end..];
                continue;
            };
            match self.project_env.get(&name).cloned().or(default) {
                Some(v) => out.push_str(&v),
                None => {
                    left_out.push(format!("{what}: {} names ${{{name}}}, which no .env beside the compose file sets", w.text));
                    return None;
                }
            }
            rest = &tail[end..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// A path prefix for an oauth2-proxy skip-auth regex, when it is one.
fn prefix_of(regex: &str) -> Option<String> {
    let body = regex.strip_prefix('^')?;
    let body = body.strip_suffix(".*$").or_else(|| body.strip_suffix(".*")).unwrap_or(body);
    let literal = body.replace("\\.", ".").replace("\\-", "-");
    (literal.starts_with('/') && !literal.contains(['\\', '(', ')', '[', ']', '*', '+', '?', '|', '$', '{', '^'])).then_some(literal)
}

/// A Go duration (`168h0m0s`, `30m`) in seconds.
fn go_duration(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    num.is_empty().then_some(total)
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = oidc_edge::redirect::authority_host(authority);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Converts the instances into one configuration.
pub fn migrate(instances: &[Instance], base: &Path, project_env: &BTreeMap<String, String>) -> Result<Migration, String> {
    let r = Resolver { project_env };
    let (mut review, mut left_out, mut todo) = (Vec::new(), Vec::new(), Vec::new());
    let chosen = instances
        .iter()
        .find(|i| i.get("oidc_issuer_url").is_some())
        .ok_or("no oauth2-proxy with an oidc_issuer_url (OAUTH2_PROXY_OIDC_ISSUER_URL, --oidc-issuer-url) found")?;
    for i in instances {
        if let Some(p) = i.get("provider").filter(|p| p.text != "oidc" && p.text != "keycloak-oidc") {
            left_out.push(format!("service {}: provider {} is not generic OpenID Connect; only OIDC providers carry over", i.name, p.text));
        }
    }
    let issuer_written = chosen.get("oidc_issuer_url").cloned().unwrap_or(Written { text: String::new(), variable: None });
    let mut issuer = r.plain(&issuer_written, &mut left_out, "oidc_issuer_url").unwrap_or_default();
    if issuer.ends_with('/') {
        issuer.truncate(issuer.trim_end_matches('/').len());
        left_out.push("oidc_issuer_url: the trailing '/' was dropped; `oidc-edge doctor` checks the issuer against the provider's".into());
    }
    let client_id = chosen.get("client_id").and_then(|w| r.plain(w, &mut left_out, "client_id")).unwrap_or_default();
    let mut provider = Map::new();
    provider.insert("issuer".into(), json!(issuer));
    provider.insert("client_id".into(), json!(client_id));
    let client_secret = match (chosen.get("client_secret"), chosen.get("client_secret_file")) {
        (Some(w), _) => secret(w, "OAUTH2_PROXY_CLIENT_SECRET", &chosen.name, &mut todo),
        (None, Some(f)) => {
            todo.push(format!("make {} readable by oidc-edge (it is the client secret file service {} read)", f.text, chosen.name));
            json!({"file": f.text})
        }
        (None, None) => return Err(format!("service {}: no client_secret", chosen.name)),
    };
    provider.insert("client_secret".into(), client_secret);
    if let Some(scope) = chosen.get("scope").and_then(|w| r.plain(w, &mut left_out, "scope")) {
        let mut scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
        if instances.iter().any(|i| !i.list("allowed_groups").is_empty()) && !scopes.iter().any(|s| s == "groups") {
            scopes.push("groups".into());
        }
        provider.insert("scopes".into(), json!(scopes));
    }
    let trusts = |i: &Instance| i.get("insecure_oidc_allow_unverified_email").is_some_and(|w| w.text == "true");
    if instances.iter().all(trusts) {
        provider.insert("trust_unverified_email".into(), json!(true));
    } else if let Some(i) = instances.iter().find(|i| trusts(i)) {
        left_out.push(format!(
            "service {}: insecure_oidc_allow_unverified_email is not carried over: oidc-edge sets it for every host or none, and the other services did not have it",
            i.name
        ));
    }
    if let Some(name) = chosen.get("provider_display_name") {
        provider.insert("display_name".into(), json!(name.text));
    }
    match chosen.get("user_id_claim").map(|w| w.text.as_str()) {
        Some(claim @ ("email" | "sub" | "preferred_username" | "name")) => {
            provider.insert("user_claim".into(), json!(claim));
        }
        Some(other) => left_out.push(format!("user_id_claim {other}: the user header takes preferred_username, email, name or sub")),
        None => left_out.push(
            "the user header now carries preferred_username; if a service keyed users by what oauth2-proxy sent there, set provider.user_claim (email or sub)".into(),
        ),
    }

    let mut session = Map::new();
    let cookie_secret = chosen.get("cookie_secret").ok_or_else(|| format!("service {}: no cookie_secret", chosen.name))?;
    session.insert("secrets".into(), json!([secret(cookie_secret, "OAUTH2_PROXY_COOKIE_SECRET", &chosen.name, &mut todo)]));
    if let Some(name) = chosen.get("cookie_name") {
        session.insert("cookie_name".into(), json!(name.text));
    }
    if instances.iter().any(|i| i.get("cookie_secure").is_some_and(|w| w.text == "false")) {
        session.insert("secure".into(), json!(false));
        left_out.push("cookie_secure false: kept as session.secure: false; serve the hosts over https and remove it".into());
    }
    if let Some(s) = chosen.get("cookie_samesite").map(|w| w.text.to_ascii_lowercase()).filter(|s| !s.is_empty()) {
        session.insert("same_site".into(), json!(s));
    }
    let domains = chosen.list("cookie_domains");
    if let Some(d) = domains.first() {
        session.insert("domain".into(), json!(d.trim_start_matches('.')));
        if domains.len() > 1 {
            left_out.push(format!("cookie_domains: only {} is used (oidc-edge sets one cookie domain)", domains[0]));
        }
    }
    for (key, field) in [("cookie_expire", "lifetime"), ("cookie_refresh", "refresh_interval")] {
        match chosen.get(key).map(|w| (w, go_duration(&w.text))) {
            Some((_, Some(secs))) if secs > 0 => {
                session.insert(field.into(), json!(secs));
            }
            Some((w, _)) => left_out.push(format!("{key} {}: not a duration oidc-edge reads; set session.{field}", w.text)),
            None => {}
        }
    }

    let mut routes = Vec::new();
    let mut sites = Vec::new();
    let mut hosts_seen: Vec<String> = Vec::new();
    for i in instances {
        let hosts: Vec<String> = match i.get("redirect_url").and_then(|w| r.plain(w, &mut left_out, "redirect_url")).and_then(|u| host_of(&u)) {
            Some(h) => vec![h],
            None => i
                .label_hosts
                .iter()
                .filter_map(|h| r.plain(&Written { text: h.clone(), variable: None }, &mut left_out, "a Traefik Host rule"))
                .map(|h| oidc_edge::redirect::authority_host(&h).to_ascii_lowercase())
                .collect(),
        };
        if hosts.is_empty() {
            left_out.push(format!("service {}: no public host (no redirect_url, no Traefik Host rule): write its route by hand", i.name));
            continue;
        }
        if !i.unread.is_empty() {
            review.push(format!(
                "service {}: not migrated, its settings could not all be read ({}); write its route by hand",
                i.name,
                i.unread.join("; ")
            ));
            continue;
        }
        if let Some(key) = RESTRICTING.iter().find(|k| i.options.contains_key(**k)) {
            review.push(format!(
                "service {}: not migrated, it admits people by {key}, which oidc-edge cannot check; write its route by hand",
                i.name
            ));
            continue;
        }
        if i.get("client_id").and_then(|w| r.plain(w, &mut Vec::new(), "")).is_some_and(|id| id != client_id) {
            review.push(format!(
                "service {} used its own client at the provider; oidc-edge signs every host in with client {client_id}, so any restriction set on the old client (allowed groups, users) no longer applies: set it on the route",
                i.name
            ));
        }
        let groups = i.list("allowed_groups");
        let domains: Vec<String> = i.list("email_domains").into_iter().filter(|d| d != "*").collect();
        let emails = match i.get("authenticated_emails_file") {
            Some(f) => match std::fs::read_to_string(i.host_path(&f.text, base)) {
                Ok(t) => t.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_ascii_lowercase).collect(),
                Err(e) => {
                    review.push(format!(
                        "service {}: not migrated, its authenticated_emails_file {} cannot be read ({e}); write its route by hand",
                        i.name, f.text
                    ));
                    continue;
                }
            },
            None => Vec::new(),
        };
        let any_domain = i.list("email_domains").iter().any(|d| d == "*");
        let mut rule = Map::new();
        if !groups.is_empty() {
            rule.insert("groups".into(), json!(groups));
            if !domains.is_empty() || (!emails.is_empty() && !any_domain) {
                review.push(format!(
                    "service {}: oauth2-proxy required a group AND an allowed email or domain; oidc-edge requires any one rule, so only the groups are kept. Members of {} now get in whatever their email",
                    i.name,
                    groups.join(", ")
                ));
            }
        } else {
            if !emails.is_empty() {
                rule.insert("emails".into(), json!(emails));
            }
            if !domains.is_empty() && !any_domain {
                rule.insert("email_domains".into(), json!(domains));
            }
            if domains.is_empty() && emails.is_empty() && !any_domain {
                review.push(format!(
                    "service {}: no email_domains and no allowed addresses (oauth2-proxy let no one in); its route admits any signed-in user",
                    i.name
                ));
            }
        }
        if !groups.is_empty() && domains.is_empty() && emails.is_empty() && !any_domain {
            review.push(format!(
                "service {}: no email_domains (oauth2-proxy let no one in); its route admits members of {}",
                i.name,
                groups.join(", ")
            ));
        }
        if i.get("skip_auth_preflight").is_some_and(|w| w.text == "true") {
            rule.insert("cors_preflight".into(), json!(true));
        }
        for host in &hosts {
            if oidc_edge::policy::HostPattern::parse(host).is_none_or(|p| p == oidc_edge::policy::HostPattern::Any) {
                left_out.push(format!("service {}: {host:?} is not a host name; write its route by hand", i.name));
                continue;
            }
            if hosts_seen.contains(host) {
                left_out.push(format!("service {}: host {host} is already covered by an earlier service", i.name));
                continue;
            }
            hosts_seen.push(host.clone());
            for entry in i.list("skip_auth_routes").into_iter().chain(i.list("skip_auth_regex")) {
                let (method, regex) = match entry.split_once('=') {
                    Some((m, re)) if m.bytes().all(|b| b.is_ascii_uppercase()) => (Some(m.to_owned()), re.to_owned()),
                    _ => (None, entry.clone()),
                };
                match prefix_of(&regex) {
                    Some(path) => {
                        if path.len() > 1 && path.ends_with('/') {
                            review.push(format!(
                                "service {}: the public route {path} (from {entry}) also covers {} itself",
                                i.name,
                                path.trim_end_matches('/')
                            ));
                        }
                        let mut route = json!({"host": host, "path": path, "public": true});
                        if let Some(m) = method {
                            route["methods"] = json!([m]);
                        }
                        routes.push(route);
                    }
                    None => left_out.push(format!(
                        "service {}: skip-auth {entry} is not a path prefix (^/path/…); write a public route for it by hand",
                        i.name
                    )),
                }
            }
            let mut route = Map::new();
            route.insert("host".into(), json!(host));
            route.extend(rule.clone());
            routes.push(Value::Object(route));
            match i.list("upstreams").first() {
                // Written into a Caddyfile: a host or URL, nothing that could end the block.
                Some(up) if up.contains("://") && !up.contains(|c: char| c.is_whitespace() || c.is_control() || "{}\"'`#;".contains(c)) => {
                    sites.push((host.clone(), up.clone()));
                }
                Some(up) => left_out.push(format!("service {}: upstream {up:?} is not an http(s) URL; write its site block by hand", i.name)),
                None => left_out.push(format!("service {}: no upstream; write its site block by hand", i.name)),
            }
        }
    }
    for i in instances.iter().filter(|i| i.name != chosen.name) {
        for key in SHARED {
            let resolved = |inst: &Instance| inst.get(key).and_then(|w| r.plain(w, &mut Vec::new(), ""));
            let theirs = resolved(i);
            if theirs.is_some() && theirs != resolved(chosen) {
                left_out.push(format!("service {}: {key}: one gate has one setting; service {}'s is used", i.name, chosen.name));
            }
        }
    }
    // First match wins: exact hosts before wildcards, or a `*.example.com`
    // route would answer for a stricter service's own host.
    routes.sort_by_key(|r| r["host"].as_str().is_some_and(|h| h.starts_with("*.")));
    let mut config = Map::new();
    config.insert("provider".into(), Value::Object(provider));
    config.insert("session".into(), Value::Object(session));
    if instances.iter().all(|i| i.get("pass_user_headers").is_none_or(|w| w.text != "false")) {
        // What the services behind oauth2-proxy read: its upstream headers.
        config.insert(
            "identity_headers".into(),
            json!({"user": "X-Forwarded-User", "email": "X-Forwarded-Email", "groups": "X-Forwarded-Groups"}),
        );
        left_out.push("X-Forwarded-Preferred-Username: not sent; the user header (X-Forwarded-User) carries the sign-in name".into());
    }
    let whitelist = chosen.list("whitelist_domains");
    if !whitelist.is_empty() {
        config.insert(
            "allowed_redirect_hosts".into(),
            json!(whitelist.iter().map(|d| if d.starts_with('.') { format!("*{d}") } else { d.clone() }).collect::<Vec<_>>()),
        );
    }
    config.insert("routes".into(), Value::Array(routes));
    if chosen.get("session_store_type").is_some_and(|w| w.text == "redis") {
        left_out
            .push("session_store_type redis: sessions live in the cookie; several oidc-edge instances share a store: (docs/fleets.md)".into());
    }
    config.insert("sidecar".into(), json!({"listen": "0.0.0.0:4180", "trusted_proxies": ["127.0.0.1", "::1"]}));
    todo.push("set sidecar.trusted_proxies to your proxy's address (a container network, e.g. 172.18.0.0/16)".into());
    todo.push(format!(
        "run the sidecar as a compose service named oidc-edge: the snippets reach it at {SIDECAR_ADDRESS} (else render them again with --sidecar HOST:PORT)"
    ));
    for h in &hosts_seen {
        let scheme = if session_secure(&config) { "https" } else { "http" };
        todo.push(match h.strip_prefix("*.") {
            Some(domain) => format!("register {scheme}://<each host under {domain}>/oauth2/callback as a callback URL of client {client_id}"),
            None => format!("register {scheme}://{h}/oauth2/callback as a callback URL of client {client_id}"),
        });
    }
    for i in instances {
        for key in i.options.keys() {
            if CARRIED.contains(&key.as_str())
                || RESTRICTING.contains(&key.as_str())
                || key == "redis_connection_url"
                || key == "session_store_type"
            {
                continue;
            }
            match NOT_NEEDED.iter().find(|(k, _)| k == key) {
                Some(_) => {}
                None => left_out.push(format!("service {}: {key}: no oidc-edge equivalent", i.name)),
            }
        }
    }
    left_out.dedup();
    let read = instances.iter().map(|i| format!("{} ({})", i.name, i.source)).collect();
    Ok(Migration { config: Value::Object(config), sites, review, left_out, todo, read })
}

fn session_secure(config: &Map<String, Value>) -> bool {
    config["session"]["secure"].as_bool().unwrap_or(true)
}

/// The report, in the order a person acts on it.
pub fn report(m: &Migration) -> String {
    let mut out = String::from("# Migration from oauth2-proxy\n");
    let mut section = |title: &str, items: &[String]| {
        if !items.is_empty() {
            out.push_str(&format!("\n## {title}\n\n"));
            for item in items {
                out.push_str(&format!("- {item}\n"));
            }
        }
    };
    section("Read", &m.read);
    section("Review: access oidc-edge grants more widely", &m.review);
    section("To do", &m.todo);
    section("Not carried over, and why", &m.left_out);
    let not_needed: Vec<String> = NOT_NEEDED.iter().map(|(k, why)| format!("{k}: {why}")).collect();
    section("Not needed any more", &not_needed);
    out
}

/// What the input files hold.
pub struct Inputs {
    instances: Vec<Instance>,
    /// The first file's directory: relative mounts and files start there.
    base: PathBuf,
    /// The compose project's `.env`, for `${VAR}` in plain values.
    project_env: BTreeMap<String, String>,
}

/// Reads every file: compose files (with their env files and the TOML
/// configs they mount) and oauth2-proxy config files.
pub fn read_inputs(files: &[PathBuf]) -> Result<Inputs, String> {
    let mut instances = Vec::new();
    let mut project_env = BTreeMap::new();
    let base = files.first().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let ext = file.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if ext == "yml" || ext == "yaml" {
            if let Ok(dot_env) = std::fs::read_to_string(file.parent().unwrap_or(Path::new(".")).join(".env")) {
                project_env.extend(read::env_file(&dot_env));
            }
            instances.extend(read::compose(file, &text)?);
        } else if ext == "toml" || ext == "cfg" || ext == "conf" {
            let mut i = Instance::new(name, file.display().to_string());
            read::apply_toml(&mut i, &text).map_err(|e| format!("{}: not valid TOML: {e}", file.display()))?;
            instances.push(i);
        } else {
            return Err(format!("{}: give docker-compose files (.yml, .yaml) or oauth2-proxy config files (.cfg, .toml)", file.display()));
        }
    }
    if instances.is_empty() {
        return Err("no oauth2-proxy found in these files (an image named oauth2-proxy, OAUTH2_PROXY_* variables, or --provider flags)".into());
    }
    Ok(Inputs { instances, base, project_env })
}

/// Where the proxy reaches the sidecar in the compose layout that replaces
/// the oauth2-proxy containers: one service named oidc-edge.
const SIDECAR_ADDRESS: &str = "oidc-edge:4180";

/// Secrets as placeholders: the snippets hold none, and the variables the
/// configuration names need not be set to write them.
struct Placeholders;

impl oidc_edge::config::SecretSource for Placeholders {
    fn env(&self, _: &str) -> Option<String> {
        Some("bWlncmF0aW9uLXBsYWNlaG9sZGVyLTMyLWJ5dGVzISE=".into())
    }

    fn file(&self, _: &str) -> Result<String, String> {
        Ok("bWlncmF0aW9uLXBsYWNlaG9sZGVyLTMyLWJ5dGVzISE=".into())
    }
}

/// The proxy's snippets for the migrated configuration (`render`).
fn snippets(yaml: &str, proxy: crate::Proxy) -> Result<Vec<(String, String)>, String> {
    let (config, settings) =
        oidc_edge::Config::parse_yaml_with::<crate::settings::SidecarConfig>(yaml, &Placeholders, oidc_edge::config::IdpCalls::Direct)
            .map_err(|e| format!("the migrated configuration does not load: {e}"))?;
    let address = crate::render::sidecar_address(&settings, Some(SIDECAR_ADDRESS));
    match proxy {
        crate::Proxy::Nginx => crate::render::nginx(&config, &settings, &address),
        crate::Proxy::Traefik => crate::render::traefik(&config, &settings, &address),
        _ => crate::render::caddy(&config, &settings, &address),
    }
}

/// The command: writes `oidc-edge.yaml`, the report, the proxy's snippets
/// and, for Caddy, the site blocks.
pub fn run(files: &[PathBuf], out: &Path, proxy: crate::Proxy) -> ExitCode {
    let result = read_inputs(files).and_then(|inputs| {
        let m = migrate(&inputs.instances, &inputs.base, &inputs.project_env)?;
        Ok((m, inputs.instances.len()))
    });
    let (m, count) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("migrate: {e}");
            return ExitCode::from(1);
        }
    };
    let report = report(&m);
    let status = crate::write_files("migrate", out, written_files(&m, &report, count, proxy));
    if status == ExitCode::SUCCESS {
        print!("{report}");
    }
    status
}

/// Everything migrate writes: the configuration, the report, the sites and
/// the snippets beside them (nginx includes them from oidc-edge/).
fn written_files(m: &Migration, report: &str, count: usize, proxy: crate::Proxy) -> Result<Vec<(String, String)>, String> {
    let yaml = serde_yaml_ng::to_string(&m.config).map_err(|e| e.to_string())?;
    let header = format!(
        "# Written by `oidc-edge migrate oauth2-proxy` from {count} oauth2-proxy instance(s).\n\
         # Read migration-report.md, then: oidc-edge check, oidc-edge doctor, oidc-edge render.\n"
    );
    let (sites_file, sites_text, snippet_dir) = match proxy {
        crate::Proxy::Nginx => ("sites.conf", sites::nginx(&m.sites), "oidc-edge/"),
        crate::Proxy::Traefik => ("sites.yml", sites::traefik(&m.sites), ""),
        _ => ("Caddyfile", sites::caddy(&m.sites), ""),
    };
    let mut written = vec![
        ("oidc-edge.yaml".to_owned(), format!("{header}{yaml}")),
        ("migration-report.md".to_owned(), report.to_owned()),
        (sites_file.to_owned(), sites_text),
    ];
    written.extend(snippets(&yaml, proxy)?.into_iter().map(|(name, text)| (format!("{snippet_dir}{name}"), text)));
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_stay_references() {
        assert_eq!(reference("${SONARR_COOKIE_SECRET}"), Some(("SONARR_COOKIE_SECRET".into(), None)));
        assert_eq!(reference("${A:-b}"), Some(("A".into(), Some("b".into()))));
        assert_eq!(reference("$B"), Some(("B".into(), None)));
        assert_eq!(reference("plain"), None);
        assert_eq!(reference("https://${DOMAIN}/"), None);
    }

    #[test]
    fn only_plain_prefixes_become_public_routes() {
        assert_eq!(prefix_of("^/api/health"), Some("/api/health".into()));
        assert_eq!(prefix_of("^/static/.*"), Some("/static/".into()));
        assert_eq!(prefix_of("^/favicon\\.ico$"), None);
        assert_eq!(prefix_of("/anywhere"), None);
        assert_eq!(prefix_of("^/(a|b)/"), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("168h0m0s"), Some(604_800));
        assert_eq!(go_duration("30m"), Some(1800));
        assert_eq!(go_duration("1d"), None);
    }
}
