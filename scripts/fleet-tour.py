"""The fleet demo's tour (`make run-fleet`): signs in as alice through nginx,
then sends 20 requests at once with her session due for refresh, and shows
which of the two sidecars decided what and how many refresh calls the IdP
got (one). The session is made due by resealing it with an earlier check
time, which only someone holding the cookie secret can do (the demo does)."""

import http.cookiejar
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/e2e"))
from cookies import due_for_refresh  # noqa: E402

GATE, IDP = "http://127.0.0.1:8080", "http://127.0.0.1:9000"
SIDECARS = {"a": "http://127.0.0.1:4180", "b": "http://127.0.0.1:4181"}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# The browser's cookies (the IdP's interaction cookies, the gate's login and
# session cookies), for the sign-in.
BROWSER = http.cookiejar.CookieJar()


def get(url: str, cookie: str = ""):
    """One GET, redirects not followed; with `cookie`, that Cookie header
    instead of the browser's jar."""
    handlers = [NoRedirect] + ([] if cookie else [urllib.request.HTTPCookieProcessor(BROWSER)])
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=10) as r:
            return r.status, r.headers, r.read(), r.headers.get_all("set-cookie") or []
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read(), e.headers.get_all("set-cookie") or []


def decisions() -> dict:
    out = {}
    for name, url in SIDECARS.items():
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        m = re.search(r"^oidc_edge_requests_allowed_total (\d+)", text, re.M)
        out[name] = int(m.group(1)) if m else 0
    return out


def refreshes() -> int:
    return json.loads(urllib.request.urlopen(f"{IDP}/test/stats", timeout=5).read())["token"]["refresh_token"]


def at_idp(url: str):
    """GETs `url` and follows the IdP's redirects, stopping at the one back to the gate."""
    while True:
        status, headers, body, _ = get(url)
        location = headers.get("Location", "")
        if status not in (302, 303) or "/oauth2/callback" in location:
            return status, location, body
        url = location if location.startswith("http") else IDP + location


def main() -> None:
    # Sign in as alice: the gate sends us to the IdP, we pick alice there,
    # the IdP sends us back to the callback.
    _, headers, _, _ = get(f"{GATE}/oauth2/start?rd=/media/")
    _, _, page = at_idp(headers.get("Location", ""))
    link = re.search(rb'href="([^"]*login\?user=alice[^"]*)"', page)
    assert link, "no sign-in page at the IdP"
    pick = link.group(1).decode().replace("&amp;", "&")
    _, url, _ = at_idp(pick if pick.startswith("http") else IDP + pick)
    status, _, _, _ = get(url)
    session = next((c.value for c in BROWSER if c.name == "_oidc_edge"), None)
    assert status == 302 and session, f"sign-in did not complete ({status})"
    print("  signed in as alice through nginx (the login may start on one sidecar and finish on the other)")

    due = due_for_refresh(os.environ["OIDC_EDGE_COOKIE_SECRET"], session)
    before_d, before_r = decisions(), refreshes()
    results, barrier = [], threading.Barrier(20)

    def hit():
        barrier.wait()
        results.append(get(f"{GATE}/media/", f"_oidc_edge={due}")[0])

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after_d = decisions()
    print(f"  20 requests at once, session due for refresh: {results.count(200)} answered 200")
    print(f"  decided by sidecar a: {after_d['a'] - before_d['a']}, by sidecar b: {after_d['b'] - before_d['b']}")
    print(f"  refresh calls at the IdP: {refreshes() - before_r} (one for the fleet)")


if __name__ == "__main__":
    main()
