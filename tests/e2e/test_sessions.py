"""Sessions through real life: refresh once a session is due (group changes
reach the upstream), single-flight refresh across Envoy workers against an IdP
with strict refresh-token rotation, revoked grants, a hung IdP, IdP key
rotation, cookie-secret rotation and a listener reload."""

import json
import os
import threading
import time

import pytest
import yaml

from cookies import due_for_refresh
from harness import (COOKIE_SECRET, RUN, WASM, Browser, Envoy, Idp, TcpGate, free_port, idp_client, login, render,
                     to_callback)


def _due(session):
    """`session` as if the IdP last confirmed it two hours ago: past the
    gates' one-hour refresh interval, so the next request refreshes it. No
    test here waits for the interval to pass."""
    return due_for_refresh(COOKIE_SECRET, session)


def _refreshing_envoy(stack, name, **values):
    port = free_port()
    envoy = stack.envoy(name, port, **values)
    envoy.wait_provider_loaded()
    return envoy, port


def _session_of_new_user(stack, name, groups):
    """Creates `name` at the IdP and logs them in through the main listener
    (whose callback is registered); the session cookie works on every Envoy
    of this file, which share its secrets and client. Returns the cookie."""
    stack.idp.put_user(name, {"groups": groups, "email": f"{name}@example.com", "email_verified": True,
                              "name": name.title(), "disabled": False})
    b = Browser()
    assert login(b, stack.url("/users/"), name).status == 200
    return b.cookie("_oidc_edge")


def _session_cookie(resp):
    for c in resp.all("set-cookie"):
        if c.startswith("_oidc_edge="):
            return c.split(";")[0].split("=", 1)[1]
    return None


