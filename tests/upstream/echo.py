#!/usr/bin/env python3
"""The demo and test upstream: answers any request with a JSON echo of what it
received (method, path, and every header in order, with its exact spelling),
so tests can assert on what actually reached the service behind the proxy.

A browser (an Accept header that ranks text/html above JSON) gets the same
as a page a person can read: who the gate says you are, your groups, the
headers with the identity headers and injected secrets marked (secrets
masked), links to the demo's routes and a sign-out button. The echo cannot
see the gate's configuration, so those header names and paths are options
whose defaults are the demo's (sidecar/demo.yaml)."""

import argparse
import html
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEMO_ROUTES = ["/", "/public/", "/admin/", "/media/", "/sonarr/", "/api/"]

# The gate pages' style (STYLE in src/pages.rs, byte for byte: the e2e page
# test compares them) so that the demo and the gate look like one thing,
# then what only this page needs.
STYLE = (":root{color-scheme:light dark;--f:#1d2125;--b:#fff;--a:#0b57d0}"
         "@media(prefers-color-scheme:dark){:root{--f:#e3e6e8;--b:#16191d;--a:#8ab4f8}}"
         "body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:var(--f);background:var(--b)}"
         "h1{font-size:1.5em;line-height:1.2}a{color:var(--a)}"
         "button{font:inherit;padding:.4em 1.2em;border:2px solid var(--a);border-radius:.3em;color:var(--b);background:var(--a);cursor:pointer}"
         ":focus-visible{outline:3px solid var(--a);outline-offset:2px}")
ECHO_STYLE = (":root{--m:#555e68;--l:#d6dade;--t:#e8f0fe;--w:#8a4b00;--u:#fdf1e0}"
              "@media(prefers-color-scheme:dark){:root{--m:#a3acb5;--l:#353b42;--t:#1e2a3c;--w:#f5c07a;--u:#2e2413}}"
              "body{max-width:60em}h2{font-size:1.15em;margin:2em 0 .5em}"
              "dl{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.5em}dt{color:var(--m)}dd{margin:0}"
              "ul{list-style:none;padding:0;margin:0;display:flex;flex-wrap:wrap;gap:.4em 1.2em}"
              ".tag,.badge{display:inline-block;padding:0 .6em;border-radius:1em;color:var(--a);background:var(--t)}"
              ".badge{font-size:.75em;font-weight:600;margin-left:.2em}.secret .badge{color:var(--w);background:var(--u)}"
              ".identity th{box-shadow:inset 3px 0 var(--a)}.secret th{box-shadow:inset 3px 0 var(--w)}"
              "table{border-collapse:collapse;width:100%}th,td{text-align:left;vertical-align:top;padding:.35em .5em;border-bottom:1px solid var(--l)}"
              "thead th{color:var(--m);font-weight:400}tbody th{font-weight:600;white-space:nowrap}"
              "td{word-break:break-all}code{font:.9em ui-monospace,monospace}.m{color:var(--m)}")
CSP = "default-src 'none'; style-src 'unsafe-inline'"


def prefers_html(accept: str | None) -> bool:
    """Whether `accept` ranks text/html above application/json, each taking
    the q of the most specific range that matches it (RFC 9110, 12.5.1): a
    browser's `text/html,…,*/*;q=0.8` does; curl's `*/*`, no Accept at all
    and `application/json` do not, and keep the JSON the tests parse."""
    if not accept:
        return False
    best = {"text/html": (-1, 0.0), "application/json": (-1, 0.0)}
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        for target, (specificity, _) in best.items():
            kind = target.split("/")[0]
            rank = 2 if media == target else 1 if media == kind + "/*" else 0 if media == "*/*" else -1
            if rank > specificity:
                best[target] = (rank, q)
    return best["text/html"][1] > best["application/json"][1]


def mask(value: str) -> str:
    """Enough of a secret to recognize it, never enough to use it."""
    return (value[:2] if len(value) >= 8 else "") + "…"


