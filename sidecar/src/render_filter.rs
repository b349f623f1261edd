//! `oidc-edge render envoy` and `render nginx-wasm`: the filter's side of
//! the same configuration file the sidecar reads. The filter's JSON is the
//! file without the sidecar's sections, with `provider.callouts` filled in
//! for the host and every `{env: …}` secret named where the host must pass
//! it on (Envoy's `host_env_keys`, nginx's `env`), so nobody hand-embeds
//! JSON in YAML or keeps two lists of variables in sync.

use std::net::IpAddr;

use oidc_edge::config::{IdpCalls, SecretSource, FRONT_END_SECTIONS};
use oidc_edge::encoding::split_url;
use oidc_edge::redirect::authority_host;
use oidc_edge::Config;
use serde_json::{json, Value};

/// Where the `.wasm` lands when installed from the Debian package.
pub const INSTALLED_WASM: &str = "/usr/lib/oidc-edge/oidc_edge_filter.wasm";

/// The Envoy cluster the rendering names for the provider's own host.
const IDP_CLUSTER: &str = "oidc_edge_idp";
const COORDINATOR_CLUSTER: &str = "oidc_edge_coordinator";
/// Debian's bundle of the system's trusted CAs.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Options of the filter renderings.
pub struct FilterOptions {
    /// The `.wasm` path as the proxy will read it.
    pub wasm: String,
    /// Envoy's listener (the complete bootstrap).
    pub listen: String,
    /// The service behind Envoy (the complete bootstrap).
    pub upstream: String,
    /// Envoy's admin interface, if any.
    pub admin: Option<String>,
    /// nginx's DNS resolver for callouts by name.
    pub resolver: String,
    /// The CAs the provider's certificate must chain to (a private CA's file in a homelab).
    pub ca_file: String,
}

/// Secrets as the filter reads them, from the environment only; a
/// rendering holds their names, never their values, so any value stands in.
struct FilterSecrets;

impl SecretSource for FilterSecrets {
    fn env(&self, _: &str) -> Option<String> {
        Some("cmVuZGVyaW5nLWhvbGRzLW5vLXNlY3JldC12YWx1ZXM=".into())
    }

    fn file(&self, _: &str) -> Result<String, String> {
        Err("the filter reads no files; use {env: NAME} (the rendering passes the variable to the proxy's workers)".into())
    }
}

/// One IdP (or coordinator) host the filter calls.
struct Callout {
    cluster: String,
    /// Where Envoy connects.
    host: String,
    port: u16,
    /// The name the certificate must carry (the provider's host, also when
    /// the connection goes to an internal address).
    tls_name: Option<String>,
}

/// The filter's configuration for one host, and what the host must provide.
struct FilterConfig {
    json: Value,
    env: Vec<String>,
    callouts: Vec<Callout>,
}

