"""End-to-end harness: starts the real components on 127.0.0.1 with free
ports, talks HTTP with exact control over paths and cookies, and always stops
what it started, by PID."""

from __future__ import annotations

import base64
import collections
import functools
import http.client
import json
import os
import random
import re
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
RUN = Path(os.environ.get("OIDC_EDGE_RUN_DIR", ROOT / ".run"))
WASM = ROOT / "target/wasm32-wasip1/release/oidc_edge_filter.wasm"
ENVOY = ROOT / ".venv/bin/envoy"

# nginx's global directives for every instance the tests start. Run as root,
# nginx would start its workers as `nobody`, which cannot read a checkout in a
# directory only root may enter (the static site, the temp paths under .run/):
# the workers stay the invoking user.
NGINX_GLOBALS = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")

CLIENT_SECRET = "e2e-client-secret"
COOKIE_SECRET = "K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="  # base64 of 32 bytes
API_KEY = "sk-upstream-secret-123"


_ISSUED_PORTS: set = set()
_PORT_HOLDS: list = []  # sockets holding the ports handed out, for the whole run


def _ephemeral_range() -> tuple:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port for a server the tests start later, with no window in which
    someone else can take it: it lies outside the kernel's ephemeral range (no
    outgoing connection is ever given it), and a socket bound to it with
    SO_REUSEADDR holds it until the run ends without listening, which lets the
    server (every one here sets SO_REUSEADDR) bind and listen on it while any
    other bind, from this run or another, fails."""
    lo, _ = _ephemeral_range()
    low, high = (10000, lo - 1) if lo > 12000 else (61000, 65535)
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(low, high)
        if port in _ISSUED_PORTS:
            continue
        try:
            with socket.socket() as probe:  # no SO_REUSEADDR: fails if anything holds the port
                probe.bind(("127.0.0.1", port))
            hold = socket.socket()
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(("127.0.0.1", port))
        except OSError:
            continue
        _PORT_HOLDS.append(hold)
        _ISSUED_PORTS.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


# Placeholders most tests leave as they are.
TEMPLATE_DEFAULTS = {"NORMALIZE_PATH": "true"}


def render(template: Path, values: dict) -> str:
    text = template.read_text()
    for k, v in {**TEMPLATE_DEFAULTS, **values}.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if left:
        raise ValueError(f"{template}: unfilled placeholders {sorted(set(left))}")
    return text


def child_pids(pid: int) -> list:
    """The processes `pid` started (an nginx master's workers)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    if not kids:
        r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        kids = [int(x) for x in r.stdout.split()]
    return kids


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB (0 once it is gone)."""
    try:
        m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, name: str, argv: list, env: dict | None = None, cwd: Path = ROOT):
        RUN.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = RUN / f"{name}.log"
        self.log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, self.log_text()):
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def wait_port(port: int, timeout: float = 30, proc: Proc | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_text()[-4000:]}")
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open after {timeout}s")


@dataclass
class Resp:
    status: int
    headers: list
    body: bytes
    url: str

    def header(self, name: str):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    @property
    def location(self):
        return self.header("location")

    def upstream_headers(self) -> list:
        """Headers the echo upstream received: [(name, value)] with exact spelling."""
        return [tuple(h) for h in self.json()["headers"]]

    def upstream_header(self, name: str):
        vals = [v for k, v in self.upstream_headers() if k.lower() == name.lower()]
        return vals[0] if len(vals) == 1 else (vals or None)


@dataclass
class Cookie:
    value: str
    path: str
    attrs: dict


def parse_set_cookie(line: str):
    parts = [p.strip() for p in line.split(";")]
    name, _, value = parts[0].partition("=")
    attrs = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        attrs[k.lower()] = v if _ else True
    return name, value, attrs


@dataclass
class Browser:
    """A cookie-jar client. Like a browser, it keys cookies by host (not
    port), honours Path and Max-Age, and sends Secure cookies to loopback."""

    jar: dict = field(default_factory=dict)  # (host, name) -> Cookie
    extra_headers: dict = field(default_factory=dict)

    def cookies_for(self, host: str, path: str) -> str:
        pairs = [(n, c) for (h, n), c in self.jar.items() if h == host and path.startswith(c.path.rstrip("/") or "/")]
        # Longer paths first, as browsers do.
        pairs.sort(key=lambda nc: -len(nc[1].path))
        return "; ".join(f"{n}={c.value}" for n, c in pairs)

    def store(self, host: str, lines: list) -> None:
        for line in lines:
            name, value, attrs = parse_set_cookie(line)
            path = attrs.get("path") or "/"
            if attrs.get("max-age") == "0" or value == "":
                self.jar.pop((host, name), None)
            else:
                self.jar[(host, name)] = Cookie(value, path, attrs)

    def cookie(self, name: str, host: str = "127.0.0.1"):
        c = self.jar.get((host, name))
        return c.value if c else None

    def request(self, method: str, url: str, headers: dict | None = None, body: bytes | None = None,
                raw_headers: list | None = None, send_cookies: bool = True, target: str | None = None) -> Resp:
        """`target` replaces the request-target (e.g. an absolute URL)."""
        u = urlsplit(url)
        path = url[url.index(u.netloc) + len(u.netloc):] or "/"
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
        try:
            conn.putrequest(method, target or path, skip_host=True, skip_accept_encoding=True)
            hdrs = {"Host": u.netloc, **self.extra_headers, **(headers or {})}
            host_header = hdrs.pop("Host")
            conn.putheader("Host", host_header)
            for k, v in hdrs.items():
                conn.putheader(k, v)
            for k, v in raw_headers or []:
                conn.putheader(k, v)
            jar_host = (host_header.split(":")[0] if headers and "Host" in headers else u.hostname)
            cookie = self.cookies_for(jar_host, urlsplit(path).path) if send_cookies else ""
            if cookie:
                conn.putheader("Cookie", cookie)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            data = r.read()
            resp = Resp(r.status, r.getheaders(), data, url)
        finally:
            conn.close()
        self.store(jar_host, resp.all("set-cookie"))
        return resp

    def get(self, url: str, headers: dict | None = None, **kw) -> Resp:
        return self.request("GET", url, headers, **kw)

    def follow(self, url: str, headers: dict | None = None, max_hops: int = 15, hops: list | None = None) -> Resp:
        """GETs `url` and follows redirects across hosts; records each hop."""
        hops = hops if hops is not None else []
        for _ in range(max_hops):
            resp = self.get(url, headers)
            hops.append(resp)
            if resp.status not in (301, 302, 303, 307, 308):
                return resp
            loc = resp.location
            if loc.startswith("/"):
                u = urlsplit(url)
                loc = f"{u.scheme}://{u.netloc}{loc}"
            url = loc
        raise AssertionError(f"redirect loop: {[h.url for h in hops]}")


def idp_pick_user(browser: Browser, page: Resp, user: str) -> Resp:
    """On the IdP's login page, follow the link for `user` and onwards."""
    text = page.body.decode()
    m = re.search(r'href="([^"]*login\?user=' + re.escape(user) + r')"', text)
    assert m, f"no link for {user} on the IdP page:\n{text[:500]}"
    u = urlsplit(page.url)
    link = m.group(1).replace("&amp;", "&")
    if link.startswith("/"):
        link = f"{u.scheme}://{u.netloc}{link}"
    return browser.follow(link)


def to_callback(browser: Browser, url: str, user: str) -> str:
    """Visits `url`, logs in at the IdP as `user`, and stops at the redirect
    back to the proxy: returns the callback URL, not yet requested."""
    page = browser.follow(url)
    m = re.search(r'href="([^"]*login\?user=' + re.escape(user) + r')"', page.body.decode(errors="replace"))
    assert m, f"no IdP login page after {url}: {page.status} {page.url}"
    issuer = "{0.scheme}://{0.netloc}".format(urlsplit(page.url))
    r = browser.get(issuer + m.group(1).replace("&amp;", "&"))
    while r.status in (302, 303) and "/oauth2/callback" not in r.location:
        r = browser.get(r.location if r.location.startswith("http") else issuer + r.location)
    assert r.status in (302, 303), f"IdP did not redirect back: {r.status} {r.body[:300]!r}"
    return r.location


def login(browser: Browser, url: str, user: str) -> Resp:
    """Visits a protected `url`, logs in at the IdP as `user` by clicking the
    user's link, and returns the final response after the redirect back."""
    page = browser.follow(url)
    assert page.status == 200 and b"choose a user" in page.body, f"expected the IdP login page, got {page.status} {page.url}\n{page.body[:300]!r}"
    return idp_pick_user(browser, page, user)


class TcpGate:
    """A TCP forwarder in front of the IdP that the proxy's callouts go
    through, to make the IdP unreachable without losing its state:
    "open" forwards, "refuse" closes the listener (connection refused),
    "blackhole" accepts and never answers (callouts time out)."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target_port = target_port
        self.mode = "open"
        self.server = None
        self.conns = set()
        self.open()

    def _listen(self):
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self.server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv):
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            self.conns.add(conn)
            if self.mode == "blackhole":
                threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                conn.close()
                continue
            self.conns.add(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _swallow(conn):
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _drop_connections(self):
        # Pooled connections from the proxy would otherwise bypass the outage.
        for c in list(self.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns.clear()

    def open(self):
        self.mode = "open"
        self._drop_connections()
        if self.server is None:
            self._listen()

    def blackhole(self):
        self.mode = "blackhole"
        self._drop_connections()
        if self.server is None:
            self._listen()

    def refuse(self):
        self.mode = "refuse"
        self._drop_connections()
        if self.server is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            try:
                self.server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.server.close()
            self.server = None

    def close(self):
        self.refuse()


class Idp:
    def __init__(self, clients: list, port: int | None = None, keys_file: Path | None = None, name: str = "idp",
                 options: dict | None = None):
        self.port = port or free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        RUN.mkdir(parents=True, exist_ok=True)
        cfg = {"issuer": self.issuer, "clients": clients, **(options or {})}
        if keys_file:
            cfg["keys_file"] = str(keys_file)
        self.config_path = RUN / f"{name}-config.json"
        self.config_path.write_text(json.dumps(cfg, indent=1))
        self.name = name
        self.proc = None

    def start(self) -> "Idp":
        self.proc = Proc(self.name, ["node", str(ROOT / "tests/idp/idp.mjs"), "--port", str(self.port),
                                     "--config", str(self.config_path)])
        self.proc.wait_for(r"IDP READY")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def stats(self) -> dict:
        return json.loads(Browser().get(f"{self.issuer}/test/stats").body)

    def age_session(self, browser: Browser, seconds: int) -> int:
        """Makes `browser`'s single sign-on session here `seconds` older;
        returns its new auth_time."""
        r = browser.request("POST", f"{self.issuer}/test/age-session", {"Content-Type": "application/json"},
                            json.dumps({"seconds": seconds}).encode())
        assert r.status == 200, r.body
        return json.loads(r.body)["auth_time"]

    def put_user(self, name: str, fields: dict) -> None:
        r = Browser().request("PUT", f"{self.issuer}/test/users/{name}", {"Content-Type": "application/json"},
                              json.dumps(fields).encode())
        assert r.status in (200, 201, 204), r.body


def idp_client(client_id: str, proxy_ports: list, alg: str = "RS256") -> dict:
    return {
        "client_id": client_id,
        "client_secret": CLIENT_SECRET,
        "redirect_uris": [f"http://{h}:{p}/oauth2/callback" for p in proxy_ports for h in ("127.0.0.1", "public.test")],
        "post_logout_redirect_uris": [f"http://127.0.0.1:{p}/" for p in proxy_ports],
        "id_token_signed_response_alg": alg,
        "grant_types": ["authorization_code", "refresh_token"],
    }


def filter_config(values: dict, template: str = "e2e.yaml") -> dict:
    """The filter's JSON from envoy/<template> rendered with `values`: one
    source for the filter configuration of every stack under test."""
    import yaml
    boot = yaml.safe_load(render(ROOT / "envoy" / template, {"ADMIN_PORT": 0, "WASM": WASM, **values}))
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return json.loads(hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"])


def edit_filter_config(envoy_yaml: str, edit) -> str:
    """An Envoy config whose filter configuration `edit(cfg)` changed."""
    import yaml
    boot = yaml.safe_load(envoy_yaml)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    value = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]
    cfg = json.loads(value["value"])
    edit(cfg)
    value["value"] = json.dumps(cfg)
    return yaml.safe_dump(boot, sort_keys=False)


def with_coordinator(envoy_yaml: str, port: int) -> str:
    """An Envoy config whose filter hands fleet work to the sidecar on `port`
    (`fleet.coordinator` naming a cluster added for it)."""
    import yaml
    boot = yaml.safe_load(edit_filter_config(envoy_yaml, lambda cfg: cfg.update(fleet={"coordinator": "oidc_edge_sidecar"})))
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    boot["static_resources"]["clusters"].append({
        "name": "oidc_edge_sidecar", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "oidc_edge_sidecar", "endpoints": [{"lb_endpoints": [endpoint]}]}})
    return yaml.safe_dump(boot, sort_keys=False)


def wait_login_ready(port: int, timeout: float = 20, log=lambda: "") -> None:
    """Waits until a login can start through the proxy on `port` (discovery
    and JWKS loaded), which the first requests themselves trigger."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if Browser().get(f"http://127.0.0.1:{port}/oauth2/start").status == 302:
            return
        time.sleep(0.2)
    raise RuntimeError(f"provider metadata not loaded after {timeout}s:\n{log()[-3000:]}")


# --- a fleet's store -------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def valkey_server() -> str:
    """Valkey's server, built from Debian's source package once per machine."""
    r = subprocess.run([str(ROOT / "scripts/build-valkey.sh")], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"scripts/build-valkey.sh failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


class Redis:
    """Debian's redis-server (or Valkey's server) on a port of its own,
    nothing saved to disk."""

    def __init__(self, server: str = "redis-server"):
        self.port = free_port()
        self.server = server
        self.proc = None

    def start(self) -> "Redis":
        self.proc = Proc(f"{Path(self.server).name}-{self.port}",
                         [self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None


# --- gates ---------------------------------------------------------------------
# A gate is a proxy in front of the echo upstream (or the sidecar alone), as
# the conformance tests, the soak and the bench start it: one interface for
# all of them, one class per kind of gate.

SIDECAR = ROOT / "target/release/oidc-edge"
NGINX = "/usr/sbin/nginx"
CADDY = ROOT / ".venv/bin/caddy"
TRAEFIK = ROOT / ".venv/bin/traefik"

# What a crash, a trap or a fatal error looks like in any gate's log: Envoy
# and V8 ("[critical]", "RuntimeError", "Uncaught"), nginx ("[crit]",
# "[alert]", "[emerg]") and ngx_wasm_module ("error while executing"), a
# Rust panic in the filter or the sidecar.
FATAL = ("panicked", "RuntimeError", "[critical]", "wasm trap", "Uncaught", "[alert]", "[emerg]", "[crit]",
         "error while executing")

# The secrets every gate's configuration names.
SECRETS_ENV = {"OIDC_EDGE_CLIENT_SECRET": CLIENT_SECRET, "OIDC_EDGE_COOKIE_SECRET": COOKIE_SECRET, "DEMO_API_KEY": API_KEY}


class Gate:
    """A proxy started on 127.0.0.1 with a rendered config, optionally pinned
    to one CPU (`taskset`, which execs the proxy: the PID stays the proxy's),
    optionally asking its own sidecar (started before it, pinned with it,
    stopped after it, its log and counters the gate's).

    What differs between gates is said by these class-level capabilities,
    so callers never test which class a gate is:
      kind                 its column in the conformance table
      has_counters         counter() and settled_counter() read the filter's
                           or the sidecar's counters
      rewrites_path        cleans the request path by its own rules and
                           forwards its result, not the path the filter or
                           sidecar decided on (Traefik merges slashes first)
      refresh_by_redirect  a session refreshed in a forward-auth call reaches
                           the browser as a 307 to the same URL carrying the
                           new cookie (the proxy only copies the sidecar's
                           headers into the upstream request); otherwise the
                           answer itself carries the new cookie
    """

    kind = ""
    rewrites_path = False
    refresh_by_redirect = False

    def __init__(self, name: str, port: int, cpu: int | None = None):
        self.name = name
        self.port = port
        self.cpu = cpu
        self.proc: Proc | None = None
        self.sidecar: Sidecar | None = None
        self.config_path: Path | None = None  # the config it runs
        self.env: dict = {}                    # for its process, on top of ours

    @property
    def has_counters(self) -> bool:
        return self.sidecar is not None

    # --- process -----------------------------------------------------------
    def argv(self) -> list:
        raise NotImplementedError

    def _ready(self) -> None:
        wait_port(self.port, proc=self.proc)
        if self.sidecar is not None:
            # The proxy routes our pages to the sidecar (Traefik only once its
            # file provider has loaded the routers, after it listens).
            deadline = time.time() + 20
            while Browser().get(self.url("/oauth2/sign_in")).status != 200:
                assert time.time() < deadline, f"{self.name} never routed its pages:\n{self.log_text()[-3000:]}"
                time.sleep(0.1)

    def start(self) -> "Gate":
        if self.sidecar is not None:
            self.sidecar.start()
        argv = self.argv()
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu)] + argv
        self.proc = Proc(self.name, argv, env=self.env)
        self._ready()
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
        if self.sidecar is not None:
            self.sidecar.stop()

    def _attach_sidecar(self, values: dict, sidecar, env: dict | None) -> None:
        """`sidecar`: True for one with the e2e configuration, a Sidecar, or None."""
        if sidecar is True:
            sidecar = Sidecar(values, name=f"{self.name}-sidecar", env=env)
        self.sidecar = sidecar or None
        if self.sidecar is not None:
            self.sidecar.cpu = self.cpu

    def worker_pids(self) -> list:
        """The processes that do the proxy's work."""
        return [self.proc.pid]

    def sidecar_pid(self) -> int | None:
        return self.sidecar.proc.pid if self.sidecar is not None else None

    def busy_pids(self) -> list:
        """What a request through this gate costs CPU in: the proxy's workers and its sidecar."""
        pids = self.worker_pids()
        sidecar = self.sidecar_pid()
        return pids + ([sidecar] if sidecar and sidecar not in pids else [])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_provider_loaded(self, timeout: float = 20) -> None:
        wait_login_ready(self.port, timeout, self.log_text)

    # --- logs --------------------------------------------------------------
    def log_paths(self) -> list:
        """The files this gate's processes log to, its sidecar's included."""
        own = [self.proc.log_path] if self.proc else []
        return own + (self.sidecar.log_paths() if self.sidecar is not None else [])

    def log_mark(self) -> dict:
        """Where each log ends now, for log_since()."""
        return {p: (p.stat().st_size if p.exists() else 0) for p in self.log_paths()}

    def log_since(self, mark: dict | None = None) -> str:
        """What the logs gained since `mark` (everything without one)."""
        parts = []
        for path in self.log_paths():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            start = (mark or {}).get(path, 0)
            parts.append(data[start if start <= len(data) else 0:].decode(errors="replace"))
        return "".join(p if p.endswith("\n") else p + "\n" for p in parts if p)

    def log_text(self) -> str:
        return self.log_since(None)

    def fatal_lines(self, mark: dict | None = None) -> list:
        """Lines since `mark` that show a crash, a trap or a fatal error."""
        return [line for line in self.log_since(mark).splitlines() if any(f in line for f in FATAL)]

    # --- counters and answers ------------------------------------------------
    def count(self, name: str) -> int:
        """A counter's value now (gates with has_counters)."""
        if self.sidecar is None:
            raise NotImplementedError(f"{self.name}: a {self.kind} gate has no counters")
        return self.sidecar.count(name)

    def counter(self, name: str, at_least: int = 0, timeout: float = 3) -> int:
        """A counter, polled until it reaches `at_least` (or time runs out)."""
        deadline = time.time() + timeout
        while True:
            value = self.count(name)
            if value >= at_least or time.time() > deadline:
                return value
            time.sleep(0.1)

    def settled_counter(self, name: str) -> int:
        """A counter once everything counted so far shows in it."""
        return self.counter(name)

    def answers_mark(self):
        """Where the gate's own count of its answers stands, for wrong_answers()."""
        return None

    def wrong_answers(self, mark, requests: int) -> str | None:
        """What was wrong with the gate's answers since `mark`, `requests`
        requests later ("" when nothing), or None when it does not count them."""
        return None


class Envoy(Gate):
    """Envoy with the filter (or any config from envoy/), `workers` worker threads."""

    kind = "envoy"
    has_counters = True

    def __init__(self, values: dict, name: str = "envoy", *, template: str = "e2e.yaml", env: dict | None = None,
                 cpu: int | None = None, workers: int = 2, coordinator_port: int | None = None, filter_edit=None):
        super().__init__(name, values.get("PROXY_PORT"), cpu)
        self.admin_port = free_port()
        self.values = {"ADMIN_PORT": self.admin_port, "WASM": WASM, **values}
        RUN.mkdir(parents=True, exist_ok=True)
        self.config_path = RUN / f"{name}.yaml"
        text = render(ROOT / "envoy" / template, self.values)
        if coordinator_port:
            text = with_coordinator(text, coordinator_port)
        if filter_edit:
            text = edit_filter_config(text, filter_edit)
        self.config_path.write_text(text)
        self.workers = workers
        self.env = {**SECRETS_ENV, **(env or {})}

    def argv(self) -> list:
        wasm = Path(self.values["WASM"])
        assert str(wasm) not in self.config_path.read_text() or wasm.exists(), f"{wasm} missing: build it with `make wasm`"
        return [str(ENVOY), "-c", str(self.config_path), "--concurrency", str(self.workers), "--log-level", "warn",
                "--component-log-level", "wasm:info", "--base-id", str(free_port())]

    def _ready(self) -> None:
        wait_port(self.admin_port, proc=self.proc)
        if self.port:
            wait_port(self.port, proc=self.proc)

    def stats(self, pattern: str = "oidc_edge") -> dict:
        text = Browser().get(f"http://127.0.0.1:{self.admin_port}/stats?filter={pattern}").body.decode()
        out = {}
        for line in text.splitlines():
            k, _, v = line.partition(": ")
            out[k] = int(v) if v.isdigit() else v
        return out

    def count(self, name: str) -> int:
        return sum(v for k, v in self.stats().items() if k.endswith(name) and isinstance(v, int))

    def settled_counter(self, name: str) -> int:
        # Workers flush their counts to Envoy every half second.
        time.sleep(1.3)
        return self.counter(name)

    def served_by_worker(self) -> dict:
        """Connections each worker thread has taken so far."""
        return {k: v for k, v in self.stats(r"worker_\d+\.downstream_cx_total").items() if isinstance(v, int)}

    def responses(self) -> dict:
        """Downstream responses by class: {'2xx': n, '3xx': n, ...}."""
        stats = self.stats(r"^http\.main\.downstream_rq_[1-5]xx$")
        return {k.rsplit("_", 1)[1]: v for k, v in stats.items() if isinstance(v, int)}

    def answers_mark(self):
        return self.responses()

    def wrong_answers(self, mark, requests: int) -> str | None:
        after = self.responses()
        delta = {k: after.get(k, 0) - mark.get(k, 0) for k in set(after) | set(mark)}
        bad = {k: v for k, v in delta.items() if k != "2xx" and v}
        if bad:
            return f"Envoy answered non-2xx during the run: {bad}"
        if delta.get("2xx", 0) < requests:
            return f"Envoy counted {delta.get('2xx', 0)} 2xx for {requests} wrk requests"
        return ""


@functools.lru_cache(maxsize=None)
def ngx_wasm_module() -> str:
    """ngx_wasm_module for Debian's nginx (scripts/build-ngx-wasm.sh prints the
    module's path last; it is cached after the first build)."""
    r = subprocess.run([str(ROOT / "scripts/build-ngx-wasm.sh")], capture_output=True, text=True, check=False)
    if r.returncode != 0 or not r.stdout.strip():
        raise RuntimeError(f"scripts/build-ngx-wasm.sh failed:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


class Nginx(Gate):
    """Debian's nginx running a config from nginx/: by default e2e.conf, with
    ngx_wasm_module (built by scripts/build-ngx-wasm.sh) and the same filter
    and filter configuration as the Envoy gate, callouts going to host:port
    instead of a cluster. ngx_wasm_module 0.6.0 keeps the filter's metrics in
    nginx's shared memory with no endpoint to read them from outside."""

    kind = "nginx"
    template = "e2e.conf"

    def __init__(self, values: dict, name: str = "nginx", *, template: str | None = None, env: dict | None = None,
                 cpu: int | None = None, sidecar=None, coordinator_port: int | None = None):
        super().__init__(name, values["PROXY_PORT"], cpu)
        self.prefix = RUN / name
        shutil.rmtree(self.prefix, ignore_errors=True)
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self._attach_sidecar(values, sidecar, env)
        template = ROOT / "nginx" / (template or self.template)
        fill = {"PREFIX": self.prefix, "WASM": WASM, "SITE": ROOT / "nginx/www", **values}
        text = template.read_text()
        if "{{MODULE}}" in text:
            fill["MODULE"] = self.module
        if "{{FILTER_CONFIG}}" in text:
            cfg = filter_config(values)
            idp = f"127.0.0.1:{values['IDP_CLUSTER_PORT']}"
            cfg["provider"]["callouts"] = {k: idp for k in cfg["provider"]["callouts"]}
            if coordinator_port:
                cfg["fleet"] = {"coordinator": f"127.0.0.1:{coordinator_port}"}
            fill["FILTER_CONFIG"] = json.dumps(cfg)
        if self.sidecar is not None:
            self.sidecar.render("nginx", self.prefix / "oidc-edge")
            fill["SIDECAR_PORT"] = self.sidecar.port
        self.config_path = self.prefix / "nginx.conf"
        self.config_path.write_text(render(template, fill))
        self.env = {**SECRETS_ENV, "OIDC_EDGE_NEW_COOKIE_SECRET": COOKIE_SECRET, **(env or {})}

    @property
    def module(self) -> str:
        return ngx_wasm_module()

    def argv(self) -> list:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.config_path), "-e", str(self.prefix / "error.log"),
                "-g", NGINX_GLOBALS]

    def log_paths(self) -> list:
        return [self.prefix / "error.log"] + super().log_paths()

    def worker_pids(self) -> list:
        """nginx's workers: the master's children, once it has forked them all
        (it listens before it forks them); the one process without a master."""
        text = self.config_path.read_text()
        if re.search(r"^\s*master_process\s+off;", text, re.M):
            return [self.proc.pid]
        m = re.search(r"^\s*worker_processes\s+(\d+);", text, re.M)
        want = int(m.group(1)) if m else 1
        deadline = time.monotonic() + 10
        while True:
            kids = child_pids(self.proc.pid)
            if len(kids) == want or time.monotonic() > deadline or not self.proc.alive():
                return kids
            time.sleep(0.05)

    def served_by_worker(self) -> dict:
        """Requests each worker has answered so far, from access.log (whose
        "worker" format begins with the worker's PID)."""
        path = self.prefix / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return dict(collections.Counter(line.split()[0] for line in lines if line.strip()))

    # The bench configs log every non-2xx answer to not-2xx.log.
    def answers_mark(self):
        path = self.prefix / "not-2xx.log"
        return path.stat().st_size if path.exists() else 0

    def wrong_answers(self, mark, requests: int) -> str | None:
        if "not-2xx.log" not in self.config_path.read_text():
            return None
        path = self.prefix / "not-2xx.log"
        if not path.exists() or path.stat().st_size <= mark:
            return ""
        with open(path, "rb") as f:
            f.seek(mark)
            lines = f.read().decode(errors="replace").splitlines()
        # 499: wrk closed a connection with a request in flight when its time was up.
        lines = [line for line in lines if '" 499 ' not in line]
        return f"nginx answered {len(lines)} non-2xx during the run, e.g.:\n" + "\n".join(lines[:5]) if lines else ""


class NginxSidecar(Nginx):
    """Debian's stock nginx with auth_request to its own sidecar, which also
    serves the login pages: the snippets `oidc-edge render nginx` writes."""

    kind = "nginx-sidecar"
    template = "sidecar-e2e.conf"

    def __init__(self, values: dict, name: str = "nginx-sidecar", *, template: str | None = None,
                 env: dict | None = None, cpu: int | None = None, sidecar=True):
        super().__init__(values, name, template=template, env=env, cpu=cpu, sidecar=sidecar)
        self.env = {"HOME": str(self.prefix), "XDG_DATA_HOME": str(self.prefix / "data"),
                    "XDG_CONFIG_HOME": str(self.prefix / "config")}


class Caddy(Gate):
    """Caddy with forward_auth to its own sidecar (the snippet `oidc-edge
    render caddy` writes); `sidecar=None` for a config without one. Caddy
    copies the sidecar's headers into the upstream request only."""

    kind = "caddy"
    refresh_by_redirect = True

    def __init__(self, values: dict, name: str = "caddy", *, template: str = "e2e.Caddyfile", env: dict | None = None,
                 cpu: int | None = None, sidecar=True, workers: int | None = None):
        super().__init__(name, values["PROXY_PORT"], cpu)
        self.prefix = RUN / name
        shutil.rmtree(self.prefix, ignore_errors=True)
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self._attach_sidecar(values, sidecar, env)
        fill = {"PREFIX": self.prefix, **values}
        if self.sidecar is not None:
            self.sidecar.render("caddy", self.prefix)
            fill["SIDECAR_PORT"] = self.sidecar.port
        self.config_path = self.prefix / "Caddyfile"
        self.config_path.write_text(render(ROOT / "caddy" / template, fill))
        self.env = {"HOME": str(self.prefix), "XDG_DATA_HOME": str(self.prefix / "data"),
                    "XDG_CONFIG_HOME": str(self.prefix / "config")}
        if workers:
            self.env["GOMAXPROCS"] = str(workers)

    def argv(self) -> list:
        assert CADDY.exists(), "Caddy is missing: run `make setup` (installs caddyserver into .venv)"
        return [str(CADDY), "run", "--config", str(self.config_path), "--adapter", "caddyfile"]


class Traefik(Gate):
    """Traefik with forwardAuth to its own sidecar: the dynamic config
    `oidc-edge render traefik` writes, beside the e2e routers. Traefik cleans
    the path itself (merging slashes before resolving "..") and forwards its
    own result; it copies the sidecar's headers into the upstream request only."""

    kind = "traefik"
    rewrites_path = True
    refresh_by_redirect = True

    def __init__(self, values: dict, name: str = "traefik", *, template: str = "e2e.yml", env: dict | None = None,
                 cpu: int | None = None, sidecar=True):
        super().__init__(name, values["PROXY_PORT"], cpu)
        self.prefix = RUN / name
        shutil.rmtree(self.prefix, ignore_errors=True)
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self._attach_sidecar(values, sidecar, env)
        self.config_path = self.prefix / "dynamic"
        if self.sidecar is not None:
            self.sidecar.render("traefik", self.config_path)
        self.config_path.mkdir(exist_ok=True)
        (self.config_path / template).write_text(render(ROOT / "traefik" / template, values))
        self.env = {"HOME": str(self.prefix), "XDG_DATA_HOME": str(self.prefix / "data"),
                    "XDG_CONFIG_HOME": str(self.prefix / "config")}

    def argv(self) -> list:
        return [str(TRAEFIK), f"--entryPoints.web.address=127.0.0.1:{self.port}",
                f"--providers.file.directory={self.config_path}", "--providers.file.watch=false",
                "--log.level=ERROR", "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false"]


class Sidecar(Gate):
    """The native sidecar alone, on a port of its own, with the filter's e2e
    configuration (envoy/<template>) as JSON plus its own section; IdP calls go
    to 127.0.0.1:IDP_CLUSTER_PORT. It answers decisions only for requests
    carrying its proxy token, which the rendered snippets send."""

    kind = "sidecar"
    has_counters = True

    def __init__(self, values: dict, name: str = "sidecar", *, template: str = "e2e.yaml", env: dict | None = None,
                 cpu: int | None = None, log_level: str = "debug", store: dict | None = None,
                 proxy_token: str | None = None):
        """`store`: the configuration's `store:` section (a fleet's Redis);
        `proxy_token`: the one its fleet shares (else a new one)."""
        assert SIDECAR.exists(), f"{SIDECAR} missing: build it with `make build`"
        super().__init__(name, free_port(), cpu)
        cfg = filter_config(values, template)
        idp = f"127.0.0.1:{values['IDP_CLUSTER_PORT']}"
        cfg["provider"]["callouts"] = {k: idp for k in cfg["provider"]["callouts"]}
        self.proxy_token = proxy_token or base64.b64encode(os.urandom(32)).decode()
        cfg["sidecar"] = {"listen": f"127.0.0.1:{self.port}", "log_level": log_level,
                          "proxy_token": {"env": "OIDC_EDGE_PROXY_TOKEN"}}
        if store is not None:
            cfg["store"] = store
        RUN.mkdir(parents=True, exist_ok=True)
        self.config_path = RUN / f"{name}.json"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.env = {**SECRETS_ENV, "OIDC_EDGE_PROXY_TOKEN": self.proxy_token, **(env or {})}

    def argv(self) -> list:
        return [str(SIDECAR), "serve", "--config", str(self.config_path)]

    def sidecar_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def render(self, proxy: str, out: Path) -> None:
        """The proxy's snippets for this sidecar's configuration (`oidc-edge render`)."""
        r = subprocess.run([str(SIDECAR), "render", proxy, "--config", str(self.config_path), "--out", str(out)],
                           capture_output=True, text=True, env={**os.environ, **self.env})
        assert r.returncode == 0, f"oidc-edge render {proxy} failed:\n{r.stderr}"

    def metrics(self) -> dict:
        """Every sample of /metrics (OpenMetrics text) by its name as exported:
        counters end in `_total` there."""
        text = Browser().get(f"http://127.0.0.1:{self.port}/metrics").body.decode()
        return {k: int(v) for k, _, v in (line.partition(" ") for line in text.splitlines())
                if k and not k.startswith("#") and v.isdigit()}

    def count(self, name: str) -> int:
        """The counter the filter calls `name` (`oidc_edge_logins_started`,
        as in Envoy's stats): the sidecar exports it as `name` + `_total`."""
        samples = self.metrics()
        assert f"{name}_total" in samples, f"the sidecar exports no {name}_total: {sorted(samples)}"
        return samples[f"{name}_total"]


# The gates of the conformance table, by kind.
GATE_CLASSES = {cls.kind: cls for cls in (Envoy, Nginx, NginxSidecar, Caddy, Traefik)}


class Stack:
    """The e2e stack: the test IdP, the echo upstream, Envoy with the filter
    on two workers, and on first use the shared gate of every other kind;
    every gate started through it is kept in `gates` (checked for crashes,
    logs shown on a failure) and stopped with it."""

    def __init__(self):
        self.upstream_port = free_port()
        # The port of the shared gate of each kind, registered at the IdP,
        # and one for the fleet (two sidecars behind one nginx).
        self.ports = {kind: free_port() for kind in GATE_CLASSES}
        self.fleet_port = free_port()
        self.proxy_port = self.ports["envoy"]
        self.es_port = free_port()
        self.ed_port = free_port()
        self.idp = Idp([
            idp_client("oidc-edge", [*self.ports.values(), self.fleet_port]),
            idp_client("edge-es256", [self.es_port], "ES256"),
            idp_client("edge-eddsa", [self.ed_port], "EdDSA"),
        ])
        self.echo = None
        self.gates = []
        self.shared = {}

    def values(self, port, **values) -> dict:
        return {"PROXY_PORT": port, "IDP_PORT": self.idp.port, "IDP_CLUSTER_PORT": self.idp.port,
                "UPSTREAM_PORT": self.upstream_port, "CLIENT_ID": "oidc-edge",
                "COOKIE_SECRETS": '[{"env": "OIDC_EDGE_COOKIE_SECRET"}]', "SESSION_LIFETIME": "1h",
                "REFRESH_INTERVAL": "1h", "TIMEOUT_MS": 3000, **values}

    def proxy(self, kind: str, name: str, port: int, idp_port: int | None = None, env: dict | None = None,
              **values) -> Gate:
        """A started gate of `kind` with the e2e config; `values` fill or
        override its placeholders (IDP_CLUSTER_PORT defaults to the IdP's)."""
        idp_port = idp_port or self.idp.port
        g = GATE_CLASSES[kind]({**self.values(port, IDP_PORT=idp_port, IDP_CLUSTER_PORT=idp_port), **values},
                               name, env=env)
        self.gates.append(g)
        return g.start()

    def envoy(self, name: str, port: int, **values) -> Envoy:
        return self.proxy("envoy", name, port, **values)

    def gate(self, kind: str) -> Gate:
        """The gate of `kind` the conformance tests share, started on first
        use and ready for logins."""
        if kind not in self.shared:
            self.shared[kind] = self.proxy(kind, f"{kind}-main", self.ports[kind])
            self.shared[kind].wait_provider_loaded()
        return self.shared[kind]

    @property
    def main(self) -> Envoy:
        return self.shared["envoy"]

    def start(self) -> "Stack":
        self.idp.start()
        self.echo = Proc("echo", [sys.executable, str(ROOT / "tests/upstream/echo.py"), str(self.upstream_port)])
        self.echo.wait_for("ECHO READY")
        self.gate("envoy")
        return self

    def stop(self) -> None:
        for g in self.gates:
            g.stop()
        if self.echo:
            self.echo.stop()
        self.idp.stop()

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.proxy_port}{path}"
