"""What only a real browser shows: headless Chromium (Debian's, driven by
Playwright) logs in through each gate, then visits a page on another origin
that tries to sign it out with an <img> and with an auto-submitted form.
The browser itself sets Fetch Metadata (`Sec-Fetch-Site`) on those
requests; the session must survive both, and the "Sign out?" page's own
button must then sign out."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import free_port

@pytest.fixture(scope="module")
def other_site():
    """Pages on another origin (another port: same site, other origin)."""
    pages = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield port, pages
    finally:
        server.shutdown()
        server.server_close()


def _has_session(context):
    # Chromium keeps `Secure` cookies for http://127.0.0.1 (a trustworthy
    # origin) but leaves them out of a listing by an http URL: list them all.
    return any(c["name"] == "_oidc_edge" for c in context.cookies())


def _upstream_user(page):
    """Who the echo upstream's page (what a browser gets from it) says the
    gate signed in, or None when the page is not its signed-in page (a login
    page, say)."""
    user = page.locator("#user")
    return user.inner_text() if user.count() else None


def test_another_site_cannot_sign_the_browser_out(gate, stack, chromium, other_site):
    port, pages = other_site
    sign_out = gate.url("/oauth2/sign_out")
    pages["/img"] = f'<!doctype html><title>cats</title><img src="{sign_out}">'
    pages["/form"] = (f'<!doctype html><title>cats</title><form id=f method=post action="{sign_out}"></form>'
                      '<script>document.getElementById("f").submit()</script>')
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(gate.url("/app/"))
        page.click("text=alice")
        page.wait_for_url(gate.url("/app/"))
        assert _upstream_user(page) == "alice"

        page.goto(f"http://127.0.0.1:{port}/img")
        page.wait_for_load_state("networkidle")
        page.goto(gate.url("/app/"))
        assert _upstream_user(page) == "alice", "an <img> on another site signed the browser out"

        page.goto(f"http://127.0.0.1:{port}/form")
        page.wait_for_url(sign_out)
        assert page.title() == "Sign out?"
        assert _has_session(context)
        page.goto(gate.url("/app/"))
        assert _upstream_user(page) == "alice", "a form on another site signed the browser out"

        # The confirmation page's own button: a same-origin POST, which signs out.
        page.goto(f"http://127.0.0.1:{port}/form")
        page.wait_for_url(sign_out)
        page.click("button")
        # Out through the IdP's end-session endpoint and back to this site's
        # post-logout URL (which, in this configuration, serves no route).
        page.wait_for_url(gate.url("/"))
        assert not _has_session(context)
    finally:
        context.close()