def _burst(url, session, n=20):
    """`n` requests with the same session cookie, released at the same instant."""
    results = []
    barrier = threading.Barrier(n)

    def hit():
        barrier.wait()
        results.append(Browser().get(url, headers={"Cookie": f"_oidc_edge={session}"}))

    threads = [threading.Thread(target=hit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _refreshes(stack):
    return stack.idp.stats()["token"]["refresh_token"]


def test_refresh_brings_group_changes_to_the_upstream(stack):
    envoy, port = _refreshing_envoy(stack, "envoy-refresh-groups")
    cookie = {"Cookie": f"_oidc_edge={_session_of_new_user(stack, 'erin', ['users'])}"}
    assert Browser().get(stack.url("/admin/", port), headers=cookie).status == 403
    stack.idp.put_user("erin", {"groups": ["admins"]})
    before = _refreshes(stack)
    # Not yet due: the session is used as it is, no IdP call.
    assert Browser().get(stack.url("/admin/", port), headers=cookie).status == 403
    assert _refreshes(stack) == before
    cookie = {"Cookie": f"_oidc_edge={_due(cookie['Cookie'].split('=', 1)[1])}"}
    r = Browser().get(stack.url("/admin/", port), headers=cookie)
    assert r.status == 200, r.body[:300]
    assert r.upstream_header("Remote-Groups") == "admins"
    assert _session_cookie(r), "the refreshed session must be sent back"
    assert _refreshes(stack) == before + 1
    # Removed from a group: loses the route after the next refresh.
    new_cookie = {"Cookie": f"_oidc_edge={_due(_session_cookie(r))}"}
    stack.idp.put_user("erin", {"groups": ["users"]})
    r = Browser().get(stack.url("/admin/", port), headers=new_cookie)
    assert r.status == 403
    assert envoy.counter("oidc_edge_refreshes_succeeded", 2) == 2
    envoy.stop()


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_twenty_concurrent_requests_cause_one_refresh(stack, kind):
    port = free_port()
    failed_before = stack.idp.stats()["token"]["refresh_failed"]
    gate = stack.proxy(kind, f"{kind}-refresh-burst", port)
    gate.wait_provider_loaded()
    workers_before = gate.served_by_worker()
    user = f"frank{kind}"
    old = _due(_session_of_new_user(stack, user, ["users"]))
    before = _refreshes(stack)
    results = _burst(stack.url("/users/x", port), old)
    assert [r.status for r in results] == [200] * 20, [r.status for r in results]
    # The burst really spread over both workers.
    after = gate.served_by_worker()
    grew = [k for k, v in after.items() if v > workers_before.get(k, 0)]
    assert len(grew) == 2, (workers_before, after)
    assert all(r.upstream_header("Remote-User") == user for r in results)
    refreshed = _refreshes(stack) - before
    assert refreshed == 1, f"{refreshed} refresh calls reached the IdP for one session"
    new = next(c for c in map(_session_cookie, results) if c)
    # A request replaying the pre-refresh cookie later neither fails nor refreshes again.
    r = Browser().get(stack.url("/users/", port), headers={"Cookie": f"_oidc_edge={old}"})
    assert r.status == 200 and _session_cookie(r) == new
    assert _refreshes(stack) - before == 1
    assert stack.idp.stats()["token"]["refresh_failed"] == failed_before
    # The session is still refreshable afterwards (the rotated token was kept).
    new = _due(new)
    r = Browser().get(stack.url("/users/", port), headers={"Cookie": f"_oidc_edge={new}"})
    assert r.status == 200 and _session_cookie(r) not in (None, new)
    assert _refreshes(stack) - before == 2
    gate.stop()


@pytest.mark.parametrize("kind", ["nginx-sidecar", "caddy", "traefik"])
def test_refresh_through_the_sidecar(stack, kind):
    """A refresh decided in an auth subrequest still reaches the browser:
    nginx adds the sidecar's Set-Cookie to the answer; a forward-auth proxy
    only copies headers into the upstream request, so the sidecar sends the
    browser back to the same URL (307) with the new cookie."""
    port = free_port()
    failed_before = stack.idp.stats()["token"]["refresh_failed"]
    gate = stack.proxy(kind, f"{kind}-refresh", port)
    try:
        gate.wait_provider_loaded()
        user = f"hal{kind.replace('-', '')}"
        old = _due(_session_of_new_user(stack, user, ["users"]))
        before = _refreshes(stack)
        results = _burst(stack.url("/users/x?a=1", port), old)
        assert _refreshes(stack) - before == 1, "one refresh for one session, however many requests"
        new = {c for c in map(_session_cookie, results) if c}
        assert len(new) == 1, new
        new = new.pop()
        if not gate.refresh_by_redirect:
            assert [r.status for r in results] == [200] * 20
            assert all(r.upstream_header("Remote-User") == user for r in results)
        else:
            assert {r.status for r in results} <= {200, 307}
            again = [r for r in results if r.status == 307]
            assert again and all(r.location == stack.url("/users/x?a=1", port) and _session_cookie(r) == new
                                 for r in again), [(r.location, _session_cookie(r) == new) for r in again]
            assert all(r.upstream_header("Remote-User") == user for r in results if r.status == 200)
        # The new session is not due: used as it is, no refresh and no new cookie.
        r = Browser().get(stack.url("/users/x", port), headers={"Cookie": f"_oidc_edge={new}"})
        assert r.status == 200 and _session_cookie(r) is None and r.upstream_header("Remote-User") == user
        assert _refreshes(stack) - before == 1
        r = Browser().get(stack.url("/users/x", port), headers={"Cookie": f"_oidc_edge={_due(new)}"})
        assert r.status in (200, 307) and _session_cookie(r) not in (None, new)
        assert _refreshes(stack) - before == 2
        if r.status == 200:
            assert r.upstream_header("Remote-User") == user
        assert stack.idp.stats()["token"]["refresh_failed"] == failed_before
        assert gate.counter("oidc_edge_refreshes_succeeded", 1) >= 1
    finally:
        gate.stop()


def test_revoked_session_goes_back_to_login(stack):
    envoy, port = _refreshing_envoy(stack, "envoy-refresh-revoked")
    cookie = {"Cookie": f"_oidc_edge={_due(_session_of_new_user(stack, 'gina', ['users']))}"}
    stack.idp.put_user("gina", {"disabled": True})
    r = Browser().get(stack.url("/users/", port), headers=cookie)
    assert r.status == 302 and r.location.startswith(stack.idp.issuer)
    assert any(c.startswith("_oidc_edge=;") for c in r.all("set-cookie"))
    # Later requests with that cookie do not call the IdP again: the session is known dead.
    before = _refreshes(stack)
    api = Browser().get(stack.url("/users/", port), headers={**cookie, "Accept": "application/json"})
    assert api.status == 401
    assert _refreshes(stack) == before
    assert envoy.counter("oidc_edge_refreshes_failed", 1) >= 1
    stack.idp.put_user("gina", {"disabled": False})
    envoy.stop()


@pytest.mark.parametrize("outage", ["refuse", "blackhole"])
def test_idp_outage_during_refresh_keeps_the_session_and_retries(stack, outage):
    # The callouts go through a gate we can close (connection refused) or turn
    # into a black hole (the callout times out), without losing the IdP's state.
    gate = TcpGate(stack.idp.port)
    envoy, port = _refreshing_envoy(stack, f"envoy-outage-{outage}", IDP_CLUSTER_PORT=gate.port, TIMEOUT_MS=1000)
    try:
        user = f"ivan{outage}"
        cookie = {"Cookie": f"_oidc_edge={_due(_session_of_new_user(stack, user, ['users']))}"}
        getattr(gate, outage)()
        t0 = time.time()
        r = Browser().get(stack.url("/users/", port), headers=cookie)
        elapsed = time.time() - t0
        assert r.status == 200 and r.upstream_header("Remote-User") == user
        assert _session_cookie(r) is None
        assert elapsed < 3, f"the request waited {elapsed:.1f}s on an unreachable IdP"
        assert envoy.counter("oidc_edge_refreshes_failed", 1) == 1
        # Still served from the cookie while the IdP stays away.
        assert Browser().get(stack.url("/users/", port), headers=cookie).status == 200
        gate.open()
        deadline = time.time() + 25
        while time.time() < deadline:
            r = Browser().get(stack.url("/users/", port), headers=cookie)
            assert r.status == 200
            if _session_cookie(r):
                break
            time.sleep(1)
        assert _session_cookie(r), "the refresh was never retried"
        assert r.upstream_header("Remote-User") == user
    finally:
        envoy.stop()
        gate.close()


def test_idp_key_rotation(stack):
    proxy_port = free_port()
    idp_port = free_port()
    clients = [idp_client("oidc-edge", [proxy_port])]
    idp = Idp(clients, port=idp_port, name="idp-rotate").start()
    envoy = stack.envoy("envoy-rotate", proxy_port, idp_port=idp_port)
    try:
        envoy.wait_provider_loaded()
        assert login(Browser(), stack.url("/app/", proxy_port), "alice").status == 200
        # Restart the IdP: new signing keys, the old ones gone from its JWKS
        # (Pocket ID keeps exactly one key).
        idp.stop()
        idp = Idp(clients, port=idp_port, name="idp-rotate-2").start()
        # A burst of logins completing at once, all with tokens signed by the
        # unknown key: at most one JWKS fetch reaches the IdP.
        browsers = [Browser() for _ in range(8)]
        callbacks = [to_callback(bb, stack.url("/app/", proxy_port), "alice") for bb in browsers]
        results = []
        threads = [threading.Thread(target=lambda u=u, bb=bb: results.append(bb.get(u)))
                   for u, bb in zip(callbacks, browsers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = [r.status for r in results]
        assert idp.stats()["jwks"] == 1, "exactly one JWKS refetch for the unknown kid"
        assert statuses.count(302) >= 1 and all(r.location == "/app/" for r in results if r.status == 302)
        # Logins that raced the refetch get a clear page with a way to sign in again.
        assert all(s == 302 or s == 502 for s in statuses), statuses
        # Every login after that works on the refetched keys, with no further fetch.
        for _ in range(3):
            r = login(Browser(), stack.url("/app/", proxy_port), "alice")
            assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
        assert idp.stats()["jwks"] == 1
    finally:
        envoy.stop()
        idp.stop()


def test_cookie_secret_rotation(stack):
    new_secret = "bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ="  # base64 of 32 bytes
    both, both_port = _refreshing_envoy(
        stack, "envoy-secrets-both", COOKIE_SECRETS='[{"env": "OIDC_EDGE_NEW_COOKIE_SECRET"}, {"env": "OIDC_EDGE_COOKIE_SECRET"}]',
        env={"OIDC_EDGE_NEW_COOKIE_SECRET": new_secret})
    only_new_port = free_port()
    only_new = stack.envoy("envoy-secrets-new", only_new_port, COOKIE_SECRETS='[{"env": "OIDC_EDGE_NEW_COOKIE_SECRET"}]',
                           env={"OIDC_EDGE_NEW_COOKIE_SECRET": new_secret})
    only_new.wait_provider_loaded()
    # Sealed by the main listener, with the old secret only.
    old = {"Cookie": f"_oidc_edge={_session_of_new_user(stack, 'hank', ['users'])}"}
    r = Browser().get(stack.url("/users/", both_port), headers=old)
    assert r.status == 200 and _session_cookie(r) is None  # old cookies still open
    assert Browser().get(stack.url("/users/", only_new_port), headers=old).status == 302
    old = {"Cookie": f"_oidc_edge={_due(old['Cookie'].split('=', 1)[1])}"}
    r = Browser().get(stack.url("/users/", both_port), headers=old)
    resealed = _session_cookie(r)
    assert r.status == 200 and resealed, "the next refresh re-seals with the new secret"
    r = Browser().get(stack.url("/users/", only_new_port), headers={"Cookie": f"_oidc_edge={resealed}"})
    assert r.status == 200 and r.upstream_header("Remote-User") == "hank"
    both.stop()
    only_new.stop()


def test_listener_reload_keeps_sessions(stack, alice):
    """Envoy reloads the listener (and the filter's configuration) from a
    watched LDS file; sessions survive when the cookie secrets are unchanged."""
    port = free_port()
    values = {"ADMIN_PORT": free_port(), "WASM": str(WASM),
              "PROXY_PORT": port, "IDP_PORT": stack.idp.port, "IDP_CLUSTER_PORT": stack.idp.port,
              "UPSTREAM_PORT": stack.upstream_port, "CLIENT_ID": "oidc-edge", "COOKIE_SECRETS": '[{"env": "OIDC_EDGE_COOKIE_SECRET"}]',
              "SESSION_LIFETIME": "1h", "REFRESH_INTERVAL": "1h", "TIMEOUT_MS": 3000}
    from harness import ROOT
    boot = yaml.safe_load(render(ROOT / "envoy/e2e.yaml", values))
    listener = boot["static_resources"].pop("listeners")[0]
    lds = RUN / "reload-lds.yaml"

    def write_listener(extra_route):
        listener["@type"] = "type.googleapis.com/envoy.config.listener.v3.Listener"
        http = listener["filter_chains"][0]["filters"][0]["typed_config"]
        wasm = http["http_filters"][0]["typed_config"]["config"]["configuration"]
        cfg = json.loads(wasm["value"])
        cfg["routes"] = [r for r in cfg["routes"] if r.get("path") != "/reloaded/"]
        if extra_route:
            cfg["routes"].insert(0, {"path": "/reloaded/", "public": True})
        wasm["value"] = json.dumps(cfg)
        tmp = RUN / "reload-lds.tmp"
        tmp.write_text(yaml.safe_dump({"resources": [listener]}))
        os.replace(tmp, lds)

    write_listener(False)
    boot["node"] = {"id": "e2e-reload", "cluster": "e2e"}
    boot["dynamic_resources"] = {"lds_config": {"path_config_source": {"path": str(lds)}, "resource_api_version": "V3"}}
    envoy = Envoy(values, "envoy-reload")
    boot["admin"]["address"]["socket_address"]["port_value"] = envoy.admin_port
    envoy.config_path = RUN / "envoy-reload-boot.yaml"
    envoy.config_path.write_text(yaml.safe_dump(boot))
    stack.gates.append(envoy)
    envoy.start()
    envoy.wait_provider_loaded()
    try:
        assert alice.get(stack.url("/admin/", port)).status == 200
        assert Browser().get(stack.url("/reloaded/", port)).status == 403
        write_listener(True)
        deadline = time.time() + 20
        while time.time() < deadline and Browser().get(stack.url("/reloaded/", port)).status != 200:
            time.sleep(0.2)
        assert Browser().get(stack.url("/reloaded/", port)).status == 200, "the new filter config never took effect"
        r = alice.get(stack.url("/admin/", port))
        assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
        envoy.wait_provider_loaded()
    finally:
        envoy.stop()
