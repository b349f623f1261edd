"""Hostile input through the real proxy: spoofed identity headers, forged
cookies, bad callbacks, open redirects and path tricks. Each must end in a
clear local answer: never a pass, never a 500, never a redirect loop."""

import re
import time
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from cookies import b64url, b64url_decode, seal, session_payload
from harness import COOKIE_SECRET, Browser, free_port, login, to_callback

SPOOFS = [
    ("Remote-User", "admin"), ("remote_user", "admin"), ("Remote.User", "admin"), ("REMOTE-USER", "admin"),
    ("Remote-Groups", "admins"), ("remote_groups", "admins"), ("Remote-Email", "ceo@example.com"),
    ("Remote-Name", "Boss"), ("X-Forwarded-User", "admin"), ("X_Forwarded_Email", "ceo@example.com"),
    ("X-Auth-Request-User", "admin"), ("x-webauth-user", "admin"), ("X-WEBAUTH_USER", "admin"),
]


def received(resp):
    return {k.lower().replace("_", "-").replace(".", "-"): v for k, v in resp.upstream_headers()}


@pytest.mark.parametrize("path", ["/public/x", "/app/x", "/grafana/x"])
def test_spoofed_identity_headers_never_reach_upstream(gate, stack, alice, path):
    r = alice.request("GET", gate.url(path), raw_headers=SPOOFS)
    assert r.status == 200
    got = received(r)
    for name, value in SPOOFS:
        canonical = name.lower().replace("_", "-").replace(".", "-")
        assert got.get(canonical) != value, f"{name} reached the upstream on {path}"
    names = [k for k, _ in r.upstream_headers()]
    assert not any("_" in n or "." in n for n in names if "user" in n.lower() or "group" in n.lower())
    if path == "/public/x":
        assert "remote-user" not in got
    else:
        assert got.get("remote-user") == "alice" or got.get("x-webauth-user") == "alice"


def test_spoofed_headers_stripped_for_anonymous_on_public(gate, stack):
    r = Browser().request("GET", gate.url("/public/"), raw_headers=SPOOFS)
    assert r.status == 200
    assert not set(received(r)) & {"remote-user", "remote-groups", "remote-email", "x-forwarded-user"}


def _forged_cases():
    now = int(time.time())
    good_payload = session_payload(user="alice", sub="x", groups=["admins"], email="a@example.com", verified=True)
    return {
        "expired": seal(COOKIE_SECRET, "_oidc_edge", now - 10, good_payload),
        "wrong-key": seal("an-attackers-own-secret-32-bytes", "_oidc_edge", now + 3600, good_payload),
        "other-cookie-name": seal(COOKIE_SECRET, "_oidc_edge_idt", now + 3600, good_payload),
        "garbage": "not-a-cookie",
        "empty-ish": "AQ",
    }


