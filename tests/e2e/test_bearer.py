"""API clients with `Authorization: Bearer <JWT>` on every gate: a token the
provider signed for us passes with the route's rules applied to its claims;
anything else gets RFC 6750's 401 or 403, never a login redirect."""

import base64
import json
import socket
import time

import nacl.signing
import pytest

from cookies import unseal
from harness import COOKIE_SECRET, Browser, login


@pytest.fixture(scope="module")
def id_token(stack):
    """Bob's ID token (groups: users), from a real login: what an app holding
    the user's token would send."""
    b = Browser()
    assert login(b, stack.url("/app/"), "bob").status == 200
    _, raw = unseal(COOKIE_SECRET, "_oidc_edge_idt", b.cookie("_oidc_edge_idt"))
    return raw.decode()


def mint(stack, **claims) -> str:
    """A token signed by the provider's own key (its access tokens' form)."""
    now = int(time.time())
    body = {"iss": stack.idp.issuer, "aud": "oidc-edge", "sub": "svc-backup", "exp": now + 600, "iat": now,
            "preferred_username": "backup-job", "groups": ["users"], **claims}
    r = Browser().request("POST", f"{stack.idp.issuer}/test/jwt", headers={"Content-Type": "application/json"},
                          body=json.dumps({"claims": body}).encode())
    assert r.status == 200, r.body
    return r.json()["token"]


def call(gate, path, token, accept="application/json"):
    return Browser().get(gate.url(path), headers={"Authorization": f"Bearer {token}", "Accept": accept})


def challenge(r) -> str:
    return r.header("www-authenticate") or ""


def test_a_token_from_the_provider_passes_with_its_identity(gate, stack, id_token):
    r = call(gate, "/api-bearer/items", id_token)
    assert r.status == 200, (r.status, r.body[:200])
    assert r.upstream_header("Remote-User") == "bob" and r.upstream_header("Remote-Groups") == "users"
    assert r.upstream_header("Authorization") is None, "the token was for the gate"
    r = call(gate, "/api-bearer/items", mint(stack))
    assert r.status == 200 and r.upstream_header("Remote-User") == "backup-job"
    # Where the route says so, the upstream gets the token too.
    r = call(gate, "/api-forward/x", id_token)
    assert r.status == 200 and r.upstream_header("Authorization") == f"Bearer {id_token}"


def test_claims_that_do_not_satisfy_the_route_get_insufficient_scope(gate, id_token):
    r = call(gate, "/api-admin/x", id_token)
    assert r.status == 403, r.status
    assert 'error="insufficient_scope"' in challenge(r) and r.location is None


@pytest.mark.parametrize("what", ["expired", "another audience", "another issuer", "tampered", "alg none", "garbage"])
def test_a_bad_token_gets_invalid_token_and_never_a_login_page(gate, stack, id_token, what):
    now = int(time.time())
    token = {
        "expired": lambda: mint(stack, exp=now - 3600, iat=now - 7200),
        "another audience": lambda: mint(stack, aud="someone-else"),
        "another issuer": lambda: mint(stack, iss="https://evil.example.com"),
        "tampered": lambda: id_token[:-6] + ("AAAAAA" if not id_token.endswith("AAAAAA") else "BBBBBB"),
        "alg none": lambda: "eyJhbGciOiJub25lIn0." + id_token.split(".")[1] + ".",
        "garbage": lambda: "not-a-jwt",
    }[what]()
    for accept in ("application/json", "text/html"):
        r = call(gate, "/api-bearer/x", token, accept)
        assert r.status == 401 and r.location is None, (what, accept, r.status, r.location)
        assert challenge(r).startswith("Bearer ") and 'error="invalid_token"' in challenge(r), challenge(r)


def test_a_token_for_another_api_is_not_taken_from_the_cache(gate, stack):
    reports = mint(stack, aud="reports-api")
    assert call(gate, "/api-reports/x", reports).status == 200
    assert call(gate, "/api-bearer/x", reports).status == 401, "verified for reports-api only"


