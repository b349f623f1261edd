"""`oidc-edge render envoy` and `render nginx-wasm`: the filter's side of the
one configuration file. The shipped demos are renderings of sidecar/demo.yaml;
a rendering passes the proxy's own config check; and a rendering, started
as is, logs people in with the real filter and the real IdP."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import (COOKIE_SECRET, ENVOY, NGINX_GLOBALS, ROOT, SIDECAR, WASM, Browser, Idp, Proc, free_port,
                     idp_client, login, ngx_wasm_module, wait_port)

SECRETS = {"OIDC_EDGE_CLIENT_SECRET": "e2e-client-secret", "OIDC_EDGE_COOKIE_SECRET": COOKIE_SECRET, "DEMO_API_KEY": "k-123456"}
DEMO_WASM = "target/wasm32-wasip1/release/oidc_edge_filter.wasm"
# The flags the shipped demos were rendered with (README, "Use it with your Envoy").
DEMO_FLAGS = {
    "envoy": ["--listen", "127.0.0.1:8080", "--upstream", "127.0.0.1:9100", "--admin", "127.0.0.1:9901", "--wasm", DEMO_WASM],
    "nginx-wasm": ["--wasm", DEMO_WASM, "--resolver", "127.0.0.1"],
}


def render(proxy: str, config: Path, out: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SIDECAR), "render", proxy, "--config", str(config), "--out", str(out), *flags],
                          capture_output=True, text=True, env={**os.environ, **SECRETS, **(env or {})})


@pytest.mark.parametrize("proxy,shipped", [("envoy", "envoy/demo"), ("nginx-wasm", "nginx/demo-wasm")])
def test_shipped_filter_demos_are_renderings_of_the_demo_config(tmp_path, proxy, shipped):
    r = render(proxy, ROOT / "sidecar/demo.yaml", tmp_path, *DEMO_FLAGS[proxy])
    assert r.returncode == 0, r.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(p.name for p in (ROOT / shipped).iterdir())
    for name in written:
        assert (tmp_path / name).read_text() == (ROOT / shipped / name).read_text(), \
            f"{shipped}/{name} differs from `oidc-edge render {proxy}` of sidecar/demo.yaml: render it again"


PRODUCTION = """\
provider:
  issuer: https://id.example.com
  client_id: my-app
  client_secret: {env: OIDC_EDGE_CLIENT_SECRET}
  display_name: "Pocket ID's \\\\ login"
session:
  secrets: [{env: OIDC_EDGE_COOKIE_SECRET}]
routes:
  - {host: sonarr.example.com, inject_headers: {x-api-key: {env: DEMO_API_KEY}}}
  - {host: "*.example.com", groups: [users]}
fleet:
  coordinator: 10.0.0.7:4180
sidecar:
  listen: 0.0.0.0:4180
  trusted_proxies: [10.0.0.0/8]
"""


def test_envoy_rendering_of_an_https_provider_passes_envoy_validate(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(PRODUCTION)
    r = render("envoy", config, tmp_path / "out", "--wasm", str(WASM))
    assert r.returncode == 0, r.stderr
    boot = yaml.safe_load((tmp_path / "out/envoy.yaml").read_text())
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    idp = clusters["oidc_edge_idp"]
    tls = idp["transport_socket"]["typed_config"]
    assert tls["sni"] == "id.example.com"
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == \
        [{"san_type": "DNS", "matcher": {"exact": "id.example.com"}}]
    assert idp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] == 443
    assert "oidc_edge_coordinator" in clusters and "transport_socket" not in clusters["oidc_edge_coordinator"]
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    assert wasm["failure_policy"] == "FAIL_CLOSED"
    assert wasm["vm_config"]["environment_variables"]["host_env_keys"] == \
        ["OIDC_EDGE_CLIENT_SECRET", "OIDC_EDGE_COOKIE_SECRET", "DEMO_API_KEY"]
    filter_json = yaml.safe_load(wasm["configuration"]["value"])
    assert "sidecar" not in filter_json and filter_json["fleet"]["coordinator"] == "oidc_edge_coordinator"
    assert filter_json["provider"]["display_name"] == "Pocket ID's \\ login"
    assert (hcm["use_remote_address"], hcm["normalize_path"], hcm["merge_slashes"]) == (True, True, True)
    v = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(tmp_path / "out/envoy.yaml")], capture_output=True, text=True,
                       env={**os.environ, **SECRETS})
    assert v.returncode == 0 and "OK" in v.stdout + v.stderr, v.stdout + v.stderr


def test_nginx_wasm_rendering_passes_nginx_t(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(PRODUCTION)
    r = render("nginx-wasm", config, tmp_path / "out", "--wasm", str(WASM))
    assert r.returncode == 0, r.stderr
    location = (tmp_path / "out/filter.conf").read_text()
    assert '"id.example.com":"id.example.com:443"' in location and "Pocket ID\\'s" in location
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"load_module {ngx_wasm_module()};\nworker_processes 1;\ninclude {tmp_path}/out/wasm.conf;\n"
                    f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{ server {{ listen 127.0.0.1:{free_port()};\n"
                    f"location / {{ include {tmp_path}/out/filter.conf; proxy_pass http://127.0.0.1:1; }} }} }}\n")
    t = subprocess.run(["/usr/sbin/nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                       capture_output=True, text=True)
    assert t.returncode == 0 and "test is successful" in t.stderr, t.stderr


def test_a_file_secret_is_refused_for_the_filter_with_the_field(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(PRODUCTION.replace("{env: DEMO_API_KEY}", "{file: api-key}"))
    (tmp_path / "api-key").write_text("from-a-file")
    r = render("envoy", config, tmp_path / "out")
    assert r.returncode == 1
    assert "routes[0].inject_headers.x-api-key: the filter reads no files" in r.stderr, r.stderr
    assert "from-a-file" not in r.stderr + r.stdout


@pytest.mark.parametrize("proxy", ["envoy", "nginx-wasm"])
def test_a_rendering_started_as_is_logs_people_in(tmp_path, proxy):
    port, echo_port = free_port(), free_port()
    idp = Idp([idp_client("rendered", [port])], name=f"idp-render-{proxy}").start()
    procs = [idp]
    try:
        echo = Proc(f"echo-render-{proxy}", [str(ROOT / ".venv/bin/python"), str(ROOT / "tests/upstream/echo.py"), str(echo_port)])
        procs.append(echo)
        echo.wait_for("ECHO READY")
        config = tmp_path / "config.yaml"
        config.write_text(f"""\
