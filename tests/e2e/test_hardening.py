"""Where the gate, the proxy and the upstream could read one request
differently: raw bytes sent on a socket (a client library would tidy them),
and the echo upstream's view as the assertion. The echo is Python's
http.server, which splits its request line on NEL and NBSP as werkzeug
does, frames bodies by Transfer-Encoding before Content-Length, and logs
every request that carries an X-Probe marker, so a request smuggled past
the gate (answered to nobody) still shows."""

import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest

from harness import API_KEY, Browser, login

# --------------------------------------------------------------------------
# Raw requests.


def raw_request(method: str, target: bytes, host: str, headers=(), body: bytes = b"", close: bool = True) -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: " + host.encode()]
    for name, value in headers:
        lines.append((name.encode() if isinstance(name, str) else name) + b": "
                     + (value.encode() if isinstance(value, str) else value))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def send_raw(gate, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends `data` on one connection and returns all that comes back until
    the gate closes it or goes quiet."""
    s = socket.create_connection(("127.0.0.1", gate.port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def statuses(data: bytes) -> list:
    return [int(m) for m in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3})", data)]


def echo_paths(data: bytes) -> list:
    """The paths the echo says it served in these answers."""
    return [p.decode("unicode_escape") for p in re.findall(rb'"path": "([^"]*)"', data)]


def host_of(gate) -> str:
    return f"127.0.0.1:{gate.port}"


@pytest.fixture(scope="module")
def bob(gate, stack):
    """A browser signed in as bob (groups: users; not admins)."""
    b = Browser()
    assert login(b, gate.url("/users/"), "bob").status == 200
    return b


def cookie_of(browser) -> str:
    return browser.cookies_for("127.0.0.1", "/")


def reached_admin(paths) -> bool:
    return any(p.lower().lstrip("/").startswith("admin") for p in paths)


# --------------------------------------------------------------------------
# Paths the upstream could read as another route.


@pytest.mark.parametrize("byte", [b"\x85", b"\xa0", b"\xc2\x85", b"\xe2\x80\xa8", b"\xff"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_raw_byte_that_is_not_ascii_never_opens_a_protected_prefix(gate, stack, bob, byte, method):
    """bob sends /admin<byte>: the echo (like werkzeug) would split the request
    line there and run its /admin handler, so no gate may forward it as a
    request for another route."""
    body = b"x=1" if method == "POST" else b""
    headers = [("Cookie", cookie_of(bob))] + ([("Content-Type", "application/x-www-form-urlencoded"),
                                              ("Content-Length", str(len(body)))] if body else [])
    data = send_raw(gate, raw_request(method, b"/admin" + byte, host_of(gate), headers, body))
    st = statuses(data)
    assert st, data[:300]
    assert not reached_admin(echo_paths(data)), (st, data[:400])
    assert st[0] in (400, 403, 404), (st, data[:300])


LENIENT_ADMIN = [
    "/admin./", "/admin../x", "/admin%2e/", "/admin.%2e/x", "/admin%20/", "/admin%20", "/%20admin/",
    "/admin%C2%A0/", "/admin%C2%85/", "/admin%E2%80%A8/", "/%EF%BB%BFadmin/", "/ad%E2%80%8Bmin/",
    "/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/", "/adm%C4%B1n/", "/public/%EF%BC%8E%EF%BC%8E/admin/",
    "/public%EF%BC%8F..%EF%BC%8Fadmin/", "/admin%85/", "/admin%A0/", "/admin%3F/", "/admin%3Bx/", "/public/.../admin/",
]


@pytest.mark.parametrize("spelling", LENIENT_ADMIN)
def test_spellings_that_lenient_servers_fold_into_admin_never_reach_it(gate, stack, bob, spelling):
    """Windows and .NET drop a segment's trailing dots and spaces, Spring and
    JavaScript trim Unicode whitespace, NFKC and case-insensitive .NET routing
    fold fullwidth letters and dotless i: bob never gets through, an
    anonymous browser is never forwarded."""
    for browser, allowed in ((bob, (400, 403, 404)), (Browser(), (302, 400, 401, 404))):
        r = browser.get(gate.url(spelling))
        if r.status == 308:
            r = browser.get(gate.url(r.location.removeprefix(gate.url(""))))
        assert r.status in allowed, (spelling, r.status, r.body[:200])
        if r.status == 302:
            assert r.location.startswith(stack.idp.issuer), (spelling, r.location)


def test_the_same_characters_where_no_route_differs_still_pass(gate, stack, alice):
    for path in ("/app/caf%C3%A9", "/app/My%20File.pdf", "/app/v1./x"):
        r = alice.get(gate.url(path))
        assert r.status == 200 and r.upstream_header("Remote-User") == "alice", (path, r.status)


# --------------------------------------------------------------------------
# Headers a gate reads to learn the original request.

FORWARDING = [
    ("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "OPTIONS"), ("X-Forwarded-Host", "public.test"),
    ("X-Forwarded-Proto", "gopher"), ("X-Forwarded-Prefix", "/public"), ("X-Forwarded-Port", "7"),
    ("X-Forwarded-Server", "public.test"), ("X-Original-URI", "/public/x"), ("X-Original-URL", "http://public.test/public/x"),
    ("X-Original-Method", "OPTIONS"), ("X-Envoy-Original-Path", "/public/x"), ("X-Rewrite-URL", "/public/x"),
    ("Forwarded", "host=public.test;proto=https;for=6.6.6.6"),
]
SPELLINGS = [(n, v) for n, v in FORWARDING] + [(n.replace("-", "_"), v) for n, v in FORWARDING if "-" in n] \
    + [(n.replace("-", "."), v) for n, v in FORWARDING if "-" in n] + [(n.lower(), v) for n, v in FORWARDING]


def test_forwarding_headers_from_the_client_never_change_the_decision(gate, stack, bob):
    doubled = SPELLINGS + FORWARDING
    anon = Browser().request("GET", gate.url("/admin/"), raw_headers=doubled)
    assert anon.status in (302, 400), anon.status
    if anon.status == 302:
        assert anon.location.startswith(stack.idp.issuer), anon.location
        redirect_uri = parse_qs(urlsplit(anon.location).query)["redirect_uri"][0]
        assert urlsplit(redirect_uri).netloc == host_of(gate), redirect_uri
    r = bob.request("GET", gate.url("/admin/"), raw_headers=doubled)
    assert r.status in (400, 403), r.status
    api = Browser().request("GET", gate.url("/admin/"), headers={"Accept": "application/json"}, raw_headers=doubled)
    assert api.status in (400, 401), api.status


def test_forwarding_headers_from_the_client_never_reach_the_upstream(gate, stack, alice):
    r = alice.request("GET", gate.url("/app/x"), raw_headers=SPELLINGS)
    assert r.status == 200, r.body[:300]
    got = {}
    for name, value in r.upstream_headers():
        got.setdefault(name.lower().replace("_", "-").replace(".", "-"), []).append(value)
    assert r.json()["path"] == "/app/x"
    # X-Forwarded-Proto is the proxy's own: it overwrites a client's, or
    # keeps it from addresses it trusts (Envoy trusts loopback, the tests'
    # client); only its other spellings are the gate's to remove.
    canon = lambda n: n.lower().replace("_", "-").replace(".", "-")  # noqa: E731
    leaked = sorted({n for n, v in SPELLINGS if v in got.get(canon(n), []) if canon(n) != "x-forwarded-proto"})
    assert not leaked, f"the client's {leaked} reached the upstream"
    respelled = [n for n, _ in r.upstream_headers() if canon(n) == "x-forwarded-proto" and n.lower() != "x-forwarded-proto"]
    assert not respelled, respelled


def test_a_connection_header_naming_the_gates_headers_changes_nothing(gate, stack, alice, bob):
    """Listing headers in Connection makes a proxy drop them as hop-by-hop:
    never the ones the gate or the proxy set, never to a looser decision."""
    named = ("close, X-Forwarded-Uri, X-Forwarded-Host, X-Forwarded-Method, X-Forwarded-Proto, X-Original-URL, "
             "Remote-User, Remote-Groups, X-Api-Key")
    spoof = [("Connection", named), ("Remote-User", "admin"), ("X-Api-Key", "forged")]
    # Naming the browser's own credentials only makes it anonymous (Go's
    # proxies drop them as hop-by-hop): a stricter decision, never a looser.
    creds = [("Connection", named + ", Cookie, Authorization")]
    assert bob.request("GET", gate.url("/admin/"), raw_headers=creds).status in (302, 400, 403)
    assert Browser().request("GET", gate.url("/admin/"), raw_headers=spoof).status in (302, 400)
    assert bob.request("GET", gate.url("/admin/"), raw_headers=spoof).status in (400, 403)
    # Envoy refuses such a Connection header outright (400), which is fine.
    r = alice.request("GET", gate.url("/app/x"), raw_headers=spoof)
    assert r.status in (200, 400), (r.status, r.body[:300])
    if r.status == 200:
        # Caddy (Go's proxy) drops even a header it set itself when the
        # client names it in Connection: alice's request then arrives
        # anonymous, her own loss; never with the spoofed value.
        assert r.upstream_header("Remote-User") in ("alice", None if gate.name.startswith("caddy") else "alice"), \
            r.upstream_headers()
    pub = Browser().request("GET", gate.url("/public/x"), raw_headers=spoof)
    assert pub.status in (200, 400), (pub.status, pub.body[:300])
    if pub.status == 200:
        assert pub.upstream_header("x-api-key") in (API_KEY, None if gate.name.startswith("caddy") else API_KEY), \
            pub.upstream_headers()


# --------------------------------------------------------------------------
# Smuggling between the gate and the upstream.


def hidden_request(host: str, marker: str, path: str = "/admin/secret") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRemote-User: alice\r\nX-Probe: {marker}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def smuggling_cases(host: str, marker: str) -> dict:
    hidden = hidden_request(host, marker)
    chunked_end = b"0\r\n\r\n"
    te_cl_body = f"{len(hidden):x}\r\n".encode() + hidden + b"\r\n" + chunked_end

    def post(headers, body):
        return raw_request("POST", b"/public/x", host, headers, body, close=False) + \
            raw_request("GET", b"/public/after", host, [("X-Probe", marker + "-after")])

    return {
        "CL.TE": post([("Content-Length", str(len(chunked_end + hidden))), ("Transfer-Encoding", "chunked")],
                      chunked_end + hidden),
        "TE.CL": post([("Content-Length", "4"), ("Transfer-Encoding", "chunked")], te_cl_body),
        "TE xchunked": post([("Content-Length", str(len(chunked_end + hidden))), ("Transfer-Encoding", "xchunked")],
                            chunked_end + hidden),
        "TE tab": post([("Content-Length", str(len(chunked_end + hidden))), ("Transfer-Encoding", "\tchunked")],
                       chunked_end + hidden),
        "TE twice": post([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "identity"),
                          ("Content-Length", str(len(chunked_end + hidden)))], chunked_end + hidden),
        "TE list": post([("Transfer-Encoding", "chunked, identity"), ("Content-Length", "4")], te_cl_body),
        "TE space before colon": post([(b"Transfer-Encoding ", b"chunked"), ("Content-Length", str(len(chunked_end + hidden)))],
                                      chunked_end + hidden),
        "CL twice": post([("Content-Length", "0"), ("Content-Length", str(len(hidden)))], hidden),
        "CL list": post([("Content-Length", f"0, {len(hidden)}")], hidden),
        "CL plus": post([("Content-Length", f"+{len(hidden)}")], hidden),
        "chunk size 0x": post([("Transfer-Encoding", "chunked")], b"0x0\r\n\r\n" + hidden),
        "chunk size overflow": post([("Transfer-Encoding", "chunked")], b"10000000000000000\r\n" + hidden + b"\r\n" + chunked_end),
        "chunk size negative": post([("Transfer-Encoding", "chunked")], b"-1\r\n" + hidden + b"\r\n" + chunked_end),
    }


def probes(stack, marker: str) -> list:
    time.sleep(0.3)
    return [line for line in stack.echo.log_text().splitlines() if line.startswith(f"PROBE {marker}")]


@pytest.mark.parametrize("case", list(smuggling_cases("h", "m")))
def test_no_request_is_smuggled_past_the_gate(gate, stack, case):
    """A second request hidden in the first one's body, carrying a forged
    Remote-User, never reaches the upstream as a request of its own."""
    marker = uuid.uuid4().hex
    data = send_raw(gate, smuggling_cases(host_of(gate), marker)[case])
    assert not reached_admin(echo_paths(data)), (case, data[:500])
    seen = [p for p in probes(stack, marker) if "/admin" in p]
    assert not seen, (case, seen, data[:300])
    # The gate still answers the next client normally.
    assert Browser().get(gate.url("/public/x")).status == 200


@pytest.mark.parametrize("path", ["/admin/", "/oauth2/sign_in", "/oauth2/start?rd=%2F", "/api/"])
def test_a_body_the_gate_answers_itself_is_never_read_as_the_next_request(gate, stack, path):
    """CL.0: a request the gate answers without the upstream (the redirect to
    the provider, its pages, a 401) still has its body consumed; the next
    request on the connection is never read from it."""
    marker = uuid.uuid4().hex
    hidden = hidden_request(host_of(gate), marker, "/public/smuggled")
    head = raw_request("GET", path.encode(), host_of(gate), [("Content-Length", str(len(hidden))),
                                                            ("Accept", "application/json" if path == "/api/" else "text/html")],
                       hidden, close=False)
    data = send_raw(gate, head, timeout=2.0)
    st = statuses(data)
    assert st and st[0] != 200 or path == "/oauth2/sign_in", (path, st)
    assert not probes(stack, marker), (path, st, data[:400])


# --------------------------------------------------------------------------
# Upgrades and tunnels.


def test_a_websocket_upgrade_is_decided_like_any_request(gate, stack, bob):
    ws = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
          ("Sec-WebSocket-Version", "13")]
    # (Envoy refuses upgrades on routes that do not enable them: 403.)
    anon = Browser().request("GET", gate.url("/admin/"), raw_headers=ws)
    assert anon.status in (302, 400, 403), anon.status
    assert bob.request("GET", gate.url("/admin/"), raw_headers=ws).status in (400, 403)


def test_an_h2c_upgrade_never_reaches_the_upstream(gate, stack, alice):
    h2c = [("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"), ("Connection", "Upgrade, HTTP2-Settings")]
    r = alice.request("GET", gate.url("/app/x"), raw_headers=h2c)
    assert r.status != 101, r.status
    if r.status == 200:
        upgrade = r.upstream_header("Upgrade") or ""
        assert "h2c" not in upgrade.lower() and r.upstream_header("HTTP2-Settings") is None, r.upstream_headers()


def test_connect_is_not_a_tunnel_past_the_gate(gate, stack):
    target = f"127.0.0.1:{stack.upstream_port}".encode()
    data = send_raw(gate, b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"
                    + b"GET /admin/ HTTP/1.1\r\nHost: x\r\nRemote-User: alice\r\n\r\n", timeout=2.0)
    st = statuses(data)
    assert not st or st[0] >= 400, (st, data[:300])
    assert not reached_admin(echo_paths(data))


# --------------------------------------------------------------------------
# Decision endpoints.

DECISION_PATHS = [
    "/oauth2/auth", "/oauth2/forward_auth", "/oauth2/auth/", "/oauth2//auth", "/oauth2/%61uth", "/OAUTH2/AUTH",
    "/oauth2/auth.", "/oauth2/auth?x=1", "/oauth2/forward_auth%20", "/oauth2/./forward_auth", "/oauth2/Forward_Auth",
    "/oauth2/fleet/refresh", "/oauth2/fleet/revocations", "/metrics",
]


@pytest.mark.parametrize("path", DECISION_PATHS)
def test_decision_endpoints_never_hand_a_browser_the_injected_secret(gate, stack, alice, path):
    """A decision about /public/x would carry its x-api-key: no spelling of a
    decision endpoint answers a browser with it."""
    ask = [("X-Forwarded-Uri", "/public/x"), ("X-Original-URL", gate.url("/public/x")), ("X-Forwarded-Method", "GET"),
           ("X-Forwarded-Host", host_of(gate)), ("X-Forwarded-Proto", "http")]
    for b in (Browser(), alice):
        r = b.request("GET", gate.url(path), raw_headers=ask)
        assert r.header("x-api-key") is None, (path, r.status, r.headers)
        assert API_KEY.encode() not in r.body, (path, r.status)


# --------------------------------------------------------------------------
# Redirect and URL poisoning.


@pytest.mark.parametrize("headers", [
    [("X-Forwarded-Host", "evil.example")], [("Forwarded", "host=evil.example;proto=https")],
    [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example:443")], [("X-Original-URL", "http://evil.example/app/")],
    [("X-Host", "evil.example")], [("X-Forwarded-Server", "evil.example")],
])
def test_forwarding_headers_never_shape_the_redirect_uri(gate, stack, headers):
    r = Browser().request("GET", gate.url("/app/"), raw_headers=headers)
    assert r.status == 302, r.status
    redirect_uri = parse_qs(urlsplit(r.location).query)["redirect_uri"][0]
    assert urlsplit(redirect_uri).netloc == host_of(gate), redirect_uri
    assert "evil" not in r.location


@pytest.mark.parametrize("host", ["evil.example@127.0.0.1:{port}", "127.0.0.1:{port}@evil.example", "127.0.0.1:{port},evil.example",
                                  "127.0.0.1:{port} evil.example", "127.0.0.1:{port}/evil.example"])
def test_a_host_that_is_not_a_host_name_shapes_nothing(gate, stack, host):
    host = host.format(port=gate.port)
    data = send_raw(gate, raw_request("GET", b"/app/", host))
    st = statuses(data)
    assert st and st[0] in (400, 404, 421), (host, st, data[:300])
    assert b"evil.example" not in data.split(b"\r\n\r\n")[0], (host, data[:400])


def test_two_host_lines_are_refused_or_read_as_one(gate, stack):
    data = send_raw(gate, raw_request("GET", b"/app/", host_of(gate), [("Host", "evil.example")]))
    st = statuses(data)
    assert st and (st[0] == 400 or b"evil.example" not in data.split(b"\r\n\r\n")[0]), (st, data[:400])


NEW_RD = [
    "/%5C%5Cevil.example", "/.//evil.example", "/%2e//evil.example", "\\/evil.example", "/%2F/evil.example",
    "/\u3002evil.example", "%EF%BC%8F%EF%BC%8Fevil.example", "/%EF%BC%8F%EF%BC%8Fevil.example", "https:%2F%2Fevil.example",
    "/%0A/evil.example", " //evil.example", "//evil.example%2F@127.0.0.1",
]


@pytest.mark.parametrize("rd", NEW_RD)
def test_new_rd_spellings_never_leave_the_site_after_login(gate, stack, rd):
    b = Browser()
    r = b.get(gate.url(f"/oauth2/start?rd={quote(rd, safe='%')}"))
    if r.status != 302:
        assert r.status == 400, (rd, r.status)
        return
    callback = to_callback_from(b, r.location, "alice")
    done = b.get(callback)
    assert done.status in (200, 302), (rd, done.status)
    loc = done.location or "/"
    # Where a browser goes: the same site, whatever the path says.
    assert "\\" not in loc and not re.search(r"[\x00-\x20]", loc), (rd, loc)
    assert urlsplit(urljoin(gate.url("/"), loc)).netloc == host_of(gate), (rd, loc)


def to_callback_from(browser, authorize_url: str, user: str) -> str:
    """From the redirect to the provider, logs in as `user` and returns the
    callback URL the provider sends the browser to."""
    page = browser.follow(authorize_url)
    m = re.search(r'href="([^"]*login\?user=' + re.escape(user) + r')"', page.body.decode(errors="replace"))
    assert m, page.body[:300]
    issuer = "{0.scheme}://{0.netloc}".format(urlsplit(page.url))
    r = browser.get(issuer + m.group(1).replace("&amp;", "&"))
    while r.status in (302, 303) and "/oauth2/callback" not in r.location:
        r = browser.get(r.location if r.location.startswith("http") else issuer + r.location)
    assert r.status in (302, 303), r.status
    return r.location


# --------------------------------------------------------------------------
# What the gate writes back.


@pytest.fixture(scope="module")
def mallory(stack):
    """A user whose provider-side names try to write headers and groups."""
    stack.idp.put_user("mallory", {
        "groups": ["users,admins", " admins ", "ops\r\nX-Injected: 1", "admins\u0085", "media"],
        "name": "Mal\r\nRemote-User: admin",
        "email": "mallory@example.org", "email_verified": True,
    })
    return "mallory"


def test_claims_never_add_groups_or_headers_upstream(gate, stack, mallory):
    b = Browser()
    assert login(b, gate.url("/app/x"), mallory).status == 200
    r = b.get(gate.url("/app/x"))
    assert r.status == 200
    groups = [g.strip() for g in (r.upstream_header("Remote-Groups") or "").split(",")]
    assert "admins" not in groups and "media" in groups, groups
    assert not any("Injected" in g for g in groups), groups
    names = {n.lower() for n, _ in r.upstream_headers()}
    assert "x-injected" not in names
    assert r.upstream_header("Remote-User") == "mallory"
    assert "\r" not in (r.upstream_header("Remote-Name") or "") and "\n" not in (r.upstream_header("Remote-Name") or "")
    assert b.get(gate.url("/admin/")).status == 403


def test_the_gates_pages_refuse_framing(gate, stack, bob):
    pages = [Browser().get(gate.url("/oauth2/sign_in?rd=%2Fapp%2F")),
             bob.get(gate.url("/admin/")),
             Browser().get(gate.url("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "cross-site"}),
             Browser().get(gate.url("/oauth2/callback?state=x&code=y"))]
    for r in pages:
        assert (r.header("x-frame-options") or "").upper() == "DENY", (r.url, r.status, r.headers)
        assert "frame-ancestors 'none'" in (r.header("content-security-policy") or ""), (r.url, r.headers)


def test_answers_that_set_cookies_are_not_stored(gate, stack):
    b = Browser()
    start = b.get(gate.url("/app/"))
    assert start.status == 302 and start.all("set-cookie")
    assert "no-store" in (start.header("cache-control") or ""), start.headers
    done = b.get(to_callback_from(b, start.location, "alice"))
    assert done.all("set-cookie") and "no-store" in (done.header("cache-control") or ""), done.headers


# --------------------------------------------------------------------------
# The user who opens thirty tabs.


@pytest.mark.parametrize("tabs", [30, 100])
def test_many_tabs_starting_logins_at_once_still_sign_in(gate, stack, tabs):
    """A browser restored with many tabs starts a login in each at once and
    keeps every login cookie it is given: the Cookie header stays far below
    any proxy's limit, and the last login completes."""
    b = Browser()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: Browser().get(gate.url(f"/app/tab{i}")), range(tabs)))
    for r in answers:
        assert r.status == 302, r.status
        b.store("127.0.0.1", r.all("set-cookie"))
    header = b.cookies_for("127.0.0.1", "/oauth2/callback")
    assert len(header) < 4096, len(header)
    done = b.get(to_callback_from(b, answers[-1].location, "alice"))
    assert done.status == 302 and done.location == f"/app/tab{tabs - 1}", (done.status, done.location, done.body[:200])
    # One after another in one browser, as tabs reopened later: each login
    # sees the others' cookies, and the latest still completes.
    c = Browser()
    for i in range(tabs):
        r = c.get(gate.url(f"/app/later{i}"))
        assert r.status == 302, r.status
    assert len(c.cookies_for("127.0.0.1", "/oauth2/callback")) < 4096
    done = c.get(to_callback_from(c, r.location, "alice"))
    assert done.status == 302 and done.location == f"/app/later{tabs - 1}", (done.status, done.location)


