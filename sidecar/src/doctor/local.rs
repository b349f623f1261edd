//! The checks that need no provider: cookie secrets, cookie attributes and
//! size, the sidecar's trusted proxies, and rendered snippets gone stale.

use std::path::Path;

use oidc_edge::config::{decode_cookie_secret, looks_human_made, SameSite, SecretSource};
use oidc_edge::engine::{LOGIN_SLOTS, MAX_COOKIE_BYTES};
use oidc_edge::session::Session;
use oidc_edge::Config;
use serde_json::Value;

use super::checks::origins;
use super::{Check, Options};
use crate::settings::SidecarConfig;

/// Every check of the configuration alone.
pub fn checks(config: &Config, settings: &SidecarConfig, raw: Option<&Value>, secrets: &dyn SecretSource, opts: &Options) -> Vec<Check> {
    let mut out =
        vec![cookie_secrets(raw, secrets), cookie_attributes(config, opts), cookie_size(config, opts.groups), header_size(config, opts)];
    out.push(trusted_proxies(settings));
    out
}

fn resolve(raw: &Value, secrets: &dyn SecretSource) -> Option<String> {
    match raw {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => match (m.get("env").and_then(Value::as_str), m.get("file").and_then(Value::as_str)) {
            (Some(name), _) => secrets.env(name),
            (_, Some(path)) => secrets.file(path).ok().map(|v| v.trim_end_matches(['\r', '\n']).to_owned()),
            _ => None,
        },
        _ => None,
    }
}

fn cookie_secrets(raw: Option<&Value>, secrets: &dyn SecretSource) -> Check {
    let list = raw.and_then(|r| r.pointer("/session/secrets")).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut sizes = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let Some(value) = resolve(item, secrets) else { continue };
        let field = format!("session.secrets[{i}]");
        if looks_human_made(&value) {
            return Check::fail(
                "cookie_secrets",
                format!("{field} looks chosen by a person ({} plain characters): guessable", value.len()),
                "generate one with `oidc-edge secret` and put it first; keep the old one second until sessions have rolled over",
            );
        }
        let bytes = decode_cookie_secret(&value).map_or(0, |b| b.len());
        sizes.push((field, bytes));
    }
    match sizes.iter().find(|(_, n)| *n < 32) {
        Some((field, n)) => Check::warn(
            "cookie_secrets",
            format!("{field} is {n} bytes; 32 random bytes are the standard"),
            "generate one with `oidc-edge secret` (base64 of 32 random bytes)",
        ),
        None => Check::pass("cookie_secrets", format!("{} secret(s), 32 random bytes each", sizes.len())),
    }
}

fn cookie_attributes(config: &Config, opts: &Options) -> Check {
    let s = &config.session;
    let origins = origins(config, opts);
    let https = origins.iter().any(|o| o.starts_with("https://")) || config.redirect_url.as_deref().is_some_and(|u| u.starts_with("https://"));
    let plain: Vec<&String> = origins.iter().filter(|o| o.starts_with("http://")).collect();
    if !s.secure && https {
        let assumed = if opts.hosts.is_empty() { " (assumed: pass --host http://… for a plain-http test setup)" } else { "" };
        return Check::fail(
            "cookies",
            format!(
                "session.secure is false, and people reach the gate over https{assumed}: the session cookie would also travel over plain http"
            ),
            "remove session.secure: false (Secure is the default)",
        );
    }
    if s.secure && !plain.is_empty() && opts.hosts.iter().any(|h| h.starts_with("http://")) {
        return Check::fail(
            "cookies",
            format!("the session cookie is Secure, and {} is plain http: browsers would drop it and every sign-in would loop", plain[0]),
            "serve the host over https, or set session.secure: false for a local test setup only",
        );
    }
    if s.same_site == SameSite::None {
        return Check::warn(
            "cookies",
            "SameSite=None sends the session cookie with requests from any site",
            "use session.same_site: lax (the default) unless another site must embed these services",
        );
    }
    let secure = if s.secure { "Secure, " } else { "not Secure (session.secure: false), " };
    Check::pass("cookies", format!("HttpOnly, {secure}SameSite={}", s.same_site.as_str()))
}

/// The session cookie of a user with `groups` groups of 20 characters, a
/// long email and name, and an opaque refresh token: what the browser must
/// keep under its 4 KB limit.
fn cookie_len(config: &Config, groups: usize) -> usize {
    let session = Session {
        sub: "0b4a27ab-7d47-4b8f-8c53-2fd4e0d0c6f9".into(),
        user: "firstname.lastname".into(),
        email: Some("firstname.lastname@example.com".into()),
        email_verified: true,
        name: Some("Firstname Lastname".into()),
        groups: (0..groups).map(|i| format!("department-group-{i:04}")).collect(),
        login_at: 1_800_000_000,
        checked_at: 1_800_000_000,
        refresh_token: Some("r".repeat(86)),
        id: [7; 16],
        idp_sid: Some("0b4a27ab-7d47-4b8f-8c53-2fd4e0d0c6f9".into()),
        auth_time: 1_800_000_000,
        acr: None,
        amr: vec!["phr".into()],
        asked: Some(oidc_edge::session::Asked { max_age: Some(86_400), acr: Vec::new() }),
    };
    let s = &config.session;
    let sealed = s.sealer.seal(&s.cookie_name, 1_800_000_000, &session.encode(), &mut crate::random::OsRandom);
    let attrs = format!("; Path=/; Max-Age={}; HttpOnly; SameSite=Lax; Secure", s.lifetime).len() + s.domain.as_ref().map_or(0, |d| d.len() + 9);
    s.cookie_name.len() + 1 + sealed.len() + attrs
}

