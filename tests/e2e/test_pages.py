"""The pages people see, in a real browser (Debian's headless Chromium,
driven by Playwright), through each gate: the gate's sign-in, 403, 503,
error and "Sign out?" pages and the demo echo page. Each renders with no
console error or warning (a CSP violation is one), its heading, a language,
readable contrast, and a dark background when the browser prefers dark.

OIDC_EDGE_SCREENSHOT=path saves the signed-in echo page, as the Envoy gate
shows it, to `path` (light mode, 1000 px wide): docs/demo-signed-in.png is one."""

import os
import re


from harness import API_KEY, free_port

SCREENSHOT = os.environ.get("OIDC_EDGE_SCREENSHOT")


class Watched:
    """A browser context whose pages' console errors and warnings, and
    uncaught exceptions, are kept (with the URL of the page they came from)."""

    def __init__(self, browser, **options):
        self.context = browser.new_context(viewport={"width": 1000, "height": 800}, **options)
        self.problems = []
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.problems.append((m.type, m.text, m.location.get("url", ""), self.page.url))
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda err: self.problems.append(("pageerror", str(err), self.page.url, self.page.url)))

    def close(self):
        self.context.close()

    def login(self, url: str, user: str):
        """Visits a protected `url` and picks `user` at the test IdP."""
        self.page.goto(url)
        self.page.get_by_role("link", name=user, exact=True).click()
        self.page.wait_for_url(url)

    def ours(self, origin: str, status: int = 200) -> list:
        """The problems our pages (on `origin`) logged, less Chromium's note
        that the page itself arrived with the error status it was meant to have."""
        expected = f"the server responded with a status of {status} "
        return [p for p in self.problems if (p[2].startswith(origin) or p[3].startswith(origin))
                and not (status >= 400 and expected in p[1] and p[2] == p[3])]


def _rgb(css: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", css)[:3])


def _luminance(rgb: tuple) -> float:
    c = [v / 255 for v in rgb]
    c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]


def _contrast(a: tuple, b: tuple) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _colors(page) -> tuple:
    style = page.evaluate("() => { const s = getComputedStyle(document.body); return [s.color, s.backgroundColor] }")
    return _rgb(style[0]), _rgb(style[1])


def check_page(w: Watched, origin: str, heading: str, status: int = 200, response=None):
    """The page `w` shows now is ours, well formed, and readable in light and dark."""
    page = w.page
    if response is not None:
        assert response.status == status, (response.status, page.url)
    assert page.locator("html").get_attribute("lang") == "en", page.url
    assert page.locator("main h1").inner_text() == heading, page.url
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        fg, bg = _colors(page)
        assert _luminance(bg) < 0.05 if scheme == "dark" else _luminance(bg) > 0.8, (scheme, bg, page.url)
        assert _contrast(fg, bg) >= 7, (scheme, fg, bg, page.url)
    page.emulate_media(color_scheme="no-override")
    problems = w.ours(origin, status)
    assert not problems, f"console errors or warnings on {page.url}:\n" + "\n".join(map(str, problems))
    w.problems.clear()


