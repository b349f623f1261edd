"""Step-up on every gate: a route that wants a recent sign-in sends an old
session back to the provider with max_age and prompt=login and lets it in
afterwards, without losing the user; a route that wants a passkey (amr)
admits one and shows a clear page, not a loop, to a password sign-in."""

from urllib.parse import parse_qs, urlsplit

from cookies import decode_session, reseal, unseal
from harness import COOKIE_SECRET, Browser, idp_pick_user, login


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
    r = b2.get(gate.url("/passkey/x"), headers={"Accept": "application/json"})
    assert r.status == 403 and r.json()["error"] == "insufficient_user_authentication"
    assert b2.get(gate.url("/app/")).status == 200, "the session itself stands"
