"""Route policy beyond groups, on every gate: routes chosen by method, trusted
networks (and a spoofed X-Forwarded-For that must not open them), CORS
preflights without a session."""

import pytest

from harness import Browser, login

JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def sessions(stack):
    """Cookies of alice (admins) and bob (users), logged in through the first gate."""
    out = {}
    for user in ("alice", "bob"):
        b = Browser()
        assert login(b, stack.url("/app/"), user).status == 200
        out[user] = {"Cookie": f"_oidc_edge={b.cookie('_oidc_edge')}"}
    return out


def test_reads_are_public_and_writes_need_the_group(gate, sessions):
    """`methods: [GET, HEAD]` public, then the same path for admins."""
    r = Browser().get(gate.url("/wiki/page"))
    assert r.status == 200 and r.upstream_header("Remote-User") is None
    assert Browser().request("HEAD", gate.url("/wiki/page")).status == 200
    for method in ("POST", "PUT", "DELETE"):
        assert Browser().request(method, gate.url("/wiki/page"), headers=JSON, body=b"x").status == 401, method
    assert Browser().request("POST", gate.url("/wiki/page"), headers={**JSON, **sessions["bob"]}, body=b"x").status == 403
    r = Browser().request("POST", gate.url("/wiki/page"), headers={**JSON, **sessions["alice"]}, body=b"x")
    assert r.status == 200 and r.upstream_header("Remote-User") == "alice" and r.json()["method"] == "POST"


def test_a_read_cannot_carry_a_write_in_a_method_override_header(gate):
    """A public GET with X-HTTP-Method-Override: DELETE would be a DELETE to
    frameworks that honour it: the header never reaches the upstream."""
    r = Browser().get(gate.url("/wiki/page"), headers={"X-HTTP-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
                                                       "X-Method-Override": "DELETE"})
    assert r.status == 200
    for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        assert r.upstream_header(name) is None, name


def test_a_trusted_network_passes_without_a_login(gate):
    """The tests run on 127.0.0.1, inside /lan/'s allow_networks."""
    r = Browser().get(gate.url("/lan/x"), headers={"Remote-User": "forged"})
    assert r.status == 200, r.status
    assert r.upstream_header("Remote-User") is None, "no identity, and no client copy of it"


def test_a_spoofed_forwarded_for_does_not_open_a_network_route(gate):
    """/office/ allows 192.168.0.0/16 and 10.0.0.0/8; the client is
    127.0.0.1 claiming otherwise in every header proxies use."""
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded", "True-Client-IP", "CF-Connecting-IP"):
        value = "for=192.168.1.5" if header == "Forwarded" else "192.168.1.5"
        r = Browser().get(gate.url("/office/x"), headers={**JSON, header: value})
        assert r.status == 401, (header, r.status)
    r = Browser().get(gate.url("/office/x"), headers={**JSON, "X-Forwarded-For": "10.1.2.3, 192.168.1.5"})
    assert r.status == 401, r.status


def test_a_denied_network_is_refused_even_with_a_session(gate, sessions):
    r = Browser().get(gate.url("/no-loopback/x"), headers={**JSON, **sessions["alice"]})
    assert r.status == 403 and r.json()["error"] == "forbidden"
    r = Browser().get(gate.url("/no-loopback/x"), headers={**JSON, **sessions["alice"], "X-Forwarded-For": "203.0.113.9"})
    assert r.status == 403, "a claimed address does not lift the denial"


def test_a_cors_preflight_passes_without_a_session(gate):
    preflight = {"Origin": "https://web.example.com", "Access-Control-Request-Method": "PUT"}
    r = Browser().request("OPTIONS", gate.url("/cors/items"), headers=preflight)
    assert r.status == 200 and r.json()["method"] == "OPTIONS" and r.upstream_header("Remote-User") is None
    # Not a preflight: an OPTIONS without the request method, or the request itself.
    assert Browser().request("OPTIONS", gate.url("/cors/items"), headers={"Origin": "https://web.example.com"}).status == 401
    assert Browser().request("PUT", gate.url("/cors/items"), headers=preflight, body=b"x").status == 401
    # Only where the route says so.
    assert Browser().request("OPTIONS", gate.url("/app/items"), headers={**preflight, **JSON}).status == 401