def _tampered(value):
    raw = bytearray(b64url_decode(value))
    raw[len(raw) // 2] ^= 1
    return b64url(bytes(raw))


def test_forged_and_tampered_sessions_go_back_to_login(gate, stack, alice):
    good = alice.cookie("_oidc_edge")
    cases = dict(_forged_cases())
    cases["tampered"] = _tampered(good)
    cases["truncated"] = good[:-10]
    cases["extended"] = good + "AAAA"
    before = gate.settled_counter("oidc_edge_invalid_cookies") if gate.has_counters else 0
    for label, value in cases.items():
        r = Browser().get(gate.url("/admin/"), headers={"Cookie": f"_oidc_edge={value}"}, send_cookies=False)
        assert r.status == 302, f"{label}: {r.status}"
        assert r.location.startswith(stack.idp.issuer), label
        assert any(c.startswith("_oidc_edge=;") and "Max-Age=0" in c for c in r.all("set-cookie")), label
        api = Browser().get(gate.url("/admin/"), headers={"Cookie": f"_oidc_edge={value}", "Accept": "application/json"},
                            send_cookies=False)
        assert api.status == 401, label
    if gate.has_counters:
        # Each refused cookie counts once per request, on every gate.
        assert gate.counter("oidc_edge_invalid_cookies", before + 2 * len(cases)) >= before + 2 * len(cases)
        assert gate.settled_counter("oidc_edge_invalid_cookies") == before + 2 * len(cases)
    # The genuine cookie still works.
    assert alice.get(gate.url("/admin/")).status == 200


def test_cookie_forged_with_the_right_key_but_expired_is_refused(gate, stack):
    # Proves the expiry inside the sealed value is enforced, not just Max-Age.
    now = int(time.time())
    payload = session_payload(user="alice", sub="x", groups=["admins"], login_at=now, checked_at=now)
    fresh = seal(COOKIE_SECRET, "_oidc_edge", now + 600, payload)
    assert Browser().get(gate.url("/admin/"), headers={"Cookie": f"_oidc_edge={fresh}"}).status == 200
    stale = seal(COOKIE_SECRET, "_oidc_edge", now - 1, payload)
    assert Browser().get(gate.url("/admin/"), headers={"Cookie": f"_oidc_edge={stale}"}).status == 302


def _start_login(gate, stack, b):
    r = b.get(gate.url("/app/"))
    assert r.status == 302
    return parse_qs(urlsplit(r.location).query)["state"][0]


def _assert_clear_page(r, label):
    assert 400 <= r.status < 500, f"{label}: {r.status}"
    assert r.location is None, f"{label}: redirected to {r.location}"
    assert b"<h1>" in r.body, label


def test_callback_refusals_are_clear_pages(gate, stack):
    b = Browser()
    state = _start_login(gate, stack, b)
    cb = gate.url("/oauth2/callback")
    _assert_clear_page(b.get(cb), "no params")
    _assert_clear_page(b.get(f"{cb}?code=abc"), "missing state")
    _assert_clear_page(b.get(f"{cb}?state={state}"), "missing code")
    _assert_clear_page(b.get(f"{cb}?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), "unknown state")
    _assert_clear_page(b.get(f"{cb}?error=access_denied&state={state}"), "IdP error")
    # A state that belongs to another browser's login.
    other = Browser()
    foreign = _start_login(gate, stack, other)
    _assert_clear_page(b.get(f"{cb}?code=abc&state={foreign}"), "foreign state")
    # iss from another issuer (RFC 9207 mix-up defence).
    b3 = Browser()
    s3 = _start_login(gate, stack, b3)
    _assert_clear_page(b3.get(f"{cb}?code=abc&state={s3}&iss=https%3A%2F%2Fevil.example"), "iss mismatch")
    # The IdP sends iss in every authorization response (RFC 9207), so a real
    # callback with iss stripped is refused, though its code and state are good.
    meta = Browser().get(f"{stack.idp.issuer}/.well-known/openid-configuration").json()
    assert meta.get("authorization_response_iss_parameter_supported") is True
    b4 = Browser()
    real = to_callback(b4, gate.url("/app/"), "alice")
    parts = urlsplit(real)
    stripped = "&".join(p for p in parts.query.split("&") if not p.startswith("iss="))
    assert stripped != parts.query
    _assert_clear_page(b4.get(gate.url(f"{parts.path}?{stripped}")), "iss stripped")


def test_reused_state_is_refused(gate, stack):
    b = Browser()
    callback_url = to_callback(b, gate.url("/app/"), "alice")
    saved_jar = dict(b.jar)
    first = b.get(callback_url)
    assert first.status == 302 and first.location == "/app/"
    # Replay the same callback with the login cookie as it was: refused, no loop.
    _assert_clear_page(Browser(jar=saved_jar).get(callback_url), "replayed state")


EVIL_TARGETS = [
    "//evil.example", "//evil.example/", "/\\evil.example", "\\\\evil.example", "https://evil.example/",
    "http:evil.example", "https:/evil.example", "/%2F%2Fevil.example", "%2F%2Fevil.example",
    "/%5Cevil.example", "/\tevil.example", "/%09/evil.example", "/%0d%0aLocation:%20https://evil.example",
    "javascript:alert(1)", "https://127.0.0.1.evil.example/", "//127.0.0.1@evil.example",
]


def _off_site(location, gate, stack):
    if location is None:
        return False
    if location.startswith(stack.idp.issuer):
        return False
    if location.startswith("/") and not location.startswith("//") and "\\" not in location:
        return False
    return not location.startswith(gate.url("/"))


@pytest.mark.parametrize("target", EVIL_TARGETS)
def test_open_redirects_through_start_and_sign_out(gate, stack, target):
    b = Browser()
    for path in (f"/oauth2/start?rd={quote(target, safe='')}", f"/oauth2/sign_out?rd={quote(target, safe='')}"):
        r = b.get(gate.url(path), headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status in (302, 400), (path, r.status)
        assert not _off_site(r.location, gate, stack), (path, r.location)


def test_open_redirect_through_the_original_url_after_login(gate, stack):
    # Envoy merges slashes and the filter validates the return path: whatever
    # the original URL, the post-login Location stays on this site.
    for raw in ["//evil.example/app/", "/app/..//evil.example", "/app//evil.example", "/app/?next=//evil.example"]:
        b = Browser()
        r = _after_canonical_redirect(gate, b, raw)
        if r.status != 302:
            assert r.status in (400, 403), (raw, r.status)
            continue
        done = b.get(to_callback(b, r.url, "alice"))
        assert done.status == 302, raw
        assert done.location.startswith("/") and not done.location.startswith("//"), (raw, done.location)
        assert "\\" not in done.location


PATH_TRICKS = [
    "/public/../admin/", "/public/%2e%2e/admin/", "/public/%2E%2E/admin/", "//admin/", "/./admin/",
    "/ADMIN/", "/Admin/x", "/%61dmin/", "/public/..%2Fadmin/", "/public%2F..%2Fadmin/", "/public/..;/admin/",
    "/public/%252e%252e/admin/",
    # nginx ends its path at a raw '#' but passes the whole line upstream.
    "/admin/#/../../public/x",
]


@pytest.mark.parametrize("trick", PATH_TRICKS)
def test_path_tricks_never_reach_admin_unchecked(gate, stack, trick):
    bob = _bob(gate, stack)
    r = _after_canonical_redirect(gate, bob, trick)
    if r.status == 200:
        seen = r.json()["path"]
        assert not seen.lower().startswith("/admin"), f"{trick} reached {seen} as bob"
    else:
        assert r.status in (400, 403, 404), (trick, r.status)
    anon = _after_canonical_redirect(gate, Browser(), trick)
    if anon.status == 200:
        assert not anon.json()["path"].lower().startswith("/admin"), trick


def _after_canonical_redirect(gate, browser, path):
    """GET `path`; a 308 must point at the same site, and is followed once."""
    r = browser.get(gate.url(path))
    if r.status == 308:
        target = r.location if r.location.startswith("/") else r.location.removeprefix(gate.url(""))
        assert target.startswith("/") and not target.startswith("//"), (path, r.location)
        r = browser.get(gate.url(target))
        assert r.status != 308, (path, "redirected twice")
    return r


# Spellings under the protected /admin/ that normalize into the public /public/
# (or stay under /admin/ by RFC 3986 §5.2.4). Routers that match the undecoded
# path (Express, werkzeug) would run the /admin/ handler for these if a gate
# decided on /public/x and forwarded the raw spelling.
INTO_PUBLIC = {
    "/admin/%2e%2e/public/x": "/public/x",
    "/admin/%2E%2E/public/x": "/public/x",
    "/admin/.%2e/public/x": "/public/x",
    "/admin/%2e./public/x": "/public/x",
    "/admin/%2E./public/x?q=1": "/public/x?q=1",
    "/admin/./../public/x": "/public/x",
    "/admin/x/%2e%2e/%2e%2e/public/x": "/public/x",
    "/admin/../public/x": "/public/x",
    "/%61dmin/%2e%2e/public/x": "/public/x",
    # An empty segment before ".." is a segment: this stays under /admin/.
    "/admin//../public/x": "/admin/public/x",
    "/admin/.//../public/x": "/admin/public/x",
}


def _normal(path):
    """Whether every upstream reads `path` the same way: no dot segments, no
    repeated slashes, no escaped unreserved characters."""
    p = path.split("?")[0]
    segments = p.split("/")[1:]
    escapes = re.findall(r"%([0-9A-Fa-f]{2})", p)
    return ("" not in segments[:-1] and "." not in segments and ".." not in segments
            and not any(chr(int(e, 16)).isalnum() or chr(int(e, 16)) in "-._~" for e in escapes))


@pytest.mark.parametrize("spelling", INTO_PUBLIC)
def test_the_upstream_receives_the_decided_path(gate, stack, spelling):
    """Every gate forwards exactly the path it decided on, or does not forward:
    a GET is redirected to the decided path (308) or forwarded with it, a POST
    is refused (400) or forwarded with it. The echo's received path is the proof:
    a path that reaches it is in normal form, so no upstream reads it otherwise
    than the gate did. (Traefik cleans paths itself, merging slashes before
    resolving "..", and decides and forwards its own result.)"""
    decided = INTO_PUBLIC[spelling]
    b = Browser()
    r = b.get(gate.url(spelling))
    if r.status == 308:
        assert r.location in (decided, gate.url(decided)), (spelling, r.location)
        r = b.get(gate.url(decided))
    if r.status == 200:
        seen = r.json()["path"]
        assert _normal(seen) and seen.startswith("/public/"), (spelling, seen)
        assert gate.rewrites_path or seen == decided, (spelling, seen)
        assert r.upstream_header("Remote-User") is None
    else:
        # Still protected: an anonymous browser is sent to log in, never forwarded.
        assert not decided.startswith("/public/") and r.status == 302, (spelling, r.status)
    post = Browser().request("POST", gate.url(spelling), body=b"x=1",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    if post.status == 200:
        seen = post.json()["path"]
        assert _normal(seen) and seen.startswith("/public/"), (spelling, seen)
        assert gate.rewrites_path or seen == decided, (spelling, seen)
    elif decided.startswith("/public/"):
        assert post.status == 400, (spelling, post.status)
    else:
        assert post.status in (302, 400, 401), (spelling, post.status)


def test_envoy_forwards_the_filters_path_without_its_own_normalization(stack):
    """Envoy is the host that forwards the `:path` the filter sets: even with
    Envoy's own normalize_path and merge_slashes off, the upstream receives
    the decided path, and no redirect is needed."""
    port = free_port()
    stack.envoy("envoy-raw-paths", port, NORMALIZE_PATH="false").wait_provider_loaded()
    for spelling, decided in {**INTO_PUBLIC, "/public//x": "/public/x", "/%70ublic/./x": "/public/x"}.items():
        r = Browser().get(f"http://127.0.0.1:{port}{spelling}")
        if decided.startswith("/public/"):
            assert r.status == 200 and r.json()["path"] == decided, (spelling, r.status, r.body[:200])
        else:
            assert r.status == 302 and "/auth?" in r.location, (spelling, r.status, r.location)


def test_normal_form_check_itself():
    assert _normal("/public/x") and _normal("/public/a%20b") and _normal("/public/x/")
    for p in ("/admin/%2e%2e/public/x", "/a//b", "/a/./b", "/a/../b", "/%61", "/a/%7E"):
        assert not _normal(p), p


_BOB = {}  # per gate: bob's browser


def _bob(gate, stack):
    if gate.name not in _BOB:
        b = Browser()
        assert login(b, gate.url("/users/"), "bob").status == 200
        _BOB[gate.name] = b
    return _BOB[gate.name]


def test_malformed_requests_get_clear_answers(gate, stack):
    b = Browser()
    huge = "x" * 6000
    r = b.get(gate.url("/app/"), headers={"Cookie": f"_oidc_edge={huge}"}, send_cookies=False)
    assert r.status == 302
    r = b.get(gate.url("/app/"), headers={"Cookie": "_oidc_edge=%%%; other=1;;; =x"}, send_cookies=False)
    assert r.status == 302
    r = b.get(gate.url("/oauth2/callback?state=%ZZ&code=%"))
    assert 400 <= r.status < 500


def test_non_utf8_header_values_do_not_crash_the_filter(gate, stack, alice):
    # Envoy accepts bytes 0x80-0xFF in header values; the filter must too.
    # The spoofed value never arrives: public routes pass no identity, the
    # protected one passes alice's.
    for path, user in (("/public/", None), ("/app/", "alice")):
        r = alice.request("GET", gate.url(path), raw_headers=[("X-Binary", b"caf\xe9 \xff"), ("Remote-User", b"\xff")])
        assert r.status == 200, path
        assert r.upstream_header("Remote-User") == user, path
    # The worker is still alive afterwards.
    assert alice.get(gate.url("/app/")).status == 200


def test_a_stale_cookie_of_the_same_name_does_not_shadow_the_session(gate, stack, alice):
    good = alice.cookie("_oidc_edge")
    stale = "AQ" + good[2:-8] + "AAAAAAAA"
    r = Browser().get(gate.url("/admin/"), headers={"Cookie": f"_oidc_edge={stale}; _oidc_edge={good}"},
                      send_cookies=False)
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"


def test_host_with_trailing_dot_gets_the_same_rule(gate, stack):
    # public.test is public; "public.test." is the same host, and Envoy is
    # configured to route it so (strip_trailing_host_dot): same answer.
    r = Browser().get(gate.url("/anything"), headers={"Host": "public.test."})
    assert r.status == 200


ROUTING_OVERRIDES = ["X-Original-URL", "X-Original-URI", "X-Original-Method", "X-Rewrite-URL", "X-Forwarded-Uri",
                     "X-Forwarded-Method"]


def test_routing_override_headers_never_reach_upstream(gate, stack, alice):
    """Some frameworks take the path from these: the upstream must serve the
    path that was decided, not one the client names."""
    r = alice.request("GET", gate.url("/app/x"), raw_headers=[(n, "/admin/secret") for n in ROUTING_OVERRIDES])
    assert r.status == 200
    got = received(r)
    leaked = [n for n in ROUTING_OVERRIDES if n.lower() in got]
    assert not leaked, f"{leaked} reached the upstream"


def test_separate_cookie_lines_keep_the_other_cookies(gate, stack, alice):
    """HTTP/1.1 clients may send several Cookie lines (HTTP/2 always splits
    them): the session in either line opens, ours are hidden, and every other
    cookie still reaches the upstream."""
    good = alice.cookie("_oidc_edge")
    for lines in (["theme=dark", f"_oidc_edge={good}; lang=en"], [f"_oidc_edge={good}", "theme=dark; lang=en"]):
        r = Browser().request("GET", gate.url("/app/"), raw_headers=[("Cookie", c) for c in lines], send_cookies=False)
        assert r.status == 200 and r.upstream_header("Remote-User") == "alice", lines
        sent = "; ".join(v for n, v in r.upstream_headers() if n.lower() == "cookie")
        assert "theme=dark" in sent and "lang=en" in sent and "_oidc_edge" not in sent, (lines, sent)
    r = Browser().request("GET", gate.url("/public/"), raw_headers=[("Cookie", "a=1"), ("Cookie", "b=2")], send_cookies=False)
    sent = "; ".join(v for n, v in r.upstream_headers() if n.lower() == "cookie")
    assert r.status == 200 and "a=1" in sent and "b=2" in sent, sent


def test_large_cookie_headers_pass_and_ours_stay_hidden(gate, stack, alice):
    """Apps on a shared domain set many cookies: a 6.5 KB Cookie header works
    (nginx's default 4 KB proxy buffer would not hold the sidecar's answer)."""
    apps = "; ".join(f"app{i}={'v' * 100}" for i in range(60))
    ours = alice.cookies_for("127.0.0.1", "/app/x")
    r = alice.request("GET", gate.url("/app/x"), headers={"Cookie": f"{apps}; {ours}"}, send_cookies=False)
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
    cookie = r.upstream_header("Cookie")
    assert "app0=" in cookie and "app59=" + "v" * 100 in cookie and "_oidc_edge" not in cookie
