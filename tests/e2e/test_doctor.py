"""`oidc-edge doctor` against the real test IdP: a configuration that works
passes every check, and each common mistake, made on purpose one at a time,
fails exactly its check with the fix, and the exit status says so."""

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import COOKIE_SECRET, SIDECAR, Idp, free_port, idp_client

SECRET = "e2e-client-secret"
GATE = "http://127.0.0.1:8088"


@pytest.fixture(scope="module")
def idp():
    i = Idp([idp_client("doctor", [8088])], name="idp-doctor").start()
    yield i
    i.stop()


def config(issuer: str, **edits) -> str:
    base = {
        "issuer": issuer,
        "client_secret": "{env: DOCTOR_CLIENT_SECRET}",
        "cookie_secret": "{env: DOCTOR_COOKIE_SECRET}",
        "secure": "false",
        "extra_session": "",
        "extra_top": "",
        "trusted": "[127.0.0.1]",
    }
    base.update(edits)
    return f"""\
provider:
  issuer: "{base['issuer']}"
  client_id: doctor
  client_secret: {base['client_secret']}
session:
  secrets: [{base['cookie_secret']}]
  secure: {base['secure']}
{base['extra_session']}
routes:
  - {{path: /admin/, groups: [admins]}}
  - {{path: /}}
{base['extra_top']}
sidecar:
  trusted_proxies: {base['trusted']}
"""


def doctor(tmp_path, text: str, *args: str, env: dict | None = None) -> tuple:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    full_env = {**os.environ, "DOCTOR_CLIENT_SECRET": SECRET, "DOCTOR_COOKIE_SECRET": COOKIE_SECRET, **(env or {})}
    r = subprocess.run([str(SIDECAR), "doctor", "--config", str(path), "--json", *args], capture_output=True, text=True,
                       env=full_env, timeout=60)
    report = json.loads(r.stdout)
    assert report["ok"] == (r.returncode == 0), r
    assert SECRET not in r.stdout + r.stderr and COOKIE_SECRET not in r.stdout + r.stderr
    return r.returncode, {c["check"]: c for c in report["checks"]}, report


def failed(checks: dict) -> set:
    return {name for name, c in checks.items() if c["status"] == "fail"}


def test_a_working_configuration_passes_every_check(tmp_path, idp):
    code, checks, report = doctor(tmp_path, config(idp.issuer), "--host", GATE)
    assert code == 0, report
    assert failed(checks) == set()
    for name in ("configuration", "discovery", "issuer", "jwks", "clock", "client_secret", "redirect_uri",
                 "post_logout_redirect_uri", "groups", "scopes", "cookie_secrets", "cookies", "cookie_size", "trusted_proxies"):
        assert checks[name]["status"] == "pass", checks[name]
    assert "RS256" in checks["jwks"]["detail"]
    human = subprocess.run([str(SIDECAR), "doctor", "--config", str(tmp_path / "config.yaml"), "--host", GATE],
                           capture_output=True, text=True, env={**os.environ, "DOCTOR_CLIENT_SECRET": SECRET,
                                                                "DOCTOR_COOKIE_SECRET": COOKIE_SECRET})
    assert human.returncode == 0 and "✓ client_secret:" in human.stdout and "0 failed" in human.stdout, human.stdout


def test_an_issuer_on_another_host_name_is_named(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer.replace("127.0.0.1", "localhost")), "--host", GATE)
    assert code == 1 and failed(checks) == {"issuer"}
    assert "the host differs" in checks["issuer"]["detail"]
    assert idp.issuer in checks["issuer"]["fix"]


def test_an_issuer_with_a_trailing_slash_is_named(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer + "/"), "--host", GATE)
    assert code == 1 and failed(checks) == {"configuration"}
    assert "ends with '/'" in checks["configuration"]["detail"]


def test_an_unreachable_provider_is_named(tmp_path):
    code, checks, _ = doctor(tmp_path, config(f"http://127.0.0.1:{free_port()}"), "--host", GATE)
    assert code == 1 and failed(checks) == {"discovery"}
    assert "connect" in checks["discovery"]["detail"]


