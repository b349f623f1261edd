"""A fleet: two sidecars with the same configuration behind one stock nginx
(round robin) or Caddy, sharing a real Redis; two Envoys whose filters hand
fleet work to a sidecar. They must act as one gate: one refresh call for a
burst on a session due for refresh, a login finished on either instance
once, a sign-out refused on every instance within seconds, and with Redis
down, sessions and logins still working while refreshes wait, without a
restart when it returns."""

import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from cookies import due_for_refresh, unseal
from harness import (COOKIE_SECRET, Browser, Caddy, Envoy, Idp, Nginx, NginxSidecar, Proc, Redis, Sidecar, free_port, idp_client,
                     login, to_callback, valkey_server, wait_login_ready, wait_port)
from test_sessions import _burst, _refreshes, _session_cookie, _session_of_new_user


def _not_served(results) -> list:
    """Each answer that was not a 200, with what it said: whose 503 it was
    (the gate's page, or the proxy's own) shows in the body."""
    return [(i, r.status, r.body[:200]) for i, r in enumerate(results) if r.status != 200]


def _store(redis: Redis) -> dict:
    return {"url": f"redis://127.0.0.1:{redis.port}/0", "key_prefix": f"e2e-{uuid.uuid4().hex[:8]}:",
            "command_timeout_ms": 300, "connect_timeout_ms": 300}


class Fleet:
    """A proxy with two sidecars as one upstream, both on the same Redis:
    stock nginx (round robin) or Caddy (round robin)."""

    def __init__(self, stack, redis: Redis, proxy: str = "nginx"):
        values = stack.values(stack.fleet_port)
        store = _store(redis)
        self.store = store
        self.a = Sidecar(values, f"fleet-{proxy}-a", store=store)
        self.b = Sidecar(values, f"fleet-{proxy}-b", store=store, proxy_token=self.a.proxy_token)
        one = f"127.0.0.1:{self.a.port}"
        if proxy == "nginx":
            self.proxy = NginxSidecar(values, "fleet-nginx", sidecar=self.a)
            # Both instances behind the snippet's one upstream: what a user
            # does with the rendered snippets when running two sidecars.
            snippet = self.proxy.prefix / "oidc-edge/http.conf"
            both = f"server {one};\n    server 127.0.0.1:{self.b.port};"
            text = snippet.read_text()
            assert f"server {one};" in text, text
            snippet.write_text(text.replace(f"server {one};", both))
        else:
            self.proxy = Caddy(values, "fleet-caddy", sidecar=self.a)
            snippet = self.proxy.prefix / "oidc-edge.caddy"
            text = snippet.read_text()
            assert f"{one} {{" in text, text
            snippet.write_text(text.replace(f"{one} {{", f"{one} 127.0.0.1:{self.b.port} {{\n\t\t\tlb_policy round_robin"))
        stack.gates += [self.proxy, self.b]
        self.b.start()
        self.proxy.start()
        self.a.wait_provider_loaded()
        self.b.wait_provider_loaded()

    @property
    def sidecars(self):
        return (self.a, self.b)

    def url(self, path: str) -> str:
        return self.proxy.url(path)

    def stop(self) -> None:
        self.proxy.stop()
        self.b.stop()


@pytest.fixture
def redis():
    r = Redis().start()
    yield r
    r.stop()


@pytest.fixture
def fleet(stack, redis):
    f = Fleet(stack, redis)
    yield f
    f.stop()


def _ready(sidecar) -> tuple:
    r = Browser().get(f"http://127.0.0.1:{sidecar.port}/readyz")
    return r.status, r.body.decode().strip()


