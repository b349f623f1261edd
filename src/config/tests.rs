//! Configuration parsing: every error at once, each naming its field and the
//! fix; defaults; secrets never shown.

use super::*;
use crate::policy::{Requirement, Rule};
use crate::testing::{cookie_secret, EnvSecrets, API_KEY, CLIENT_SECRET};
use serde_json::{json, Value};

fn minimal() -> Value {
    json!({
        "provider": {
            "issuer": "https://id.example.com",
            "client_id": "edge",
            "client_secret": {"env": "CLIENT_SECRET"},
            "callouts": {"id.example.com": "pocket_id"}
        },
        "session": {"secrets": [{"env": "COOKIE_SECRET"}]},
        "routes": [{"path": "/"}]
    })
}

fn parse(v: &Value) -> Result<Config, ConfigErrors> {
    Config::from_json(&v.to_string(), &EnvSecrets::standard())
}

fn errors_of(v: &Value) -> Vec<String> {
    match parse(v) {
        Ok(_) => panic!("config should be refused: {v}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn patched(patch: impl FnOnce(&mut Value)) -> Value {
    let mut v = minimal();
    patch(&mut v);
    v
}

/// (what, patch, the field the one error must name, phrases it must contain)
type ErrorCase = (&'static str, fn(&mut Value), &'static str, &'static [&'static str]);

fn single_errors() -> Vec<ErrorCase> {
    vec![
        (
            "cookie secret too short",
            |v| v["session"]["secrets"] = json!(["tooshort"]),
            "session.secrets[0]",
            &["8 bytes", "16, 24 or 32", "openssl rand -base64 32"],
        ),
        (
            "cookie secret: base64 of 20 bytes",
            |v| v["session"]["secrets"] = json!(["MDEyMzQ1Njc4OWFiY2RlZmdoaWo="]),
            "session.secrets[0]",
            &["16, 24 or 32", "openssl rand -base64 32"],
        ),
        (
            "second cookie secret wrong",
            |v| v["session"]["secrets"] = json!([{"env": "COOKIE_SECRET"}, "x"]),
            "session.secrets[1]",
            &["16, 24 or 32"],
        ),
        ("no cookie secret", |v| v["session"]["secrets"] = json!([]), "session.secrets", &["openssl rand -base64 32"]),
        ("empty cookie secret", |v| v["session"]["secrets"] = json!([""]), "session.secrets[0]", &["empty"]),
        (
            "issuer with trailing slash",
            |v| v["provider"]["issuer"] = json!("https://id.example.com/"),
            "provider.issuer",
            &["ends with '/'", "https://id.example.com"],
        ),
        (
            "http issuer on a public host",
            |v| v["provider"]["issuer"] = json!("http://id.example.com"),
            "provider.issuer",
            &["http://", "insecure_allow_http_issuer"],
        ),
        ("issuer not a URL", |v| v["provider"]["issuer"] = json!("id.example.com"), "provider.issuer", &["absolute"]),
        (
            "missing env var",
            |v| v["provider"]["client_secret"] = json!({"env": "POCKET_ID_SECRET"}),
            "provider.client_secret",
            &["POCKET_ID_SECRET", "host_env_keys"],
        ),
        (
            "secret file unreadable",
            |v| v["provider"]["client_secret"] = json!({"file": "/run/secrets/x"}),
            "provider.client_secret",
            &["/run/secrets/x"],
        ),
        ("empty client id", |v| v["provider"]["client_id"] = json!(""), "provider.client_id", &["empty"]),
        (
            "bad client auth",
            |v| v["provider"]["client_auth"] = json!("private_key_jwt"),
            "provider.client_auth",
            &["client_secret_basic", "client_secret_post"],
        ),
        ("scopes without openid", |v| v["provider"]["scopes"] = json!(["email"]), "provider.scopes", &["openid"]),
        ("scope with a space", |v| v["provider"]["scopes"] = json!(["openid", "email profile"]), "provider.scopes", &["one word"]),
        ("no callouts", |v| v["provider"]["callouts"] = json!({}), "provider.callouts", &["id.example.com"]),
        (
            "callouts miss the issuer",
            |v| v["provider"]["callouts"] = json!({"other.example.com": "x"}),
            "provider.callouts",
            &["\"id.example.com\""],
        ),
        ("timeout out of range", |v| v["provider"]["timeout_ms"] = json!(10), "provider.timeout_ms", &["100 to 60000"]),
        ("absurd clock skew", |v| v["provider"]["clock_skew"] = json!("1h"), "provider.clock_skew", &["fix the clocks"]),
        ("unparsable duration", |v| v["session"]["lifetime"] = json!("twelve hours"), "session.lifetime", &["12h"]),
        ("too short lifetime", |v| v["session"]["lifetime"] = json!("30s"), "session.lifetime", &["at least 60s"]),
        ("bad same_site", |v| v["session"]["same_site"] = json!("Relaxed"), "session.same_site", &["Lax", "Strict", "None"]),
        (
            "None without secure",
            |v| {
                v["session"]["same_site"] = json!("None");
                v["session"]["secure"] = json!(false);
            },
            "session.same_site",
            &["secure"],
        ),
        (
            "__Secure- without secure",
            |v| {
                v["session"]["cookie_name"] = json!("__Secure-edge");
                v["session"]["secure"] = json!(false);
            },
            "session.secure",
            &["__Secure-"],
        ),
        (
            "__Host- with a domain",
            |v| {
                v["session"]["cookie_name"] = json!("__Host-edge");
                v["session"]["domain"] = json!("example.com");
            },
            "session.domain",
            &["__Host-"],
        ),
        ("bad cookie name", |v| v["session"]["cookie_name"] = json!("my cookie"), "session.cookie_name", &["not a valid cookie name"]),
        ("bad domain", |v| v["session"]["domain"] = json!("https://example.com"), "session.domain", &["example.com"]),
        ("empty routes", |v| v["routes"] = json!([]), "routes", &["empty"]),
        (
            "public route with groups",
            |v| v["routes"] = json!([{"path": "/p/", "public": true, "groups": ["admins"]}]),
            "routes[0]",
            &["public", "groups"],
        ),
        ("route path not absolute", |v| v["routes"] = json!([{"path": "admin/"}]), "routes[0].path", &["absolute path"]),
        ("route path with dot segment", |v| v["routes"] = json!([{"path": "/a/../b/"}]), "routes[0].path", &["absolute path"]),
        ("route host", |v| v["routes"] = json!([{"host": "bad host"}]), "routes[0].host", &["*.domain"]),
        ("callback path", |v| v["paths"] = json!({"callback": "oauth2/callback"}), "paths.callback", &["/oauth2/callback"]),
        ("redirect_url", |v| v["redirect_url"] = json!("/oauth2/callback"), "redirect_url", &["absolute"]),
        ("redirect to any host", |v| v["allowed_redirect_hosts"] = json!(["*"]), "allowed_redirect_hosts[0]", &["any site"]),
        (
            "identity header with a space",
            |v| v["identity_headers"] = json!({"user": "Remote User"}),
            "identity_headers.user",
            &["not a valid HTTP header name"],
        ),
        (
            "route identity header",
            |v| v["routes"] = json!([{"identity_headers": {"email": "X:Email"}}]),
            "routes[0].identity_headers.email",
            &["not a valid HTTP header name"],
        ),
        ("strip header", |v| v["strip_headers"] = json!(["bad header"]), "strip_headers[0]", &["not a valid HTTP header name"]),
        (
            "inject header name",
            |v| v["routes"] = json!([{"inject_headers": {"x api key": "v"}}]),
            "routes[0].inject_headers.x api key",
            &["not a valid HTTP header name"],
        ),
        (
            "inject cookie",
            |v| v["routes"] = json!([{"inject_headers": {"Cookie": "a=b"}}]),
            "routes[0].inject_headers.Cookie",
            &["cannot be injected"],
        ),
        ("two paths the same", |v| v["paths"] = json!({"sign_in": "/oauth2/start"}), "paths", &["two purposes"]),
        ("own path with a placeholder", |v| v["paths"] = json!({"forward_auth": "/oauth2/fa$host"}), "paths", &["letters, digits"]),
        (
            "inject value with CRLF",
            |v| v["routes"] = json!([{"inject_headers": {"x-api-key": "k\r\nx: y"}}]),
            "routes[0].inject_headers.x-api-key",
            &["control characters"],
        ),
    ]
}

#[test]
fn each_error_names_its_field() {
    let mut failures = Vec::new();
    for (what, patch, field, phrases) in single_errors() {
        let errors = match parse(&patched(patch)) {
            Ok(_) => {
                failures.push(format!("{what}: accepted"));
                continue;
            }
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        if errors.len() != 1 {
            failures.push(format!("{what}: {} errors {errors:?}", errors.len()));
        }
        let e = &errors[0];
        if !e.starts_with(&format!("{field}: ")) {
            failures.push(format!("{what}: does not start with {field:?}: {e}"));
        }
        for p in phrases {
            if !e.contains(p) {
                failures.push(format!("{what}: lacks {p:?}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "config errors:\n{}", failures.join("\n"));
}

#[test]
fn every_error_is_listed_at_once() {
    let v = json!({
        "provider": {
            "issuer": "http://id.example.com/",
            "client_id": "edge",
            "client_secret": {"env": "MISSING_SECRET"},
            "callouts": {"id.example.com": "pocket_id"}
        },
        "session": {"secrets": ["too-short"], "same_site": "none", "secure": false},
        "identity_headers": {"user": "Remote User"},
        "routes": [{"path": "/pub/", "public": true, "groups": ["admins"]}, {"inject_headers": {"bad name": "x"}}]
    });
    let err = parse(&v).expect_err("refused");
    let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
    for want in [
        "provider.issuer",
        "provider.client_secret",
        "session.secrets[0]",
        "session.same_site",
        "identity_headers.user",
        "routes[0]",
        "routes[1].inject_headers.bad name",
    ] {
        assert!(fields.contains(&want), "{want} missing from {:#?}", err.0);
    }
    // Trailing slash and http:// are two problems with one field: both reported.
    assert_eq!(fields.iter().filter(|f| **f == "provider.issuer").count(), 2, "{:#?}", err.0);
    assert_eq!(err.0.len(), 8, "{:#?}", err.0);
    let text = err.to_string();
    assert!(text.starts_with("invalid oidc-edge configuration (8 errors):\n"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("  - ")).count(), 8);
}

#[test]
fn structural_errors_show_the_path() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (patched(|v| v["session"]["cookie_nmae"] = json!("x")), "session.cookie_nmae", "unknown field"),
        (patched(|v| v["provider"]["isuer"] = json!("x")), "provider.isuer", "unknown field"),
        (patched(|v| v["routes"][0]["grups"] = json!(["a"])), "routes[0].grups", "unknown field"),
        (patched(|v| v["routes"][0]["groups"] = json!("admins")), "routes[0].groups", "invalid type"),
        (patched(|v| v["provider"]["timeout_ms"] = json!("5s")), "provider.timeout_ms", "invalid type"),
        (
            patched(|v| {
                v["provider"].as_object_mut().unwrap().remove("issuer");
            }),
            "provider",
            "missing field `issuer`",
        ),
    ];
    for (v, path, phrase) in cases {
        let errors = errors_of(&v);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with(&format!("{path}: ")) && errors[0].contains(phrase), "{path}: {}", errors[0]);
    }
    for text in ["", "nope", "{\"provider\": 5"] {
        let errors = Config::from_json(text, &EnvSecrets::standard()).expect_err("refused").0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("line 1 column"), "{errors:?}");
    }
}

/// A syntax error inside an object has no field to name; it must still say
/// what it is about rather than `?: key must be a string …`.
#[test]
fn syntax_errors_name_the_configuration() {
    for text in ["{not json", "{\"provider\": {,}}"] {
        let errors = Config::from_json(text, &EnvSecrets::standard()).expect_err("refused").0;
        assert_eq!(errors[0].field, "configuration", "{text:?}: {errors:?}");
    }
}

/// Text after the configuration object (a stray brace, two objects pasted
/// together) is malformed input and must be refused, not ignored.
#[test]
fn trailing_text_is_refused() {
    let valid = minimal().to_string();
    assert!(parse(&minimal()).is_ok());
    for text in [format!("{valid}}}"), format!("{valid} {valid}"), format!("{valid} x")] {
        assert!(Config::from_json(&text, &EnvSecrets::standard()).is_err(), "accepted {text:?}");
    }
    // Whitespace after it is fine.
    assert!(Config::from_json(&format!("{valid}\n  "), &EnvSecrets::standard()).is_ok());
}

#[test]
fn defaults() {
    let c = parse(&minimal()).expect("minimal config parses");
    let p = &c.provider;
    assert_eq!(p.scopes, "openid email profile groups");
    assert_eq!(p.client_auth, ClientAuth::Basic);
    assert_eq!(p.timeout_ms, 5000);
    assert_eq!(p.clock_skew, 60);
    assert_eq!(p.user_claim, UserClaim::PreferredUsername);
    assert!(!p.trust_unverified_email);
    assert_eq!(p.client_secret.expose(), CLIENT_SECRET);
    assert_eq!(c.paths.callback, "/oauth2/callback");
    assert_eq!(c.paths.sign_out, "/oauth2/sign_out");
    assert_eq!(c.paths.start, "/oauth2/start");
    let s = &c.session;
    assert_eq!(s.cookie_name, "_oidc_edge");
    assert_eq!(s.same_site, SameSite::Lax);
    assert!(s.secure);
    assert_eq!(s.domain, None);
    assert_eq!(s.lifetime, 7 * 86400);
    assert_eq!(s.login_timeout, 600);
    assert_eq!(c.redirect_url, None);
    assert_eq!(c.post_logout_redirect_url, None);
    assert!(c.allowed_redirect_hosts.is_empty());
    let route = c.routes.find("any.host", "/x", "GET").expect("catch-all route");
    assert_eq!(route.headers, HeaderNames::default());
    assert_eq!(route.headers.user.as_deref(), Some("Remote-User"));
    assert_eq!(route.headers.email.as_deref(), Some("Remote-Email"));
    assert_eq!(route.headers.groups.as_deref(), Some("Remote-Groups"));
    assert_eq!(route.headers.name.as_deref(), Some("Remote-Name"));
    assert_eq!(route.rule, Rule::Protected(Requirement::default()));
    assert!(!route.api);
    for h in ["remote-user", "Remote_Email", "X-Forwarded-User", "x-auth-request-user", "X-WebAuth-User"] {
        assert!(c.strip.contains(h), "{h} stripped by default");
    }
    // The sealer works with the configured key.
    let mut rng = crate::testing::SeededRng::new(1);
    let v = s.sealer.seal("n", 10, b"x", &mut rng);
    assert_eq!(s.sealer.open("n", &v, 1), Ok((b"x".to_vec(), 10)));
}

#[test]
fn a_full_config_parses() {
    let v = json!({
        "provider": {
            "issuer": "http://127.0.0.1:9000",
            "client_id": "oidc-edge",
            "client_secret": "inline-secret",
            "client_auth": "client_secret_post",
            "scopes": ["openid", "email", "groups"],
            "callouts": {"127.0.0.1:9000": "idp", "internal.example.com": "10.0.0.5:443"},
            "timeout_ms": 2500,
            "clock_skew": "2m",
            "trust_unverified_email": true,
            "user_claim": "email",
            "display_name": "Pocket ID"
        },
        "session": {
            "cookie_name": "__Host-sso",
            "secrets": ["0123456789abcdef0123456789abcdef", {"env": "COOKIE_SECRET"}, "0123456789abcdef"],
            "lifetime": "12h",
            "login_timeout": 300,
            "same_site": "strict",
            "secure": true
        },
        "paths": {"callback": "/_auth/callback", "sign_out": "/_auth/out", "start": "/_auth/in"},
        "identity_headers": {"user": "X-User", "name": ""},
        "strip_headers": ["X-Real-Admin"],
        "allowed_redirect_hosts": ["*.example.com", "app.test"],
        "redirect_url": "https://auth.example.com/_auth/callback",
        "post_logout_redirect_url": "https://example.com/",
        "routes": [
            {"host": "grafana.example.com", "groups": ["admins"], "identity_headers": {"user": "X-WEBAUTH-USER"}},
            {"path": "/public/", "public": true},
            {"path": "/family/", "emails": ["Mom@Example.com"], "email_domains": ["@Example.ORG"]},
            {"path": "/sonarr/", "inject_headers": {"X-Api-Key": {"env": "SONARR_KEY"}}},
            {"path": "/api/", "api": true},
            {"path": "/"}
        ]
    });
    let c = match parse(&v) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.provider.client_auth, ClientAuth::Post);
    assert_eq!(c.provider.scopes, "openid email groups");
    assert_eq!(c.provider.clock_skew, 120);
    let target = |url: &str| c.provider.call("GET", url, Vec::new(), Vec::new()).map(|call| (call.target, call.scheme));
    assert_eq!(target("http://127.0.0.1:9000/token"), Some(("idp".to_owned(), "http")));
    assert_eq!(target("https://internal.example.com/jwks"), Some(("10.0.0.5:443".to_owned(), "https")));
    assert_eq!(target("https://elsewhere.example/"), None);
    assert_eq!(c.session.lifetime, 12 * 3600);
    assert_eq!(c.session.login_timeout, 300);
    assert_eq!(c.session.same_site, SameSite::Strict);
    assert_eq!(c.paths.start, "/_auth/in");
    let grafana = c.routes.find("grafana.example.com", "/", "GET").unwrap();
    assert_eq!(grafana.headers.user.as_deref(), Some("X-WEBAUTH-USER"));
    assert_eq!(grafana.headers.name, None, "disabled at the top level, inherited");
    assert_eq!(grafana.headers.email.as_deref(), Some("Remote-Email"));
    let family = c.routes.find("app.test", "/family/x", "GET").unwrap();
    assert_eq!(
        family.rule,
        Rule::Protected(Requirement { groups: vec![], emails: vec!["mom@example.com".into()], email_domains: vec!["example.org".into()] })
    );
    let sonarr = c.routes.find("app.test", "/sonarr/", "GET").unwrap();
    assert_eq!(&*sonarr.inject[0].0, "X-Api-Key");
    assert_eq!(sonarr.inject[0].1.expose(), API_KEY);
    // Every name we set is stripped, in every spelling; so are the extra ones.
    for h in ["x_user", "X-WebAuth-User", "x.api.key", "X-Real-Admin", "remote-email"] {
        assert!(c.strip.contains(h), "{h}");
    }
}

#[test]
fn cookie_secret_forms() {
    // Raw 16/24/32 bytes (oauth2-proxy style), or base64 (padded or not, std or url) of that many.
    for secret in [
        cookie_secret(),
        cookie_secret().trim_end_matches('=').replace('+', "-").replace('/', "_"),
        "0123456789abcdef".to_owned(),
        "0123456789abcdef01234567".to_owned(),
        "0123456789abcdef0123456789abcdef".to_owned(),
        "MDEyMzQ1Njc4OWFiY2RlZg==".to_owned(),
    ] {
        let v = patched(|v| v["session"]["secrets"] = json!([secret]));
        assert!(parse(&v).is_ok(), "{secret}");
    }
}

#[test]
fn an_unknown_user_claim_is_an_error_naming_the_field() {
    let v = patched(|v| v["provider"]["user_claim"] = json!("preferred_name"));
    let errors = errors_of(&v);
    assert!(errors.iter().any(|e| e.starts_with("provider.user_claim:") && e.contains("preferred_username, email, name or sub")), "{errors:?}");
    for (name, claim) in [("email", UserClaim::Email), ("name", UserClaim::Name), ("sub", UserClaim::Sub)] {
        let v = patched(|v| v["provider"]["user_claim"] = json!(name));
        assert_eq!(parse(&v).map(|c| c.provider.user_claim).ok(), Some(claim));
    }
}

#[test]
fn human_made_cookie_secrets_are_accepted_with_a_warning() {
    for secret in ["correcthorsebatterystaple!!!!!!!", "my-super-secret-cookie-1", "Password1234567!"] {
        let v = patched(|v| v["session"]["secrets"] = json!([secret]));
        let c = parse(&v).unwrap_or_else(|e| panic!("{secret}: {e}"));
        assert_eq!(c.warnings.len(), 1, "{secret}: {:?}", c.warnings);
        let w = c.warnings[0].to_string();
        assert!(w.starts_with("session.secrets[0]:") && w.contains("oidc-edge secret") && !w.contains(secret), "{w}");
    }
    for secret in [cookie_secret(), "0123456789abcdef0123456789abcdef".to_owned(), "MDEyMzQ1Njc4OWFiY2RlZg==".to_owned()] {
        let v = patched(|v| v["session"]["secrets"] = json!([secret]));
        assert_eq!(parse(&v).map(|c| c.warnings).ok(), Some(vec![]), "{secret}");
    }
}

#[test]
fn loopback_http_issuers_are_fine_and_others_need_an_insecure_flag() {
    for (issuer, callout) in
        [("http://127.0.0.1:9000", "127.0.0.1:9000"), ("http://localhost:9000", "localhost"), ("http://[::1]:9000", "[::1]:9000")]
    {
        let v = patched(|v| {
            v["provider"]["issuer"] = json!(issuer);
            v["provider"]["callouts"] = json!({callout: "idp"});
        });
        assert!(parse(&v).is_ok(), "{issuer}: {:?}", parse(&v).err());
    }
    let v = patched(|v| {
        v["provider"]["issuer"] = json!("http://pocket-id.lan");
        v["provider"]["callouts"] = json!({"pocket-id.lan": "idp"});
        v["provider"]["insecure_allow_http_issuer"] = json!(true);
    });
    assert!(parse(&v).is_ok());
}

#[test]
fn secrets_never_show() {
    let v = patched(|v| {
        v["routes"] = json!([{"path": "/s/", "inject_headers": {"x-api-key": {"env": "SONARR_KEY"}}}, {"path": "/"}]);
    });
    let c = parse(&v).expect("parses");
    let debug = format!("{c:?} {:?} {:?}", c.provider, c.routes);
    for secret in [CLIENT_SECRET, API_KEY, &cookie_secret()] {
        assert!(!debug.contains(secret), "{secret:?} in {debug}");
    }
    assert!(debug.contains("[redacted]"));
    assert_eq!(format!("{:?}", SecretString::new("hunter2".into())), "[redacted]");

    // Nor in error messages about them.
    let v = patched(|v| {
        v["provider"]["client_secret"] = json!("");
        v["session"]["secrets"] = json!(["hunter2-not-16-bytes"]);
        v["routes"] = json!([{"inject_headers": {"x-api-key": "hunter3\u{7}"}}]);
    });
    let text = parse(&v).expect_err("refused").to_string();
    assert!(!text.contains("hunter"), "{text}");
}

#[test]
fn durations() {
    for (text, secs) in [
        ("90", Some(90)),
        ("90s", Some(90)),
        ("15m", Some(900)),
        ("12h", Some(43200)),
        ("7d", Some(604800)),
        ("", None),
        ("h", None),
        ("1.5h", Some(5400)),
        ("0.5s", None),
        ("-1", None),
        ("1w", Some(604800)),
        ("1h 30m", Some(5400)),
        ("500ms", None),
        ("99999999999999999999d", None),
    ] {
        assert_eq!(parse_duration(text), secs, "{text:?}");
    }
}

#[test]
fn a_host_with_its_own_client_calls_unmapped_hosts_and_the_filter_cannot() {
    let v = patched(|v| {
        v["provider"].as_object_mut().unwrap().remove("callouts");
    });
    let filter = errors_of(&v);
    assert!(filter.iter().any(|e| e.starts_with("provider.callouts: is empty")), "{filter:?}");
    let c = Config::parse(&v.to_string(), &EnvSecrets::standard(), IdpCalls::Direct).unwrap();
    let call = c.provider.call("GET", "https://id.example.com:8443/.well-known/jwks.json", vec![], vec![]).unwrap();
    assert_eq!((call.target.as_str(), call.scheme, call.path.as_str()), ("id.example.com:8443", "https", "/.well-known/jwks.json"));
    // A mapping still wins (an internal address for the IdP).
    let mapped = patched(|v| v["provider"]["callouts"] = json!({"id.example.com": "10.0.0.5:443"}));
    let c = Config::parse(&mapped.to_string(), &EnvSecrets::standard(), IdpCalls::Direct).unwrap();
    assert_eq!(c.provider.call("GET", "https://id.example.com/x", vec![], vec![]).unwrap().target, "10.0.0.5:443");
}

/// The core skips front ends' sections, whatever they hold; the front end
/// that reads one checks it (the sidecar's tests).
#[test]
fn front_end_sections_are_left_to_their_front_end() {
    let v = patched(|v| v["sidecar"] = json!({"listen": "not checked here", "anything": 1}));
    assert!(parse(&v).is_ok());
    let v = patched(|v| v["sidcar"] = json!({}));
    let errors = errors_of(&v);
    assert!(errors[0].contains("unknown field `sidcar`"), "{errors:?}");
}

#[test]
fn a_secret_in_the_wrong_place_is_not_quoted_back() {
    let mut v = minimal();
    v["session"]["secrets"] = json!("SuperSecretCookieValue-0123456789abcdef");
    let e = errors_of(&v).join("\n");
    assert!(e.contains("session.secrets") && e.contains("(value not shown)"), "{e}");
    assert!(!e.contains("SuperSecret"), "{e}");
    let mut v = minimal();
    v["provider"]["client_secret"] = json!(["the-client-secret-in-a-list"]);
    let e = errors_of(&v).join("\n");
    assert!(e.contains("provider.client_secret") && !e.contains("the-client-secret-in-a-list"), "{e}");
}