def test_a_wrong_client_secret_is_refused_as_invalid_client(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", GATE, env={"DOCTOR_CLIENT_SECRET": "not-the-secret"})
    assert code == 1 and failed(checks) == {"client_secret"}
    assert "invalid_client" in checks["client_secret"]["detail"]


def test_an_unregistered_redirect_uri_is_named(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", "http://127.0.0.1:8099")
    assert code == 1 and failed(checks) == {"redirect_uri", "post_logout_redirect_uri"}
    assert "http://127.0.0.1:8099/oauth2/callback" in checks["redirect_uri"]["fix"]


def test_an_unregistered_post_logout_redirect_is_named(tmp_path, idp):
    text = config(idp.issuer, extra_top='post_logout_redirect_url: "http://127.0.0.1:8088/bye"')
    code, checks, _ = doctor(tmp_path, text, "--host", GATE)
    assert code == 1 and failed(checks) == {"post_logout_redirect_uri"}


def test_a_skewed_clock_is_measured_against_clock_skew(tmp_path):
    ahead = Idp([idp_client("doctor", [8088])], name="idp-doctor-clock", options={"clock_offset": 300}).start()
    try:
        code, checks, _ = doctor(tmp_path, config(ahead.issuer), "--host", GATE)
        assert code == 1 and failed(checks) == {"clock"}
        assert "ahead of" in checks["clock"]["detail"] and "60 s" in checks["clock"]["detail"]
        text = config(ahead.issuer, extra_top="").replace("provider:\n", "provider:\n  clock_skew: 10m\n")
        code, checks, _ = doctor(tmp_path, text, "--host", GATE)
        assert code == 0 and checks["clock"]["status"] == "warn", checks["clock"]
    finally:
        ahead.stop()


def test_groups_rules_with_a_provider_without_groups_fail(tmp_path):
    plain = Idp([idp_client("doctor", [8088])], name="idp-doctor-nogroups", options={"groups": False}).start()
    try:
        text = config(plain.issuer).replace("  client_id: doctor\n", "  client_id: doctor\n  scopes: [openid, email, profile]\n")
        code, checks, _ = doctor(tmp_path, text, "--host", GATE)
        assert code == 1 and failed(checks) == {"groups"}
        assert "no groups scope or claim" in checks["groups"]["detail"]
    finally:
        plain.stop()


@pytest.mark.parametrize("secret,status", [("correct horse battery staple 123", "fail"), ("0123456789abcdef", "warn")])
def test_weak_cookie_secrets_are_named(tmp_path, idp, secret, status):
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", GATE, env={"DOCTOR_COOKIE_SECRET": secret})
    assert checks["cookie_secrets"]["status"] == status, checks["cookie_secrets"]
    assert code == (1 if status == "fail" else 0)
    assert secret not in json.dumps(checks)


def test_cookies_without_secure_on_https_hosts_fail(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", "https://app.example.com")
    assert checks["cookies"]["status"] == "fail" and "session.secure" in checks["cookies"]["detail"]
    code, checks, _ = doctor(tmp_path, config(idp.issuer, secure="true"), "--host", "http://app.example.com")
    assert checks["cookies"]["status"] == "fail" and "plain http" in checks["cookies"]["detail"]


def test_the_largest_cookie_is_estimated(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", GATE, "--groups", "400")
    assert code == 1 and failed(checks) == {"cookie_size", "header_size"}
    assert "400 groups" in checks["cookie_size"]["detail"]


def test_a_cookie_header_past_the_proxys_limit_is_named(tmp_path, idp):
    """A session that fits its cookie, with the logins a browser may have in
    flight, can still outgrow nginx's 8 KB header line: doctor names the
    limit and the directive that raises it."""
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", GATE, "--groups", "100")
    assert code == 1 and failed(checks) == {"header_size"}, checks
    assert "8192" in checks["header_size"]["detail"] and "large_client_header_buffers" in checks["header_size"]["fix"]
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", GATE, "--groups", "10")
    assert checks["header_size"]["status"] == "pass", checks["header_size"]


@pytest.mark.parametrize("trusted", ["[0.0.0.0/0]", "[]"])
def test_a_sidecar_trusting_everyone_or_no_one_fails(tmp_path, idp, trusted):
    code, checks, _ = doctor(tmp_path, config(idp.issuer, trusted=trusted), "--host", GATE)
    assert code == 1 and failed(checks) == {"trusted_proxies"}


def test_stale_snippets_are_named(tmp_path, idp):
    snippets = tmp_path / "snippets"
    path = tmp_path / "config.yaml"
    path.write_text(config(idp.issuer))
    env = {**os.environ, "DOCTOR_CLIENT_SECRET": SECRET, "DOCTOR_COOKIE_SECRET": COOKIE_SECRET}
    for proxy in ("caddy", "nginx"):
        r = subprocess.run([str(SIDECAR), "render", proxy, "--config", str(path), "--out", str(snippets / proxy)], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    code, checks, _ = doctor(tmp_path, config(idp.issuer), "--host", GATE, "--snippets", str(snippets / "nginx"))
    assert code == 0 and checks["snippets"]["status"] == "pass"
    renamed = config(idp.issuer, extra_top="identity_headers: {user: X-Auth-User}")
    for proxy in ("caddy", "nginx"):
        code, checks, _ = doctor(tmp_path, renamed, "--host", GATE, "--snippets", str(snippets / proxy))
        assert code == 1 and failed(checks) == {"snippets"}, checks
        assert f"oidc-edge render {proxy}" in checks["snippets"]["fix"]


class FakeProvider:
    """A provider the test IdP cannot imitate: only an HMAC key in its JWKS,
    a token endpoint on another host than the issuer, and refusals of
    redirect URIs on an error page of its own."""

    def __init__(self):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        issuer = self.issuer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/auth"):
                    # As Google refuses an unregistered redirect URI: on a page of its own.
                    self.send_response(302)
                    self.send_header("location", f"{issuer}/signin/oauth/error?authError=redirect_uri_mismatch")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                docs = {
                    "/.well-known/openid-configuration": {
                        "issuer": issuer, "authorization_endpoint": f"{issuer}/auth",
                        "token_endpoint": f"http://127.0.0.2:{free_port()}/token", "jwks_uri": f"{issuer}/jwks",
                    },
                    "/jwks": {"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]},
                }
                body = json.dumps(docs.get(self.path, {})).encode()
                self.send_response(200 if self.path in docs else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_jwks_without_usable_keys_and_unmapped_callouts_fail(tmp_path):
    fake = FakeProvider()
    try:
        text = config(fake.issuer).replace("  client_id: doctor\n", f'  client_id: doctor\n  callouts: {{"127.0.0.1:{fake.port}": idp}}\n')
        code, checks, _ = doctor(tmp_path, text, "--host", GATE)
        assert code == 1
        assert checks["jwks"]["status"] == "fail" and "RS256" in checks["jwks"]["fix"]
        assert checks["callouts"]["status"] == "fail" and "127.0.0.2" in checks["callouts"]["detail"]
    finally:
        fake.stop()


def test_same_site_none_without_secure_is_refused_with_the_field(tmp_path, idp):
    code, checks, _ = doctor(tmp_path, config(idp.issuer, extra_session="  same_site: none"), "--host", GATE)
    assert code == 1 and failed(checks) == {"configuration"}
    assert "session.same_site" in checks["configuration"]["detail"] and "secure" in checks["configuration"]["detail"]


def test_a_refusal_on_the_providers_own_error_page_fails_and_unrendered_callouts_warn(tmp_path):
    fake = FakeProvider()
    try:
        code, checks, _ = doctor(tmp_path, config(fake.issuer), "--host", GATE)
        assert code == 1
        assert checks["redirect_uri"]["status"] == "fail" and "not registered" in checks["redirect_uri"]["detail"]
        # No callouts (a sidecar's file): fine for the sidecar, a warning for a filter rendered from it.
        assert checks["callouts"]["status"] == "warn" and "127.0.0.2" in checks["callouts"]["detail"]
    finally:
        fake.stop()