# --------------------------------------------------------------------------
# Restarts.


def test_a_signed_out_copy_stays_refused_after_the_gate_restarts(gate, stack, alice):
    """The gate's memory of sign-outs is new after a restart (Envoy's and
    nginx's shared memory, a sidecar without Redis): a session the provider
    last vouched for before then is checked with the provider again before
    it is served. The signed-out copy is refused; a live session goes on."""
    b = Browser()
    assert login(b, gate.url("/app/"), "alice").status == 200
    copy = {"Cookie": f"_oidc_edge={b.cookie('_oidc_edge')}"}
    other = Browser()
    assert login(other, gate.url("/app/"), "bob").status == 200
    r = b.get(gate.url("/oauth2/sign_out"), headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status == 302
    b.get(r.location)  # the provider's end of the session
    thief = Browser()
    assert thief.request("GET", gate.url("/app/"), headers=copy, send_cookies=False).status == 302
    # Times are whole seconds: the restart comes in a later one than the login.
    time.sleep(1.1)
    gate.stop()
    gate.start()
    gate.wait_provider_loaded()
    for accept, refused in (("text/html", 302), ("application/json", 401)):
        r = thief.request("GET", gate.url("/app/"), headers={**copy, "Accept": accept}, send_cookies=False)
        assert r.status == refused, (accept, r.status, r.all("set-cookie"))
    r = other.follow(gate.url("/app/"))
    assert r.status == 200 and r.upstream_header("Remote-User") == "bob", r.status
    assert other.get(gate.url("/app/")).status == 200
    # A login right after the restart is served as is: no refresh loop.
    fresh = Browser()
    assert login(fresh, gate.url("/app/"), "alice").status == 200
    assert fresh.get(gate.url("/app/")).status == 200
    # The shared browser of later tests goes through its refresh here.
    assert alice.follow(gate.url("/app/")).status == 200