def test_signed_in_echo_page_shows_who_and_masks_the_secret(gate, chromium):
    origin = gate.url("")[:-1]
    w = Watched(chromium)
    try:
        # The gate's own sign-in page, then the IdP, then back where we asked to go.
        r = w.page.goto(gate.url("/oauth2/sign_in?rd=%2Fapi-app%2F"))
        check_page(w, origin, "Sign in", response=r)
        w.page.get_by_role("link", name=re.compile("^Continue with")).click()
        w.page.get_by_role("link", name="alice", exact=True).click()
        w.page.wait_for_url(gate.url("/api-app/"))
        check_page(w, origin, "Signed in as Alice Admin")
        page = w.page
        assert page.locator("#user").inner_text() == "alice"
        assert page.locator("#groups li").all_inner_texts() == ["admins", "users"]
        secret = page.locator("tr.secret")
        assert secret.locator("th").inner_text().split()[0].lower() == "x-api-key"
        assert "injected secret" in secret.inner_text()
        assert secret.locator("td").inner_text().startswith(API_KEY[:2] + "…") and f"{len(API_KEY)} characters" in secret.inner_text()
        assert API_KEY not in page.content() and API_KEY not in page.locator("body").inner_text()
        identity = sorted(t.split()[0].lower() for t in page.locator("tr.identity th").all_inner_texts())
        assert identity == ["remote-email", "remote-groups", "remote-name", "remote-user"], identity
        # One family: the echo's style starts with the gate pages' own.
        echo_style = page.locator("style").text_content()
        if SCREENSHOT and gate.kind == "envoy":
            page.screenshot(path=SCREENSHOT, full_page=True)

        # Its sign-out button is a same-origin POST: it signs out at once.
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(gate.url("/"))
        assert not any(c["name"] == "_oidc_edge" for c in w.context.cookies())
        page.goto(gate.url("/oauth2/sign_in"))
        assert echo_style.startswith(page.locator("style").text_content())
    finally:
        w.close()


def test_public_echo_page_offers_a_sign_in(gate, chromium):
    origin = gate.url("")[:-1]
    w = Watched(chromium)
    try:
        r = w.page.goto(gate.url("/public/"))
        check_page(w, origin, "Not signed in", response=r)
        # This route has an injected secret too: masked, never shown.
        assert API_KEY not in w.page.content()
        link = w.page.get_by_role("link", name="Sign in", exact=True)
        assert link.get_attribute("href") == "/oauth2/start?rd=%2F"
        link.click()
        w.page.get_by_role("link", name="alice", exact=True).wait_for()
        assert not w.page.url.startswith(origin), "the sign-in link did not reach the IdP"
    finally:
        w.close()


def test_refusal_and_error_pages(gate, chromium):
    origin = gate.url("")[:-1]
    w = Watched(chromium, color_scheme="dark")
    try:
        # 403: bob is not in the admins group.
        w.login(gate.url("/app/"), "bob")
        r = w.page.goto(gate.url("/admin/"))
        check_page(w, origin, "Access denied", 403, r)
        assert w.page.get_by_role("link", name="Sign in as someone else").count() == 1
        # A sign-in response the gate did not ask for.
        r = w.page.goto(gate.url("/oauth2/callback?code=x&state=not-ours"))
        check_page(w, origin, "Sign-in failed", 400, r)
        assert w.page.get_by_role("link", name="Sign in again").get_attribute("href") == "/oauth2/start?rd=%2F"
        # A link from another site to sign out: the gate asks first, with a real button.
        w.page.route("http://other.test/", lambda route: route.fulfill(
            content_type="text/html", body=f'<!doctype html><title>cats</title><a href="{gate.url("/oauth2/sign_out")}">out</a>'))
        w.page.goto("http://other.test/")
        w.page.click("a")
        w.page.wait_for_url(gate.url("/oauth2/sign_out"))
        check_page(w, origin, "Sign out?")
        button = w.page.get_by_role("button", name="Sign out")
        assert button.evaluate("b => b.tagName") == "BUTTON"
        w.page.keyboard.press("Tab")
        assert button.evaluate("b => b === document.activeElement && getComputedStyle(b).outlineWidth") == "3px", "no visible focus"
        assert any(c["name"] == "_oidc_edge" for c in w.context.cookies())
    finally:
        w.close()


def test_unavailable_page(gate, stack, chromium):
    dead = stack.proxy(gate.kind, f"{gate.kind}-pages-503", free_port(), idp_port=free_port())
    w = Watched(chromium)
    try:
        r = w.page.goto(dead.url("/app/"))
        check_page(w, dead.url("")[:-1], "Sign-in temporarily unavailable", 503, r)
        assert w.page.get_by_role("link", name="Try again").count() == 1
    finally:
        w.close()
        dead.stop()
