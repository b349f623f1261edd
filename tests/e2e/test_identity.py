"""Signed identity for the upstream, on every gate: a short-lived EdDSA JWT
with the user's identity and groups in the route's header, verifiable
against the JWKS the gate serves, signed once per session and route (not per
request); a client's own copy of the header never reaches the upstream."""

import base64
import json
import time

import pytest
from nacl.signing import VerifyKey

from harness import Browser, login


def b64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify(token: str, jwks: dict) -> dict:
    """The upstream's side: the signature with the gate's published key, then the claims."""
    h64, p64, s64 = token.split(".")
    header = json.loads(b64(h64))
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert header["alg"] == "EdDSA" and key["kty"] == "OKP" and key["crv"] == "Ed25519"
    VerifyKey(b64(key["x"])).verify(f"{h64}.{p64}".encode(), b64(s64))
    return json.loads(b64(p64))


@pytest.fixture(scope="module")
def alice(stack):
    b = Browser()
    assert login(b, stack.url("/app/"), "alice").status == 200
    return {"Cookie": f"_oidc_edge={b.cookie('_oidc_edge')}"}


def test_the_upstream_gets_a_token_it_can_verify(gate, alice):
    jwks = Browser().get(gate.url("/oauth2/jwks"))
    assert jwks.status == 200 and "max-age" in (jwks.header("cache-control") or "")
    r = Browser().get(gate.url("/signed/x"), headers={**alice, "X-Identity-Token": "forged.by.client"})
    assert r.status == 200
    token = r.upstream_header("X-Identity-Token")
    assert token and token != "forged.by.client"
    claims = verify(token, jwks.json())
    assert claims["preferred_username"] == "alice" and claims["groups"] == ["admins", "users"]
    assert claims["aud"] == "127.0.0.1" and claims["iss"] == "oidc-edge"
    assert claims["exp"] - claims["iat"] == 300 and abs(claims["iat"] - time.time()) < 30
    # Signed once: the next requests carry the same token.
    again = [Browser().get(gate.url("/signed/y"), headers=alice).upstream_header("X-Identity-Token") for _ in range(3)]
    assert again == [token] * 3
    # A tampered token does not verify.
    h, p, s = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "groups": ["admins", "root"]}).encode()).decode().rstrip("=")
    with pytest.raises(Exception):
        verify(f"{h}.{forged}.{s}", jwks.json())


def test_no_client_copy_of_the_header_reaches_any_upstream(gate):
    r = Browser().get(gate.url("/public/x"), headers={"X-Identity-Token": "forged.by.client"})
    assert r.status == 200 and r.upstream_header("X-Identity-Token") is None


def test_the_signed_identity_says_when_the_provider_signed_the_user_in(gate, stack):
    """Its auth_time is the provider's (here a single sign-on ten minutes
    old, answering a new login), not when the gate's session began."""
    b = Browser()
    assert login(b, gate.url("/app/"), "alice").status == 200
    auth_time = stack.idp.age_session(b, 600)
    b.jar = {k: c for k, c in b.jar.items() if not k[1].startswith("_oidc_edge")}
    assert b.follow(gate.url("/app/")).status == 200, "signed in by the provider's session, no page"
    r = Browser().get(gate.url("/signed/x"), headers={"Cookie": f"_oidc_edge={b.cookie('_oidc_edge')}"})
    claims = verify(r.upstream_header("X-Identity-Token"), Browser().get(gate.url("/oauth2/jwks")).json())
    assert claims["auth_time"] == auth_time and claims["iat"] - claims["auth_time"] >= 600, claims
