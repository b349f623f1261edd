//! The engine, driven the way a host drives it: a fixed clock, a seeded RNG,
//! in-memory shared state and a hand-built provider. No I/O.
//!
//! `request_table` is the scenario table (one row per request and what must
//! come of it); the flows that need several steps (login, callback, token
//! exchange, JWKS refetch, sign-out) have their own tests and tables below.

use super::cookies::LOGIN_SLOTS;
use super::*;
use crate::driver::{Answer, Driver, Lend};
use crate::http::HttpCall;
use crate::seal::Sealer;
use crate::session::LoginState;
use crate::store::{RecordKey, StoreAnswer, StoreOp};
use crate::testing::*;
use serde_json::{json, Value};

const COOKIE: &str = "_oidc_edge";
const AUTHORIZE: &str = "https://id.example.com/authorize";

// ---------------------------------------------------------------------------
// Fixtures.

fn config_json() -> Value {
    json!({
        "provider": {
            "issuer": ISSUER,
            "client_id": CLIENT_ID,
            "client_secret": {"env": "CLIENT_SECRET"},
            "callouts": {"id.example.com": "idp"}
        },
        "session": {"secrets": [{"env": "COOKIE_SECRET"}]},
        "allowed_redirect_hosts": ["*.example.com"],
        "routes": [
            {"host": "grafana.example.com", "groups": ["admins"]},
            {"path": "/public/", "public": true},
            {"path": "/admin/", "groups": ["admins"]},
            {"path": "/mail/", "email_domains": ["example.com"]},
            {"path": "/sonarr/", "inject_headers": {"x-api-key": {"env": "SONARR_KEY"}}},
            {"path": "/api/", "api": true},
            {"path": "/"}
        ]
    })
}

fn driver_from(config: &Value) -> Driver {
    match Config::from_json(&config.to_string(), &EnvSecrets::standard()) {
        Ok(c) => driver(c),
        Err(e) => panic!("test config must parse: {e}"),
    }
}

/// Alice: admin, verified email, five groups.
fn alice() -> Value {
    json!({"sub": "3f2b8a8e-6d1c-4d1e-9a53-0c7c8a1f2b3c", "preferred_username": "alice",
           "email": "alice@example.com", "email_verified": true, "name": "Alice Admin",
           "groups": ["admins", "users", "media", "home", "family"], "amr": ["phr"]})
}

/// Bob: a user, with an email Pocket ID has not verified (its default).
fn bob() -> Value {
    json!({"sub": "b0b", "preferred_username": "bob", "email": "bob@example.com",
           "email_verified": false, "name": "Bob", "groups": ["users"]})
}

/// Carol: no email, no name, no groups.
fn carol() -> Value {
    json!({"sub": "c4r0l", "preferred_username": "carol"})
}

const ALICE_HEADERS: &[(&str, &str)] = &[
    ("Remote-User", "alice"),
    ("Remote-Email", "alice@example.com"),
    ("Remote-Groups", "admins,users,media,home,family"),
    ("Remote-Name", "Alice Admin"),
];
const BOB_HEADERS: &[(&str, &str)] =
    &[("Remote-User", "bob"), ("Remote-Email", "bob@example.com"), ("Remote-Groups", "users"), ("Remote-Name", "Bob")];

/// ID-token claims for a login with `nonce` at `now`, for `user`.
fn id_claims(nonce: &str, now: u64, user: &Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": [CLIENT_ID], "exp": now + 300, "iat": now - 5, "nonce": nonce});
    for (k, v) in user.as_object().expect("user is an object") {
        c[k] = v.clone();
    }
    c
}

fn token_response(id_token: &str) -> HttpResponse {
    let body = json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600,
                      "id_token": id_token, "refresh_token": "rt-".to_owned() + &"r".repeat(60)});
    HttpResponse { status: 200, body: body.to_string().into_bytes() }
}

fn respond(step: Step) -> Response {
    match step {
        Step::Respond(r) => r,
        other => panic!("expected a local response, got {other:?}"),
    }
}

