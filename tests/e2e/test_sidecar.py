"""The sidecar itself: one cookie format with the filter, its own endpoints
(sign-in page, health, readiness, metrics), who may describe the original
request, hostile input at its socket, and what its logs hold."""

import http.client
import json
import socket
import subprocess
import time

import pytest

from harness import API_KEY, CLIENT_SECRET, COOKIE_SECRET, Browser, Idp, Sidecar, free_port, idp_client, login

SIDECAR_GATES = ["nginx-sidecar", "caddy", "traefik"]


@pytest.fixture(scope="module")
def direct(stack):
    """A sidecar reached directly (no proxy), trusting no peer."""
    s = Sidecar(stack.values(free_port()), name="sidecar-direct")
    cfg = json.loads(s.config_path.read_text())
    cfg["sidecar"]["trusted_proxies"] = ["10.9.9.9"]
    s.config_path.write_text(json.dumps(cfg))
    s.start()
    deadline = time.time() + 20
    while Browser().get(f"http://127.0.0.1:{s.port}/readyz").status != 200:
        assert time.time() < deadline, s.log_text()
        time.sleep(0.2)
    yield s
    s.stop()


@pytest.mark.parametrize("kind", SIDECAR_GATES)
def test_one_cookie_format_for_filter_and_sidecar(stack, kind):
    g = stack.gate(kind)
    via_envoy = Browser()
    assert login(via_envoy, stack.url("/admin/"), "alice").status == 200
    cookie = {"Cookie": f"_oidc_edge={via_envoy.cookie('_oidc_edge')}"}
    r = Browser().get(f"http://127.0.0.1:{g.port}/admin/", headers=cookie)
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
    via_sidecar = Browser()
    assert login(via_sidecar, f"http://127.0.0.1:{g.port}/admin/", "alice").status == 200
    r = Browser().get(stack.url("/admin/"), headers={"Cookie": f"_oidc_edge={via_sidecar.cookie('_oidc_edge')}"})
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"


@pytest.mark.parametrize("kind", SIDECAR_GATES)
def test_decision_endpoints_are_not_for_browsers(stack, kind):
    """Through the proxy's public /oauth2/ route a browser must not read a
    decision: it would carry the route's injected secret."""
    g = stack.gate(kind)
    b = Browser()
    assert login(b, f"http://127.0.0.1:{g.port}/api-app/", "alice").status == 200
    for path in ("/oauth2/forward_auth", "/oauth2/auth", "/oauth2/auth?x=1"):
        r = b.get(f"http://127.0.0.1:{g.port}{path}",
                  headers={"X-Forwarded-Uri": "/api-app/", "X-Original-URL": f"http://127.0.0.1:{g.port}/api-app/"})
        assert r.status in (400, 404), (path, r.status)
        assert API_KEY.encode() not in r.body and all(API_KEY not in v for _, v in r.headers), path


@pytest.mark.parametrize("kind", SIDECAR_GATES)
def test_sign_in_page(stack, kind):
    g = stack.gate(kind)
    r = Browser().get(f"http://127.0.0.1:{g.port}/oauth2/sign_in?rd=%2Fmedia%2F")
    assert r.status == 200 and r.header("content-type").startswith("text/html")
    assert b"Continue with" in r.body and b'href="/oauth2/start?rd=%2Fmedia%2F"' in r.body


def test_nginx_static_site_private_section(stack):
    g = stack.gate("nginx-sidecar")
    url = f"http://127.0.0.1:{g.port}"
    assert b"Static site" in Browser().get(f"{url}/public/site/").body
    anon = Browser().get(f"{url}/app/private/")
    assert anon.status == 302 and anon.location.startswith(stack.idp.issuer)
    # nginx serves the file named before a raw '#'; the decision must not be about what follows it.
    trick = Browser().get(f"{url}/app/private/#/../../../public/x")
    assert trick.status != 200 and b"Private section" not in trick.body, trick.status
    # The server block is chosen by the request line's host: the decision must use the same one.
    forged = Browser().request("GET", f"{url}/app/private/", headers={"Host": "public.test"},
                               target=f"http://127.0.0.1:{g.port}/app/private/")
    assert forged.status == 400 and b"Private section" not in forged.body, forged.status
    b = Browser()
    r = login(b, f"{url}/app/private/", "carol")
    assert r.status == 200 and b"Private section" in r.body