fn cookie_size(config: &Config, groups: usize) -> Check {
    let len = cookie_len(config, groups);
    let (mut lo, mut hi) = (0usize, 2000usize);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if cookie_len(config, mid) <= MAX_COOKIE_BYTES {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let detail =
        format!("{len} bytes for a user with {groups} groups (the limit is {MAX_COOKIE_BYTES}; up to {lo} groups of 20 characters fit)");
    if len > MAX_COOKIE_BYTES {
        Check::fail(
            "cookie_size",
            detail,
            "such a user could not sign in: give them fewer or shorter groups at the provider, or keep groups out of the token's scope",
        )
    } else {
        Check::pass("cookie_size", detail)
    }
}

/// A login in flight as its cookie holds it, with the longest return
/// address the gate keeps (512 bytes) and the largest step-up it may ask.
fn login_cookie_len(config: &Config) -> usize {
    let asked = config.routes.iter().filter(|r| !r.step_up.is_empty()).map(|r| r.step_up.to_ask()).max_by_key(|a| a.acr.concat().len());
    let login = oidc_edge::session::LoginState {
        state: "~0".to_owned() + &"s".repeat(43),
        nonce: "n".repeat(43),
        verifier: "v".repeat(43),
        return_to: "/".to_owned() + &"r".repeat(511),
        redirect_uri: "https://a-long-application-name.example.com/oauth2/callback".into(),
        asked: asked.map(|a| oidc_edge::session::Asked { max_age: a.max_age.map(|_| u64::from(u32::MAX)), ..a }),
    };
    let s = &config.session;
    let name = format!("{}_csrf_0", s.cookie_name);
    name.len() + 1 + s.sealer.seal(&name, 1_800_000_000, &login.encode(), &mut crate::random::OsRandom).len()
}

/// nginx's default `large_client_header_buffers` (4 8k): one header line
/// must fit one buffer, the smallest limit of the proxies the gate runs in
/// (Envoy's is 60 KiB, Caddy's and Traefik's 1 MiB).
const NGINX_HEADER_LINE: usize = 8 * 1024;

/// The largest `Cookie` header the gate may make a browser send: the
/// session of the largest user, its ID token for sign-out (an estimate:
/// 1.5 KB) and a login in flight in every slot, against the proxy's limit
/// (nginx's default, or the `large_client_header_buffers` found in
/// `--snippets DIR`).
fn header_size(config: &Config, opts: &Options) -> Check {
    let session = cookie_len(config, opts.groups);
    let logins = usize::from(LOGIN_SLOTS) * (login_cookie_len(config) + 2);
    let total = session + 1536 + logins;
    let configured = opts.snippets.as_deref().and_then(nginx_header_buffer);
    let limit = configured.unwrap_or(NGINX_HEADER_LINE);
    let whose = if configured.is_some() { "the large_client_header_buffers in the snippets" } else { "nginx's default header line" };
    let detail = format!(
        "up to {total} bytes of Cookie (a session for {} groups, the ID token kept for sign-out, {LOGIN_SLOTS} sign-ins in flight); {whose} holds {limit}",
        opts.groups
    );
    if total > limit {
        Check::fail(
            "header_size",
            detail,
            format!("behind nginx, raise it in the server block: large_client_header_buffers 4 {}k;", total.div_ceil(1024).next_power_of_two()),
        )
    } else {
        Check::pass("header_size", detail)
    }
}

/// The buffer size of a `large_client_header_buffers N SIZE;` in the files
/// of `dir`, in bytes.
fn nginx_header_buffer(dir: &Path) -> Option<usize> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).find_map(|text| {
        text.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| {
            let mut words = l.strip_prefix("large_client_header_buffers")?.trim_end_matches(';').split_whitespace();
            let size = words.nth(1)?;
            let (num, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len()));
            let n: usize = num.parse().ok()?;
            match unit.to_ascii_lowercase().as_str() {
                "" => Some(n),
                "k" => Some(n * 1024),
                "m" => Some(n * 1024 * 1024),
                _ => None,
            }
        })
    })
}