fn allowed(step: Step) -> Allow {
    match step {
        Step::Allow(a) => a,
        Step::Respond(r) => panic!("expected Allow, got {} {:?}", r.status, r.headers),
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn fetch(step: Step) -> (HttpCall, Pending) {
    match step {
        Step::Fetch { call, pending } => (call, pending),
        Step::Respond(r) => panic!("expected Fetch, got {} {:?} {}", r.status, r.headers, String::from_utf8_lossy(&r.body)),
        other => panic!("expected Fetch, got {other:?}"),
    }
}

/// A login as the browser sees it after the 302 to the provider.
#[derive(Debug, Clone)]
struct Login {
    /// The authorization request's query.
    params: Vec<(String, String)>,
    state: String,
    /// The login (CSRF) cookie.
    cookie: SetCookie,
    /// What the login cookie holds, opened with the sealer.
    sealed: LoginState,
}

/// One worker's driver and host, driven like a proxy drives them.
struct Gate {
    driver: Driver,
    host: Host,
}

impl Gate {
    fn new() -> Gate {
        Gate::with_config(&config_json())
    }

    fn with_config(config: &Value) -> Gate {
        Gate { driver: driver_from(config), host: Host::new(7) }
    }

    fn send(&mut self, req: &Req) -> Step {
        let out = self.driver.on_request(&req.head(), self.host.lend());
        self.host.keep(out)
    }

    fn fetched(&mut self, pending: Pending, resp: HttpResponse) -> Step {
        let out = self.driver.on_answer(pending, crate::driver::Answer::Http(resp), self.host.lend());
        self.host.keep(out)
    }

    /// Opens a login cookie the way the callback does, or explains why not.
    fn open_login(&self, cookie: &SetCookie) -> Result<LoginState, String> {
        let (bytes, _) = self
            .driver
            .config()
            .session
            .sealer
            .open(&cookie.name, &cookie.value, self.host.now)
            .map_err(|r| format!("login cookie does not open: {r:?}"))?;
        LoginState::decode(&bytes).ok_or_else(|| "login cookie holds no LoginState".to_owned())
    }

    /// Reads a 302 to the authorization endpoint; `Err` says what is wrong with it.
    fn read_login(&self, resp: &Response) -> Result<Login, String> {
        if resp.status != 302 {
            return Err(format!("status {} instead of 302 to the provider", resp.status));
        }
        let location = resp.header("location").ok_or("302 without location")?;
        let (base, params) = split_location(location);
        if base != AUTHORIZE {
            return Err(format!("redirect to {base} instead of {AUTHORIZE}"));
        }
        let state = params.iter().find(|(k, _)| k == "state").map(|(_, v)| v.clone()).ok_or("no state")?;
        let slot = state.strip_prefix('~').and_then(|r| r.get(..1)).ok_or("state names no login slot")?;
        let name = format!("{COOKIE}_csrf_{slot}");
        let cookie = set_cookie(resp, &name).ok_or_else(|| format!("no set-cookie {name}"))?;
        let sealed = self.open_login(&cookie)?;
        Ok(Login { params, state, cookie, sealed })
    }

    /// `GET path` without a session: must answer with a login redirect.
    fn start(&mut self, path: &str) -> Login {
        let resp = respond(self.send(&Req::get(path)));
        self.read_login(&resp).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn callback(&mut self, query: &str, cookies: &[(&str, &str)]) -> Step {
        let mut req = Req::get(&format!("/oauth2/callback?{query}"));
        for (n, v) in cookies {
            req = req.cookie(n, v);
        }
        self.send(&req)
    }

    /// The provider's redirect back with `code` for this login.
    fn callback_for(&mut self, login: &Login, code: &str) -> Step {
        let query = build_query(&[("code", code), ("state", &login.state), ("iss", ISSUER)]);
        self.callback(&query, &[(&login.cookie.name, &login.cookie.value)])
    }

    /// Start, callback and token exchange; returns the final response.
    fn complete(&mut self, path: &str, claims_for: impl FnOnce(&LoginState, u64) -> HttpResponse) -> Response {
        let login = self.start(path);
        let (_, pending) = fetch(self.callback_for(&login, "code-1"));
        let resp = claims_for(&login.sealed, self.host.now);
        respond(self.fetched(pending, resp))
    }

    /// Logs `user` in through the whole flow; returns the session and ID-token cookies.
    fn login_as(&mut self, user: &Value) -> (String, String) {
        self.login_from("/app/", user)
    }

    /// Logs `user` in from a first visit to `path` (a step-up route's login
    /// asks for its demands).
    fn login_from(&mut self, path: &str, user: &Value) -> (String, String) {
        let resp = self.complete(path, |login, now| token_response(&sign_ed(&ed_key(), Some("ed1"), &id_claims(&login.nonce, now, user))));
        assert_eq!(resp.status, 302, "login of {user} failed: {}", String::from_utf8_lossy(&resp.body));
        let session = set_cookie(&resp, COOKIE).expect("session cookie").value;
        let idt = set_cookie(&resp, &format!("{COOKIE}_idt")).expect("id token cookie").value;
        (session, idt)
    }
}

// ---------------------------------------------------------------------------
// The whole flow, step by step.

#[test]
fn login_flow_from_first_request_to_allowed() {
    let mut g = Gate::new();

    // 1. An unauthenticated browser GET on a protected route goes to the provider.
    let resp = respond(g.send(&Req::get("/app/page?tab=2")));
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let login = g.read_login(&resp).unwrap();
    let p = &login.params;
    assert_eq!(param(p, "response_type"), "code");
    assert_eq!(param(p, "client_id"), CLIENT_ID);
    assert_eq!(param(p, "redirect_uri"), "https://app.example.com/oauth2/callback");
    assert_eq!(param(p, "scope"), "openid email profile groups");
    assert_eq!(param(p, "code_challenge_method"), "S256");
    let (state, nonce) = (param(p, "state"), param(p, "nonce"));
    assert!(state.len() >= 43 && nonce.len() >= 43, "256-bit state and nonce");
    assert_ne!(state, nonce);
    // PKCE: the challenge is b64url(sha256(verifier)), the verifier only in the sealed cookie.
    let s = &login.sealed;
    assert_eq!(s.state, state);
    assert_eq!(s.nonce, nonce);
    assert_eq!(param(p, "code_challenge"), crate::encoding::b64url(&sha256(s.verifier.as_bytes())));
    assert!(s.verifier.len() >= 43 && s.verifier.len() <= 128, "RFC 7636 verifier length");
    assert!(!resp.header("location").unwrap().contains(&s.verifier));
    assert_eq!(s.return_to, "/app/page?tab=2");
    assert_eq!(s.redirect_uri, "https://app.example.com/oauth2/callback");
    // The login cookie: in the slot the state names, on every path (so the
    // next login sees which slots are taken), Lax, short-lived.
    let c = &login.cookie;
    assert_eq!(c.name, format!("{COOKIE}_csrf_{}", &state[1..2]));
    assert_eq!(c.attr("Path"), Some("/"));
    assert_eq!(c.attr("SameSite"), Some("Lax"));
    assert_eq!(c.attr("Max-Age"), Some("600"));
    assert!(c.has("HttpOnly") && c.has("Secure"));
    assert_eq!(g.host.take_events(), vec![Event::LoginStarted]);

    // 2. The provider redirects back: the engine asks for the code exchange.
    let (call, pending) = fetch(g.callback_for(&login, "the-code"));
    assert_eq!(call.target, "idp");
    assert_eq!(call.method, "POST");
    assert_eq!(call.authority, "id.example.com");
    assert_eq!(call.path, "/api/oidc/token");
    assert_eq!(call.timeout_ms, 5000);
    let header = |n: &str| call.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
    assert_eq!(header("content-type"), Some("application/x-www-form-urlencoded"));
    // RFC 6749 §2.3.1: both parts form-encoded, then base64.
    let basic = header("authorization").expect("client_secret_basic");
    let creds = crate::encoding::b64_any_decode(basic.strip_prefix("Basic ").unwrap()).unwrap();
    assert_eq!(String::from_utf8(creds).unwrap(), "edge:top%20secret%2F%2B%3D");
    let form = crate::encoding::parse_query(std::str::from_utf8(&call.body).unwrap());
    assert_eq!(param(&form, "grant_type"), "authorization_code");
    assert_eq!(param(&form, "code"), "the-code");
    assert_eq!(param(&form, "redirect_uri"), "https://app.example.com/oauth2/callback");
    assert_eq!(param(&form, "code_verifier"), s.verifier);
    assert_eq!(param(&form, "client_id"), CLIENT_ID);
    assert!(!form.iter().any(|(k, _)| k == "client_secret"), "Basic auth only");
    assert!(g.host.take_events().is_empty());

    // 3. The token response: a 302 back to where the user was, with the session.
    let id_token = sign_ed(&ed_key(), Some("ed1"), &id_claims(&s.nonce, g.host.now, &alice()));
    let resp = respond(g.fetched(pending, token_response(&id_token)));
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("location"), Some("/app/page?tab=2"));
    let cookies = set_cookies(&resp);
    let csrf = cookies.iter().find(|c| c.name == login.cookie.name).expect("login cookie cleared");
    assert!(csrf.clears() && csrf.attr("Path") == Some("/"));
    let session = set_cookie(&resp, COOKIE).expect("session cookie");
    assert_eq!(session.attr("Path"), Some("/"));
    assert_eq!(session.attr("SameSite"), Some("Lax"));
    assert_eq!(session.attr("Max-Age"), Some("604800"));
    assert!(session.has("HttpOnly") && session.has("Secure"));
    assert_eq!(session.attr("Domain"), None);
    let idt = set_cookie(&resp, "_oidc_edge_idt").expect("id token cookie");
    assert_eq!(idt.attr("Path"), Some("/oauth2/sign_out"));
    assert!(idt.has("HttpOnly") && idt.has("Secure"));
    // Sealed, not readable: neither the token nor the user shows through.
    assert!(!session.value.contains("alice") && !idt.value.contains(&id_token[..20]));
    assert_eq!(g.host.take_events(), vec![Event::LoginCompleted]);

    // 4. The next request with the session is forwarded with the identity headers.
    let req = Req::get("/app/page").cookie(COOKIE, &session.value).header("Remote-User", "root");
    let allow = allowed(g.send(&req));
    for (n, v) in ALICE_HEADERS {
        assert!(allow.set.contains(&(Arc::from(*n), Arc::from(*v))), "{n}: {:?}", allow.set);
    }
    assert!(allow.strip.contains(&"Remote-User".to_owned()), "spoofed header stripped");
    assert!(allow.strip.contains(&"cookie".to_owned()), "session cookie hidden from the upstream");
    assert_eq!(allow.set_path, None);
    assert!(allow.set_cookies.is_empty());
    assert_eq!(g.host.take_events(), vec![Event::Allowed]);
    // Served from the per-worker cache the second time; same answer.
    assert_eq!(g.driver.sessions().len(), 1);
    assert_eq!(allowed(g.send(&req)), allow);
}

#[test]
fn api_401_names_the_login_url() {
    let mut g = Gate::new();
    let r = respond(g.send(&Req::get("/api/items?page=2").header("Sec-Fetch-Mode", "cors")));
    assert_eq!(r.status, 401);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["login"], "/oauth2/start?rd=%2Fapi%2Fitems%3Fpage%3D2");
    assert!(set_cookies(&r).is_empty(), "no login cookie for an API client");
    assert_eq!(g.host.take_events(), vec![Event::Unauthorized]);
}

#[test]
fn es256_tokens_log_in_too() {
    let mut g = Gate::new();
    let resp = g.complete("/", |l, now| token_response(&sign_es256(&p256_key(), Some("ec1"), &id_claims(&l.nonce, now, &bob()))));
    assert_eq!(resp.status, 302);
    assert!(set_cookie(&resp, COOKIE).is_some());
}

// ---------------------------------------------------------------------------
// The scenario table: one request each, with a logged-in user or none.

#[derive(Clone, Copy, Debug)]
enum Who {
    Anonymous,
    Alice,
    Bob,
    Carol,
}

#[derive(Debug)]
enum Expect {
    /// Forwarded with exactly these headers set and these inbound names
    /// stripped (order aside), and this rewritten path.
    Allow { set: &'static [(&'static str, &'static str)], strip: &'static [&'static str], path: Option<&'static str> },
    /// 302 to the provider; the login cookie will bring the user back here.
    Login { return_to: &'static str },
    /// An HTML page with this status.
    Page(u16),
    /// A JSON error with this status.
    Json(u16),
}

struct Case {
    name: &'static str,
    who: Who,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    expect: Expect,
}

const fn case(name: &'static str, who: Who, path: &'static str, expect: Expect) -> Case {
    Case { name, who, method: "GET", host: APP_HOST, path, headers: &[], expect }
}

impl Case {
    const fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Case {
        self.headers = headers;
        self
    }
    const fn method(mut self, method: &'static str) -> Case {
        self.method = method;
        self
    }
    const fn host(mut self, host: &'static str) -> Case {
        self.host = host;
        self
    }
}

const fn allow(set: &'static [(&'static str, &'static str)], strip: &'static [&'static str]) -> Expect {
    Expect::Allow { set, strip, path: None }
}

const JSON: &[(&str, &str)] = &[("accept", "application/json")];
const COOKIE_ONLY: &[&str] = &["cookie"];

const ALICE_SONARR: &[(&str, &str)] = &[
    ("x-api-key", API_KEY),
    ("Remote-User", "alice"),
    ("Remote-Email", "alice@example.com"),
    ("Remote-Groups", "admins,users,media,home,family"),
    ("Remote-Name", "Alice Admin"),
];
const ALICE_WITH_THEME: &[(&str, &str)] = &[
    ("Remote-User", "alice"),
    ("Remote-Email", "alice@example.com"),
    ("Remote-Groups", "admins,users,media,home,family"),
    ("Remote-Name", "Alice Admin"),
    ("cookie", "theme=dark; lang=en"),
];
const SPOOFS: &[(&str, &str)] = &[
    ("Remote-User", "admin"),
    ("remote_user", "admin"),
    ("Remote.User", "admin"),
    ("REMOTE-GROUPS", "admins"),
    ("X-Forwarded-User", "admin"),
    ("x-auth-request-email", "admin@example.com"),
    ("X_Forwarded_Email", "admin@example.com"),
];
const SPOOF_NAMES: &[&str] =
    &["Remote-User", "remote_user", "Remote.User", "REMOTE-GROUPS", "X-Forwarded-User", "x-auth-request-email", "X_Forwarded_Email"];

fn request_table() -> Vec<Case> {
    use Expect::*;
    use Who::*;
    vec![
        // Who gets in.
        case("anonymous browser is sent to log in", Anonymous, "/app/", Login { return_to: "/app/" }),
        case("query survives the login", Anonymous, "/app/x?y=1&z=%2F", Login { return_to: "/app/x?y=1&z=%2F" }),
        case("HEAD keeps its target", Anonymous, "/app/x", Login { return_to: "/app/x" }).method("HEAD"),
        case("POST returns to / after login", Anonymous, "/app/form", Login { return_to: "/" }).method("POST"),
        case("API by Accept gets 401", Anonymous, "/app/", Json(401)).headers(JSON),
        case("API by Sec-Fetch-Mode gets 401", Anonymous, "/app/", Json(401)).headers(&[("Sec-Fetch-Mode", "cors")]),
        case("XHR gets 401", Anonymous, "/app/", Json(401)).headers(&[("X-Requested-With", "XMLHttpRequest")]),
        case("api route gets 401 even from a browser", Anonymous, "/api/v1/items", Json(401)),
        case("html and json accepted: browser", Anonymous, "/app/", Login { return_to: "/app/" })
            .headers(&[("accept", "text/html, application/json")]),
        case("alice passes", Alice, "/app/", allow(ALICE_HEADERS, COOKIE_ONLY)),
        case("carol passes with only a user header", Carol, "/app/", allow(&[("Remote-User", "carol")], COOKIE_ONLY)),
        case("alice uses the api", Alice, "/api/v1/items", allow(ALICE_HEADERS, COOKIE_ONLY)).headers(JSON),
        case("admins group admits alice", Alice, "/admin/", allow(ALICE_HEADERS, COOKIE_ONLY)),
        case("bob lacks the group", Bob, "/admin/", Page(403)),
        case("bob lacks the group, api style", Bob, "/admin/users", Json(403)).headers(JSON),
        case("prefix is a whole segment", Bob, "/administrator", allow(BOB_HEADERS, COOKIE_ONLY)),
        case("unverified email does not match an email rule", Bob, "/mail/", Page(403)),
        case("verified email matches the domain rule", Alice, "/mail/inbox", allow(ALICE_HEADERS, COOKIE_ONLY)),
        case("host route: bob refused", Bob, "/", Page(403)).host("grafana.example.com"),
        case("host route: any case, any port", Bob, "/d/1", Page(403)).host("GRAFANA.Example.COM:443"),
        case("host route: alice", Alice, "/d/1", allow(ALICE_HEADERS, COOKIE_ONLY)).host("grafana.example.com"),
        // Path tricks are decided on the normalized path, or refused.
        case("dot-dot out of public", Bob, "/public/../admin/", Page(403)),
        case("dot-dot out of public, anonymous", Anonymous, "/public/../admin/", Login { return_to: "/admin/" }),
        case(
            "dot-dot out of public, alice: path rewritten",
            Alice,
            "/public/../admin/",
            Allow { set: ALICE_HEADERS, strip: COOKIE_ONLY, path: Some("/admin/") },
        ),
        case("encoded dot-dot", Bob, "/%2e%2e/admin", Page(403)),
        case("encoded dot-dot inside public", Bob, "/public/%2E%2e/admin/x", Page(403)),
        case("upper-case admin", Bob, "/ADMIN/", Page(403)),
        case("escaped letter", Bob, "/adm%69n/", Page(403)),
        case("escaped upper-case letters", Bob, "/%41DMIN/x", Page(403)),
        case("double slash", Bob, "//admin//x", Page(403)),
        case("dot segments", Bob, "/./admin/./", Page(403)),
        case("encoded slash refused", Anonymous, "/public%2Fx", Page(400)),
        case("encoded slash after dot-dot refused", Bob, "/public/..%2Fadmin/", Page(400)),
        case("backslash refused", Bob, "/public/..\\admin/", Page(400)),
        case("servlet dot-dot-semicolon refused", Bob, "/public/..;/admin/", Page(400)),
        case("NUL refused", Bob, "/admin%00/", Page(400)),
        case("not origin-form refused", Bob, "https://app.example.com/admin/", Page(400)),
        case("upper-case public is not public", Anonymous, "/PUBLIC/x", Login { return_to: "/PUBLIC/x" }),
        // Public routes: no identity, but every spelling of an identity header removed.
        case("public needs no login", Anonymous, "/public/x", allow(&[], &[])),
        case("public strips spoofed identity", Anonymous, "/public/x", allow(&[], SPOOF_NAMES)).headers(SPOOFS),
        case("public with a session: no identity headers, cookie hidden", Alice, "/public/x", allow(&[], COOKIE_ONLY)),
        case("public dot segment rewritten", Anonymous, "/public/./x", Allow { set: &[], strip: &[], path: Some("/public/x") }),
        // Protected routes: spoofs stripped, real identity set.
        case(
            "spoofed identity replaced",
            Alice,
            "/app/",
            allow(
                ALICE_HEADERS,
                &[
                    "Remote-User",
                    "remote_user",
                    "Remote.User",
                    "REMOTE-GROUPS",
                    "X-Forwarded-User",
                    "x-auth-request-email",
                    "X_Forwarded_Email",
                    "cookie",
                ],
            ),
        )
        .headers(SPOOFS),
        case("injected key overwrites the client's", Alice, "/sonarr/api", allow(ALICE_SONARR, &["X-Api-Key", "x_api_key", "cookie"]))
            .headers(&[("X-Api-Key", "mine"), ("x_api_key", "mine")]),
        // Only our own cookies are hidden from the upstream.
        case("other cookies reach the upstream", Alice, "/app/", allow(ALICE_WITH_THEME, &[]))
            .headers(&[("cookie", "theme=dark; _oidc_edge_idt=x"), ("cookie", "lang=en")]),
        // Explicit login start: only safe return targets.
        case("start: rd kept", Anonymous, "/oauth2/start?rd=%2Fapp%2Fx%3Fa%3D1", Login { return_to: "/app/x?a=1" }),
        case("start: no rd", Anonymous, "/oauth2/start", Login { return_to: "/" }),
        case("start: protocol-relative rd", Anonymous, "/oauth2/start?rd=//evil.example", Login { return_to: "/" }),
        case("start: encoded protocol-relative rd", Anonymous, "/oauth2/start?rd=%2F%2Fevil.example", Login { return_to: "/" }),
        case("start: backslash rd", Anonymous, "/oauth2/start?rd=/%5Cevil.example", Login { return_to: "/" }),
        case("start: absolute foreign rd", Anonymous, "/oauth2/start?rd=https://evil.example/", Login { return_to: "/" }),
        case("start: scheme-only rd", Anonymous, "/oauth2/start?rd=https:evil.example", Login { return_to: "/" }),
        case("start: CRLF rd", Anonymous, "/oauth2/start?rd=/%0d%0aSet-Cookie:x=y", Login { return_to: "/" }),
        case(
            "start: allow-listed host",
            Anonymous,
            "/oauth2/start?rd=https%3A%2F%2Fgrafana.example.com%2Fd%2F1",
            Login { return_to: "https://grafana.example.com/d/1" },
        ),
        case(
            "start: allow-listed host, downgraded to http",
            Anonymous,
            "/oauth2/start?rd=http%3A%2F%2Fgrafana.example.com%2Fd%2F1",
            Login { return_to: "/" },
        ),
        case("start: lookalike host", Anonymous, "/oauth2/start?rd=https%3A%2F%2Fexample.com.evil.example%2F", Login { return_to: "/" }),
    ]
}

/// Runs cases against one gate with Alice, Bob and Carol logged in; reports
/// every failing row at once.
fn run_cases(cases: &[Case]) {
    let mut g = Gate::new();
    let alice = g.login_as(&alice()).0;
    let bob = g.login_as(&bob()).0;
    let carol = g.login_as(&carol()).0;
    let mut failures = Vec::new();
    for c in cases {
        let mut req = Req::new(c.method, c.path).host(c.host);
        for (n, v) in c.headers {
            req = if n.eq_ignore_ascii_case("accept") { req.accept(v) } else { req.header(n, v) };
        }
        let session = match c.who {
            Who::Anonymous => None,
            Who::Alice => Some(&alice),
            Who::Bob => Some(&bob),
            Who::Carol => Some(&carol),
        };
        if let Some(s) = session {
            req = req.cookie(COOKIE, s);
        }
        let step = g.send(&req);
        g.host.take_events();
        if let Err(why) = check(&g, c, step) {
            failures.push(format!("  {} ({:?} {} {}): {why}", c.name, c.who, c.method, c.path));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn check(g: &Gate, c: &Case, step: Step) -> Result<(), String> {
    match (&c.expect, step) {
        (Expect::Allow { set, strip, path }, Step::Allow(a)) => {
            let want_set: Vec<(Arc<str>, Arc<str>)> = set.iter().map(|(n, v)| (Arc::from(*n), Arc::from(*v))).collect();
            if sorted(&a.set) != sorted(&want_set) {
                return Err(format!("set {:?}, expected {want_set:?}", a.set));
            }
            let want_strip: Vec<String> = strip.iter().map(|s| s.to_string()).collect();
            if sorted(&a.strip) != sorted(&want_strip) {
                return Err(format!("strip {:?}, expected {want_strip:?}", a.strip));
            }
            if a.set_path.as_deref() != *path {
                return Err(format!("set_path {:?}, expected {path:?}", a.set_path));
            }
            Ok(())
        }
        (Expect::Login { return_to }, Step::Respond(r)) => {
            let login = g.read_login(&r)?;
            if login.sealed.return_to != *return_to {
                return Err(format!("return_to {:?}, expected {return_to:?}", login.sealed.return_to));
            }
            Ok(())
        }
        (Expect::Page(status), Step::Respond(r)) => {
            if r.status != *status || !r.header("content-type").unwrap_or("").starts_with("text/html") {
                return Err(format!("{} {:?}, expected an HTML {status}", r.status, r.header("content-type")));
            }
            Ok(())
        }
        (Expect::Json(status), Step::Respond(r)) => {
            let body: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{} with non-JSON body: {e}", r.status))?;
            if r.status != *status || r.header("content-type") != Some("application/json") || !body["error"].is_string() {
                return Err(format!("{} {body}, expected a JSON {status}", r.status));
            }
            Ok(())
        }
        (want, Step::Respond(r)) => Err(format!("got {} ({:?}), expected {want:?}", r.status, r.header("location"))),
        (want, Step::Allow(a)) => Err(format!("got Allow {a:?}, expected {want:?}")),
        (want, Step::Fetch { call, .. }) => Err(format!("got Fetch to {}, expected {want:?}", call.path)),
        (want, Step::Store { op, .. }) => Err(format!("got Store {op:?}, expected {want:?}")),
    }
}

#[test]
fn scenario_table() {
    run_cases(&request_table());
}

/// Servlet containers (Tomcat, Jetty) drop `;params` from each path segment
/// before routing: `/admin;x/` is their `/admin/`. The normalizer already
/// refuses `..;` for that reason, but a `;` after an ordinary segment lets a
/// user who lacks the group reach the protected prefix through the catch-all.
#[test]
fn semicolon_path_parameters_do_not_skip_a_protected_prefix() {
    use Expect::*;
    use Who::*;
    run_cases(&[
        // Refused outright: servlet containers and other servers read `;` differently.
        case("matrix parameter on the protected segment", Bob, "/admin;x/", Page(400)),
        case("empty matrix parameter", Bob, "/admin;/users", Page(400)),
    ]);
}

/// `grafana.example.com.` is the same host as `grafana.example.com` (nginx
/// strips the trailing dot before picking a server block, and so do most
/// upstreams doing name-based virtual hosting); a host rule must not be
/// skipped by writing it.
#[test]
fn trailing_dot_host_does_not_skip_a_host_rule() {
    use Expect::*;
    use Who::*;
    run_cases(&[
        case("fully qualified host", Bob, "/", Page(403)).host("grafana.example.com."),
        case("fully qualified host with port", Bob, "/", Page(403)).host("grafana.example.com.:443"),
    ]);
}

// ---------------------------------------------------------------------------
// Session cookies that must not open.

#[test]
fn forged_session_cookies_are_no_session() {
    let mut g = Gate::new();
    let (good, idt) = g.login_as(&alice());
    let login_cookie = g.start("/").cookie;
    let sealer = &g.driver.config().session.sealer;
    let mut rng = SeededRng::new(99);
    let payload = {
        let (bytes, _) = sealer.open(COOKIE, &good, NOW).unwrap();
        bytes
    };
    let flip = |v: &str, at: usize| {
        let mut b = v.as_bytes().to_vec();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let other_key = Sealer::new(&[b"another-secret-0123456789abcdef!".to_vec()]);
    let cases: Vec<(&str, String)> = vec![
        ("tampered in the middle", flip(&good, good.len() / 2)),
        ("tampered header", flip(&good, 1)),
        ("truncated", good[..good.len() - 8].to_owned()),
        ("extended", format!("{good}AAAA")),
        ("empty", String::new()),
        ("garbage", "not-a-cookie".to_owned()),
        ("not base64", "%%%".to_owned()),
        ("expired", sealer.seal(COOKIE, NOW - 1, &payload, &mut rng)),
        ("wrong key", other_key.seal(COOKIE, NOW + 3600, &payload, &mut rng)),
        ("sealed for the ID-token cookie", idt.clone()),
        ("sealed for another cookie name", sealer.seal("other", NOW + 3600, &payload, &mut rng)),
        ("a login cookie", login_cookie.value.clone()),
        ("authentic but not a session", sealer.seal(COOKIE, NOW + 3600, b"\x01garbage", &mut rng)),
        ("authentic, trailing bytes", sealer.seal(COOKIE, NOW + 3600, &[&payload[..], b"\0"].concat(), &mut rng)),
    ];
    g.host.take_events();
    let mut failures = Vec::new();
    for (name, value) in &cases {
        for api in [false, true] {
            let mut req = Req::get("/admin/").cookie(COOKIE, value);
            if api {
                req = req.header("Sec-Fetch-Mode", "cors");
            }
            let step = g.send(&req);
            let events = g.host.take_events();
            let resp = match step {
                Step::Respond(r) => r,
                other => {
                    failures.push(format!("{name} (api {api}): {other:?}"));
                    continue;
                }
            };
            let ok_status = if api { resp.status == 401 } else { g.read_login(&resp).is_ok() };
            let cleared = set_cookie(&resp, COOKIE).is_some_and(|c| c.clears() && c.attr("Path") == Some("/"));
            let reported = events.iter().any(|e| matches!(e, Event::InvalidCookie(_)));
            if !(ok_status && cleared && reported) {
                failures.push(format!("{name} (api {api}): status {} cleared {cleared} events {events:?}", resp.status));
            }
        }
    }
    assert!(failures.is_empty(), "forged cookies:\n{}", failures.join("\n"));
    // The genuine cookie still works after all that.
    assert!(matches!(g.send(&Req::get("/admin/").cookie(COOKIE, &good)), Step::Allow(_)));
}

#[test]
fn session_expires_with_its_cookie_even_when_cached() {
    let mut g = Gate::new();
    let (good, _) = g.login_as(&alice());
    assert!(matches!(g.send(&Req::get("/").cookie(COOKIE, &good)), Step::Allow(_)));
    assert_eq!(g.driver.sessions().len(), 1);
    g.host.now = NOW + 7 * 86400;
    g.host.take_events();
    let resp = respond(g.send(&Req::get("/").cookie(COOKIE, &good)));
    assert!(g.read_login(&resp).is_ok());
    assert!(set_cookie(&resp, COOKIE).unwrap().clears());
    assert!(g.host.take_events().contains(&Event::InvalidCookie("expired")));
}

#[test]
fn session_keys_rotate_without_logging_anyone_out() {
    let old = Gate::new();
    let mut rng = SeededRng::new(5);
    let payload = crate::session::Session { sub: "s".into(), user: "dave".into(), ..Default::default() }.encode();
    let sealed_old = old.driver.config().session.sealer.seal(COOKIE, NOW + 3600, &payload, &mut rng);
    let mut cfg = config_json();
    cfg["session"]["secrets"] = json!(["bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ=", {"env": "COOKIE_SECRET"}]);
    let mut both = Gate::with_config(&cfg);
    let a = allowed(both.send(&Req::get("/").cookie(COOKIE, &sealed_old)));
    assert!(a.set.contains(&("Remote-User".into(), "dave".into())));
    cfg["session"]["secrets"] = json!(["bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ="]);
    let mut only_new = Gate::with_config(&cfg);
    assert!(respond(only_new.send(&Req::get("/").cookie(COOKIE, &sealed_old))).status == 302);
}

#[test]
fn session_cookie_stays_small() {
    let mut g = Gate::new();
    let resp = g.complete("/", |l, now| token_response(&sign_ed(&ed_key(), Some("ed1"), &id_claims(&l.nonce, now, &alice()))));
    let header = resp.headers.iter().find(|(n, v)| n == "set-cookie" && v.starts_with("_oidc_edge=")).unwrap();
    assert!(header.1.len() < 1000, "session set-cookie is {} bytes", header.1.len());
    let idt = resp.headers.iter().find(|(n, v)| n == "set-cookie" && v.starts_with("_oidc_edge_idt=")).unwrap();
    assert!(idt.1.len() < 2000, "id token cookie is {} bytes", idt.1.len());
}

#[test]
fn too_many_groups_is_a_clear_page_not_a_loop() {
    let mut g = Gate::new();
    let mut user = alice();
    user["groups"] = json!((0..200).map(|i| format!("group-with-a-long-name-{i:03}")).collect::<Vec<_>>());
    let resp = g.complete("/", |l, now| token_response(&sign_ed(&ed_key(), Some("ed1"), &id_claims(&l.nonce, now, &user))));
    assert_eq!(resp.status, 400);
    assert!(set_cookie(&resp, COOKIE).is_none());
    assert!(String::from_utf8_lossy(&resp.body).contains("too much data"));
}

#[test]
fn identity_header_values_carry_no_control_characters() {
    let mut g = Gate::new();
    let mut user = bob();
    user["preferred_username"] = json!("bob\r\nX-Admin: 1");
    user["name"] = json!("Bob\u{0}\u{7f}\tB");
    user["groups"] = json!(["users\n", "x"]);
    let (session, _) = g.login_as(&user);
    let a = allowed(g.send(&Req::get("/").cookie(COOKIE, &session)));
    for (n, v) in &a.set {
        assert!(!v.chars().any(char::is_control), "{n}: {v:?}");
    }
    // A user name that is not header-safe is not cleaned into another name:
    // the provider's stable `sub` stands in. Such groups are left out.
    assert!(a.set.contains(&("Remote-User".into(), "b0b".into())), "{:?}", a.set);
    assert!(a.set.contains(&("Remote-Groups".into(), "x".into())), "{:?}", a.set);
    assert!(a.set.contains(&("Remote-Name".into(), "BobB".into())), "{:?}", a.set);
}

#[test]
fn a_name_that_cleans_into_someone_elses_is_not_theirs() {
    let mut g = Gate::new();
    let mut user = bob();
    user["preferred_username"] = json!("alice\u{85}");
    user["email"] = json!(" alice@example.com");
    user["groups"] = json!(["admins\u{85}", " admins", "admins ", "users"]);
    let (session, _) = g.login_as(&user);
    let a = allowed(g.send(&Req::get("/").cookie(COOKIE, &session)));
    assert!(a.set.contains(&("Remote-User".into(), "b0b".into())), "{:?}", a.set);
    assert!(a.set.contains(&("Remote-Groups".into(), "users".into())), "{:?}", a.set);
    assert!(!a.set.iter().any(|(n, _)| &**n == "Remote-Email"), "{:?}", a.set);
    assert_eq!(respond(g.send(&Req::get("/admin/").cookie(COOKIE, &session))).status, 403);
}

// ---------------------------------------------------------------------------
// Callbacks that must fail with a clear 4xx page.

struct Logins {
    a: Login,
    b: Login,
}

type CallbackCase = (&'static str, fn(&Logins) -> (String, Vec<(String, String)>), u16);

fn cookie_of(l: &Login) -> Vec<(String, String)> {
    vec![(l.cookie.name.clone(), l.cookie.value.clone())]
}

fn callback_failures() -> Vec<CallbackCase> {
    vec![
        ("missing state", |l| ("code=c".into(), cookie_of(&l.a)), 400),
        ("empty state", |l| ("code=c&state=".into(), cookie_of(&l.a)), 400),
        ("short state", |l| ("code=c&state=abc".into(), cookie_of(&l.a)), 400),
        ("no login cookie", |l| (build_query(&[("code", "c"), ("state", &l.a.state)]), vec![]), 400),
        (
            "unknown state",
            |l| {
                let state = "Zm9yZWlnbi1zdGF0ZS1mb3JlaWduLXN0YXRlLWZvcmVpZ24";
                (build_query(&[("code", "c"), ("state", state)]), cookie_of(&l.a))
            },
            400,
        ),
        ("foreign state: cookie of another login", |l| (build_query(&[("code", "c"), ("state", &l.b.state)]), cookie_of(&l.a)), 400),
        (
            "same cookie name, different state",
            |l| {
                let forged = format!("{}{}", &l.a.state[..12], "x".repeat(l.a.state.len() - 12));
                (build_query(&[("code", "c"), ("state", &forged)]), cookie_of(&l.a))
            },
            400,
        ),
        (
            "login cookie moved under another state's name",
            |l| (build_query(&[("code", "c"), ("state", &l.b.state)]), vec![(l.b.cookie.name.clone(), l.a.cookie.value.clone())]),
            400,
        ),
        (
            "tampered login cookie",
            |l| {
                let mut v = l.a.cookie.value.clone().into_bytes();
                v[20] = if v[20] == b'A' { b'B' } else { b'A' };
                (build_query(&[("code", "c"), ("state", &l.a.state)]), vec![(l.a.cookie.name.clone(), String::from_utf8(v).unwrap())])
            },
            400,
        ),
        ("iss mismatch", |l| (build_query(&[("code", "c"), ("state", &l.a.state), ("iss", "https://evil.example")]), cookie_of(&l.a)), 400),
        (
            "iss with trailing slash",
            |l| (build_query(&[("code", "c"), ("state", &l.a.state), ("iss", "https://id.example.com/")]), cookie_of(&l.a)),
            400,
        ),
        ("missing code", |l| (build_query(&[("state", &l.a.state)]), cookie_of(&l.a)), 400),
        ("empty code", |l| (build_query(&[("code", ""), ("state", &l.a.state)]), cookie_of(&l.a)), 400),
        ("access denied", |l| (build_query(&[("error", "access_denied"), ("state", &l.a.state)]), cookie_of(&l.a)), 403),
        (
            "provider error, markup in it",
            |l| {
                (
                    build_query(&[("error", "<script>alert(1)</script>"), ("error_description", "<b>x</b>"), ("state", &l.a.state)]),
                    cookie_of(&l.a),
                )
            },
            400,
        ),
        ("error without state", |_| ("error=server_error".into(), vec![]), 400),
        ("nothing at all", |_| (String::new(), vec![]), 400),
    ]
}

#[test]
fn callback_without_iss_is_refused_when_the_provider_always_sends_it() {
    for (supported, with_iss, refused) in [(true, false, true), (true, true, false), (false, false, false)] {
        let mut g = Gate::new();
        if let Some(p) = g.driver.provider_slot().as_mut().and_then(std::sync::Arc::get_mut) {
            p.discovery.authorization_response_iss_parameter_supported = supported;
        }
        let login = g.start("/app/");
        g.host.take_events();
        let mut query = vec![("code", "c"), ("state", login.state.as_str())];
        if with_iss {
            query.push(("iss", ISSUER));
        }
        let step = g.callback(&build_query(&query), &[(&login.cookie.name, &login.cookie.value)]);
        let case = format!("supported={supported} with_iss={with_iss}");
        if refused {
            assert!(matches!(&step, Step::Respond(r) if r.status == 400), "{case}: {step:?}");
            assert_eq!(g.host.take_events(), vec![Event::LoginFailed("callback without iss")], "{case}");
        } else {
            assert!(matches!(step, Step::Fetch { .. }), "{case}: the code exchange starts");
        }
    }
}

#[test]
fn callback_failures_are_clear_pages() {
    let mut failures = Vec::new();
    for (name, build, status) in callback_failures() {
        let mut g = Gate::new();
        let logins = Logins { a: g.start("/app/"), b: g.start("/other/") };
        g.host.take_events();
        let (query, cookies) = build(&logins);
        let cookies: Vec<(&str, &str)> = cookies.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let step = g.callback(&query, &cookies);
        let events = g.host.take_events();
        let Step::Respond(r) = step else {
            failures.push(format!("{name}: {step:?}"));
            continue;
        };
        let body = String::from_utf8_lossy(&r.body);
        let problems = [
            (r.status != status, format!("status {}", r.status)),
            (r.header("location").is_some(), "has a location".to_owned()),
            (!r.header("content-type").unwrap_or("").starts_with("text/html"), "not HTML".to_owned()),
            (!body.contains("/oauth2/start?rd=%2F"), "no way to sign in again".to_owned()),
            (body.contains("<script>") || body.contains("<b>"), "markup echoed".to_owned()),
            (body.contains(&logins.a.state) || body.contains(&logins.a.cookie.value), "echoes state or cookie".to_owned()),
            (set_cookie(&r, COOKIE).is_some(), "sets a session".to_owned()),
            (!events.iter().any(|e| matches!(e, Event::LoginFailed(_))), format!("events {events:?}")),
        ];
        for (bad, what) in problems {
            if bad {
                failures.push(format!("{name}: {what}"));
            }
        }
        // The login cookie named by the state is cleared.
        if query.contains(&logins.a.state) && !set_cookie(&r, &logins.a.cookie.name).is_some_and(|c| c.clears()) {
            failures.push(format!("{name}: login cookie not cleared"));
        }
    }
    assert!(failures.is_empty(), "callback failures:\n{}", failures.join("\n"));
}

#[test]
fn expired_login_cookie_is_refused() {
    let mut g = Gate::new();
    let login = g.start("/");
    g.host.now += 601;
    let r = respond(g.callback_for(&login, "c"));
    assert_eq!(r.status, 400);
}

#[test]
fn state_is_single_use() {
    let mut g = Gate::new();
    let login = g.start("/app/");
    let (_, pending) = fetch(g.callback_for(&login, "c"));
    // A second callback while the first is still exchanging (double click, replay): refused.
    let r = respond(g.callback_for(&login, "c"));
    assert_eq!(r.status, 400);
    assert!(g.host.take_events().contains(&Event::LoginFailed("state replayed")));
    // The first completes.
    let id_token = sign_ed(&ed_key(), Some("ed1"), &id_claims(&login.sealed.nonce, g.host.now, &alice()));
    assert_eq!(respond(g.fetched(pending, token_response(&id_token))).status, 302);
    // Replaying the callback with the same cookie afterwards: refused, not a loop.
    let r = respond(g.callback_for(&login, "c"));
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    // Still refused until the login could have expired anyway.
    g.host.now += 599;
    assert_eq!(respond(g.callback_for(&login, "c")).status, 400);
}

#[test]
fn state_claim_fails_closed_without_shared_state() {
    let mut g = Gate::new();
    let login = g.start("/");
    let mut unavailable = UnavailableShared;
    let mut rng = SeededRng::new(4);
    let req = Req::get(&format!("/oauth2/callback?{}", build_query(&[("code", "c"), ("state", &login.state)])))
        .cookie(&login.cookie.name, &login.cookie.value);
    let out = g.driver.on_request(&req.head(), Lend { now: NOW, rng: &mut rng, store: Some(&mut unavailable) });
    assert_eq!(respond(out.step).status, 400);
}

/// A host whose store is networked performs store operations itself: the
/// turn stops at each one, and the records to write come back to it.
#[test]
fn an_asynchronous_store_sees_every_operation_and_write() {
    let mut g = Gate::new();
    let login = g.start("/app/");
    let mut rng = SeededRng::new(5);
    let query = build_query(&[("code", "c"), ("state", &login.state), ("iss", ISSUER)]);
    let req = Req::get(&format!("/oauth2/callback?{query}")).cookie(&login.cookie.name, &login.cookie.value);
    let out = g.driver.on_request(&req.head(), Lend { now: NOW, rng: &mut rng, store: None });
    let Step::Store { op, pending } = out.step else { panic!("expected the state claim, got {:?}", out.step) };
    assert!(matches!(op, StoreOp::Claim { key: RecordKey::LoginState(_), until } if until == NOW + 600), "{op:?}");
    // The claim is refused (another instance took it): a replay.
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Claimed(false)), Lend { now: NOW, rng: &mut rng, store: None });
    assert_eq!(respond(out.step).status, 400);
    assert_eq!(out.events.to_vec(), vec![Event::LoginFailed("state replayed")]);

    // A session due for refresh: read the successor, claim the lock, call the
    // IdP; the successor record comes back as a write.
    let (mut g, cookie) = stale_bob();
    let now = g.host.now;
    let req = Req::get("/").cookie(COOKIE, &cookie);
    let out = g.driver.on_request(&req.head(), Lend { now, rng: &mut rng, store: None });
    let Step::Store { op: StoreOp::Read(RecordKey::Successor(generation)), pending } = out.step else { panic!("{:?}", out.step) };
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Read(None)), Lend { now, rng: &mut rng, store: None });
    let Step::Store { op: StoreOp::Claim { key: RecordKey::RefreshLock(locked), .. }, pending } = out.step else { panic!("{:?}", out.step) };
    assert_eq!(locked, generation);
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Claimed(true)), Lend { now, rng: &mut rng, store: None });
    // Under the lock, the successor is read again (another instance may
    // have stored it and released the lock in between): still none.
    let Step::Store { op: StoreOp::Read(RecordKey::Successor(again)), pending } = out.step else { panic!("{:?}", out.step) };
    assert_eq!(again, generation);
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Read(None)), Lend { now, rng: &mut rng, store: None });
    let (call, pending) = fetch(out.step);
    assert_eq!(call.path, "/api/oidc/token");
    let answer = Answer::Http(refreshed(now, &bob(), "rt-rotated"));
    let out = g.driver.on_answer(pending, answer, Lend { now, rng: &mut rng, store: None });
    assert_eq!(out.writes.len(), 2);
    assert_eq!(out.writes[0].key, RecordKey::Successor(generation));
    assert!(out.writes[0].value.starts_with(b"ok:"));
    // Then the lock is released (it ends now).
    assert_eq!((&out.writes[1].key, out.writes[1].until), (&RecordKey::RefreshLock(generation), now));
    let allow = allowed(out.step);
    assert_eq!(allow.set_cookies.len(), 1);
}

// ---------------------------------------------------------------------------
// Token endpoint answers.

type TokenCase = (&'static str, fn(&LoginState, u64) -> HttpResponse, u16);

fn signed_with(patch: Value) -> impl Fn(&LoginState, u64) -> HttpResponse {
    move |l, now| {
        let mut c = id_claims(&l.nonce, now, &alice());
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        token_response(&sign_ed(&ed_key(), Some("ed1"), &c))
    }
}

fn body(status: u16, text: &str) -> HttpResponse {
    HttpResponse { status, body: text.as_bytes().to_vec() }
}

fn token_answers() -> Vec<TokenCase> {
    vec![
        ("unreachable", |_, _| body(0, ""), 503),
        ("invalid_grant", |_, _| body(400, r#"{"error":"invalid_grant","error_description":"code expired"}"#), 400),
        ("invalid_client", |_, _| body(401, r#"{"error":"invalid_client"}"#), 502),
        ("server error page", |_, _| body(500, "<html>oops</html>"), 502),
        ("non-JSON 200", |_, _| body(200, "<html>login</html>"), 502),
        ("empty 200", |_, _| body(200, ""), 502),
        ("JSON without id_token", |_, _| body(200, r#"{"access_token":"a","token_type":"Bearer"}"#), 502),
        ("id_token not a string", |_, _| body(200, r#"{"id_token":42}"#), 502),
        ("id_token garbage", |_, _| token_response("a.b.c"), 400),
        (
            "id_token alg none",
            |l, now| {
                let claims = id_claims(&l.nonce, now, &alice());
                let t = format!("{}.{}.", crate::encoding::b64url(br#"{"alg":"none"}"#), crate::encoding::b64url(claims.to_string().as_bytes()));
                token_response(&t)
            },
            400,
        ),
        (
            "bad signature",
            |l, now| {
                let t = sign_ed(&rotated_ed_key(), Some("ed1"), &id_claims(&l.nonce, now, &alice()));
                token_response(&t)
            },
            400,
        ),
        (
            "tampered claims",
            |l, now| {
                let t = sign_ed(&ed_key(), Some("ed1"), &id_claims(&l.nonce, now, &bob()));
                let forged = crate::encoding::b64url(id_claims(&l.nonce, now, &alice()).to_string().as_bytes());
                let parts: Vec<&str> = t.split('.').collect();
                token_response(&format!("{}.{forged}.{}", parts[0], parts[2]))
            },
            400,
        ),
    ]
}

#[test]
fn token_endpoint_answers() {
    type Answer = Box<dyn Fn(&LoginState, u64) -> HttpResponse>;
    let mut cases: Vec<(&str, Answer, u16)> = token_answers().into_iter().map(|(n, f, s)| (n, Box::new(f) as Answer, s)).collect();
    for (name, patch) in [
        ("wrong nonce", json!({"nonce": "another"})),
        ("no nonce", json!({"nonce": null})),
        ("wrong issuer", json!({"iss": "https://evil.example"})),
        ("issuer with trailing slash", json!({"iss": "https://id.example.com/"})),
        ("wrong audience", json!({"aud": ["other"]})),
        ("azp of another client", json!({"azp": "other"})),
        ("expired", json!({"exp": NOW - 120})),
        ("issued in the future", json!({"iat": NOW + 600})),
        ("no sub", json!({"sub": null})),
    ] {
        cases.push((name, Box::new(signed_with(patch)), 400));
    }
    let mut failures = Vec::new();
    for (name, answer, status) in &cases {
        let mut g = Gate::new();
        let login = g.start("/app/");
        let (_, pending) = fetch(g.callback_for(&login, "c"));
        g.host.take_events();
        let step = g.fetched(pending, answer(&login.sealed, g.host.now));
        let events = g.host.take_events();
        let Step::Respond(r) = step else {
            failures.push(format!("{name}: {step:?}"));
            continue;
        };
        if r.status != *status {
            failures.push(format!("{name}: status {} expected {status}", r.status));
        }
        if r.status == 503 && r.header("retry-after").is_none() {
            failures.push(format!("{name}: 503 without retry-after"));
        }
        if r.header("location").is_some() || set_cookie(&r, COOKIE).is_some() {
            failures.push(format!("{name}: redirected or set a session"));
        }
        // (The 503 for an unreachable provider leaves the login cookie to expire
        // by itself: its state is already claimed, so it can do nothing.)
        if *status != 503 && !set_cookie(&r, &login.cookie.name).is_some_and(|c| c.clears()) {
            failures.push(format!("{name}: login cookie not cleared"));
        }
        if *status == 400 && name != &"invalid_grant" && !events.iter().any(|e| matches!(e, Event::TokenRejected(_))) {
            failures.push(format!("{name}: no TokenRejected in {events:?}"));
        }
        if events.contains(&Event::LoginCompleted) {
            failures.push(format!("{name}: reported a completed login"));
        }
    }
    assert!(failures.is_empty(), "token endpoint answers:\n{}", failures.join("\n"));
}

#[test]
fn client_secret_post_sends_the_secret_in_the_form() {
    let mut cfg = config_json();
    cfg["provider"]["client_auth"] = json!("client_secret_post");
    let mut g = Gate::with_config(&cfg);
    let login = g.start("/");
    let (call, _) = fetch(g.callback_for(&login, "c"));
    assert!(!call.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization")));
    let form = crate::encoding::parse_query(std::str::from_utf8(&call.body).unwrap());
    assert_eq!(param(&form, "client_secret"), CLIENT_SECRET);
    assert_eq!(param(&form, "client_id"), CLIENT_ID);
}

// ---------------------------------------------------------------------------
// Key rotation at the provider: refetch the JWKS once, then cool down.

#[test]
fn unknown_kid_refetches_jwks_once_per_cooldown() {
    let mut g = Gate::new();
    let rotated = |l: &LoginState, now: u64| token_response(&sign_ed(&rotated_ed_key(), Some("ed2"), &id_claims(&l.nonce, now, &alice())));

    // First login with the new key: the engine asks for the JWKS.
    let login = g.start("/app/");
    let (_, pending) = fetch(g.callback_for(&login, "c1"));
    let (call, pending) = fetch(g.fetched(pending, rotated(&login.sealed, g.host.now)));
    assert_eq!((call.method, call.target.as_str(), call.authority.as_str()), ("GET", "idp", "id.example.com"));
    assert_eq!(call.path, "/.well-known/jwks.json");
    let new_jwks = json!({"keys": [ed_jwk("ed2", &rotated_ed_key())]}).to_string();
    let r = respond(g.fetched(pending, body(200, &new_jwks)));
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("location"), Some("/app/"));
    assert!(set_cookie(&r, COOKIE).is_some());
    let published = g.host.published.pop().expect("the refetched JWKS is handed to the host to share");
    assert_eq!(published.jwks, new_jwks.into_bytes());
    assert_eq!(published.discovery, discovery_json());
    assert_eq!(published.fetched_at, g.host.now);

    // The driver installed the new keys: the next login with that key needs no fetch.
    let login = g.start("/app/");
    let (_, pending) = fetch(g.callback_for(&login, "c2"));
    assert_eq!(respond(g.fetched(pending, rotated(&login.sealed, g.host.now))).status, 302);
    // A token with yet another unknown key within the cooldown: no fetch, a failure page.
    let unknown = |l: &LoginState, now: u64| token_response(&sign_ed(&ed_key(), Some("ed9"), &id_claims(&l.nonce, now, &alice())));
    let login = g.start("/app/");
    let (_, pending) = fetch(g.callback_for(&login, "c3"));
    let r = respond(g.fetched(pending, unknown(&login.sealed, g.host.now)));
    assert_eq!(r.status, 502);
    assert!(r.header("location").is_none());

    // After the cooldown, one more fetch is allowed.
    g.host.now += crate::provider::JWKS_REFETCH_COOLDOWN + 1;
    let login = g.start("/app/");
    let (_, pending) = fetch(g.callback_for(&login, "c4"));
    let (_, pending) = fetch(g.fetched(pending, unknown(&login.sealed, g.host.now)));
    // A refetched JWKS that still lacks the key: refused, no further fetch.
    let r = respond(g.fetched(pending, body(200, &jwks_json().to_string())));
    assert_eq!(r.status, 400);
}

#[test]
fn jwks_refetch_failures_are_pages() {
    for (answer, status) in [(body(0, ""), 503), (body(500, "x"), 502), (body(200, "{}"), 502), (body(200, r#"{"keys":[]}"#), 502)] {
        let mut g = Gate::new();
        let login = g.start("/");
        let (_, pending) = fetch(g.callback_for(&login, "c"));
        let token = token_response(&sign_ed(&rotated_ed_key(), Some("ed2"), &id_claims(&login.sealed.nonce, g.host.now, &alice())));
        let (_, pending) = fetch(g.fetched(pending, token));
        let r = respond(g.fetched(pending, answer.clone()));
        assert_eq!(r.status, status, "{answer:?}");
        assert!(set_cookie(&r, COOKIE).is_none());
        assert!(g.host.published.is_empty());
    }
}

// ---------------------------------------------------------------------------
// The provider is down.

#[test]
fn provider_down_login_is_503_sessions_still_work() {
    let mut g = Gate::new();
    let (session, _) = g.login_as(&alice());
    let login = g.start("/");
    *g.driver.provider_slot() = None;
    g.host.take_events();
    for req in [Req::get("/app/"), Req::get("/oauth2/start?rd=/x")] {
        let r = respond(g.send(&req));
        assert_eq!(r.status, 503, "{}", req.path);
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(set_cookies(&r).is_empty());
    }
    assert!(g.host.take_events().iter().all(|e| *e == Event::ProviderUnavailable));
    // A signed-in user is not affected: sessions need no provider.
    assert!(matches!(g.send(&Req::get("/admin/").cookie(COOKIE, &session)), Step::Allow(_)));
    // A callback while the provider is down: 503, no crash.
    assert_eq!(respond(g.callback_for(&login, "c")).status, 503);
    // API clients still get their 401.
    assert_eq!(respond(g.send(&Req::get("/api/x"))).status, 401);
}

// ---------------------------------------------------------------------------
// SameSite variants.

#[test]
fn strict_session_cookie_finishes_with_a_same_site_page() {
    let mut cfg = config_json();
    cfg["session"]["same_site"] = json!("Strict");
    let mut g = Gate::with_config(&cfg);
    let login = g.start("/app/");
    // The login cookie must come back on the cross-site callback: Lax.
    assert_eq!(login.cookie.attr("SameSite"), Some("Lax"));
    let (_, pending) = fetch(g.callback_for(&login, "c"));
    let id_token = sign_ed(&ed_key(), Some("ed1"), &id_claims(&login.sealed.nonce, g.host.now, &alice()));
    let r = respond(g.fetched(pending, token_response(&id_token)));
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("url=/app/"));
    assert_eq!(set_cookie(&r, COOKIE).unwrap().attr("SameSite"), Some("Strict"));
}

#[test]
fn same_site_none_applies_to_the_login_cookie() {
    let mut cfg = config_json();
    cfg["session"]["same_site"] = json!("None");
    let mut g = Gate::with_config(&cfg);
    let login = g.start("/");
    assert_eq!(login.cookie.attr("SameSite"), Some("None"));
    assert!(login.cookie.has("Secure"));
}

// ---------------------------------------------------------------------------
// Sign-out.

#[test]
fn sign_out_ends_the_provider_session() {
    let mut g = Gate::new();
    let (session, idt) = g.login_as(&alice());
    let id_token = {
        let (bytes, _) = g.driver.config().session.sealer.open("_oidc_edge_idt", &idt, NOW).unwrap();
        String::from_utf8(bytes).unwrap()
    };
    g.host.take_events();
    let req = Req::get("/oauth2/sign_out")
        .header("Sec-Fetch-Site", "same-origin")
        .cookie(COOKIE, &session)
        .cookie("_oidc_edge_idt", &idt);
    let r = respond(g.send(&req));
    assert_eq!(r.status, 302);
    let (base, params) = split_location(r.header("location").unwrap());
    assert_eq!(base, "https://id.example.com/api/oidc/end-session");
    assert_eq!(param(&params, "id_token_hint"), id_token);
    assert_eq!(param(&params, "client_id"), CLIENT_ID);
    assert_eq!(param(&params, "post_logout_redirect_uri"), "https://app.example.com/");
    let s = set_cookie(&r, COOKIE).unwrap();
    assert!(s.clears() && s.attr("Path") == Some("/"));
    let i = set_cookie(&r, "_oidc_edge_idt").unwrap();
    assert!(i.clears() && i.attr("Path") == Some("/oauth2/sign_out"));
    assert_eq!(g.host.take_events(), vec![Event::SignedOut]);
    assert!(g.driver.sessions().is_empty(), "dropped from the cache");
}

#[test]
fn sign_out_without_id_token_or_provider() {
    let mut g = Gate::new();
    // No ID-token cookie (or a forged one): no hint, still a sign-out.
    let r = respond(g.send(&Req::get("/oauth2/sign_out").header("Sec-Fetch-Site", "none").cookie("_oidc_edge_idt", "forged")));
    let (_, params) = split_location(r.header("location").unwrap());
    assert!(!params.iter().any(|(k, _)| k == "id_token_hint"));
    assert!(set_cookie(&r, COOKIE).unwrap().clears());
    // Without an end-session endpoint (or provider), a local redirect, never to another site.
    *g.driver.provider_slot() = None;
    for (rd, to) in [
        ("/bye", "/bye"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("https://grafana.example.com/", "https://grafana.example.com/"),
    ] {
        let r = respond(g.send(&Req::get(&format!("/oauth2/sign_out?{}", build_query(&[("rd", rd)]))).header("Sec-Fetch-Site", "same-origin")));
        assert_eq!((r.status, r.header("location")), (302, Some(to)), "rd={rd}");
    }
}

#[test]
fn configured_post_logout_url_is_used() {
    let mut cfg = config_json();
    cfg["post_logout_redirect_url"] = json!("https://home.example.com/signed-out");
    let mut g = Gate::with_config(&cfg);
    let r = respond(g.send(&Req::get("/oauth2/sign_out").header("Origin", "https://app.example.com")));
    let (_, params) = split_location(r.header("location").unwrap());
    assert_eq!(param(&params, "post_logout_redirect_uri"), "https://home.example.com/signed-out");
}

#[test]
fn sign_out_from_another_site_asks_first() {
    let mut g = Gate::new();
    let (session, _) = g.login_as(&alice());
    g.host.take_events();
    let cross_site: [&[(&str, &str)]; 5] = [
        &[("Sec-Fetch-Site", "cross-site")],
        &[("Sec-Fetch-Site", "same-site")],
        &[("Origin", "https://evil.example")],
        &[("Origin", "http://app.example.com")],
        &[],
    ];
    for headers in cross_site {
        for method in ["GET", "POST"] {
            let mut req = Req::new(method, "/oauth2/sign_out?rd=%2Fbye").cookie(COOKIE, &session);
            for (n, v) in headers {
                req = req.header(n, v);
            }
            let r = respond(g.send(&req));
            assert_eq!(r.status, 200, "{method} {headers:?}");
            assert!(set_cookie(&r, COOKIE).is_none(), "{method} {headers:?}: cookies cleared");
            let body = String::from_utf8(r.body.clone()).unwrap();
            assert!(body.contains(r#"<form method="post" action="/oauth2/sign_out?rd=%2Fbye">"#), "{body}");
        }
    }
    assert_eq!(g.host.take_events(), vec![]);
    assert!(matches!(g.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Allow(_)), "the session stays");
    // The page's own POST is same-origin, and signs out.
    let r = respond(g.send(&Req::new("POST", "/oauth2/sign_out?rd=%2Fbye").header("Sec-Fetch-Site", "same-origin").cookie(COOKIE, &session)));
    assert_eq!(r.status, 302);
    assert!(set_cookie(&r, COOKIE).unwrap().clears());
}

// ---------------------------------------------------------------------------
// Odds and ends.

#[test]
fn no_matching_route_is_denied() {
    let mut cfg = config_json();
    cfg["routes"] = json!([{"host": "only.example.com"}]);
    let mut g = Gate::with_config(&cfg);
    let r = respond(g.send(&Req::get("/")));
    assert_eq!(r.status, 403);
    assert_eq!(g.host.take_events(), vec![Event::Denied("no route matches")]);
}

#[test]
fn redirect_uri_can_be_fixed_by_config() {
    let mut cfg = config_json();
    cfg["redirect_url"] = json!("https://auth.example.com/oauth2/callback");
    let mut g = Gate::with_config(&cfg);
    let login = g.start("/");
    assert_eq!(param(&login.params, "redirect_uri"), "https://auth.example.com/oauth2/callback");
    assert_eq!(login.sealed.redirect_uri, "https://auth.example.com/oauth2/callback");
}

#[test]
fn pages_and_events_never_carry_secrets() {
    let mut g = Gate::new();
    let (session, _) = g.login_as(&bob());
    let mut seen = Vec::new();
    let reqs = [
        Req::get("/admin/").cookie(COOKIE, "x"),
        Req::get("/admin/").cookie(COOKIE, &session),
        Req::get("/admin/").cookie(COOKIE, &session).accept("application/json"),
        Req::get("/oauth2/callback?error=x"),
        Req::get("/public%2f"),
    ];
    for req in &reqs {
        let r = respond(g.send(req));
        seen.push(format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body)));
    }
    let login = g.start("/");
    let (_, pending) = fetch(g.callback_for(&login, "c"));
    let r = respond(g.fetched(pending, body(401, r#"{"error":"invalid_client"}"#)));
    seen.push(String::from_utf8_lossy(&r.body).into_owned());
    for e in g.host.take_events() {
        seen.push(format!("{e:?} {:?}", e.log_line()));
    }
    let all = seen.join("\n");
    for secret in [CLIENT_SECRET, "top%20secret", API_KEY, &cookie_secret(), &session] {
        assert!(!all.contains(secret), "{secret:?} leaked");
    }
}

#[test]
fn a_host_that_forwards_the_received_path_sends_the_browser_to_the_decided_one() {
    let mut g = Gate::new();
    let bob = g.login_as(&bob()).0;
    for (path, decided) in [
        ("/admin/%2e%2e/public/x", "/public/x"),
        ("/admin/.%2E/public/x?a=1&b", "/public/x?a=1&b"),
        ("/admin/%2e./public/x", "/public/x"),
        ("/admin/./../public/x", "/public/x"),
        ("/admin//../public/x", "/admin/public/x"),
        ("//public/x", "/public/x"),
        ("/%70ublic/x", "/public/x"),
        ("/public/%2e%2e/admin/", "/admin/"),
        ("/public/./caf%C3%A9?q=\u{e9}t\u{e9}", "/public/caf%C3%A9?q=%C3%A9t%C3%A9"),
    ] {
        for method in ["GET", "HEAD"] {
            let step = g.send(&Req::new(method, path).cookie(COOKIE, &bob).forwarded_as_received());
            let Step::Respond(r) = step else { panic!("{method} {path}: {step:?}") };
            assert_eq!((r.status, r.header("location")), (308, Some(decided)), "{method} {path}");
        }
        let step = g.send(&Req::new("POST", path).cookie(COOKIE, &bob).forwarded_as_received());
        let Step::Respond(r) = step else { panic!("POST {path}: {step:?}") };
        assert_eq!(r.status, 400, "POST {path}");
    }
    // The decided path itself is forwarded as it is.
    let Step::Allow(a) = g.send(&Req::get("/public/x?a=1").forwarded_as_received()) else { panic!("public refused") };
    assert_eq!(a.set_path, None);
    // A host that rewrites the path gets the rewrite instead of a redirect.
    let Step::Allow(a) = g.send(&Req::get("/admin/%2e%2e/public/x")) else { panic!("rewrite refused") };
    assert_eq!(a.set_path.as_deref(), Some("/public/x"));
}

#[test]
fn cookie_header_parsing_is_strict_about_names() {
    let headers = vec![("Cookie".to_owned(), "a=1; _oidc_edge_x=2".to_owned()), ("cookie".to_owned(), " _oidc_edge=\"v\" ;b=3".to_owned())];
    let head = RequestHead {
        method: "GET",
        scheme: "https",
        authority: APP_HOST,
        path: "/",
        headers: &headers,
        rewrites_path: true,
        client: None,
    };
    assert_eq!(head.cookie("_oidc_edge"), Some("v"));
    assert_eq!(head.cookie("b"), Some("3"));
    assert_eq!(head.cookie("_oidc"), None);
}

// ---------------------------------------------------------------------------
// Session refresh: single flight, successor record, outcomes.

const REFRESH_INTERVAL: u64 = 3600;

fn header_of<'a>(allow: &'a Allow, name: &str) -> Option<&'a str> {
    allow.set.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &**v)
}

fn form_param(call: &HttpCall, name: &str) -> Option<String> {
    parse_query(std::str::from_utf8(&call.body).ok()?).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// A refresh answer with a new ID token (no nonce) for `user`, and a new refresh token.
fn refreshed(now: u64, user: &Value, refresh_token: &str) -> HttpResponse {
    let mut claims = id_claims("", now, user);
    claims.as_object_mut().map(|o| o.remove("nonce"));
    let body = json!({"access_token": "at-2", "token_type": "Bearer", "expires_in": 3600,
                      "id_token": sign_ed(&ed_key(), Some("ed1"), &claims), "refresh_token": refresh_token});
    HttpResponse { status: 200, body: body.to_string().into_bytes() }
}

/// Bob logged in, then the refresh interval passed.
fn stale_bob() -> (Gate, String) {
    let mut g = Gate::new();
    let (session, _) = g.login_as(&bob());
    g.host.take_events();
    g.host.now += REFRESH_INTERVAL;
    (g, session)
}

#[test]
fn refresh_is_single_flight_and_later_requests_use_the_successor() {
    let (mut g, old) = stale_bob();
    // The first request takes the lock and refreshes.
    let (call, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    assert_eq!(call.method, "POST");
    assert_eq!(form_param(&call, "grant_type").as_deref(), Some("refresh_token"));
    assert!(form_param(&call, "refresh_token").is_some_and(|t| t.starts_with("rt-")));
    assert!(g.host.take_events().contains(&Event::RefreshStarted));
    // Concurrent requests with the same cookie do not refresh again: they are
    // served on the still-valid session.
    for _ in 0..5 {
        let a = allowed(g.send(&Req::get("/").cookie(COOKIE, &old)));
        assert_eq!(header_of(&a, "Remote-User"), Some("bob"));
        assert!(a.set_cookies.is_empty());
    }
    assert_eq!(g.host.take_events().iter().filter(|e| **e == Event::RefreshCoalesced).count(), 5);
    // The IdP answers: bob is now an admin, with a rotated refresh token.
    let mut promoted = bob();
    promoted["groups"] = json!(["users", "admins"]);
    let now = g.host.now;
    let a = allowed(g.fetched(pending, refreshed(now, &promoted, "rt-rotated")));
    assert_eq!(header_of(&a, "Remote-Groups"), Some("users,admins"));
    let new = SetCookie::parse(a.set_cookies.first().expect("the refreshed cookie is sent back"));
    assert_eq!(new.name, COOKIE);
    assert!(new.has("HttpOnly") && new.has("Secure"));
    assert!(g.host.take_events().contains(&Event::RefreshSucceeded));
    // The old cookie, later: no new refresh, the successor instead.
    let a = allowed(g.send(&Req::get("/admin/").cookie(COOKIE, &old)));
    assert_eq!(header_of(&a, "Remote-Groups"), Some("users,admins"));
    assert_eq!(SetCookie::parse(&a.set_cookies[0]).value, new.value);
    // The new cookie is fresh and carries the rotated token for next time.
    let a = allowed(g.send(&Req::get("/admin/").cookie(COOKIE, &new.value)));
    assert!(a.set_cookies.is_empty());
    g.host.now += REFRESH_INTERVAL;
    let (call, _) = fetch(g.send(&Req::get("/").cookie(COOKIE, &new.value)));
    assert_eq!(form_param(&call, "refresh_token").as_deref(), Some("rt-rotated"));
}

#[test]
fn refreshed_session_keeps_the_absolute_lifetime() {
    let (mut g, old) = stale_bob();
    let sealer = &g.driver.config().session.sealer;
    let (_, old_expiry) = sealer.open(COOKIE, &old, g.host.now).expect("old cookie opens");
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let now = g.host.now;
    let a = allowed(g.fetched(pending, refreshed(now, &bob(), "rt-2")));
    let new = SetCookie::parse(&a.set_cookies[0]);
    let (_, new_expiry) = g.driver.config().session.sealer.open(COOKIE, &new.value, now).expect("opens");
    assert_eq!(new_expiry, old_expiry);
    assert_eq!(new.attr("Max-Age"), Some((old_expiry - now).to_string().as_str()));
}

#[test]
fn invalid_grant_ends_the_session_for_every_copy_of_the_cookie() {
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let refused = HttpResponse { status: 400, body: br#"{"error":"invalid_grant"}"#.to_vec() };
    let resp = respond(g.fetched(pending, refused));
    assert!(g.read_login(&resp).is_ok(), "back to login");
    assert!(set_cookie(&resp, COOKIE).is_some_and(|c| c.clears()));
    assert!(g.host.take_events().iter().any(|e| matches!(e, Event::RefreshFailed(_))));
    // Another request with the same cookie: straight to login, no second refresh.
    let resp = respond(g.send(&Req::get("/").cookie(COOKIE, &old)));
    assert!(g.read_login(&resp).is_ok());
    let api = respond(g.send(&Req::get("/").cookie(COOKIE, &old).accept("application/json")));
    assert_eq!(api.status, 401);
}

#[test]
fn unreachable_idp_keeps_the_session_and_retries_later() {
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let a = allowed(g.fetched(pending, HttpResponse { status: 0, body: Vec::new() }));
    assert_eq!(header_of(&a, "Remote-User"), Some("bob"));
    assert!(a.set_cookies.is_empty());
    // Right after, and until the pause ends: no new attempt.
    let _ = allowed(g.send(&Req::get("/").cookie(COOKIE, &old)));
    g.host.now += 9;
    let _ = allowed(g.send(&Req::get("/").cookie(COOKIE, &old)));
    // Then tried again, and a 5xx also keeps the session.
    g.host.now += 1;
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let a = allowed(g.fetched(pending, HttpResponse { status: 503, body: b"down".to_vec() }));
    assert_eq!(header_of(&a, "Remote-User"), Some("bob"));
}

#[test]
fn refresh_without_id_token_asks_userinfo() {
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let body = json!({"access_token": "at-9", "token_type": "Bearer", "refresh_token": "rt-9"});
    let (call, pending) = fetch(g.fetched(pending, HttpResponse { status: 200, body: body.to_string().into_bytes() }));
    assert_eq!(call.method, "GET");
    assert!(call.headers.iter().any(|(n, v)| n == "authorization" && v == "Bearer at-9"));
    let info = json!({"sub": "b0b", "preferred_username": "bob", "email": "bob@example.com", "groups": ["media"]});
    let a = allowed(g.fetched(pending, HttpResponse { status: 200, body: info.to_string().into_bytes() }));
    assert_eq!(header_of(&a, "Remote-Groups"), Some("media"));
    assert!(!a.set_cookies.is_empty());
}

#[test]
fn refresh_for_another_subject_ends_the_session() {
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let now = g.host.now;
    let resp = respond(g.fetched(pending, refreshed(now, &alice(), "rt-x")));
    assert!(g.read_login(&resp).is_ok());
    assert!(set_cookie(&resp, COOKIE).is_some_and(|c| c.clears()));
}

#[test]
fn a_refreshed_session_too_large_for_a_cookie_ends_cleanly() {
    // The IdP added so many groups that the new cookie would not fit: a
    // browser would drop it and keep sending the old one, so end the session.
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let now = g.host.now;
    let mut big = bob();
    big["groups"] = json!((0..200).map(|i| format!("group-with-a-long-name-{i}")).collect::<Vec<_>>());
    let resp = respond(g.fetched(pending, refreshed(now, &big, "rt-big")));
    assert!(g.read_login(&resp).is_ok(), "back to login");
    assert!(set_cookie(&resp, COOKIE).is_some_and(|c| c.clears()));
    assert!(g.host.take_events().iter().any(|e| matches!(e, Event::RefreshFailed(why) if why.contains("too large"))));
}

#[test]
fn group_names_with_commas_never_add_groups_upstream() {
    // Upstreams split Remote-Groups on commas: "users,admins" must not read as admins.
    let mut g = Gate::new();
    let mut odd = bob();
    odd["groups"] = json!(["users,admins", "media"]);
    let (session, _) = g.login_as(&odd);
    let allow = allowed(g.send(&Req::get("/").cookie(COOKIE, &session)));
    let groups = allow.set.iter().find(|(n, _)| &**n == "Remote-Groups").map(|(_, v)| v.to_string());
    assert_eq!(groups.as_deref(), Some("media"));
}

#[test]
fn any_refusal_other_than_unavailable_ends_the_session() {
    // Pocket ID answers revoked tokens and disabled users with its own codes.
    for (status, body) in [
        (400, r#"{"error":"Refresh token is invalid or expired"}"#),
        (403, r#"{"error":"user_disabled"}"#),
        (401, r#"{"error":"invalid_client"}"#),
    ] {
        let (mut g, old) = stale_bob();
        let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
        let resp = respond(g.fetched(pending, HttpResponse { status, body: body.as_bytes().to_vec() }));
        assert!(g.read_login(&resp).is_ok(), "{status} {body}: back to login");
        assert!(set_cookie(&resp, COOKIE).is_some_and(|c| c.clears()));
    }
    // Rate limited: asked too often, not refused; the session stays.
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let _ = allowed(g.fetched(pending, HttpResponse { status: 429, body: Vec::new() }));
}

#[test]
fn sign_in_page_offers_the_provider_and_keeps_a_safe_rd() {
    let mut g = Gate::new();
    let r = respond(g.send(&Req::get("/oauth2/sign_in?rd=%2Fmedia%2Fx%3Fa%3D1")));
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert!(body.contains("Continue with your identity provider"), "{body}");
    assert!(body.contains("href=\"/oauth2/start?rd=%2Fmedia%2Fx%3Fa%3D1\""), "{body}");
    assert!(set_cookies(&r).is_empty(), "the page itself starts no login");
    let evil = respond(g.send(&Req::get("/oauth2/sign_in?rd=%2F%2Fevil.example")));
    let body = String::from_utf8(evil.body).unwrap();
    assert!(body.contains("href=\"/oauth2/start?rd=%2F\""), "{body}");
}

// ---------------------------------------------------------------------------
// Revocation: a copy of a signed-out cookie is worth nothing.

#[test]
fn sign_out_revokes_the_session_here_and_wherever_the_revocation_is_learned() {
    let mut g = Gate::new();
    let (session, _) = g.login_as(&alice());
    // Another worker (or instance) that already served this cookie.
    let mut other = Gate::new();
    assert!(matches!(other.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Allow(_)));

    let out = g
        .driver
        .on_request(&Req::get("/oauth2/sign_out").header("Sec-Fetch-Site", "same-origin").cookie(COOKIE, &session).head(), g.host.lend());
    assert_eq!(out.revoked.len(), 1, "the host is handed the revocation to spread");
    let revoked = out.revoked.clone();
    assert_eq!(respond(g.host.keep(out)).status, 302);

    // The copy, replayed on this worker: log in again, the cookie cleared.
    g.host.take_events();
    let r = respond(g.send(&Req::get("/app/").cookie(COOKIE, &session)));
    assert!(g.read_login(&r).is_ok(), "{} {:?}", r.status, r.headers);
    assert!(set_cookie(&r, COOKIE).is_some_and(|c| c.clears()));
    assert_eq!(g.host.take_events()[0], Event::InvalidCookie("session revoked (signed out)"));
    let r = respond(g.send(&Req::get("/app/").accept("application/json").cookie(COOKIE, &session)));
    assert_eq!(r.status, 401);

    // The other worker serves it until it learns the revocation.
    assert!(matches!(other.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Allow(_)));
    other.driver.learn(&revoked, other.host.now);
    assert!(matches!(other.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Respond(_)));

    // A new login is a new session.
    let (fresh, _) = g.login_as(&alice());
    assert!(matches!(g.send(&Req::get("/app/").cookie(COOKIE, &fresh)), Step::Allow(_)));
}

#[test]
fn a_refreshed_session_stays_revocable_under_its_old_id() {
    let (mut g, old) = stale_bob();
    let (_, pending) = fetch(g.send(&Req::get("/").cookie(COOKIE, &old)));
    let now = g.host.now;
    let a = allowed(g.fetched(pending, refreshed(now, &bob(), "rt-rotated")));
    let new = SetCookie::parse(&a.set_cookies[0]).value;
    let out = g
        .driver
        .on_request(&Req::get("/oauth2/sign_out").header("Sec-Fetch-Site", "none").cookie(COOKIE, &new).head(), g.host.lend());
    let _ = g.host.keep(out);
    for cookie in [&old, &new] {
        assert!(matches!(g.send(&Req::get("/").cookie(COOKIE, cookie)), Step::Respond(_)), "a cookie of the signed-out session still works");
    }
}

#[test]
fn back_channel_logout_revokes_the_sessions_of_the_provider_session() {
    let mut g = Gate::new();
    let mut with_sid = alice();
    with_sid["sid"] = json!("idp-sid-7");
    let (session, _) = g.login_as(&with_sid);
    let (other, _) = g.login_as(&bob());
    let logout = |claims: Value| {
        let token = sign_ed(&ed_key(), Some("ed1"), &claims);
        build_query(&[("logout_token", &token)]).into_bytes()
    };
    let claims = json!({"iss": ISSUER, "aud": CLIENT_ID, "iat": NOW, "jti": "j1", "sid": "idp-sid-7",
                        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    // Forged (another issuer): 400, nothing revoked.
    let mut forged = claims.clone();
    forged["iss"] = json!("https://evil.example.com");
    let out = g.driver.on_backchannel_logout(&logout(forged), g.host.lend());
    assert!(out.revoked.is_empty());
    assert_eq!(respond(g.host.keep(out)).status, 400);
    assert!(matches!(g.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Allow(_)));

    let out = g.driver.on_backchannel_logout(&logout(claims), g.host.lend());
    assert_eq!(out.revoked.len(), 1);
    let r = respond(g.host.keep(out));
    assert_eq!((r.status, r.header("cache-control")), (200, Some("no-store")));
    assert!(matches!(g.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Respond(_)), "the provider session ended");
    assert!(matches!(g.send(&Req::get("/").cookie(COOKIE, &other)), Step::Allow(_)), "another user's session stays");
}

// ---------------------------------------------------------------------------
// Filters in a fleet: the coordinator refreshes and spreads sign-outs.

fn fleet_config() -> Value {
    let mut c = config_json();
    c["fleet"] = json!({"coordinator": "oidc_edge_sidecar"});
    c
}

#[test]
fn a_filter_in_a_fleet_hands_its_refresh_to_the_coordinator() {
    let mut coordinator = Gate::new();
    let mut filter = Gate::with_config(&fleet_config());
    let (old, _) = filter.login_as(&bob());
    filter.host.now += REFRESH_INTERVAL;
    coordinator.host.now = filter.host.now;
    let (call, pending) = fetch(filter.send(&Req::get("/").cookie(COOKIE, &old)));
    assert_eq!((call.target.as_str(), call.method, call.path.as_str()), ("oidc_edge_sidecar", "POST", crate::fleet::REFRESH_PATH));
    assert_eq!(call.body, old.as_bytes());
    let key = call.headers.iter().find(|(n, _)| n == crate::fleet::KEY_HEADER).map(|(_, v)| v.clone()).expect("the fleet key");
    assert!(crate::fleet::key_matches(&coordinator.driver.config().session.sealer, &key));
    // This instance's other requests wait on its one call, on the old session.
    assert!(allowed(filter.send(&Req::get("/").cookie(COOKIE, &old))).set_cookies.is_empty());

    // The coordinator refreshes at the provider; a second filter asking meanwhile is told "busy".
    let out = coordinator.driver.on_fleet_refresh(&old, coordinator.host.lend());
    let (idp_call, idp_pending) = fetch(coordinator.host.keep(out));
    assert_eq!(form_param(&idp_call, "grant_type").as_deref(), Some("refresh_token"));
    let out = coordinator.driver.on_fleet_refresh(&old, coordinator.host.lend());
    assert_eq!(respond(coordinator.host.keep(out)).status, 409);
    let now = coordinator.host.now;
    let answer = respond(coordinator.fetched(idp_pending, refreshed(now, &bob(), "rt-2")));
    assert_eq!(answer.status, 200);
    let new = std::str::from_utf8(answer.body.strip_prefix(b"ok:").expect("the new cookie")).unwrap().to_owned();
    // Asked again (another instance, later): the same successor, no provider call.
    let out = coordinator.driver.on_fleet_refresh(&old, coordinator.host.lend());
    assert_eq!(respond(coordinator.host.keep(out)).body, answer.body);

    let a = allowed(filter.fetched(pending, HttpResponse { status: 200, body: answer.body.clone() }));
    assert_eq!(SetCookie::parse(&a.set_cookies[0]).value, new);
    assert!(filter.host.take_events().contains(&Event::RefreshSucceeded));
    // The old cookie on this instance afterwards: the successor, no call.
    let a = allowed(filter.send(&Req::get("/").cookie(COOKIE, &old)));
    assert_eq!(SetCookie::parse(&a.set_cookies[0]).value, new);

    // A coordinator with other secrets cannot open the cookie, and says so.
    let mut other_secret = config_json();
    other_secret["session"]["secrets"] = json!([{"env": "OTHER_COOKIE_SECRET"}]);
    let mut stranger = Gate::with_config(&other_secret);
    let out = stranger.driver.on_fleet_refresh(&old, stranger.host.lend());
    assert_eq!(respond(stranger.host.keep(out)).status, 422);
}

#[test]
fn a_filter_in_a_fleet_keeps_the_session_unless_the_coordinator_says_it_ended() {
    let mut filter = Gate::with_config(&fleet_config());
    let (old, _) = filter.login_as(&bob());
    filter.host.now += REFRESH_INTERVAL;
    // No answer: the old session, no cookie; the next try waits for the lock.
    let (_, pending) = fetch(filter.send(&Req::get("/").cookie(COOKIE, &old)));
    let a = allowed(filter.fetched(pending, HttpResponse { status: 0, body: Vec::new() }));
    assert!(a.set_cookies.is_empty() && header_of(&a, "Remote-User") == Some("bob"));
    // Ended: back to login, on every later request too.
    filter.host.now += 60;
    let (_, pending) = fetch(filter.send(&Req::get("/").cookie(COOKIE, &old)));
    let r = respond(filter.fetched(pending, HttpResponse { status: 200, body: b"dead".to_vec() }));
    assert_eq!(r.status, 302);
    assert!(set_cookie(&r, COOKIE).is_some_and(|c| c.clears()));
    assert_eq!(respond(filter.send(&Req::get("/").cookie(COOKIE, &old))).status, 302);
}

#[test]
fn a_sign_out_in_a_fleet_reaches_the_coordinator_before_the_browser_is_answered() {
    let mut filter = Gate::with_config(&fleet_config());
    let (session, _) = filter.login_as(&bob());
    let out = filter
        .driver
        .on_request(&Req::get("/oauth2/sign_out").cookie(COOKIE, &session).header("sec-fetch-site", "same-origin").head(), filter.host.lend());
    assert_eq!(out.revoked.len(), 1, "this instance learns it at once");
    let revoked = out.revoked.clone();
    let (call, pending) = fetch(filter.host.keep(out));
    assert_eq!((call.method, call.path.as_str()), ("POST", crate::fleet::REVOCATIONS_PATH));
    assert_eq!(crate::revocation::Revocation::decode_all(&call.body), revoked);
    // The coordinator unreachable: the browser is still signed out here.
    let r = respond(filter.fetched(pending, HttpResponse { status: 0, body: Vec::new() }));
    assert_eq!(r.status, 302);
    assert!(set_cookie(&r, COOKIE).is_some_and(|c| c.clears()));
    assert!(filter.host.take_events().iter().any(|e| matches!(e, Event::StoreUnavailable(_))));
    assert!(matches!(filter.send(&Req::get("/").cookie(COOKIE, &session)), Step::Respond(_)));
}

#[test]
fn a_logout_token_is_used_once() {
    let mut g = Gate::new();
    let claims = json!({"iss": ISSUER, "aud": CLIENT_ID, "iat": NOW, "jti": "once", "sub": "b0b",
                        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let body = build_query(&[("logout_token", &sign_ed(&ed_key(), Some("ed1"), &claims))]).into_bytes();
    let out = g.driver.on_backchannel_logout(&body, g.host.lend());
    assert_eq!(respond(g.host.keep(out)).status, 200);
    g.host.now += 30;
    let out = g.driver.on_backchannel_logout(&body, g.host.lend());
    assert!(out.revoked.is_empty());
    assert_eq!(respond(g.host.keep(out)).status, 400);
}

// ---------------------------------------------------------------------------
// Methods, networks, preflight.

fn policy_config(hops: u8) -> Value {
    let mut c = config_json();
    c["client_address"] = json!({"forwarded_hops": hops});
    c["routes"] = json!([
        {"path": "/wiki/", "methods": ["GET", "HEAD"], "public": true},
        {"path": "/wiki/", "groups": ["admins"]},
        {"path": "/lan/", "allow_networks": ["192.168.0.0/16"], "deny_networks": ["192.168.66.0/24"], "groups": ["admins"]},
        {"path": "/cors/", "cors_preflight": true, "api": true},
        {"path": "/"}
    ]);
    c
}

#[test]
fn methods_choose_the_route_and_method_overrides_never_reach_the_upstream() {
    let mut g = Gate::with_config(&policy_config(0));
    let (bob_session, _) = g.login_as(&bob());
    let (alice_session, _) = g.login_as(&alice());
    let a = allowed(g.send(&Req::get("/wiki/page").header("X-HTTP-Method-Override", "DELETE")));
    assert!(a.strip.iter().any(|h| h.eq_ignore_ascii_case("x-http-method-override")), "{a:?}");
    assert!(matches!(g.send(&Req::new("HEAD", "/wiki/page")), Step::Allow(_)));
    assert_eq!(respond(g.send(&Req::new("POST", "/wiki/page"))).status, 302, "a write needs a login");
    assert_eq!(respond(g.send(&Req::new("post", "/wiki/page"))).status, 302, "in any case");
    assert_eq!(respond(g.send(&Req::new("POST", "/wiki/page").cookie(COOKIE, &bob_session))).status, 403);
    assert!(matches!(g.send(&Req::new("POST", "/wiki/page").cookie(COOKIE, &alice_session)), Step::Allow(_)));
}

#[test]
fn allowed_networks_pass_without_a_login_and_denied_ones_never() {
    let mut g = Gate::with_config(&policy_config(0));
    let (alice_session, _) = g.login_as(&alice());
    let a = allowed(g.send(&Req::get("/lan/x").from("192.168.1.20").header("Remote-User", "forged")));
    assert!(header_of(&a, "Remote-User").is_none() && a.strip.iter().any(|h| h.eq_ignore_ascii_case("remote-user")));
    assert_eq!(respond(g.send(&Req::get("/lan/x").from("203.0.113.9"))).status, 302, "elsewhere: a login");
    // A client's X-Forwarded-For is not its address (no trusted hops configured).
    assert_eq!(respond(g.send(&Req::get("/lan/x").from("203.0.113.9").header("X-Forwarded-For", "192.168.1.20"))).status, 302);
    // Denied even with a session; an unknown address is denied where ranges are.
    assert_eq!(respond(g.send(&Req::get("/lan/x").from("192.168.66.5").cookie(COOKIE, &alice_session))).status, 403);
    let mut unknown = Req::get("/lan/x").cookie(COOKIE, &alice_session);
    unknown.client = None;
    assert_eq!(respond(g.send(&unknown)).status, 403);

    // Behind one trusted load balancer: its X-Forwarded-For entry, not the client's own.
    let mut g = Gate::with_config(&policy_config(1));
    let lb = |xff: &str| Req::get("/lan/x").from("10.0.0.2").header("X-Forwarded-For", xff);
    assert!(matches!(g.send(&lb("192.168.1.20")), Step::Allow(_)));
    assert_eq!(respond(g.send(&lb("192.168.1.20, 203.0.113.9"))).status, 302, "the client's entry is not the one the LB added");
    assert_eq!(respond(g.send(&Req::get("/lan/x").from("192.168.1.20"))).status, 403, "no entry: unknown, refused where ranges are denied");
}

#[test]
fn a_cors_preflight_passes_without_a_session_and_nothing_else_does() {
    let mut g = Gate::with_config(&policy_config(0));
    let preflight = Req::new("OPTIONS", "/cors/items")
        .header("Origin", "https://web.example.com")
        .header("Access-Control-Request-Method", "PUT");
    assert!(matches!(g.send(&preflight), Step::Allow(_)));
    assert_eq!(respond(g.send(&Req::new("OPTIONS", "/cors/items").header("Origin", "https://web.example.com"))).status, 401);
    assert_eq!(respond(g.send(&Req::new("PUT", "/cors/items").header("Origin", "https://web.example.com"))).status, 401);
    assert_eq!(respond(g.send(&Req::new("OPTIONS", "/other").header("Origin", "x").header("Access-Control-Request-Method", "PUT"))).status, 302);
}

#[test]
fn policy_fields_are_checked() {
    let mut c = policy_config(0);
    c["routes"][0]["methods"] = json!(["GET", "G E T"]);
    c["routes"][2]["allow_networks"] = json!(["192.168.0.0/33"]);
    let Err(e) = Config::from_json(&c.to_string(), &EnvSecrets::standard()) else { panic!("accepted") };
    let text = e.to_string();
    assert!(text.contains("routes[0].methods") && text.contains("routes[2].allow_networks"), "{text}");
}

// ---------------------------------------------------------------------------
// Bearer tokens.

fn bearer_config() -> Value {
    let mut c = config_json();
    c["routes"] = json!([
        {"path": "/api/", "bearer": true, "groups": ["users", "admins"]},
        {"path": "/admin/", "bearer": true, "groups": ["admins"]},
        {"path": "/reports/", "bearer": {"audiences": ["reports-api"], "forward": true}},
        {"path": "/"}
    ]);
    c
}

fn api_token(edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = json!({"iss": ISSUER, "aud": CLIENT_ID, "sub": "svc", "exp": NOW + 600, "iat": NOW,
                            "preferred_username": "backup-job", "groups": ["users"]});
    edit(&mut claims);
    sign_ed(&ed_key(), Some("ed1"), &claims)
}

#[test]
fn a_bearer_token_is_verified_once_and_its_claims_meet_the_route() {
    let mut g = Gate::with_config(&bearer_config());
    let token = api_token(|_| {});
    let req = |path: &str, t: &str| Req::get(path).header("Authorization", &format!("Bearer {t}"));
    let a = allowed(g.send(&req("/api/x", &token)));
    assert_eq!(header_of(&a, "Remote-User"), Some("backup-job"));
    assert!(a.strip.iter().any(|h| h == "authorization"), "the token stays with the gate");
    // Cached: the same token passes without the provider's keys.
    g.driver.forget_provider();
    assert!(matches!(g.send(&req("/api/x", &token)), Step::Allow(_)));
    let r = respond(g.send(&req("/admin/x", &token)));
    assert_eq!(r.status, 403);
    assert!(r.header("www-authenticate").is_some_and(|w| w.contains("error=\"insufficient_scope\"")));
}

#[test]
fn a_bad_bearer_token_gets_401_invalid_token_even_from_a_browser() {
    let mut g = Gate::with_config(&bearer_config());
    for bad in [api_token(|c| c["exp"] = json!(NOW - 3600)), api_token(|c| c["aud"] = json!("else")), "junk".to_owned()] {
        let r = respond(g.send(&Req::get("/api/x").header("Authorization", &format!("Bearer {bad}"))));
        assert_eq!(r.status, 401);
        assert!(r.header("location").is_none());
        assert!(r.header("www-authenticate").is_some_and(|w| w.starts_with("Bearer realm=\"oidc-edge\", error=\"invalid_token\"")));
    }
    // No token on a bearer route, from an API client: asked for one.
    let r = respond(g.send(&Req::get("/api/x").accept("application/json")));
    assert_eq!((r.status, r.header("www-authenticate")), (401, Some("Bearer realm=\"oidc-edge\"")));
}

#[test]
fn a_token_verified_for_one_audience_is_not_reused_for_another() {
    let mut g = Gate::with_config(&bearer_config());
    let reports = api_token(|c| c["aud"] = json!("reports-api"));
    let req = |path: &str| Req::get(path).header("Authorization", &format!("Bearer {reports}"));
    let a = allowed(g.send(&req("/reports/x")));
    assert!(!a.strip.iter().any(|h| h == "authorization"), "forwarded where the route says so");
    assert_eq!(respond(g.send(&req("/api/x"))).status, 401);
}

// ---------------------------------------------------------------------------
// Step-up.

fn step_up_config() -> Value {
    let mut c = config_json();
    c["routes"] = json!([
        {"path": "/fresh/", "max_auth_age": "5m"},
        {"path": "/fresh30/", "max_auth_age": "30s"},
        {"path": "/passkey/", "amr": ["phr", "hwk"]},
        {"path": "/acr/", "acr": ["urn:passkey"]},
        {"path": "/api-fresh/", "max_auth_age": "5m", "bearer": true},
        {"path": "/"}
    ]);
    c
}

#[test]
fn an_old_sign_in_goes_back_to_the_provider_for_a_fresh_one_once() {
    let mut g = Gate::with_config(&step_up_config());
    let (session, _) = g.login_as(&alice());
    assert!(matches!(g.send(&Req::get("/fresh/x").cookie(COOKIE, &session)), Step::Allow(_)), "fresh enough");
    g.host.now += 600;
    let r = respond(g.send(&Req::get("/fresh/x?y=1").cookie(COOKIE, &session)));
    assert_eq!(r.status, 302);
    let (_, params) = split_location(r.header("location").unwrap());
    assert_eq!((param(&params, "max_age"), param(&params, "prompt")), ("300", "login"));
    let login = g.read_login(&r).unwrap();
    assert_eq!(login.sealed.return_to, "/fresh/x?y=1");
    // An API client is told to sign in again, not redirected.
    let r = respond(g.send(&Req::get("/fresh/x").cookie(COOKIE, &session).accept("application/json")));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((r.status, body["error"].as_str()), (401, Some("step_up_required")));
    // The provider signs the user in but reports the old auth_time: a page, not another round.
    let mut stale = alice();
    stale["auth_time"] = json!(g.host.now - 7200);
    let (again, _) = g.login_from("/fresh/x", &stale);
    let r = respond(g.send(&Req::get("/fresh/x").cookie(COOKIE, &again)));
    assert_eq!(r.status, 403);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("recent sign-in") && body.contains("/oauth2/start?rd=%2Ffresh%2Fx"), "a way forward: {body}");
}

/// A plain login's sign-in, however recent, that falls short of a step-up
/// route was never asked to meet it: the route asks, it does not refuse.
#[test]
fn a_recent_plain_sign_in_is_asked_again_not_refused() {
    let mut g = Gate::with_config(&step_up_config());
    let (session, _) = g.login_as(&alice());
    g.host.now += 34;
    let r = respond(g.send(&Req::get("/fresh30/x").cookie(COOKIE, &session)));
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    let (_, params) = split_location(r.header("location").unwrap());
    assert_eq!((param(&params, "max_age"), param(&params, "prompt")), ("30", "login"));
    // The step-up login delivers; once its sign-in is old in turn, it is asked again too.
    let (fresh, _) = g.login_from("/fresh30/x", &alice());
    assert!(matches!(g.send(&Req::get("/fresh30/x").cookie(COOKIE, &fresh)), Step::Allow(_)));
    g.host.now += 40;
    assert_eq!(respond(g.send(&Req::get("/fresh30/x").cookie(COOKIE, &fresh))).status, 302);
    // A session its login asked a looser max_age for is asked with the stricter one.
    let mut five_minutes = alice();
    five_minutes["auth_time"] = json!(g.host.now - 100);
    let (looser, _) = g.login_from("/fresh/x", &five_minutes);
    let r = respond(g.send(&Req::get("/fresh30/x").cookie(COOKIE, &looser)));
    let (_, params) = split_location(r.header("location").unwrap());
    assert_eq!((r.status, param(&params, "max_age")), (302, "30"));
}

/// The first visit to a step-up route asks for its demands at once: a
/// provider with a live single sign-on would otherwise answer with its old
/// sign-in. A plain route's login asks for nothing more.
#[test]
fn the_first_login_from_a_step_up_route_carries_its_demands() {
    let mut g = Gate::with_config(&step_up_config());
    let login = g.start("/fresh/x");
    assert_eq!((param(&login.params, "max_age"), param(&login.params, "prompt")), ("300", "login"));
    assert_eq!(login.sealed.asked, Some(crate::session::Asked { max_age: Some(300), acr: Vec::new() }));
    let login = g.start("/acr/x");
    assert_eq!((param(&login.params, "acr_values"), param(&login.params, "prompt")), ("urn:passkey", "login"));
    let r = respond(g.send(&Req::get("/oauth2/start?rd=%2Ffresh30%2Fy")));
    assert_eq!(g.read_login(&r).unwrap().sealed.asked.and_then(|a| a.max_age), Some(30), "the sign-in link asks too");
    let plain = g.start("/app/");
    assert!(plain.params.iter().all(|(k, _)| k != "max_age" && k != "prompt") && plain.sealed.asked.is_none());
}

#[test]
fn a_route_that_wants_a_passkey_asks_for_it_and_explains_when_it_did_not_come() {
    let mut g = Gate::with_config(&step_up_config());
    let (alice_session, _) = g.login_as(&alice());
    assert!(matches!(g.send(&Req::get("/passkey/x").cookie(COOKIE, &alice_session)), Step::Allow(_)), "amr phr");
    let (bob_session, _) = g.login_as(&bob());
    // Signed in with a password elsewhere: back to the provider, to sign in again.
    let r = respond(g.send(&Req::get("/passkey/x").cookie(COOKIE, &bob_session)));
    let (_, params) = split_location(r.header("location").unwrap());
    assert_eq!((r.status, param(&params, "prompt")), (302, "login"));
    // Asked to sign in again, still with a password: a clear page.
    let (asked, _) = g.login_from("/passkey/x", &bob());
    assert_eq!(respond(g.send(&Req::get("/passkey/x").cookie(COOKIE, &asked))).status, 403);
    g.host.now += 600;
    assert_eq!(respond(g.send(&Req::get("/passkey/x").cookie(COOKIE, &asked))).status, 403, "still what the provider answered");
    // A route naming an acr asks for it.
    let r = respond(g.send(&Req::get("/acr/x").cookie(COOKIE, &alice_session)));
    let (_, params) = split_location(r.header("location").unwrap());
    assert_eq!((r.status, param(&params, "acr_values")), (302, "urn:passkey"));
}

#[test]
fn a_bearer_token_with_an_old_sign_in_gets_the_step_up_challenge() {
    let mut g = Gate::with_config(&step_up_config());
    let token = api_token(|c| c["auth_time"] = json!(NOW - 3600));
    let r = respond(g.send(&Req::get("/api-fresh/x").header("Authorization", &format!("Bearer {token}"))));
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("error=\"insufficient_user_authentication\"") && challenge.contains("max_age=300"), "{challenge}");
    let fresh = api_token(|c| c["auth_time"] = json!(NOW - 10));
    assert!(matches!(g.send(&Req::get("/api-fresh/x").header("Authorization", &format!("Bearer {fresh}"))), Step::Allow(_)));
}

/// The race a released lock opens: instance B reads no successor, instance
/// A finishes (stores the successor, releases the lock), B claims the lock.
/// B must take A's successor, not refresh with the spent token.
#[test]
fn a_lock_won_after_another_refresh_finished_takes_its_successor() {
    let (mut g, old) = stale_bob();
    let mut rng = SeededRng::new(9);
    let now = g.host.now;
    let out = g.driver.on_request(&Req::get("/").cookie(COOKIE, &old).head(), Lend { now, rng: &mut rng, store: None });
    let Step::Store { pending, .. } = out.step else { panic!("{:?}", out.step) };
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Read(None)), Lend { now, rng: &mut rng, store: None });
    let Step::Store { pending, .. } = out.step else { panic!("{:?}", out.step) };
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Claimed(true)), Lend { now, rng: &mut rng, store: None });
    let Step::Store { pending, .. } = out.step else { panic!("{:?}", out.step) };
    // Meanwhile the other instance stored its successor.
    let (successor, _) = g.login_as(&bob());
    let record = [b"ok:".as_slice(), successor.as_bytes()].concat();
    let out = g.driver.on_answer(pending, Answer::Store(StoreAnswer::Read(Some(record))), Lend { now, rng: &mut rng, store: None });
    assert!(out.writes.iter().any(|w| matches!(w.key, RecordKey::RefreshLock(_)) && w.until == now), "lock released: {:?}", out.writes);
    let a = allowed(out.step);
    assert_eq!(SetCookie::parse(&a.set_cookies[0]).value, successor, "no second refresh: the successor");
}

// ---------------------------------------------------------------------------
// Readings that differ between the gate and what is behind it.

#[test]
fn a_path_that_lenient_servers_read_as_another_route_is_refused() {
    let mut g = Gate::new();
    let bob = g.login_as(&bob()).0;
    for path in
        ["/admin./", "/admin%20/", "/admin%C2%A0/x", "/%EF%BD%81dmin/", "/adm%C4%B1n/", "/public/%EF%BC%8E%EF%BC%8E/admin/", "/admin%3F/"]
    {
        for req in [Req::get(path).cookie(COOKIE, &bob), Req::get(path)] {
            let r = respond(g.send(&req));
            assert_eq!(r.status, 400, "{path}");
        }
    }
    // The same characters where no route differs are a path like any other.
    for path in ["/app/caf%C3%A9", "/app/My%20File.pdf", "/app/v1./x"] {
        let r = allowed(g.send(&Req::get(path).cookie(COOKIE, &bob)));
        assert!(r.set.iter().any(|(n, v)| &**n == "Remote-User" && &**v == "bob"), "{path}");
    }
    for path in ["/admin\u{85}", "/admin\u{a0}", "/admin%85", "/admin%A0/", "/a b"] {
        assert_eq!(respond(g.send(&Req::get(path).cookie(COOKIE, &bob))).status, 400, "{path:?}");
    }
}

#[test]
fn a_host_that_is_not_a_host_name_is_refused_before_anything_is_built_from_it() {
    let mut g = Gate::new();
    for host in ["app.example.com,evil.example", "evil.example@app.example.com", "app.example.com/x", "a b", "", "app.example.com:x"] {
        let r = respond(g.send(&Req::get("/app/").host(host)));
        assert_eq!(r.status, 400, "{host:?}");
        assert!(r.header("location").is_none());
    }
    for host in ["app.example.com", "app.example.com:8443", "app.example.com.", "[::1]:8080", "my_service:80"] {
        assert_ne!(respond(g.send(&Req::get("/app/").host(host))).status, 400, "{host:?}");
    }
}

#[test]
fn an_h2c_upgrade_is_refused() {
    let mut g = Gate::new();
    let alice = g.login_as(&alice()).0;
    for (n, v) in [("Upgrade", "h2c"), ("upgrade", "websocket, H2C"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")] {
        let r = respond(g.send(&Req::get("/app/").cookie(COOKIE, &alice).header(n, v)));
        assert_eq!(r.status, 400, "{n}: {v}");
    }
    // A WebSocket upgrade is decided like any other request.
    let r = allowed(g.send(&Req::get("/app/").cookie(COOKIE, &alice).header("Upgrade", "websocket").header("Connection", "Upgrade")));
    assert!(r.set.iter().any(|(n, _)| &**n == "Remote-User"));
}

#[test]
fn a_browser_carries_a_bounded_number_of_login_states_and_the_latest_finishes() {
    let mut g = Gate::new();
    // Thirty tabs, each starting a login with the cookies the earlier ones set.
    let mut jar: Vec<(String, String)> = Vec::new();
    let mut last = None;
    for _ in 0..30 {
        let mut req = Req::get("/app/");
        for (n, v) in &jar {
            req = req.cookie(n, v);
        }
        let resp = respond(g.send(&req));
        let login = g.read_login(&resp).unwrap();
        jar.retain(|(n, _)| *n != login.cookie.name);
        jar.push((login.cookie.name.clone(), login.cookie.value.clone()));
        last = Some(login);
        g.host.now += 1;
    }
    assert_eq!(jar.len(), usize::from(LOGIN_SLOTS), "one cookie per slot, never more");
    let header: usize = jar.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    assert!(header < 4096, "{header} bytes of login cookies");
    // Taken slots are kept while free ones remain: the last six logins all hold.
    let last = last.unwrap();
    let mut req = Req::get(&format!("/oauth2/callback?{}", build_query(&[("code", "c"), ("state", &last.state), ("iss", ISSUER)])));
    for (n, v) in &jar {
        req = req.cookie(n, v);
    }
    let step = g.send(&req);
    assert!(matches!(step, Step::Fetch { .. }), "the latest login goes on to the code exchange: {step:?}");
}

#[test]
fn a_new_login_takes_a_free_slot_then_the_oldest() {
    let mut g = Gate::new();
    let mut jar: Vec<(String, String, u64)> = Vec::new();
    for i in 0..u64::from(LOGIN_SLOTS) + 2 {
        let mut req = Req::get("/app/");
        for (n, v, _) in &jar {
            req = req.cookie(n, v);
        }
        let resp = respond(g.send(&req));
        let login = g.read_login(&resp).unwrap();
        let taken_before = jar.iter().position(|(n, _, _)| *n == login.cookie.name);
        if i < u64::from(LOGIN_SLOTS) {
            assert_eq!(taken_before, None, "login {i} took a taken slot while one was free");
        } else {
            let oldest = jar.iter().enumerate().min_by_key(|(_, (_, _, t))| *t).map(|(i, _)| i);
            assert_eq!(taken_before, oldest, "login {i} replaced another than the oldest");
        }
        jar.retain(|(n, _, _)| *n != login.cookie.name);
        jar.push((login.cookie.name.clone(), login.cookie.value.clone(), i));
        g.host.now += 10;
    }
}

#[test]
fn a_session_from_before_a_restart_is_checked_with_the_provider_before_it_is_served() {
    let mut g = Gate::new();
    let (session, _) = g.login_as(&alice());
    assert!(matches!(g.send(&Req::get("/app/").cookie(COOKIE, &session)), Step::Allow(_)));
    // The memory that held this gate's revocations is new: a sign-out of
    // this session may be forgotten.
    g.host.now += 5;
    g.driver.revocations_known_since(g.host.now);
    let (call, pending) = fetch(g.send(&Req::get("/app/").cookie(COOKIE, &session)));
    assert!(call.path.ends_with("/token"), "refreshed first: {}", call.path);
    // The provider no longer knows the session (it was signed out): no pass.
    let r = respond(g.fetched(pending, HttpResponse { status: 400, body: br#"{"error":"invalid_grant"}"#.to_vec() }));
    assert_eq!(r.status, 302, "sent to sign in again");
    // A session the provider vouched for after the restart is served as is,
    // also one from the restart's very second (no refresh loop).
    let (fresh, _) = g.login_as(&alice());
    assert!(matches!(g.send(&Req::get("/app/").cookie(COOKIE, &fresh)), Step::Allow(_)));
}