def test_decisions_need_the_proxy_token(stack):
    """With sidecar.proxy_token set, a decision endpoint that a hand-written
    route exposes to browsers (with a client's X-Original-URL) decides nothing."""
    s = Sidecar(stack.values(free_port()), name="sidecar-token").start()
    try:
        base = f"http://127.0.0.1:{s.port}"
        deadline = time.time() + 20
        while Browser().get(base + "/readyz").status != 200:
            assert time.time() < deadline, s.log_text()
            time.sleep(0.2)
        describe = {"X-Original-URL": "http://127.0.0.1/public/x", "Host": "127.0.0.1"}
        for token in (None, "wrong-" + s.proxy_token[6:], s.proxy_token[:-1]):
            headers = dict(describe, **({"X-Oidc-Edge-Proxy": token} if token else {}))
            for path in ("/oauth2/forward_auth", "/oauth2/auth"):
                r = Browser().get(base + path, headers=headers)
                assert r.status == 403 and API_KEY not in str(r.headers), (path, token, r.status)
        r = Browser().get(base + "/oauth2/forward_auth", headers=dict(describe, **{"X-Oidc-Edge-Proxy": s.proxy_token}))
        assert r.status == 200 and r.header("x-api-key") == API_KEY
        # One of our pages asked for through a decision: never a 2xx a proxy would read as "allow".
        r = Browser().get(base + "/oauth2/forward_auth", headers={"X-Forwarded-Uri": "/oauth2/sign_in?rd=%2F",
                                                                  "X-Oidc-Edge-Proxy": s.proxy_token})
        assert r.status == 500 and b"misrouted" in r.body
        assert s.proxy_token not in s.log_text()
    finally:
        s.stop()


def test_untrusted_peers_cannot_describe_a_request(direct):
    base = f"http://127.0.0.1:{direct.port}"
    for path in ("/oauth2/auth", "/oauth2/forward_auth"):
        r = Browser().get(base + path, headers={"X-Forwarded-Uri": "/public/x", "X-Forwarded-Host": "app.test"})
        assert r.status == 403 and b"trusted_proxies" in r.body
    # The login start takes the Host header, not an untrusted X-Forwarded-Host.
    r = Browser().get(base + "/oauth2/start", headers={"Host": "app.test", "X-Forwarded-Host": "evil.test",
                                                       "X-Forwarded-Proto": "https"})
    assert r.status == 302 and "redirect_uri=http%3A%2F%2Fapp.test%2Foauth2%2Fcallback" in r.location
    assert "trusted_proxies" in direct.log_text()


def test_health_readiness_and_metrics(stack, direct):
    base = f"http://127.0.0.1:{direct.port}"
    assert Browser().get(base + "/healthz").status == 200
    assert Browser().get(base + "/readyz").status == 200
    r = Browser().get(base + "/metrics")
    assert r.header("content-type").startswith("application/openmetrics-text")
    text = r.body.decode()
    # OpenMetrics: HELP and TYPE under the filter's name, the sample with _total.
    assert "# HELP oidc_edge_logins_started " in text and "# TYPE oidc_edge_logins_started counter" in text
    assert "\noidc_edge_logins_started_total " in text and "\noidc_edge_provider_ready 1\n" in text
    assert text.endswith("# EOF\n")
    assert "oidc_edge_invalid_cookies_total" in direct.metrics()
    assert Browser().get(base + "/nope").status == 404
    # With the IdP away at start: alive, not ready; ready once the IdP appears.
    idp_port = free_port()
    late = Sidecar(stack.values(free_port(), IDP_PORT=idp_port, IDP_CLUSTER_PORT=idp_port), name="sidecar-late").start()
    idp = None
    try:
        url = f"http://127.0.0.1:{late.port}"
        assert Browser().get(url + "/healthz").status == 200
        assert Browser().get(url + "/readyz").status == 503
        assert "oidc_edge_provider_ready 0" in Browser().get(url + "/metrics").body.decode()
        idp = Idp([idp_client("oidc-edge", [])], port=idp_port, name="idp-late-sidecar").start()
        deadline = time.time() + 20
        while Browser().get(url + "/readyz").status != 200:
            assert time.time() < deadline, late.log_text()
            time.sleep(0.3)
        lines = [json.loads(line) for line in late.log_text().splitlines() if line.startswith("{")]
        assert any(line["level"] == "warn" and "not loaded" in line["msg"] and line.get("reason") for line in lines)
        assert any(line["msg"] == "identity provider metadata loaded" for line in lines)
    finally:
        late.stop()
        if idp:
            idp.stop()