/// Every `{env: NAME}` in `value`, in order, once each; a `{file: …}` is an
/// error naming its field.
fn env_names(value: &Value, field: &str, out: &mut Vec<String>, errors: &mut Vec<String>) {
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key("env") => {
            if let Some(name) = map.get("env").and_then(Value::as_str) {
                // The name is written into nginx's and Envoy's configuration.
                let valid = name.bytes().enumerate().all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
                if name.is_empty() || !valid {
                    errors.push(format!("{field}.env: {name:?} is not a variable name (letters, digits, _)"));
                } else if !out.iter().any(|n| n == name) {
                    out.push(name.to_owned());
                }
            }
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("file") => {
            errors.push(format!("{field}: the filter reads no files; use {{env: NAME}} and set NAME for the proxy"));
        }
        Value::Object(map) => map.iter().for_each(|(k, v)| env_names(v, &format!("{field}.{k}"), out, errors)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| env_names(v, &format!("{field}[{i}]"), out, errors)),
        _ => {}
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let host = authority_host(authority);
    let rest = &authority[host.len()..];
    let port = match rest.strip_prefix(':') {
        Some(p) => p.parse().ok()?,
        None if rest.is_empty() => default_port,
        None => return None,
    };
    (!host.is_empty()).then(|| (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// A callout value that is itself `host:port` (nginx style), not a cluster name.
fn is_host_port(value: &str) -> bool {
    value.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Cluster names from addresses: letters, digits and `_`.
fn cluster_name(prefix: &str, host: &str, port: u16) -> String {
    let host: String = host.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("{prefix}_{host}_{port}")
}

/// The filter's JSON for `for_envoy` (clusters) or nginx (`host:port`), checked
/// by the core's parser as the filter will parse it.
fn filter_config(raw: &Value, for_envoy: bool) -> Result<FilterConfig, String> {
    let mut json = raw.clone();
    let top = json.as_object_mut().ok_or("the configuration is not a mapping")?;
    for key in FRONT_END_SECTIONS {
        top.remove(key);
    }
    let mut env = Vec::new();
    let mut errors = Vec::new();
    env_names(&json, "configuration", &mut env, &mut errors);
    let issuer = json.pointer("/provider/issuer").and_then(Value::as_str).unwrap_or_default().to_owned();
    let Some((scheme, authority, _)) = split_url(&issuer) else {
        return Err("provider.issuer: not an absolute URL".into());
    };
    let tls = scheme == "https";
    let default_port = if tls { 443 } else { 80 };
    let mut written: Vec<(String, String)> = match json.pointer("/provider/callouts").and_then(Value::as_object) {
        Some(map) if !map.is_empty() => map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect(),
        _ => vec![(authority.to_owned(), String::new())],
    };
    let mut callouts: Vec<Callout> = Vec::new();
    for (key, target) in &mut written {
        let Some((host, port)) = split_host_port(if is_host_port(target) { target } else { key }, default_port) else {
            errors.push(format!("provider.callouts.{key}: write host or host:port"));
            continue;
        };
        let tls_name = tls.then(|| authority_host(key).trim_start_matches('[').trim_end_matches(']').to_owned());
        if for_envoy {
            let cluster = if target.is_empty() {
                IDP_CLUSTER.to_owned()
            } else if is_host_port(target) {
                cluster_name(IDP_CLUSTER, &host, port)
            } else {
                target.clone()
            };
            if !callouts.iter().any(|c| c.cluster == cluster) {
                callouts.push(Callout { cluster: cluster.clone(), host, port, tls_name });
            }
            *target = cluster;
        } else if !is_host_port(target) {
            *target = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        }
    }
    json["provider"]["callouts"] = Value::Object(written.into_iter().map(|(k, v)| (k, Value::String(v))).collect());
    if for_envoy {
        if let Some(coordinator) = json.pointer("/fleet/coordinator").and_then(Value::as_str).map(str::to_owned) {
            if let Some((host, port)) = is_host_port(&coordinator).then(|| split_host_port(&coordinator, 80)).flatten() {
                callouts.push(Callout { cluster: COORDINATOR_CLUSTER.into(), host, port, tls_name: None });
                json["fleet"]["coordinator"] = json!(COORDINATOR_CLUSTER);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Config::parse(&json.to_string(), &FilterSecrets, IdpCalls::Callouts).map_err(|e| e.to_string())?;
    Ok(FilterConfig { json, env, callouts })
}

/// JSON for people: a value that fits on its line stays on one line
/// (`{"env": "NAME"}`, a route), larger ones open up, two spaces a level.
fn readable_json(value: &Value, depth: usize, out: &mut String) {
    let flat = flat_json(value);
    let (open, close, items): (char, char, Vec<(Option<&String>, &Value)>) = match value {
        Value::Object(map) => ('{', '}', map.iter().map(|(k, v)| (Some(k), v)).collect()),
        Value::Array(list) => ('[', ']', list.iter().map(|v| (None, v)).collect()),
        _ => return out.push_str(&flat),
    };
    if depth * 2 + flat.len() <= 88 || items.is_empty() {
        return out.push_str(&flat);
    }
    out.push(open);
    for (i, (key, item)) in items.iter().enumerate() {
        out.push('\n');
        out.push_str(&"  ".repeat(depth + 1));
        if let Some(k) = key {
            out.push_str(&Value::String((*k).clone()).to_string());
            out.push_str(": ");
        }
        readable_json(item, depth + 1, out);
        if i + 1 < items.len() {
            out.push(',');
        }
    }
    out.push('\n');
    out.push_str(&"  ".repeat(depth));
    out.push(close);
}

fn flat_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let items: Vec<String> = map.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), flat_json(v))).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(list) => format!("[{}]", list.iter().map(flat_json).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

fn pretty(value: &Value) -> String {
    let mut out = String::new();
    readable_json(value, 0, &mut out);
    out
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| if l.is_empty() { String::new() } else { format!("{pad}{l}") }).collect::<Vec<_>>().join("\n") + "\n"
}

/// A YAML scalar that reads back as exactly `text` (JSON strings are YAML).
fn quoted(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

const GENERATED: &str = "# Generated by `oidc-edge render` from the configuration file: render\n\
                         # again after changing it.\n";

/// The HttpConnectionManager settings the filter's decisions rely on.
const HCM_SETTINGS: &str = "\
# The client's address is the connection's peer, never a client's
# X-Forwarded-For (routes' allow_networks / deny_networks).
use_remote_address: true
# The filter decides on the normalized path; Envoy must forward that same
# path, and refuse encoded slashes outright.
normalize_path: true
merge_slashes: true
path_with_escaped_slashes_action: REJECT_REQUEST
# The filter matches hosts without a trailing dot; so must routing.
strip_trailing_host_dot: true
";

fn envoy_filter(f: &FilterConfig, wasm: &str) -> String {
    let config = pretty(&f.json);
    let keys = f.env.iter().map(|n| quoted(n)).collect::<Vec<_>>().join(", ");
    format!(
        "- name: envoy.filters.http.wasm\n\
         \x20 typed_config:\n\
         \x20   \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n\
         \x20   config:\n\
         \x20     name: oidc-edge\n\
         \x20     root_id: oidc-edge\n\
         \x20     # A filter that cannot start refuses traffic rather than passing it.\n\
         \x20     failure_policy: FAIL_CLOSED\n\
         \x20     vm_config:\n\
         \x20       vm_id: oidc-edge\n\
         \x20       runtime: envoy.wasm.runtime.v8\n\
         \x20       code: {{ local: {{ filename: {wasm} }} }}\n\
         \x20       # The secrets' variables, read from Envoy's environment.\n\
         \x20       environment_variables:\n\
         \x20         host_env_keys: [{keys}]\n\
         \x20     configuration:\n\
         \x20       \"@type\": type.googleapis.com/google.protobuf.StringValue\n\
         \x20       value: |\n{config}",
        wasm = quoted(wasm),
        config = indent(&config, 10),
    )
}

fn is_ip(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

fn envoy_cluster(name: &str, host: &str, port: u16, tls_name: Option<&str>, ca_file: &str) -> String {
    let mut out = format!(
        "- name: {name}\n  type: {kind}\n  connect_timeout: 2s\n{dns}  load_assignment:\n    cluster_name: {name}\n\
         \x20   endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }} }}] }}]\n",
        name = quoted(name),
        kind = if is_ip(host) { "STATIC" } else { "STRICT_DNS" },
        dns = if is_ip(host) { "" } else { "  dns_lookup_family: V4_PREFERRED\n" },
        host = quoted(host),
    );
    if let Some(name) = tls_name {
        // Envoy checks the chain by default but not the name: the SAN match
        // is what makes this the provider and not any certificate holder.
        let (sni, san_type) = if is_ip(name) { (String::new(), "IP_ADDRESS") } else { (format!("      sni: {}\n", quoted(name)), "DNS") };
        out.push_str(&format!(
            "  transport_socket:\n    name: envoy.transport_sockets.tls\n    typed_config:\n\
             \x20     \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n{sni}\
             \x20     common_tls_context:\n        validation_context:\n\
             \x20         trusted_ca: {{ filename: {ca} }}\n\
             \x20         match_typed_subject_alt_names: [{{ san_type: {san_type}, matcher: {{ exact: {name} }} }}]\n",
            name = quoted(name),
            ca = quoted(ca_file),
        ));
    }
    out
}

fn socket_address(field: &str, address: &str) -> Result<(String, u16), String> {
    split_host_port(address, 0).filter(|(_, p)| *p != 0).ok_or_else(|| format!("{field} {address:?}: write host:port"))
}

/// Envoy: the `http_filters` entry, the clusters, the connection manager's
/// settings, and a complete bootstrap using all three.
pub fn envoy(raw: &Value, opts: &FilterOptions) -> Result<Vec<(String, String)>, String> {
    let f = filter_config(raw, true)?;
    let filter = envoy_filter(&f, &opts.wasm);
    let clusters: String = f.callouts.iter().map(|c| envoy_cluster(&c.cluster, &c.host, c.port, c.tls_name.as_deref(), &opts.ca_file)).collect();
    let (listen_host, listen_port) = socket_address("--listen", &opts.listen)?;
    let (up_host, up_port) = socket_address("--upstream", &opts.upstream)?;
    let admin = match &opts.admin {
        Some(a) => {
            let (h, p) = socket_address("--admin", a)?;
            format!("admin:\n  address: {{ socket_address: {{ address: {}, port_value: {p} }} }}\n", quoted(&h))
        }
        None => String::new(),
    };
    let bootstrap = format!(
        "{GENERATED}# A complete Envoy: the filter in front of one upstream. To add the filter to\n\
         # an Envoy of your own, take http-filters.yaml, clusters.yaml and\n\
         # http-connection-manager.yaml instead.\n{admin}static_resources:\n  listeners:\n  - name: oidc_edge\n\
         \x20   address: {{ socket_address: {{ address: {lh}, port_value: {listen_port} }} }}\n    filter_chains:\n    - filters:\n\
         \x20     - name: envoy.filters.network.http_connection_manager\n        typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: oidc_edge\n{hcm}          route_config:\n            virtual_hosts:\n            - name: services\n\
         \x20             domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n\
         \x20               route: {{ cluster: upstream }}\n          http_filters:\n{filter}\
         \x20         - name: envoy.filters.http.router\n            typed_config:\n\
         \x20             \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n  clusters:\n{upstream}{clusters}",
        lh = quoted(&listen_host),
        hcm = indent(HCM_SETTINGS, 10),
        filter = indent(&filter, 10),
        upstream = indent(&envoy_cluster("upstream", &up_host, up_port, None, &opts.ca_file), 2),
        clusters = indent(&clusters, 2),
    );
    Ok(vec![
        ("envoy.yaml".into(), bootstrap),
        (
            "http-filters.yaml".into(),
            format!("{GENERATED}# The HttpConnectionManager's http_filters entry: put it before envoy.filters.http.router.\n{filter}"),
        ),
        ("clusters.yaml".into(), format!("{GENERATED}# Add to static_resources.clusters: the hosts the filter calls.\n{clusters}")),
        ("http-connection-manager.yaml".into(), format!("{GENERATED}# Set on the HttpConnectionManager that runs the filter.\n{HCM_SETTINGS}")),
    ])
}

/// nginx's configuration buffer (4096 bytes) holds one argument at most.
const NGINX_ARGUMENT_MAX: usize = 4095;

/// An nginx string argument that reads back as exactly `text`.
fn nginx_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// nginx + ngx_wasm_module: the main-context part (`env`, `wasm {}`) and the
/// part each protected `location` includes (`proxy_wasm`).
pub fn nginx_wasm(raw: &Value, opts: &FilterOptions) -> Result<Vec<(String, String)>, String> {
    let f = filter_config(raw, false)?;
    for (option, value) in [("--wasm", &opts.wasm), ("--resolver", &opts.resolver), ("--ca-file", &opts.ca_file)] {
        if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c.is_control() || "\"';{}#$\\".contains(c)) {
            return Err(format!("{option} {value:?}: a path or address without spaces, quotes, ';', '{{', '}}', '#' or '$'"));
        }
    }
    // nginx reads one argument into a 4 KB buffer: the JSON goes on one
    // line, without a byte to spare.
    let config = f.json.to_string();
    let argument = nginx_quoted(&config);
    if argument.len() > NGINX_ARGUMENT_MAX {
        return Err(format!(
            "the filter's configuration is {} bytes in nginx's quoting; nginx takes at most {NGINX_ARGUMENT_MAX} in one argument: \
             shorten it (fewer routes, shorter names), or use Envoy, which has no such limit",
            argument.len()
        ));
    }
    let env: String = f.env.iter().map(|n| format!("env {n};\n")).collect();
    let main = format!(
        "{GENERATED}# Include in nginx's main context, after `load_module …/ngx_wasmx_module.so;`\n\
         # and `worker_processes` (ngx_wasm_module sizes a zone from it).\n\
         # nginx clears its workers' environment but for the variables named here.\n{env}\
         wasm {{\n    module oidc_edge {wasm};\n\
         \x20   # Shared data (provider metadata, single-use states, refresh locks):\n\
         \x20   # the filter's first shared-data call traps without a zone.\n    shm_kv * 16m;\n\
         \x20   # Callouts to a provider by name are resolved here.\n    resolver {resolver} ipv6=off;\n\
         \x20   # Callouts over https: verify the provider's certificate and name, which\n\
         \x20   # ngx_wasm_module does not do by default.\n    tls_trusted_certificate {ca};\n\
         \x20   tls_verify_cert on;\n    tls_verify_host on;\n}}\n",
        wasm = opts.wasm,
        resolver = opts.resolver,
        ca = opts.ca_file,
    );
    let location = format!(
        "{GENERATED}# Include in each `location` (or `server`) the filter protects, next to proxy_pass.\n\
         proxy_wasm oidc_edge {argument};\n\
         # Headers the filter removed reach nginx renamed (nginx/patches/0001); drop them.\n\
         proxy_set_header X-Wasm-Removed \"\";\n"
    );
    Ok(vec![("wasm.conf".into(), main), ("filter.conf".into(), location)])
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn demo() -> Value {
        std::env::set_var("RENDER_TEST_CLIENT", "s");
        std::env::set_var("RENDER_TEST_COOKIE", "q2Vw7bRk0lq2JtY0lVYV8d7p3sT5n8uQmWcXeZrA1bE=");
        json!({
            "provider": {"issuer": "https://id.example.com", "client_id": "c", "client_secret": {"env": "RENDER_TEST_CLIENT"}},
            "session": {"secrets": [{"env": "RENDER_TEST_COOKIE"}]},
            "routes": [{"path": "/", "inject_headers": {"x-api-key": {"env": "RENDER_TEST_CLIENT"}}}],
            "sidecar": {"listen": "127.0.0.1:4180"}
        })
    }

    fn opts() -> FilterOptions {
        FilterOptions {
            wasm: INSTALLED_WASM.into(),
            listen: "0.0.0.0:8080".into(),
            upstream: "127.0.0.1:9100".into(),
            admin: None,
            resolver: "127.0.0.53".into(),
            ca_file: CA_BUNDLE.into(),
        }
    }

    #[test]
    fn envoy_gets_a_verified_tls_cluster_and_every_variable_once() {
        let files = envoy(&demo(), &opts()).unwrap();
        let filter = &files.iter().find(|(n, _)| n == "http-filters.yaml").unwrap().1;
        assert!(filter.contains("host_env_keys: [\"RENDER_TEST_CLIENT\", \"RENDER_TEST_COOKIE\"]"), "{filter}");
        assert!(filter.contains("FAIL_CLOSED") && !filter.contains("\"sidecar\""), "{filter}");
        assert!(filter.contains("\"id.example.com\": \"oidc_edge_idp\""), "{filter}");
        let clusters = &files.iter().find(|(n, _)| n == "clusters.yaml").unwrap().1;
        assert!(clusters.contains("port_value: 443") && clusters.contains("sni: \"id.example.com\""), "{clusters}");
        assert!(clusters.contains("san_type: DNS, matcher: { exact: \"id.example.com\" }"), "{clusters}");
        assert!(clusters.contains("trusted_ca: { filename: \"/etc/ssl/certs/ca-certificates.crt\" }"), "{clusters}");
        let private = FilterOptions { ca_file: "/etc/oidc-edge/home-ca.pem".into(), ..opts() };
        assert!(envoy(&demo(), &private).unwrap()[2].1.contains("filename: \"/etc/oidc-edge/home-ca.pem\""));
        assert!(nginx_wasm(&demo(), &private).unwrap()[0].1.contains("tls_trusted_certificate /etc/oidc-edge/home-ca.pem;"));
        let boot: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[0].1).unwrap();
        let hcm = &boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["use_remote_address"], serde_yaml_ng::Value::Bool(true));
        let embedded = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(embedded).unwrap();
        assert_eq!(parsed["provider"]["callouts"], json!({"id.example.com": "oidc_edge_idp"}));
    }

    #[test]
    fn nginx_gets_host_port_targets_and_a_quoted_argument() {
        let mut raw = demo();
        raw["provider"]["display_name"] = json!("Bob's \\ IdP");
        let files = nginx_wasm(&raw, &opts()).unwrap();
        assert!(files[0].1.contains("env RENDER_TEST_CLIENT;\nenv RENDER_TEST_COOKIE;\n"), "{}", files[0].1);
        let location = &files[1].1;
        assert!(location.contains("\"id.example.com\":\"id.example.com:443\""), "{location}");
        assert!(location.contains("Bob\\'s \\\\\\\\ IdP"), "{location}");
    }

    #[test]
    fn file_secrets_and_bad_configs_are_refused_with_the_field() {
        let mut raw = demo();
        raw["session"]["secrets"] = json!([{"file": "cookie"}]);
        let e = envoy(&raw, &opts()).unwrap_err();
        assert!(e.contains("configuration.session.secrets[0]: the filter reads no files"), "{e}");
        let mut raw = demo();
        raw["provider"]["client_secret"] = json!({"env": "X;\nload_module /tmp/evil.so"});
        let e = nginx_wasm(&raw, &opts()).unwrap_err();
        assert!(e.contains("provider.client_secret.env: \"X;\\nload_module /tmp/evil.so\" is not a variable name"), "{e}");
        let mut raw = demo();
        raw["routes"] = json!([{"path": "/", "groups": "admins"}]);
        assert!(nginx_wasm(&raw, &opts()).unwrap_err().contains("routes"));
    }

    #[test]
    fn host_port_callouts_become_clusters_for_envoy() {
        let mut raw = demo();
        raw["provider"]["callouts"] = json!({"id.example.com": "10.0.0.5:8443"});
        raw["fleet"] = json!({"coordinator": "127.0.0.1:4180"});
        let files = envoy(&raw, &opts()).unwrap();
        let clusters = &files.iter().find(|(n, _)| n == "clusters.yaml").unwrap().1;
        assert!(clusters.contains("oidc_edge_idp_10_0_0_5_8443") && clusters.contains("port_value: 8443"), "{clusters}");
        // Connected to the internal address, the certificate still checked for the provider's name.
        assert!(clusters.contains("address: \"10.0.0.5\"") && clusters.contains("sni: \"id.example.com\""), "{clusters}");
        assert!(clusters.contains("san_type: DNS, matcher: { exact: \"id.example.com\" }"), "{clusters}");
        assert!(clusters.contains("\"oidc_edge_coordinator\"") && clusters.contains("port_value: 4180"), "{clusters}");
    }

    #[test]
    fn nginx_refuses_an_argument_it_could_not_read_and_options_that_break_out() {
        let mut raw = demo();
        raw["routes"] = Value::Array((0..80).map(|i| json!({"host": format!("service-{i}.example.com"), "groups": ["admins"]})).collect());
        let e = nginx_wasm(&raw, &opts()).unwrap_err();
        assert!(e.contains("nginx takes at most 4095"), "{e}");
        assert!(envoy(&raw, &opts()).is_ok());
        let bad = FilterOptions { wasm: "/x.wasm; load_module /evil.so".into(), ..opts() };
        assert!(nginx_wasm(&demo(), &bad).unwrap_err().contains("--wasm"));
    }
}