def test_no_token_on_an_api_route_is_asked_for_one(gate):
    r = Browser().get(gate.url("/api-bearer/x"), headers={"Accept": "application/json"})
    assert r.status == 401 and challenge(r).startswith("Bearer realm=")


def minted(stack, header: dict | None = None, typ: str = "at+jwt", alg: str = "RS256", **claims) -> str:
    """A token signed by the provider's own key, with extra header fields."""
    now = int(time.time())
    body = {"iss": stack.idp.issuer, "aud": "oidc-edge", "sub": "svc-backup", "exp": now + 600, "iat": now,
            "preferred_username": "backup-job", "groups": ["users", "admins"], **claims}
    r = Browser().request("POST", f"{stack.idp.issuer}/test/jwt", headers={"Content-Type": "application/json"},
                          body=json.dumps({"claims": body, "header": header or {}, "typ": typ, "alg": alg}).encode())
    assert r.status == 200, r.body
    return r.json()["token"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def attackers_token(stack, header: dict) -> str:
    """Signed with a key of the attacker's own, which the header points at."""
    key = nacl.signing.SigningKey.generate()
    now = int(time.time())
    claims = {"iss": stack.idp.issuer, "aud": "oidc-edge", "sub": "mallory", "exp": now + 600, "iat": now,
              "preferred_username": "admin", "groups": ["admins"]}
    x = b64(bytes(key.verify_key))
    head = {"alg": "EdDSA", **{k: (v.replace("{x}", x) if isinstance(v, str) else v) for k, v in header.items()}}
    if "jwk" in head:
        head["jwk"] = {"kty": "OKP", "crv": "Ed25519", "x": x}
    signing_input = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()).signature)}"


@pytest.fixture()
def listener():
    """A port that would see any fetch of a URL a token names."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    try:
        yield s
    finally:
        s.close()


def test_forged_tokens_beyond_the_first_set_are_refused(gate, stack, listener):
    port = listener.getsockname()[1]
    at = f"http://127.0.0.1:{port}"
    now = int(time.time())
    forged = {
        "embedded jwk": attackers_token(stack, {"jwk": True}),
        "jku": attackers_token(stack, {"jku": f"{at}/jwks.json"}),
        "x5u": attackers_token(stack, {"x5u": f"{at}/cert.pem"}),
        "x5c": attackers_token(stack, {"x5c": ["{x}"]}),
        "kid traversal": attackers_token(stack, {"kid": "../../../../../dev/null"}),
        "kid injection": attackers_token(stack, {"kid": "x' OR '1'='1"}),
        "crit": minted(stack, header={"crit": ["exp"]}),
        "nested JWT": minted(stack, header={"cty": "JWT"}),
        "compressed": minted(stack, header={"zip": "DEF"}),
        "DPoP proof": minted(stack, typ="dpop+jwt", htm="GET", htu="http://x/", jti="j1"),
        "logout token": minted(stack, typ="logout+jwt", events={"http://schemas.openid.net/event/backchannel-logout": {}}),
        "security event": minted(stack, typ="secevent+jwt"),
        "JWE-shaped": "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d",
        "polyglot": minted(stack) + ".eyJhbGciOiJub25lIn0",
    }
    # All-zero ECDSA (CVE-2022-21449): the provider's ES256 key, a signature of zeros.
    real_es = minted(stack, alg="ES256")
    forged["zero ECDSA"] = real_es.rsplit(".", 1)[0] + "." + b64(bytes(64))
    # Duplicate header fields: the second alg must not win over the first.
    h = json.loads(base64.urlsafe_b64decode(real_es.split(".")[0] + "=="))
    dup = '{"alg":"none",' + json.dumps(h)[1:]
    forged["duplicate alg"] = b64(dup.encode()) + "." + real_es.split(".")[1] + "."
    del now
    for what, token in forged.items():
        r = call(gate, "/api-admin/x", token)
        assert r.status == 401 and 'error="invalid_token"' in challenge(r), (what, r.status, challenge(r))
    with pytest.raises(BlockingIOError):
        listener.accept()
    # The same claims, signed by the provider as an access token, pass.
    assert call(gate, "/api-admin/x", minted(stack)).status == 200