def _raw(port, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        out = b""
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before reading everything
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def test_malformed_and_oversized_input_gets_4xx_and_service_goes_on(direct):
    port = direct.port
    assert _raw(port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET /oauth2/start HTTP/1.1\r\nHost: a\r\nCookie: " + b"x" * 100_000 + b"\r\n\r\n"
    assert _raw(port, huge)[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400")
    many = b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n"
    assert _raw(port, many)[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400")
    body = b"POST /oauth2/sign_out HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n" + b"z" * 1000
    assert _raw(port, body).startswith(b"HTTP/1.1 413")
    bad_header = b"GET /oauth2/sign_in HTTP/1.1\r\nHost: a\r\nCookie: \xff\xfe_oidc_edge=\x80\r\n\r\n"
    assert _raw(port, bad_header).startswith(b"HTTP/1.1 200")
    # A slow client that never finishes its headers is cut off after 10 s
    # (an untrusted peer's head timeout), not waited on forever; others are
    # served meanwhile.
    slow = socket.create_connection(("127.0.0.1", port), timeout=20)
    started = time.time()
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert Browser().get(f"http://127.0.0.1:{port}/healthz").status == 200
    answer = b""
    while chunk := slow.recv(4096):  # until the sidecar closes; a timeout here fails the test
        answer += chunk
    waited = time.time() - started
    slow.close()
    assert 9 <= waited < 15, f"cut off after {waited:.1f} s"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert direct.proc.alive()


def test_logs_are_json_lines_without_secrets(stack, direct):
    for kind in SIDECAR_GATES:
        g = stack.gate(kind)
        b = Browser()
        assert login(b, f"http://127.0.0.1:{g.port}/api-app/", "alice").status == 200
        b.get(f"http://127.0.0.1:{g.port}/admin/?token=abc")
        Browser().get(f"http://127.0.0.1:{g.port}/app/", headers={"Cookie": "_oidc_edge=forged"})
        text = g.sidecar.log_text()
        # Whole lines only: the sidecar may be writing the last one now.
        lines = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]
        assert any(line["msg"] == "decision" and line["path"] == "/admin/" for line in lines)
        assert any("session cookie refused" in line["msg"] for line in lines)
        for secret in (CLIENT_SECRET, COOKIE_SECRET, API_KEY, b.cookie("_oidc_edge"), "token=abc"):
            assert secret not in text, "a secret or a query string reached the sidecar log"


def test_an_untrusted_peer_cannot_take_every_connection(direct):
    """No proxy should connect from outside trusted_proxies: such a peer gets
    16 connections at a time and no more."""
    held = [socket.create_connection(("127.0.0.1", direct.port), timeout=5) for _ in range(16)]
    try:
        extra = socket.create_connection(("127.0.0.1", direct.port), timeout=5)
        try:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            answer = extra.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # closed at once: what is expected
        assert answer == b"", answer
        extra.close()
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 5
    while True:
        try:
            if Browser().get(f"http://127.0.0.1:{direct.port}/healthz").status == 200:
                break
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            pass  # the server has not noticed the closed connections yet
        assert time.time() < deadline, "connections are freed when the peer closes them"
        time.sleep(0.1)


@pytest.mark.parametrize("proxy,shipped", [("nginx", "nginx/oidc-edge"), ("caddy", "caddy"), ("traefik", "traefik")])
def test_shipped_snippets_are_rendered_from_the_demo_config(tmp_path, proxy, shipped):
    """The snippets in the repository are `oidc-edge render` of sidecar/demo.yaml:
    a change to the renderer or the demo shows here until they are rendered again."""
    from harness import ROOT, SIDECAR
    env = {"OIDC_EDGE_CLIENT_SECRET": "x", "OIDC_EDGE_COOKIE_SECRET": COOKIE_SECRET, "DEMO_API_KEY": "k"}
    r = subprocess.run([str(SIDECAR), "render", proxy, "--config", str(ROOT / "sidecar/demo.yaml"), "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    for written in tmp_path.iterdir():
        assert written.read_text() == (ROOT / shipped / written.name).read_text(), \
            f"{shipped}/{written.name} differs from what `oidc-edge render {proxy}` writes for sidecar/demo.yaml"
    assert len(list(tmp_path.iterdir())) == (5 if proxy == "nginx" else 1)
