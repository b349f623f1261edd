"""`oidc-edge migrate oauth2-proxy`: the homelab in tests/migrate/homelab
(one oauth2-proxy per service, configured by variables, by flags, and by an
env file plus a TOML file) becomes one configuration that `check` accepts,
with secrets left as references; and, pointed at the test IdP, the migrated
configuration and Caddy site blocks run as they are written: the sidecar
behind Caddy signs people in with the groups, emails and public paths the
oauth2-proxies had."""

import os
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from harness import CADDY, COOKIE_SECRET, ROOT, SIDECAR, Browser, Idp, Proc, free_port, wait_port

HOMELAB = ROOT / "tests/migrate/homelab"
INLINE_SECRET = "paperless-secret-written-inline-9f2c"


def migrate(out, *files, proxy="caddy") -> subprocess.CompletedProcess:
    return subprocess.run([str(SIDECAR), "migrate", "oauth2-proxy", *map(str, files), "--out", str(out), "--proxy", proxy],
                          capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})


def test_the_homelab_becomes_one_configuration_that_check_accepts(tmp_path):
    r = migrate(tmp_path, HOMELAB / "docker-compose.yml")
    assert r.returncode == 0, r.stderr
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(written) == {"oidc-edge.yaml", "migration-report.md", "Caddyfile", "oidc-edge.caddy"}
    for name, text in written.items():
        assert INLINE_SECRET not in text and "0123456789abcdef0123456789abcdef" not in text, name
        assert "${" not in text, name
    config = yaml.safe_load(written["oidc-edge.yaml"])
    assert config["provider"]["issuer"] == "https://id.example.com"
    assert config["provider"]["client_id"] == "homelab"
    assert config["provider"]["client_secret"] == {"env": "SONARR_CLIENT_SECRET"}
    assert config["session"]["secrets"] == [{"env": "SONARR_COOKIE_SECRET"}]
    assert config["identity_headers"]["user"] == "X-Forwarded-User"
    routes = config["routes"]
    assert routes[0] == {"host": "sonarr.example.com", "path": "/api/health", "public": True, "methods": ["GET"]}
    assert routes[1] == {"host": "sonarr.example.com", "groups": ["media", "admins"]}
    assert routes[2] == {"host": "grafana.example.com", "groups": ["admins"]}
    assert routes[3] == {"host": "paperless.example.com", "path": "/static/", "public": True}
    assert routes[4] == {"host": "paperless.example.com", "emails": ["alice@example.com", "carol@example.com"],
                         "cors_preflight": True}
    report = written["migration-report.md"]
    assert "^/favicon\\.ico$ is not a path prefix" in report
    assert "pass_access_token: no oidc-edge equivalent" in report
    assert "register https://paperless.example.com/oauth2/callback" in report
    assert "set SONARR_CLIENT_SECRET" in report
    assert "reverse_proxy http://grafana:3000" in written["Caddyfile"]

    env = {"PATH": os.environ["PATH"], "SONARR_CLIENT_SECRET": "s", "SONARR_COOKIE_SECRET": COOKIE_SECRET}
    check = subprocess.run([str(SIDECAR), "check", "--config", str(tmp_path / "oidc-edge.yaml")], capture_output=True,
                           text=True, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "5 routes" in check.stdout
    caddy = subprocess.run([str(CADDY), "validate", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                           capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert caddy.returncode == 0, caddy.stderr[-2000:]


def test_a_group_and_domain_condition_is_flagged_for_review(tmp_path):
    cfg = tmp_path / "oauth2-proxy.cfg"
    cfg.write_text('provider = "oidc"\noidc_issuer_url = "https://id.example.com"\nclient_id = "c"\n'
                   'client_secret = "inline-secret-value"\ncookie_secret = "${COOKIE}"\n'
                   'redirect_url = "https://wiki.example.com/oauth2/callback"\n'
                   'email_domains = ["example.com"]\nallowed_groups = ["staff"]\nupstreams = ["http://127.0.0.1:8099/"]\n')
    r = migrate(tmp_path / "out", cfg, proxy="nginx")
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "out/migration-report.md").read_text()
    assert "## Review" in report and "Members of staff now get in whatever their email" in report
    assert "set OAUTH2_PROXY_CLIENT_SECRET" in report
    config = yaml.safe_load((tmp_path / "out/oidc-edge.yaml").read_text())
    assert config["provider"]["client_secret"] == {"env": "OAUTH2_PROXY_CLIENT_SECRET"}
    assert config["session"]["secrets"] == [{"env": "COOKIE"}]
    assert config["routes"] == [{"host": "wiki.example.com", "groups": ["staff"]}]
    assert (tmp_path / "out/oidc-edge/protect.conf").exists() and not (tmp_path / "out/Caddyfile").exists()
    for p in (tmp_path / "out").rglob("*"):
        assert p.is_dir() or "inline-secret-value" not in p.read_text()
    # The server block and the snippets it includes, as nginx reads them.
    sites = (tmp_path / "out/sites.conf").read_text()
    assert "server_name wiki.example.com;" in sites and "proxy_pass http://127.0.0.1:8099;" in sites
    # The snippets reach the sidecar as the compose service oidc-edge; here it is on loopback.
    http_conf = tmp_path / "out/oidc-edge/http.conf"
    http_conf.write_text(http_conf.read_text().replace("oidc-edge:4180", "127.0.0.1:4180"))
    conf = tmp_path / "out/nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\ninclude oidc-edge/http.conf;\ninclude sites.conf;\n}}\n")
    t = subprocess.run(["/usr/sbin/nginx", "-t", "-p", str(tmp_path / "out"), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                       capture_output=True, text=True)
    assert t.returncode == 0, t.stderr
    r = migrate(tmp_path / "traefik", cfg, proxy="traefik")
    assert r.returncode == 0, r.stderr
    routers = yaml.safe_load((tmp_path / "traefik/sites.yml").read_text())["http"]
    assert routers["routers"]["wiki-example-com"] == {"rule": "Host(`wiki.example.com`)", "service": "wiki-example-com",
                                                      "middlewares": ["oidc-edge-protect"]}
    assert (tmp_path / "traefik/oidc-edge.yml").exists()


def test_inputs_that_are_not_oauth2_proxy_are_refused_by_name(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text("services:\n  web:\n    image: nginx\n")
    r = migrate(tmp_path / "out", compose)
    assert r.returncode == 1 and "no oauth2-proxy found" in r.stderr
    bad = tmp_path / "x.cfg"
    bad.write_text("this is = = not toml")
    r = migrate(tmp_path / "out", bad)
    assert r.returncode == 1 and "x.cfg: not valid TOML" in r.stderr


class Mapped(Browser):
    """A browser for hosts that exist only here: `*.test` resolves to 127.0.0.1."""

    def get(self, url, headers=None, **kw):
        u = urlsplit(url)
        if u.hostname and u.hostname.endswith(".test"):
            path = url[url.index(u.netloc) + len(u.netloc):] or "/"
            return super().get(f"http://127.0.0.1:{u.port}{path}", {"Host": u.netloc, **(headers or {})}, **kw)
        return super().get(url, headers, **kw)

    def visit(self, url, user=None):
        """Follows redirects; at the IdP's page, picks `user`."""
        for _ in range(20):
            r = self.get(url)
            if r.status in (301, 302, 303, 307, 308):
                loc = r.location
                url = loc if "://" in loc else "{0.scheme}://{0.netloc}{1}".format(urlsplit(url), loc)
                continue
            if user and b"choose a user" in r.body:
                m = re.search(r'href="([^"]*login\?user=' + user + ')"', r.body.decode())
                url = "{0.scheme}://{0.netloc}{1}".format(urlsplit(url), m.group(1).replace("&amp;", "&"))
                user = None
                continue
            return r
        raise AssertionError("redirect loop")


@pytest.fixture
def live_homelab(tmp_path):
    """The homelab's files with its domain at .test hosts on this machine,
    its issuer the test IdP, and plain http; migrated as they are."""
    port, sidecar_port, echo_port = free_port(), free_port(), free_port()
    idp = Idp([{"client_id": "homelab", "client_secret": "e2e-client-secret", "grant_types": ["authorization_code", "refresh_token"],
                "redirect_uris": [f"http://{s}.test:{port}/oauth2/callback" for s in ("sonarr", "grafana", "paperless")],
                "post_logout_redirect_uris": []}], name="idp-migrate").start()
    procs = [idp]
    try:
        lab = tmp_path / "homelab"
        shutil.copytree(HOMELAB, lab)
        compose = (lab / "docker-compose.yml").read_text()
        compose = compose.replace("https://id.${DOMAIN}", idp.issuer).replace("https://", "http://")
        compose = compose.replace('OAUTH2_PROXY_COOKIE_SECURE: "true"', 'OAUTH2_PROXY_COOKIE_SECURE: "false"')
        (lab / "docker-compose.yml").write_text(compose)
        (lab / ".env").write_text(f"DOMAIN=test:{port}\nSONARR_CLIENT_ID=homelab\n")
        cfg = (lab / "oauth2-proxy/paperless.cfg").read_text().replace("https://id.example.com", idp.issuer)
        (lab / "oauth2-proxy/paperless.cfg").write_text(cfg)
        out = tmp_path / "out"
        r = migrate(out, lab / "docker-compose.yml")
        assert r.returncode == 0, r.stderr
        # What a person does next: the sidecar's address, then render for it.
        config = yaml.safe_load((out / "oidc-edge.yaml").read_text())
        config["sidecar"]["listen"] = f"127.0.0.1:{sidecar_port}"
        (out / "oidc-edge.yaml").write_text(yaml.safe_dump(config))
        env = {"SONARR_CLIENT_SECRET": "e2e-client-secret", "SONARR_COOKIE_SECRET": COOKIE_SECRET}
        subprocess.run([str(SIDECAR), "render", "caddy", "--config", str(out / "oidc-edge.yaml"), "--out", str(out)],
                       check=True, capture_output=True, env={**os.environ, **env})
        sites = (out / "Caddyfile").read_text()
        for service in ("sonarr", "grafana", "paperless"):
            sites = sites.replace(f"\n{service}.test {{", f"\nhttp://{service}.test:{port} {{")
        sites = re.sub(r"reverse_proxy http://\w+:\d+", f"reverse_proxy 127.0.0.1:{echo_port}", sites)
        (out / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n" + sites)
        echo = Proc("echo-migrate", [str(ROOT / ".venv/bin/python"), str(ROOT / "tests/upstream/echo.py"), str(echo_port)])
        procs.append(echo)
        echo.wait_for("ECHO READY")
        sidecar = Proc("sidecar-migrate", [str(SIDECAR), "serve", "--config", str(out / "oidc-edge.yaml")], env=env)
        procs.append(sidecar)
        wait_port(sidecar_port, proc=sidecar)
        caddy = Proc("caddy-migrate", [str(CADDY), "run", "--config", str(out / "Caddyfile"), "--adapter", "caddyfile"],
                     env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
        procs.append(caddy)
        wait_port(port, proc=caddy)
        yield port
    finally:
        for p in reversed(procs):
            p.stop()


def test_the_migrated_homelab_runs_behind_caddy(live_homelab):
    port = live_homelab
    alice = Mapped()
    r = alice.visit(f"http://sonarr.test:{port}/", user="alice")
    assert r.status == 200, r.body[:300]
    assert r.upstream_header("x-forwarded-user") == "alice"
    assert r.upstream_header("x-forwarded-groups") == "admins,users"
    assert alice.visit(f"http://grafana.test:{port}/").status == 200
    assert alice.visit(f"http://paperless.test:{port}/").status == 200
    bob = Mapped()
    assert bob.visit(f"http://sonarr.test:{port}/", user="bob").status == 403
    assert bob.visit(f"http://grafana.test:{port}/").status == 403
    assert bob.visit(f"http://paperless.test:{port}/").status == 403
    anyone = Mapped()
    health = anyone.get(f"http://sonarr.test:{port}/api/health")
    assert health.status == 200 and health.upstream_header("x-forwarded-user") is None
    assert anyone.get(f"http://sonarr.test:{port}/api/health", headers={"Accept": "application/json"}).status == 200
    assert anyone.request("POST", f"http://127.0.0.1:{port}/api/health", {"Host": f"sonarr.test:{port}", "Accept": "application/json"}).status == 401
    assert anyone.get(f"http://paperless.test:{port}/static/app.css").status == 200
    assert anyone.get(f"http://grafana.test:{port}/", headers={"Accept": "application/json"}).status == 401


def test_a_migration_never_lets_more_people_in_without_saying_so(tmp_path):
    (tmp_path / "staff.env").write_text("OAUTH2_PROXY_EMAIL_DOMAINS=*\nOAUTH2_PROXY_ALLOWED_GROUPS=everyone\n")
    common = ("      OAUTH2_PROXY_OIDC_ISSUER_URL: https://id.example.com\n      OAUTH2_PROXY_CLIENT_ID: c\n"
              "      OAUTH2_PROXY_CLIENT_SECRET: ${CLIENT_SECRET}\n      OAUTH2_PROXY_COOKIE_SECRET: ${COOKIE_SECRET}\n"
              "      OAUTH2_PROXY_UPSTREAMS: http://app:80\n")
    (tmp_path / "docker-compose.yml").write_text(f"""\
services:
  everything-auth:
    image: quay.io/oauth2-proxy/oauth2-proxy
    environment:
{common}      OAUTH2_PROXY_EMAIL_DOMAINS: "*"
      VIRTUAL_HOST: "*.example.com"
  admin-auth:
    image: quay.io/oauth2-proxy/oauth2-proxy
    environment:
{common}      OAUTH2_PROXY_REDIRECT_URL: https://admin.example.com/oauth2/callback
      OAUTH2_PROXY_EMAIL_DOMAINS: "*"
      OAUTH2_PROXY_ALLOWED_GROUPS: admins
  staff-auth:
    image: quay.io/oauth2-proxy/oauth2-proxy
    env_file: [{{path: staff.env, required: true}}]
    environment:
{common}      OAUTH2_PROXY_REDIRECT_URL: https://staff.example.com/oauth2/callback
      OAUTH2_PROXY_EMAIL_DOMAINS: example.org
  roles-auth:
    image: quay.io/oauth2-proxy/oauth2-proxy
    environment:
{common}      OAUTH2_PROXY_PROVIDER: keycloak-oidc
      OAUTH2_PROXY_REDIRECT_URL: https://roles.example.com/oauth2/callback
      OAUTH2_PROXY_EMAIL_DOMAINS: "*"
      OAUTH2_PROXY_ALLOWED_ROLES: finance
  list-auth:
    image: quay.io/oauth2-proxy/oauth2-proxy
    environment:
{common}      OAUTH2_PROXY_REDIRECT_URL: https://list.example.com/oauth2/callback
      OAUTH2_PROXY_AUTHENTICATED_EMAILS_FILE: /etc/oauth2-proxy/missing.txt
""")
    r = migrate(tmp_path / "out", tmp_path / "docker-compose.yml")
    assert r.returncode == 0, r.stderr
    routes = yaml.safe_load((tmp_path / "out/oidc-edge.yaml").read_text())["routes"]
    hosts = [route["host"] for route in routes]
    # The stricter exact host comes before the wildcard that would shadow it.
    assert hosts.index("admin.example.com") < hosts.index("*.example.com")
    # compose's environment: wins over env_file:, and the env file's groups stay a group rule with the
    # domain flagged, never the env file's "*".
    staff = next(route for route in routes if route["host"] == "staff.example.com")
    assert staff == {"host": "staff.example.com", "groups": ["everyone"]}
    # Rules oidc-edge cannot check, and files it cannot read: no route at all (nobody passes).
    assert "roles.example.com" not in hosts and "list.example.com" not in hosts
    report = (tmp_path / "out/migration-report.md").read_text()
    review = report.split("## Review")[1].split("## ")[0]
    assert "roles-auth: not migrated, it admits people by allowed_roles" in review
    assert "list-auth: not migrated, its authenticated_emails_file" in review
    assert "staff-auth: oauth2-proxy required a group AND an allowed email or domain" in review
    assert "<each host under example.com>" in report