provider: {{issuer: "{idp.issuer}", client_id: rendered, client_secret: {{env: OIDC_EDGE_CLIENT_SECRET}}}}
session: {{secrets: [{{env: OIDC_EDGE_COOKIE_SECRET}}], secure: false}}
routes:
  - {{path: /admin/, groups: [admins]}}
  - {{path: /sonarr/, inject_headers: {{x-api-key: {{env: DEMO_API_KEY}}}}}}
  - {{path: /}}
""")
        out = tmp_path / "out"
        if proxy == "envoy":
            r = render("envoy", config, out, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{echo_port}", "--wasm", str(WASM))
            assert r.returncode == 0, r.stderr
            gate = Proc("envoy-render", [str(ENVOY), "-c", str(out / "envoy.yaml"), "--concurrency", "1", "--base-id", str(port),
                                          "--log-level", "warn"], env=SECRETS)
        else:
            r = render("nginx-wasm", config, out, "--wasm", str(WASM), "--resolver", "127.0.0.1")
            assert r.returncode == 0, r.stderr
            (tmp_path / "tmp").mkdir()
            conf = tmp_path / "nginx.conf"
            conf.write_text(f"load_module {ngx_wasm_module()};\nworker_processes 1;\ninclude {out}/wasm.conf;\npid {tmp_path}/nginx.pid;\n"
                            f"events {{}}\nhttp {{ access_log off; client_body_temp_path {tmp_path}/tmp/body; proxy_temp_path {tmp_path}/tmp/proxy;\n"
                            f"server {{ listen 127.0.0.1:{port};\nlocation / {{ include {out}/filter.conf;\n"
                            f"proxy_pass http://127.0.0.1:{echo_port}; proxy_set_header Host $http_host; }} }} }}\n")
            gate = Proc("nginx-render", ["/usr/sbin/nginx", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"),
                                         "-g", NGINX_GLOBALS], env=SECRETS)
        procs.append(gate)
        wait_port(port, proc=gate)
        alice = Browser()
        r = login(alice, f"http://127.0.0.1:{port}/sonarr/", "alice")
        assert r.status == 200, r.body[:300]
        assert r.upstream_header("remote-user") == "alice"
        assert r.upstream_header("x-api-key") == SECRETS["DEMO_API_KEY"]
        assert alice.get(f"http://127.0.0.1:{port}/admin/").status == 200
        bob = Browser()
        assert login(bob, f"http://127.0.0.1:{port}/", "bob").status == 200
        assert bob.get(f"http://127.0.0.1:{port}/admin/").status == 403
        assert Browser().get(f"http://127.0.0.1:{port}/", headers={"Accept": "application/json"}).status in (302, 401)
    finally:
        for p in reversed(procs):
            p.stop()


def test_a_filter_rendering_needs_the_secrets_names_not_their_values(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(PRODUCTION)
    bare = {k: v for k, v in os.environ.items() if k not in SECRETS}
    for proxy in ("envoy", "nginx-wasm"):
        r = subprocess.run([str(SIDECAR), "render", proxy, "--config", str(config), "--out", str(tmp_path / proxy)],
                           capture_output=True, text=True, env=bare)
        assert r.returncode == 0, r.stderr
        assert "provider.callouts" in r.stderr  # the note about providers on several hosts
