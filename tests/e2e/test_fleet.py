"""A fleet: two sidecars with the same configuration behind one stock nginx
(round robin), sharing a real Redis. They must act as one gate: one refresh
call for a burst on a session due for refresh, a sign-out refused on every
instance within seconds, and with Redis down, sessions and logins still
working while refreshes wait, without a restart when it returns."""

import time
import uuid

import pytest

from cookies import due_for_refresh, unseal
from harness import COOKIE_SECRET, Browser, Idp, NginxSidecar, Proc, Sidecar, free_port, idp_client, login, wait_port
from test_sessions import _burst, _refreshes, _session_cookie, _session_of_new_user


class Redis:
    """Debian's redis-server on a port of its own, nothing saved to disk."""

    def __init__(self):
        self.port = free_port()
        self.proc = None

    def start(self) -> "Redis":
        self.proc = Proc(f"redis-{self.port}", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                "--save", "", "--appendonly", "no"])
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


class Fleet:
    """nginx with two sidecars as one upstream, both on the same Redis."""

    def __init__(self, stack, redis: Redis):
        values = stack.values(stack.fleet_port)
        store = {"url": f"redis://127.0.0.1:{redis.port}/0", "key_prefix": f"e2e-{uuid.uuid4().hex[:8]}:",
                 "command_timeout_ms": 300, "connect_timeout_ms": 300}
        self.store = store
        self.a = Sidecar(values, "fleet-a", store=store)
        self.b = Sidecar(values, "fleet-b", store=store, proxy_token=self.a.proxy_token)
        self.nginx = NginxSidecar(values, "fleet-nginx", sidecar=self.a)
        # Both instances behind the snippet's one upstream: what a user does
        # with the rendered snippets when running two sidecars.
        http = self.nginx.prefix / "oidc-edge/http.conf"
        one = f"server 127.0.0.1:{self.a.port};"
        assert one in http.read_text()
        http.write_text(http.read_text().replace(one, f"{one}\n    server 127.0.0.1:{self.b.port};"))
        stack.gates += [self.nginx, self.b]
        self.b.start()
        self.nginx.start()
        self.a.wait_provider_loaded()
        self.b.wait_provider_loaded()

    @property
    def sidecars(self):
        return (self.a, self.b)

    def url(self, path: str) -> str:
        return self.nginx.url(path)

    def stop(self) -> None:
        self.nginx.stop()
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


def test_a_burst_on_a_session_due_for_refresh_makes_one_refresh_call_for_the_fleet(stack, fleet):
    user = "ivyfleet"
    old = due_for_refresh(COOKIE_SECRET, _session_of_new_user(stack, user, ["users"]))
    allowed_before = [s.count("oidc_edge_requests_allowed") for s in fleet.sidecars]
    before = _refreshes(stack)
    results = _burst(fleet.url("/users/x"), old)
    assert [r.status for r in results] == [200] * 20, [r.status for r in results]
    assert all(r.upstream_header("Remote-User") == user for r in results)
    # Both instances decided part of the burst.
    allowed_after = [s.count("oidc_edge_requests_allowed") for s in fleet.sidecars]
    assert all(a > b for a, b in zip(allowed_after, allowed_before)), (allowed_before, allowed_after)
    assert _refreshes(stack) - before == 1, "one refresh call at the IdP for the whole fleet"
    assert stack.idp.stats()["token"]["refresh_failed"] == 0
    new = {c for c in map(_session_cookie, results) if c}
    assert len(new) == 1, "every instance hands out the one successor"
    # The old cookie, later, on either instance: the successor, no new call.
    for _ in range(4):
        r = Browser().get(fleet.url("/users/"), headers={"Cookie": f"_oidc_edge={old}"})
        assert r.status == 200 and _session_cookie(r) in new
    assert _refreshes(stack) - before == 1


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
