"""Step-up on every gate: a route that wants a recent sign-in sends an old
session back to the provider with max_age and prompt=login and lets it in
afterwards, without losing the user; the first login from such a route asks
at once (a provider with a long single sign-on would answer a plain login
with its old sign-in); a sign-in that merely grew old, however recently, is
asked again, never refused; a route that wants a passkey (amr) admits one
and shows a clear page with a way forward, not a loop, when the provider was
asked and still reported a password."""

import time
from urllib.parse import parse_qs, urlsplit

from conftest import GATES
from cookies import decode_session, reseal, unseal
from harness import COOKIE_SECRET, Browser, idp_pick_user, login


def without_gate_cookies(b: Browser) -> Browser:
    """The same browser after the gate's cookies went (another service, the
    next day): the provider's single sign-on session stays."""
    b.jar = {k: c for k, c in b.jar.items() if not k[1].startswith("_oidc_edge")}
    return b


def absolute(gate, location: str) -> str:
    return location if location.startswith("http") else gate.url(location)


def assert_step_up_login(r, max_age: str):
    assert r.status == 302, (r.status, r.body[:300])
    q = parse_qs(urlsplit(r.location).query)
    assert q.get("max_age") == [max_age] and q.get("prompt") == ["login"], q


def test_an_old_sign_in_is_sent_back_for_a_fresh_one(gate, stack):
    b = Browser()
    assert login(b, gate.url("/app/"), "alice").status == 200
    session = b.cookie("_oidc_edge")
    assert Browser().get(gate.url("/fresh/x"), headers={"Cookie": f"_oidc_edge={session}"}).status == 200
    _, payload = unseal(COOKIE_SECRET, "_oidc_edge", session)
    s = decode_session(payload)
    old = reseal(COOKIE_SECRET, session, login_at=s["login_at"] - 3600, auth_time=s["auth_time"] - 3600)
    b.jar[("127.0.0.1", "_oidc_edge")].value = old
    r = b.get(gate.url("/fresh/x?y=1"))
    assert r.status == 302, r.status
    q = parse_qs(urlsplit(r.location).query)
    assert q["max_age"] == ["300"] and q["prompt"] == ["login"], q
    page = b.follow(r.location if r.location.startswith("http") else gate.url(r.location))
    back = idp_pick_user(b, page, "alice")
    assert back.status == 200 and urlsplit(back.url).path == "/fresh/x" and back.upstream_header("Remote-User") == "alice"
    _, payload = unseal(COOKIE_SECRET, "_oidc_edge", b.cookie("_oidc_edge"))
    assert decode_session(payload)["auth_time"] > s["auth_time"] - 60, "a new sign-in time"


def test_a_passkey_route_admits_a_passkey_and_explains_a_password(gate, stack):
    b = Browser()
    assert login(b, gate.url("/passkey/x"), "alice").status == 200, "alice signs in with a passkey (amr phr)"
    stack.idp.put_user("dan", {"groups": ["users"], "amr": ["pwd"]})
    b2 = Browser()
    r = login(b2, gate.url("/passkey/x"), "dan")
    assert r.status == 403 and b"stronger sign-in" in r.body, (r.status, r.body[:300])
    assert b'href="/oauth2/start?rd=%2Fpasskey%2Fx"' in r.body, "a way forward: sign in again"
    r = b2.get(gate.url("/passkey/x"), headers={"Accept": "application/json"})
    assert r.status == 403 and r.json()["error"] == "insufficient_user_authentication"
    assert b2.get(gate.url("/app/")).status == 200, "the session itself stands"
    # Signing in again asks the provider again (it must sign dan in anew).
    r = b2.get(gate.url("/oauth2/start?rd=%2Fpasskey%2Fx"))
    assert r.status == 302 and parse_qs(urlsplit(r.location).query).get("prompt") == ["login"], r.location


def test_the_first_login_from_a_step_up_route_asks_for_its_demands(gate, stack):
    b = Browser()
    assert login(b, gate.url("/app/"), "alice").status == 200
    old = stack.idp.age_session(b, 20 * 60)
    b = without_gate_cookies(b)
    r = b.get(gate.url("/fresh15m/x"))
    assert_step_up_login(r, "900")
    page = b.follow(absolute(gate, r.location))
    back = idp_pick_user(b, page, "alice")
    assert back.status == 200 and urlsplit(back.url).path == "/fresh15m/x", (back.status, back.url, back.body[:300])
    assert back.upstream_header("Remote-User") == "alice"
    _, payload = unseal(COOKIE_SECRET, "_oidc_edge", b.cookie("_oidc_edge"))
    assert decode_session(payload)["auth_time"] > old + 600, "signed in anew, not the single sign-on's old sign-in"


def test_a_sign_in_past_30_seconds_is_asked_again_not_refused(stack):
    """Real time, every gate at once (one wait): sessions 31-40 s old on a
    route with max_auth_age 30s, from a plain login and from the route's own
    step-up login, each go back to the provider and come back signed in."""
    gates = [stack.gate(kind) for kind in GATES]
    browsers = []
    for g in gates:
        for start in ("/app/", "/fresh30/x"):
            b = Browser()
            assert login(b, g.url(start), "alice").status == 200
            browsers.append((g, b))
    last_login = time.time()
    time.sleep(max(0.0, last_login + 32 - time.time()))
    for g, b in browsers:
        r = b.get(g.url("/fresh30/x"))
        assert_step_up_login(r, "30")
        back = idp_pick_user(b, b.follow(absolute(g, r.location)), "alice")
        assert back.status == 200 and urlsplit(back.url).path == "/fresh30/x", (g.name, back.status, back.body[:300])