def _burst_over(urls, session, n=20):
    """`n` requests with the same cookie, spread over `urls`, released at once."""
    results = []
    barrier = threading.Barrier(n)

    def hit(url):
        barrier.wait()
        results.append(Browser().get(url, headers={"Cookie": f"_oidc_edge={session}"}))

    threads = [threading.Thread(target=hit, args=(urls[i % len(urls)],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_a_burst_on_a_session_due_for_refresh_makes_one_refresh_call_for_the_fleet(stack, redis, proxy):
    fleet = Fleet(stack, redis, proxy)
    try:
        _one_refresh_for_the_fleet(stack, fleet, f"ivy{proxy}")
    finally:
        fleet.stop()


def _one_refresh_for_the_fleet(stack, fleet, user):
    old = due_for_refresh(COOKIE_SECRET, _session_of_new_user(stack, user, ["users"]))
    allowed_before = [s.count("oidc_edge_requests_allowed") for s in fleet.sidecars]
    before = _refreshes(stack)
    failed_before = stack.idp.stats()["token"]["refresh_failed"]
    results = _burst(fleet.url("/users/x"), old)
    # Caddy's forward_auth hands a refreshed cookie to the browser with a 307
    # to the same URL, which the browser follows with it.
    results = [Browser().get(fleet.url("/users/x"), headers={"Cookie": f"_oidc_edge={_session_cookie(r)}"})
               if r.status == 307 else r for r in results]
    assert [r.status for r in results] == [200] * 20, _not_served(results)
    assert all(r.upstream_header("Remote-User") == user for r in results)
    # Both instances decided part of the burst.
    allowed_after = [s.count("oidc_edge_requests_allowed") for s in fleet.sidecars]
    assert all(a > b for a, b in zip(allowed_after, allowed_before)), (allowed_before, allowed_after)
    assert _refreshes(stack) - before == 1, "one refresh call at the IdP for the whole fleet"
    assert stack.idp.stats()["token"]["refresh_failed"] == failed_before
    # The old cookie, later, on either instance: the one successor, no new call.
    new = set()
    for _ in range(4):
        r = Browser().get(fleet.url("/users/"), headers={"Cookie": f"_oidc_edge={old}"})
        assert r.status in (200, 307) and _session_cookie(r)
        new.add(_session_cookie(r))
    assert len(new) == 1, "every instance hands out the one successor"
    assert _refreshes(stack) - before == 1
    # One interval later the successor is refreshed again, once.
    due = due_for_refresh(COOKIE_SECRET, new.pop())
    results = _burst(fleet.url("/users/"), due, n=10)
    assert all(r.status in (200, 307) for r in results), [r.status for r in results]
    assert _refreshes(stack) - before == 2
    assert stack.idp.stats()["token"]["refresh_failed"] == failed_before


def test_valkey_serves_a_fleet_as_redis_does(stack):
    """The same fleet on Valkey: one refresh for a burst, a sign-out refused by both instances."""
    valkey = Redis(valkey_server()).start()
    fleet = Fleet(stack, valkey)
    try:
        assert "Valkey" in subprocess.run([valkey.server, "--version"], capture_output=True, text=True).stdout
        _one_refresh_for_the_fleet(stack, fleet, "ivyvalkey")
        session = _session_of_new_user(stack, "judyvalkey", ["users"])
        copy = {"Cookie": f"_oidc_edge={session}", "Accept": "application/json"}
        r = Browser().get(fleet.url("/oauth2/sign_out"), headers={**copy, "Sec-Fetch-Site": "same-origin"})
        assert r.status == 302
        deadline = time.time() + 5
        while (statuses := [Browser().get(fleet.url("/users/"), headers=copy).status for _ in range(6)]) != [401] * 6:
            assert time.time() < deadline, statuses
            time.sleep(0.25)
    finally:
        fleet.stop()
        valkey.stop()


def test_a_login_started_on_one_instance_completes_on_the_other_once(stack, fleet):
    b = Browser()
    site = {"Host": f"127.0.0.1:{stack.fleet_port}"}
    start = b.get(f"http://127.0.0.1:{fleet.a.port}/oauth2/start?rd=%2Fusers%2F", headers=site)
    assert start.status == 302
    callback = urlsplit(to_callback(b, start.location, "alice"))
    target = f"{callback.path}?{callback.query}"
    saved = dict(b.jar)
    done = b.get(f"http://127.0.0.1:{fleet.b.port}{target}", headers=site)
    assert done.status == 302 and done.location == "/users/", (done.status, done.location)
    assert _session_cookie(done)
    # The same callback again, with the login cookie as it was, on either instance.
    for sidecar in fleet.sidecars:
        again = Browser(jar=dict(saved)).get(f"http://127.0.0.1:{sidecar.port}{target}", headers=site)
        assert 400 <= again.status < 500 and not _session_cookie(again), (sidecar.name, again.status)


def test_a_sign_out_is_refused_by_every_instance_within_five_seconds(stack, fleet):
    session = _session_of_new_user(stack, "judyfleet", ["users"])
    copy = {"Cookie": f"_oidc_edge={session}"}
    for _ in range(4):
        assert Browser().get(fleet.url("/users/"), headers=copy).status == 200
    r = Browser().get(fleet.url("/oauth2/sign_out"), headers={**copy, "Sec-Fetch-Site": "same-origin"})
    assert r.status == 302
    signed_out = time.time()
    deadline = signed_out + 5
    while True:
        statuses = [Browser().get(fleet.url("/users/"), headers={**copy, "Accept": "application/json"}).status
                    for _ in range(6)]
        if statuses == [401] * 6:
            break
        assert time.time() < deadline, f"still accepted {time.time() - signed_out:.1f} s after sign-out: {statuses}"
        time.sleep(0.25)
    # An instance started after the sign-out learns it from the store.
    late = Sidecar(stack.values(stack.fleet_port), "fleet-late", store=fleet.store, proxy_token=fleet.a.proxy_token)
    stack.gates.append(late)
    late.start()
    try:
        late.wait_provider_loaded()
        decide = {**copy, "Accept": "application/json", "X-Forwarded-Proto": "http", "X-Forwarded-Uri": "/users/",
                  "X-Forwarded-Host": f"127.0.0.1:{stack.fleet_port}", "X-Oidc-Edge-Proxy": late.proxy_token}
        deadline = time.time() + 5
        while (status := Browser().get(f"http://127.0.0.1:{late.port}/oauth2/auth", headers=decide).status) != 401:
            assert status == 200 and time.time() < deadline, status
            time.sleep(0.25)
    finally:
        late.stop()


def test_with_redis_down_sessions_and_logins_work_and_refreshes_wait(stack, fleet, redis):
    session = _session_of_new_user(stack, "kimfleet", ["users"])
    due = due_for_refresh(COOKIE_SECRET, session)
    assert all(_ready(s) == (200, "ready") for s in fleet.sidecars)
    redis.stop()
    before = _refreshes(stack)
    for _ in range(6):
        r = Browser().get(fleet.url("/users/"), headers={"Cookie": f"_oidc_edge={session}"})
        assert r.status == 200 and r.upstream_header("Remote-User") == "kimfleet"
        # Due for refresh: served on the still-valid session, no refresh risked.
        r = Browser().get(fleet.url("/users/"), headers={"Cookie": f"_oidc_edge={due}"})
        assert r.status == 200 and _session_cookie(r) is None
    assert _refreshes(stack) == before
    for s in fleet.sidecars:
        assert _ready(s) == (503, "shared store unreachable")
        assert s.metrics()["oidc_edge_store_up"] == 0
        assert s.count("oidc_edge_store_unavailable") >= 1 or s.count("oidc_edge_requests_allowed") >= 1
    assert any("shared store unreachable" in s.log_text() for s in fleet.sidecars)
    # A new login still works.
    assert login(Browser(), fleet.url("/users/"), "alice").status == 200
    # Redis back on the same port: ready again, refreshes resume, no restart.
    redis.start()
    deadline = time.time() + 10
    while not all(_ready(s) == (200, "ready") for s in fleet.sidecars):
        assert time.time() < deadline, [_ready(s) for s in fleet.sidecars]
        time.sleep(0.3)
    r = Browser().get(fleet.url("/users/"), headers={"Cookie": f"_oidc_edge={due}"})
    assert r.status == 200 and _session_cookie(r)
    assert _refreshes(stack) == before + 1


def test_an_instance_starts_while_its_store_is_down(stack):
    """Redis unreachable from the start: the instance serves (sessions,
    logins), says it is not ready and why, and never makes requests wait for
    connection attempts."""
    session = _session_of_new_user(stack, "leofleet", ["users"])
    closed = free_port()
    s = Sidecar(stack.values(stack.fleet_port), "fleet-storeless",
                store={"url": f"redis://127.0.0.1:{closed}/0", "connect_timeout_ms": 1000})
    stack.gates.append(s)
    s.start()
    try:
        s.wait_provider_loaded()
        assert _ready(s) == (503, "shared store unreachable")
        assert s.metrics()["oidc_edge_store_up"] == 0
        decide = {"Cookie": f"_oidc_edge={due_for_refresh(COOKIE_SECRET, session)}", "Accept": "application/json",
                  "X-Forwarded-Proto": "http", "X-Forwarded-Uri": "/users/",
                  "X-Forwarded-Host": f"127.0.0.1:{stack.fleet_port}", "X-Oidc-Edge-Proxy": s.proxy_token}
        started = time.time()
        statuses = [Browser().get(f"http://127.0.0.1:{s.port}/oauth2/auth", headers=decide).status for _ in range(5)]
        assert statuses == [200] * 5, statuses
        assert time.time() - started < 3, "requests queued behind connection attempts"
        assert "shared store unreachable" in s.log_text()
    finally:
        s.stop()


def test_back_channel_logout_ends_the_session_on_every_instance(stack, redis):
    """The user signs out at the provider (not through the gate): the
    provider posts a logout token to one sidecar, which revokes the
    provider session's sessions on every instance of the fleet."""
    idp_port = free_port()
    values = {**stack.values(stack.fleet_port), "IDP_PORT": idp_port, "IDP_CLUSTER_PORT": idp_port}
    store = {"url": f"redis://127.0.0.1:{redis.port}/0", "key_prefix": f"e2e-{uuid.uuid4().hex[:8]}:"}
    a = Sidecar(values, "bcl-a", store=store)
    b = Sidecar(values, "bcl-b", store=store, proxy_token=a.proxy_token)
    client = idp_client("oidc-edge", [a.port])
    client["backchannel_logout_uri"] = f"http://127.0.0.1:{a.port}/oauth2/backchannel_logout"
    client["backchannel_logout_session_required"] = True
    idp = Idp([client], port=idp_port, name="idp-backchannel").start()
    stack.gates += [a, b]
    try:
        a.start()
        b.start()
        a.wait_provider_loaded()
        b.wait_provider_loaded()
        browser = Browser()
        login(browser, f"http://127.0.0.1:{a.port}/oauth2/start?rd=%2Fusers%2F", "alice")
        session, idt_cookie = browser.cookie("_oidc_edge"), browser.cookie("_oidc_edge_idt")
        assert session and idt_cookie

        def decision(sidecar) -> int:
            headers = {"Cookie": f"_oidc_edge={session}", "Accept": "application/json", "X-Forwarded-Proto": "http",
                       "X-Forwarded-Uri": "/users/", "X-Forwarded-Host": f"127.0.0.1:{a.port}",
                       "X-Oidc-Edge-Proxy": a.proxy_token}
            return Browser().get(f"http://127.0.0.1:{sidecar.port}/oauth2/auth", headers=headers).status

        assert [decision(a), decision(b)] == [200, 200]
        # A forged logout token changes nothing.
        forged = Browser().request("POST", f"http://127.0.0.1:{b.port}/oauth2/backchannel_logout",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   body=b"logout_token=eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.")
        assert forged.status == 400
        assert [decision(a), decision(b)] == [200, 200]
        # Signed out at the provider, with the ID token as hint (as another
        # application of the same provider would do).
        _, id_token = unseal(COOKIE_SECRET, "_oidc_edge_idt", idt_cookie)
        r = browser.get(f"{idp.issuer}/session/end?id_token_hint={id_token.decode()}")
        assert r.status in (302, 303), r.status
        assert idp.stats()["backchannel_logout"] == 1
        deadline = time.time() + 5
        while [decision(a), decision(b)] != [401, 401]:
            assert time.time() < deadline, [decision(a), decision(b)]
            time.sleep(0.25)
        assert "back-channel logout" in a.log_text()
    finally:
        a.stop()
        b.stop()
        idp.stop()


def test_envoys_whose_filters_hand_fleet_work_to_a_sidecar_act_as_one_gate(stack, redis):
    """Two Envoys with the filter and `fleet.coordinator` naming a sidecar on
    Redis: one refresh for a burst spread over both, a sign-out on one
    refused by the other within 5 s, and a back-channel logout posted to the
    sidecar ends the session on both."""
    coordinator = Sidecar(stack.values(stack.fleet_port), "fleet-coordinator", store=_store(redis))
    stack.gates.append(coordinator)
    coordinator.start()
    coordinator.wait_provider_loaded()
    envoys = [Envoy(stack.values(free_port()), f"fleet-envoy-{i}", coordinator_port=coordinator.port) for i in range(2)]
    stack.gates += envoys
    try:
        for e in envoys:
            e.start()
            wait_login_ready(e.port, log=e.log_text)
        url = lambda e, path: f"http://127.0.0.1:{e.port}{path}"  # noqa: E731

        # The burst: 10 requests on each Envoy, one refresh at the IdP.
        old = due_for_refresh(COOKIE_SECRET, _session_of_new_user(stack, "mia", ["users"]))
        before, failed = _refreshes(stack), stack.idp.stats()["token"]["refresh_failed"]
        results = _burst_over([url(e, "/users/x") for e in envoys], old)
        assert [r.status for r in results] == [200] * 20, _not_served(results)
        assert all(r.upstream_header("Remote-User") == "mia" for r in results)
        assert _refreshes(stack) - before == 1, "one refresh call at the IdP for both Envoys"
        assert stack.idp.stats()["token"]["refresh_failed"] == failed
        assert all(e.settled_counter("oidc_edge_refreshes_started") == 1 for e in envoys), "one call per instance at most"
        # Soon after, the old cookie gets the one successor on both.
        deadline, successors = time.time() + 5, set()
        while len(successors) != 1 or None in successors:
            assert time.time() < deadline, successors
            time.sleep(0.3)
            successors = {_session_cookie(Browser().get(url(e, "/users/"), headers={"Cookie": f"_oidc_edge={old}"}))
                          for e in envoys}
        assert _refreshes(stack) - before == 1

        # Sign-out on the first Envoy: the copy replayed on the second is refused within 5 s.
        session = _session_of_new_user(stack, "noahfleet", ["users"])
        copy = {"Cookie": f"_oidc_edge={session}", "Accept": "application/json"}
        assert [Browser().get(url(e, "/users/"), headers=copy).status for e in envoys] == [200, 200]
        r = Browser().get(url(envoys[0], "/oauth2/sign_out"), headers={**copy, "Sec-Fetch-Site": "same-origin"})
        assert r.status == 302
        assert Browser().get(url(envoys[0], "/users/"), headers=copy).status == 401, "refused at once where it was signed out"
        signed_out, status = time.time(), 200
        while (status := Browser().get(url(envoys[1], "/users/"), headers=copy).status) != 401:
            assert status == 200 and time.time() - signed_out < 5, (status, time.time() - signed_out)
            time.sleep(0.25)

        # A fleet call without the key is refused by the coordinator.
        forged = Browser().request("POST", f"http://127.0.0.1:{coordinator.port}/oauth2/fleet/revocations",
                                   body=b"\x01" + b"\x00" * 32, headers={"Content-Type": "application/octet-stream"})
        assert forged.status == 403
    finally:
        for e in envoys:
            e.stop()
        coordinator.stop()


def test_a_back_channel_logout_reaches_the_filters_through_their_coordinator(stack, redis):
    """The provider posts its logout token to the sidecar that coordinates
    two Envoys: both refuse the provider session's cookie within 5 s."""
    idp_port, ports = free_port(), [free_port(), free_port()]
    coordinator = Sidecar({**stack.values(ports[0]), "IDP_PORT": idp_port, "IDP_CLUSTER_PORT": idp_port},
                          "bcl-coordinator", store=_store(redis))
    client = idp_client("oidc-edge", ports)
    client["backchannel_logout_uri"] = f"http://127.0.0.1:{coordinator.port}/oauth2/backchannel_logout"
    client["backchannel_logout_session_required"] = True
    idp = Idp([client], port=idp_port, name="idp-backchannel-filters").start()
    envoys = [Envoy({**stack.values(p), "IDP_PORT": idp_port, "IDP_CLUSTER_PORT": idp_port}, f"bcl-envoy-{i}",
                    coordinator_port=coordinator.port) for i, p in enumerate(ports)]
    stack.gates += [coordinator, *envoys]
    try:
        coordinator.start()
        for e in envoys:
            e.start()
            wait_login_ready(e.port, log=e.log_text)
        browser = Browser()
        assert login(browser, f"http://127.0.0.1:{ports[0]}/users/", "alice").status == 200
        copy = {"Cookie": f"_oidc_edge={browser.cookie('_oidc_edge')}", "Accept": "application/json"}
        statuses = lambda: [Browser().get(f"http://127.0.0.1:{p}/users/", headers=copy).status for p in ports]  # noqa: E731
        assert statuses() == [200, 200]
        _, id_token = unseal(COOKIE_SECRET, "_oidc_edge_idt", browser.cookie("_oidc_edge_idt"))
        r = browser.get(f"{idp.issuer}/session/end?id_token_hint={id_token.decode()}")
        assert r.status in (302, 303), r.status
        assert idp.stats()["backchannel_logout"] == 1
        deadline = time.time() + 5
        while (now := statuses()) != [401, 401]:
            assert time.time() < deadline, now
            time.sleep(0.25)
    finally:
        for e in envoys:
            e.stop()
        coordinator.stop()
        idp.stop()


def test_nginx_and_envoy_filters_share_one_coordinator(stack, redis):
    """The filter inside nginx (ngx_wasm_module: callouts to host:port, no
    timer calls) and inside Envoy, on one coordinator: nginx hands its
    refresh over, and a sign-out on either is refused by the other."""
    coordinator = Sidecar(stack.values(stack.fleet_port), "mixed-coordinator", store=_store(redis))
    stack.gates.append(coordinator)
    coordinator.start()
    coordinator.wait_provider_loaded()
    nginx = Nginx(stack.values(free_port()), "mixed-nginx", coordinator_port=coordinator.port)
    envoy = Envoy(stack.values(free_port()), "mixed-envoy", coordinator_port=coordinator.port)
    stack.gates += [nginx, envoy]
    try:
        for g in (nginx, envoy):
            g.start()
            wait_login_ready(g.port, log=g.log_text)
        url = lambda g, path: f"http://127.0.0.1:{g.port}{path}"  # noqa: E731
        # A refresh on nginx goes through the coordinator: one IdP call, made by it.
        due = due_for_refresh(COOKIE_SECRET, _session_of_new_user(stack, "olgamixed", ["users"]))
        before, made = _refreshes(stack), coordinator.count("oidc_edge_refreshes_started")
        r = Browser().get(url(nginx, "/users/"), headers={"Cookie": f"_oidc_edge={due}"})
        assert r.status == 200 and _session_cookie(r), r.status
        assert _refreshes(stack) - before == 1
        assert coordinator.count("oidc_edge_refreshes_started") - made == 1, "the coordinator made the call"
        # Its successor, on Envoy: no second call.
        r = Browser().get(url(envoy, "/users/"), headers={"Cookie": f"_oidc_edge={due}"})
        assert r.status == 200 and _session_cookie(r) and _refreshes(stack) - before == 1

        for signed_out_on, other in ((nginx, envoy), (envoy, nginx)):
            session = _session_of_new_user(stack, f"pia{signed_out_on.kind}", ["users"])
            copy = {"Cookie": f"_oidc_edge={session}", "Accept": "application/json"}
            assert [Browser().get(url(g, "/users/"), headers=copy).status for g in (nginx, envoy)] == [200, 200]
            r = Browser().get(url(signed_out_on, "/oauth2/sign_out"), headers={**copy, "Sec-Fetch-Site": "same-origin"})
            assert r.status == 302
            started = time.time()
            while (status := Browser().get(url(other, "/users/"), headers=copy).status) != 401:
                assert status == 200 and time.time() - started < 5, (other.kind, status)
                time.sleep(0.25)
    finally:
        nginx.stop()
        envoy.stop()
        coordinator.stop()


def _tls_server_cert(directory) -> tuple:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    def run(*argv):
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    ca, ca_key, csr = directory / "ca.pem", directory / "ca.key", directory / "server.csr"
    cert, key, ext = directory / "server.pem", directory / "server.key", directory / "ext.cnf"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=oidc-edge test CA")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))
    return ca, cert, key


def test_a_store_over_tls_with_an_acl_user(stack, tmp_path):
    """rediss:// to a server whose CA comes from SSL_CERT_FILE, as an ACL user
    whose password comes from the environment: refreshes go through it. With
    a wrong password the instance says the store is unreachable and why,
    and the password appears in no log line."""
    ca, cert, key = _tls_server_cert(tmp_path)
    port = free_port()
    server = Proc(f"redis-tls-{port}", ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                                        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                                        "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                                        "--user", "gate", "on", ">gate-password-1", "~*", "&*", "+@all",
                                        "--user", "default", "off"])
    store = {"url": f"rediss://127.0.0.1:{port}/0", "username": "gate", "password": {"env": "REDIS_PASSWORD"},
             "key_prefix": f"e2e-{uuid.uuid4().hex[:8]}:", "connect_timeout_ms": 1000}
    good = Sidecar(stack.values(stack.fleet_port), "fleet-tls", store=store,
                   env={"SSL_CERT_FILE": str(ca), "REDIS_PASSWORD": "gate-password-1"})
    bad = Sidecar(stack.values(stack.fleet_port), "fleet-tls-wrong-password", store=store,
                  env={"SSL_CERT_FILE": str(ca), "REDIS_PASSWORD": "not-the-password-2"})
    stack.gates += [good, bad]
    try:
        wait_port(port, proc=server)
        for s in (good, bad):
            s.start()
            s.wait_provider_loaded()
        deadline = time.time() + 5
        while _ready(good) != (200, "ready"):
            assert time.time() < deadline, (_ready(good), good.log_text()[-2000:])
            time.sleep(0.2)
        due = due_for_refresh(COOKIE_SECRET, _session_of_new_user(stack, "quinntls", ["users"]))
        decide = {"Cookie": f"_oidc_edge={due}", "Accept": "application/json", "X-Forwarded-Proto": "http",
                  "X-Forwarded-Uri": "/users/", "X-Forwarded-Host": f"127.0.0.1:{stack.fleet_port}",
                  "X-Oidc-Edge-Proxy": good.proxy_token}
        before = _refreshes(stack)
        r = Browser().get(f"http://127.0.0.1:{good.port}/oauth2/auth", headers=decide)
        assert r.status == 200 and _session_cookie(r), r.status
        assert _refreshes(stack) == before + 1
        assert good.count("oidc_edge_store_unavailable") == 0
        # The wrong password: not ready, the reason logged, the password nowhere.
        assert _ready(bad) == (503, "shared store unreachable")
        deadline = time.time() + 5
        while "shared store unreachable" not in (log := bad.log_text()):
            assert time.time() < deadline, log[-2000:]
            time.sleep(0.2)
        assert "authentication failed" in log.lower() and "store.password" in log, log[-2000:]
        assert "not-the-password-2" not in log and "gate-password-1" not in good.log_text()
    finally:
        good.stop()
        bad.stop()
        server.stop()