fn trusted_proxies(settings: &SidecarConfig) -> Check {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let everything = settings.trusted_proxies.iter().any(|n| {
        (n.contains(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) && n.contains(IpAddr::V4(Ipv4Addr::BROADCAST)))
            || (n.contains(IpAddr::V6(Ipv6Addr::UNSPECIFIED)) && n.contains(IpAddr::V6(Ipv6Addr::from(u128::MAX))))
    });
    if settings.trusted_proxies.is_empty() {
        Check::fail(
            "trusted_proxies",
            "sidecar.trusted_proxies is empty: the sidecar believes no proxy's X-Forwarded-* headers and cannot know the original URL",
            "list your proxy's address, e.g. [127.0.0.1] or the Caddy container's network",
        )
    } else if everything {
        Check::fail(
            "trusted_proxies",
            "sidecar.trusted_proxies trusts every address: any client reaching the sidecar chooses the host, path and address it decides on",
            "list only your proxies' addresses or their network (e.g. 172.18.0.0/16 for a compose network)",
        )
    } else {
        Check::pass("trusted_proxies", format!("{} network(s)", settings.trusted_proxies.len()))
    }
}

/// Which proxy a snippet directory is for, from the file names `render` writes.
const SNIPPET_FILES: [(&str, &[&str]); 5] = [
    ("nginx", &["http.conf", "protect.conf", "sidecar.conf", "to-sidecar.conf", "upstream-headers.conf"]),
    ("caddy", &["oidc-edge.caddy"]),
    ("traefik", &["oidc-edge.yml"]),
    ("envoy", &["http-filters.yaml", "clusters.yaml", "http-connection-manager.yaml"]),
    ("nginx-wasm", &["wasm.conf", "filter.conf"]),
];

/// The value after `key` on its line in `text` (the options a rendering was made with).
fn option_in(text: &str, key: &str, end: &[char]) -> Option<String> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start().trim_start_matches('"');
    Some(rest.split(|c| end.contains(&c)).next()?.to_owned())
}

/// Renders again what `dir` holds and names every file that differs.
pub fn snippets(config: &Config, settings: &SidecarConfig, raw: Option<&Value>, dir: &Path, sidecar: Option<&str>) -> Vec<Check> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut out = Vec::new();
    for (proxy, names) in SNIPPET_FILES {
        let present: Vec<&str> = names.iter().copied().filter(|n| dir.join(n).is_file()).collect();
        if present.is_empty() {
            continue;
        }
        let address = crate::render::sidecar_address(settings, sidecar);
        let wasm = read("http-filters.yaml")
            .and_then(|t| option_in(&t, "filename:", &['"', ' ', '}']))
            .or_else(|| read("wasm.conf").and_then(|t| option_in(&t, "module oidc_edge", &[';'])))
            .unwrap_or_else(|| crate::render_filter::INSTALLED_WASM.to_owned());
        let resolver = read("wasm.conf").and_then(|t| option_in(&t, "resolver", &[' ', ';'])).unwrap_or_else(|| "127.0.0.53".into());
        let opts = crate::render_filter::FilterOptions {
            wasm,
            listen: "0.0.0.0:8080".into(),
            upstream: "127.0.0.1:8081".into(),
            admin: None,
            resolver,
            ca_file: read("wasm.conf")
                .and_then(|t| option_in(&t, "tls_trusted_certificate", &[';']))
                .or_else(|| read("clusters.yaml").and_then(|t| option_in(&t, "filename:", &['"', ' ', '}'])))
                .unwrap_or_else(|| crate::render_filter::CA_BUNDLE.to_owned()),
        };
        let rendered = match proxy {
            "nginx" => crate::render::nginx(config, settings, &address),
            "caddy" => crate::render::caddy(config, settings, &address),
            "traefik" => crate::render::traefik(config, settings, &address),
            "envoy" => raw.ok_or_else(String::new).and_then(|r| crate::render_filter::envoy(r, &opts)),
            _ => raw.ok_or_else(String::new).and_then(|r| crate::render_filter::nginx_wasm(r, &opts)),
        };
        let rendered = match rendered {
            Ok(files) => files,
            Err(e) => {
                out.push(Check::fail("snippets", format!("{proxy}: cannot render: {e}"), "fix the configuration"));
                continue;
            }
        };
        let stale: Vec<&str> = present
            .iter()
            .copied()
            .filter(|n| rendered.iter().find(|(f, _)| f == n).map(|(_, text)| Some(text.clone()) != read(n)).unwrap_or(false))
            .collect();
        if stale.is_empty() {
            out.push(Check::pass("snippets", format!("{}: the {proxy} snippets match the configuration", dir.display())));
        } else {
            out.push(Check::fail(
                "snippets",
                format!("{}: {} no longer match the configuration", dir.display(), stale.join(", ")),
                format!("oidc-edge render {proxy} --config <this file> --out {} (then reload the proxy)", dir.display()),
            ));
        }
    }
    if out.is_empty() {
        out.push(Check::fail(
            "snippets",
            format!("{}: no snippets that `oidc-edge render` writes", dir.display()),
            "point --snippets at the directory `render` wrote",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::nginx_header_buffer;

    #[test]
    fn the_header_buffer_is_read_from_nginx_configuration() {
        let dir = std::env::temp_dir().join(format!("oidc-edge-doctor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.conf"), "# large_client_header_buffers 4 1k;\nserver {\n  large_client_header_buffers 4 16k;\n}\n").unwrap();
        assert_eq!(nginx_header_buffer(&dir), Some(16 * 1024));
        std::fs::write(dir.join("a.conf"), "server {}\n").unwrap();
        assert_eq!(nginx_header_buffer(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
