"""Provider interop and outages: ES256 and EdDSA ID tokens, an IdP that is
down at start and comes back, a broken configuration, and every shipped Envoy
config passing `envoy --mode validate`."""

import re
import shutil
import subprocess
import time

import pytest

from harness import (COOKIE_SECRET, ENVOY, ROOT, RUN, TEMPLATE_DEFAULTS, WASM, Browser, Envoy, Idp, free_port, idp_client, login, render,
                     to_callback)


@pytest.mark.parametrize("client_id,port_attr,alg", [("edge-es256", "es_port", "ES256"), ("edge-eddsa", "ed_port", "EdDSA")])
def test_es256_and_eddsa_id_tokens(stack, client_id, port_attr, alg):
    port = getattr(stack, port_attr)
    envoy = stack.envoy(f"envoy-{alg.lower()}", port, CLIENT_ID=client_id)
    envoy.wait_provider_loaded()
    b = Browser()
    cb = to_callback(b, stack.url("/admin/", port), "alice")
    # The IdP really signed with the expected algorithm.
    assert b.jar  # sanity: IdP cookies present
    r = b.get(cb)
    assert r.status == 302, r.body
    r = b.get(stack.url("/admin/", port))
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
    assert envoy.counter("oidc_edge_logins_completed", 1) == 1
    envoy.stop()


def test_idp_down_at_start_then_back_without_restart(stack, gate, alice):
    idp_port = free_port()
    proxy_port = free_port()
    envoy = stack.proxy(gate.kind, f"{gate.kind}-outage", proxy_port, idp_port=idp_port)
    # Existing sessions keep working from the cookie alone (same cookie secret).
    r = alice.get(stack.url("/admin/", proxy_port))
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
    # A new login gets a clear 503 page with Retry-After, quickly.
    t0 = time.time()
    r = Browser().get(stack.url("/app/", proxy_port))
    assert time.time() - t0 < 2
    assert r.status == 503 and r.header("retry-after")
    assert b"identity provider cannot be reached" in r.body
    api = Browser().get(stack.url("/app/", proxy_port), headers={"Accept": "application/json"})
    assert api.status == 401
    if gate.has_counters:
        assert envoy.counter("oidc_edge_provider_unavailable", 1) >= 1
    # The IdP comes up: logins work without restarting Envoy.
    idp = Idp([idp_client("oidc-edge", [proxy_port])], port=idp_port, name="idp-late").start()
    try:
        envoy.wait_provider_loaded(timeout=40)
        b = Browser()
        r = login(b, stack.url("/app/", proxy_port), "bob")
        assert r.status == 200 and r.upstream_header("Remote-User") == "bob"
        # The IdP goes away between redirect and callback: a clear 503, no hang.
        cb = to_callback(Browser(), stack.url("/app/", proxy_port), "carol")
        idp.stop()
        t0 = time.time()
        r = Browser().get(cb)
        assert r.status in (400, 503), r.status
        assert time.time() - t0 < 5
    finally:
        idp.stop()
        envoy.stop()


def test_bad_config_is_refused_with_every_error_named(stack):
    port = free_port()
    envoy = Envoy({"PROXY_PORT": port, "IDP_PORT": stack.idp.port, "IDP_CLUSTER_PORT": stack.idp.port,
                               "UPSTREAM_PORT": stack.upstream_port,
                               "CLIENT_ID": "", "COOKIE_SECRETS": '["too-short", {"env": "NOT_SET_ANYWHERE"}]',
                               "SESSION_LIFETIME": "forever", "REFRESH_INTERVAL": "1h", "TIMEOUT_MS": 3000},
                    "envoy-badconfig")
    stack.gates.append(envoy)
    envoy.proc = None
    try:
        envoy.start()
    except RuntimeError:
        pass  # Envoy may refuse to start at all: that is a fine outcome
    deadline = time.time() + 10
    while time.time() < deadline and "session.lifetime" not in envoy.proc.log_text():
        time.sleep(0.1)
    log = envoy.proc.log_text()
    for field in ("provider.client_id", "session.secrets[0]", "session.secrets[1]", "session.lifetime"):
        assert field in log, f"{field} not named in:\n{log[-3000:]}"
    assert "16, 24 or 32 bytes" in log and "openssl rand -base64 32" in log
    assert "host_env_keys" in log
    # Never a pass: nothing reaches the upstream through this Envoy.
    try:
        r = Browser().get(f"http://127.0.0.1:{port}/public/")
        assert r.status >= 500 or r.status == 403
    except OSError:
        pass
    envoy.stop()
    envoy.proc = None