def readable(value: str) -> str:
    """A header value as a person means it: http.server decodes headers as
    Latin-1, and names arrive as UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def e(text) -> str:
    return html.escape(str(text), quote=True)


def page(method: str, path: str, headers: list, body_bytes: int, opts) -> bytes:
    by_name = {}
    for k, v in headers:
        by_name.setdefault(k.lower(), readable(v))
    user, name, email, groups = (by_name.get(h.lower()) for h in (opts.user_header, opts.name_header,
                                                                   opts.email_header, opts.groups_header))
    identity = {h.lower() for h in (opts.user_header, opts.name_header, opts.email_header, opts.groups_header)}
    secrets = {h.lower() for h in opts.secret_header}
    out = []
    if user:
        heading = f"Signed in as {name or user}"
        out.append(f"<h1>{e(heading)}</h1><dl>")
        out.append(f'<dt>User</dt><dd id="user">{e(user)}</dd>')
        if name:
            out.append(f"<dt>Name</dt><dd>{e(name)}</dd>")
        out.append(f"<dt>Email</dt><dd>{e(email) if email else '<span class=m>none</span>'}</dd>")
        tags = [g.strip() for g in (groups or "").split(",") if g.strip()]
        tags_html = "".join(f'<li class="tag">{e(g)}</li>' for g in tags) if tags else "<li class=m>none</li>"
        out.append(f'<dt>Groups</dt><dd><ul id="groups">{tags_html}</ul></dd></dl>')
        out.append(f'<form method="post" action="{e(opts.sign_out)}"><p><button type="submit">Sign out</button></p></form>')
    else:
        heading = "Not signed in"
        out.append(f"<h1>{heading}</h1><p>No identity headers arrived: you are not signed in, or this route is "
                   "public (public routes never get them).</p>")
        out.append(f'<p><a href="{e(opts.sign_in)}">Sign in</a></p>')
    links = "".join(f'<li><a href="{e(r)}">{e(r)}</a></li>' for r in opts.route)
    out.append(f'<nav aria-labelledby="routes"><h2 id="routes">Demo routes</h2><ul>{links}</ul></nav>')
    out.append(f"<h2>What the upstream received</h2><p><code>{e(method)} {e(path)}</code>"
               f'{f" <span class=m>with a {body_bytes}-byte body</span>" if body_bytes else ""}</p>')
    out.append('<table><thead><tr><th scope="col">Header</th><th scope="col">Value</th></tr></thead><tbody>')
    for k, v in headers:
        if k.lower() in secrets:
            cell = f'<code>{e(mask(v))}</code> <span class="m">({len(v)} characters, masked)</span>'
            out.append(f'<tr class="secret"><th scope="row">{e(k)} <span class="badge">injected secret</span></th>'
                       f"<td>{cell}</td></tr>")
        elif k.lower() in identity:
            out.append(f'<tr class="identity"><th scope="row">{e(k)} <span class="badge">identity</span></th>'
                       f"<td><code>{e(readable(v))}</code></td></tr>")
        else:
            out.append(f'<tr><th scope="row">{e(k)}</th><td><code>{e(readable(v))}</code></td></tr>')
    out.append("</tbody></table>")
    out.append('<p class="m">curl and API clients get this as JSON (any Accept header that does not prefer '
               "<code>text/html</code>).</p>")
    doc = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
           f"<title>{e(heading)} · oidc-edge demo</title><style>{STYLE}{ECHO_STYLE}</style></head>"
           f"<body><main>{''.join(out)}</main></body></html>\n")
    return doc.encode()


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits
    # for the proxy's delayed ACK (about 40 ms) on every kept-alive request.
    disable_nagle_algorithm = True
    options = None

    def _read_body(self) -> bytes:
        """The body as a typical upstream frames it: chunked when
        Transfer-Encoding says so (it wins over Content-Length, RFC 9112
        6.3), else Content-Length."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self):
        body = self._read_body()
        headers = [[k, v] for k, v in self.headers.raw_items()]
        # Requests that carry a probe marker are logged, so a test can see a
        # request that reached the service without an answer coming back to
        # its sender (a smuggled one, answered to someone else).
        probe = self.headers.get("x-probe")
        if probe:
            print(f"PROBE {probe} {self.command} {self.path} user={self.headers.get('remote-user')}", flush=True)
        if prefers_html(self.headers.get("accept")):
            out = page(self.command, self.path, headers, len(body), self.options)
            extra = [("content-type", "text/html; charset=utf-8"), ("content-security-policy", CSP),
                     ("x-content-type-options", "nosniff"), ("cache-control", "no-store")]
        else:
            payload = {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body_bytes": len(body),
            }
            out = json.dumps(payload, indent=1).encode()
            extra = [("content-type", "application/json")]
        self.send_response(200)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("vary", "accept")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, *args):
        pass


def options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", nargs="?", type=int, default=9100)
    p.add_argument("--user-header", default="Remote-User")
    p.add_argument("--name-header", default="Remote-Name")
    p.add_argument("--email-header", default="Remote-Email")
    p.add_argument("--groups-header", default="Remote-Groups", help="comma-separated groups")
    p.add_argument("--secret-header", action="append", metavar="NAME",
                   help="a header the gate injects that the page masks (repeatable; default x-api-key)")
    p.add_argument("--route", action="append", metavar="PATH",
                   help=f"a route to link to (repeatable; default {' '.join(DEMO_ROUTES)})")
    p.add_argument("--sign-in", default="/oauth2/start?rd=%2F", help="where a sign-in starts (the gate's paths.start)")
    p.add_argument("--sign-out", default="/oauth2/sign_out", help="the gate's paths.sign_out")
    opts = p.parse_args(argv)
    # append's default would be appended to, not replaced.
    opts.secret_header = opts.secret_header or ["x-api-key"]
    opts.route = opts.route or DEMO_ROUTES
    return opts


def main():
    opts = options()
    Echo.options = opts
    server = ThreadingHTTPServer(("127.0.0.1", opts.port), Echo)
    print(f"ECHO READY http://127.0.0.1:{opts.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
