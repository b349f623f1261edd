"""An independent implementation of the session cookie format, used only to
forge cookies in tests (expired, wrong key, other name), so the attacks are
real ones and not whatever the filter itself would produce."""

import base64
import hashlib
import hmac
import os
import struct

from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt, crypto_aead_xchacha20poly1305_ietf_encrypt


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def cookie_secret_bytes(secret: str) -> bytes:
    try:
        raw = base64.b64decode(secret, validate=True)
        if len(raw) in (16, 24, 32):
            return raw
    except Exception:
        pass
    return secret.encode()


def _key(secret: str):
    key = hmac.new(cookie_secret_bytes(secret), b"oidc-edge/v1/cookie-seal", hashlib.sha256).digest()
    key_id = hmac.new(key, b"oidc-edge/v1/key-id", hashlib.sha256).digest()[0]
    return key, key_id


def seal(secret: str, name: str, expires_at: int, payload: bytes) -> str:
    key, key_id = _key(secret)
    nonce = os.urandom(24)
    aad = b"oidc-edge/v1\0" + bytes([1, key_id]) + name.encode()
    ct = crypto_aead_xchacha20poly1305_ietf_encrypt(struct.pack(">Q", expires_at) + payload, aad, nonce, key)
    return b64url(bytes([1, key_id]) + nonce + ct)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return _varint(len(b)) + b


def _opt(s):
    return b"\0" if s is None else b"\1" + _str(s)


def session_payload(user="mallory", sub="sub-mallory", email=None, verified=False, name=None, groups=(),
                    login_at=0, checked_at=0, refresh=None, session_id=b"\x07" * 16, idp_sid=None,
                    auth_time=None, acr=None, amr=(), asked=None) -> bytes:
    """A session in the gate's format (version 4: the id sign-out revokes,
    when and how the user signed in at the provider, and what a step-up
    login asked for: None, or {"max_age": int | None, "acr": [str]})."""
    out = b"\4" + _str(sub) + _str(user) + _opt(email) + bytes([1 if verified else 0]) + _opt(name)
    out += _varint(len(groups)) + b"".join(_str(g) for g in groups)
    out += _varint(login_at) + _varint(checked_at) + _opt(refresh)
    out += session_id + _opt(idp_sid)
    out += _varint(login_at if auth_time is None else auth_time) + _opt(acr)
    out += _varint(len(amr)) + b"".join(_str(m) for m in amr)
    if asked is None:
        return out + b"\0"
    max_age = asked.get("max_age")
    out += b"\1" + (b"\0" if max_age is None else b"\1" + _varint(max_age))
    return out + _varint(len(asked.get("acr", ()))) + b"".join(_str(a) for a in asked.get("acr", ()))


def unseal(secret: str, name: str, value: str):
    """(expires_at, payload) of a cookie sealed under `secret`."""
    key, _ = _key(secret)
    raw = b64url_decode(value)
    aad = b"oidc-edge/v1\0" + raw[:2] + name.encode()
    plain = crypto_aead_xchacha20poly1305_ietf_decrypt(raw[26:], aad, raw[2:26], key)
    return struct.unpack(">Q", plain[:8])[0], plain[8:]


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def str(self) -> str:
        n = self.varint()
        self.pos += n
        return self.data[self.pos - n:self.pos].decode()

    def opt(self):
        return self.str() if self.byte() else None


def decode_session(payload: bytes) -> dict:
    r = _Reader(payload)
    version = r.byte()
    assert version in (2, 3, 4), "session format version"
    out = {"sub": r.str(), "user": r.str(), "email": r.opt(), "verified": r.byte() == 1, "name": r.opt()}
    out["groups"] = [r.str() for _ in range(r.varint())]
    out["login_at"], out["checked_at"], out["refresh"] = r.varint(), r.varint(), r.opt()
    out["session_id"] = r.data[r.pos:r.pos + 16]
    r.pos += 16
    out["idp_sid"] = r.opt()
    out["auth_time"], out["acr"], out["amr"] = out["login_at"], None, []
    if version >= 3:
        out["auth_time"], out["acr"] = r.varint(), r.opt()
        out["amr"] = [r.str() for _ in range(r.varint())]
    out["asked"] = None
    if version >= 4 and r.byte():
        max_age = r.varint() if r.byte() else None
        out["asked"] = {"max_age": max_age, "acr": [r.str() for _ in range(r.varint())]}
    assert r.pos == len(payload), "trailing bytes"
    return out


def reseal(secret: str, value: str, name: str = "_oidc_edge", **changes) -> str:
    """The same session with some fields changed (checked_at, auth_time, …), sealed again."""
    expires_at, payload = unseal(secret, name, value)
    s = {**decode_session(payload), **changes}
    return seal(secret, name, expires_at, session_payload(s["user"], s["sub"], s["email"], s["verified"], s["name"],
                                                          s["groups"], s["login_at"], s["checked_at"], s["refresh"],
                                                          s["session_id"], s["idp_sid"], s["auth_time"], s["acr"],
                                                          s["amr"], s["asked"]))


def due_for_refresh(secret: str, value: str, name: str = "_oidc_edge", by: int = 7200) -> str:
    """The same session, resealed as if the IdP last confirmed it `by` seconds
    earlier: a refresh test needs no wait for the refresh interval."""
    _, payload = unseal(secret, name, value)
    return reseal(secret, value, name, checked_at=decode_session(payload)["checked_at"] - by)