def _validate(text: str, name: str):
    path = RUN / f"validate-{name}"
    path.write_text(text)
    r = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={"OIDC_EDGE_CLIENT_SECRET": "x", "OIDC_EDGE_COOKIE_SECRET": "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
                            "DEMO_API_KEY": "k", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, f"envoy rejected {name}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "envoy").glob("*.yaml")))
def test_every_shipped_envoy_config_validates(config):
    text = (ROOT / "envoy" / config).read_text()
    names = set(re.findall(r"\{\{([A-Z_0-9]+)\}\}", text))
    values = {n: 10000 + i for i, n in enumerate(sorted(names))}
    values.update({k: v for k, v in {
        "WASM": WASM, "TRIVIAL_WASM": WASM.parent / "oidc_edge_trivial_filter.wasm", "CLIENT_ID": "oidc-edge",
        "COOKIE_SECRETS": '[{"env": "OIDC_EDGE_COOKIE_SECRET"}]', "SESSION_LIFETIME": "1h",
        "REFRESH_INTERVAL": "1h", "TIMEOUT_MS": 3000, **TEMPLATE_DEFAULTS,
        "JWKS_JSON": '{"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k", "x": "O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik"}]}',
    }.items() if k in names})
    _validate(render(ROOT / "envoy" / config, values), config)


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "nginx").glob("*.conf")))
def test_every_shipped_nginx_config_passes_nginx_t(stack, config):
    from harness import Nginx
    values = stack.values(free_port())
    ngx = Nginx(values, name=f"nginx-t-{config}")
    text = (ROOT / "nginx" / config).read_text()
    shutil.copytree(ROOT / "nginx/oidc-edge", ngx.prefix / "oidc-edge", dirs_exist_ok=True)
    if config != "e2e.conf":
        names = set(re.findall(r"\{\{([A-Z_0-9]+)\}\}", text))
        fill = {"MODULE": ngx.module, "PREFIX": ngx.prefix, "WASM": WASM, "PROXY_PORT": values["PROXY_PORT"],
                "UPSTREAM_PORT": stack.upstream_port, "IDP_PORT": stack.idp.port, "SIDECAR_PORT": free_port(),
                "SITE": ROOT / "nginx/www", "DEMO_WASM": ROOT / "nginx/demo-wasm"}
        ngx.config_path.write_text(render(ROOT / "nginx" / config, {k: v for k, v in fill.items() if k in names}))
    r = subprocess.run(["/usr/sbin/nginx", "-t", "-p", str(ngx.prefix), "-c", str(ngx.config_path),
                        "-e", str(ngx.prefix / "error.log")], capture_output=True, text=True, env=ngx.env, timeout=60)
    assert r.returncode == 0, f"nginx -t rejected {config}:\n{r.stderr[-2000:]}"


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "caddy").glob("*Caddyfile")))
def test_every_shipped_caddyfile_validates(tmp_path, config):
    from harness import CADDY
    shutil.copy(ROOT / "caddy/oidc-edge.caddy", tmp_path / "oidc-edge.caddy")
    text = (ROOT / "caddy" / config).read_text()
    names = set(re.findall(r"\{\{([A-Z_0-9]+)\}\}", text))
    (tmp_path / "Caddyfile").write_text(render(ROOT / "caddy" / config, {n: (tmp_path if n == "PREFIX" else 10000 + i)
                                                                        for i, n in enumerate(sorted(names))}))
    r = subprocess.run([str(CADDY), "validate", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                       capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, f"caddy rejected {config}:\n{r.stderr[-2000:]}"


def test_sidecar_config_errors_name_the_field(tmp_path):
    """`oidc-edge check` on the shipped config, then on broken ones: each
    error names its field and the fix, and never echoes a secret."""
    from harness import SIDECAR
    env = {"OIDC_EDGE_CLIENT_SECRET": "s3cret-client", "OIDC_EDGE_COOKIE_SECRET": COOKIE_SECRET,
           "DEMO_API_KEY": "k", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([str(SIDECAR), "check", "--config", str(ROOT / "sidecar/demo.yaml")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout and "warning" not in ok.stdout
    # A secret a person typed still works (oauth2-proxy took such strings) but is named.
    typed = subprocess.run([str(SIDECAR), "check", "--config", str(ROOT / "sidecar/demo.yaml")], capture_output=True,
                           text=True, env={**env, "OIDC_EDGE_COOKIE_SECRET": "my-homelab-cookie-secret"})
    assert typed.returncode == 0, typed.stderr
    assert "warning: session.secrets[0]:" in typed.stdout and "oidc-edge secret" in typed.stdout
    assert "my-homelab-cookie-secret" not in typed.stdout + typed.stderr
    (tmp_path / "client-secret").write_text("from-a-file\n")
    bad = (ROOT / "sidecar/demo.yaml").read_text().replace("{env: OIDC_EDGE_CLIENT_SECRET}", "{file: client-secret}")
    bad = bad.replace("listen: 127.0.0.1:4180", "listen: localhost")
    bad = bad.replace("secrets: [{env: OIDC_EDGE_COOKIE_SECRET}]", "secrets: [tooshort-but-secret]")
    (tmp_path / "bad.yaml").write_text(bad)
    r = subprocess.run([str(SIDECAR), "check", "--config", str(tmp_path / "bad.yaml")], capture_output=True, text=True, env=env)
    assert r.returncode == 1
    assert "sidecar.listen" in r.stderr and "127.0.0.1:4180" in r.stderr
    assert "session.secrets[0]" in r.stderr and "openssl rand -base64 32" in r.stderr
    assert "provider.client_secret" not in r.stderr, "a secret file next to the config is found"
    assert "tooshort-but-secret" not in r.stderr and "from-a-file" not in r.stderr
    (tmp_path / "syntax.yaml").write_text("provider: [unclosed\n")
    r = subprocess.run([str(SIDECAR), "check", "--config", str(tmp_path / "syntax.yaml")], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "not valid YAML" in r.stderr and "line" in r.stderr


def test_nginx_reload_keeps_sessions(stack):
    """`nginx -s reload` starts new workers with empty shared memory: sessions
    live in the cookies, so nobody is logged out, and logins keep working."""
    import os
    import signal
    ngx = stack.gate("nginx")
    b = Browser()
    assert login(b, ngx.url("/admin/"), "alice").status == 200
    os.kill(ngx.proc.pid, signal.SIGHUP)
    deadline = time.time() + 20
    while "gracefully shutting down" not in ngx.log_text() and time.time() < deadline:
        time.sleep(0.2)
    assert "gracefully shutting down" in ngx.log_text(), "nginx did not reload"
    time.sleep(0.5)
    r = b.get(ngx.url("/admin/"))
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice"
    ngx.wait_provider_loaded()
    assert login(Browser(), ngx.url("/app/"), "bob").status == 200
