"""HTTP/2 where a gate's proxy accepts it from clients (prior knowledge on a
plain listener: Envoy's, Caddy's and Traefik's do): the request is decided as its
HTTP/1.1 twin would be, and nothing HTTP/2 forbids (CR, LF or NUL in a
value or a pseudo-header, upper-case or connection-specific names) becomes
another header or another request behind the proxy's HTTP/1.1 downgrade to
the upstream. A gate whose listener speaks only HTTP/1.1 refuses the
preface, which is checked too."""

import json
import socket
import time
import uuid

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from harness import Browser, login


def h2_exchange(port: int, headers: list, timeout: float = 3.0):
    """One request over a fresh prior-knowledge HTTP/2 connection, with no
    client-side validation. Returns (status, response headers, body), or
    None when the listener does not speak HTTP/2."""
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, got, body, first = None, [], b"", b""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                data = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break  # a reset is a refusal
            if not data:
                break
            first = first or data
            if status is None and first.startswith(b"HTTP/1"):
                return None
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            finished = False
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived):
                    got = [(k.decode(), v.decode(errors="replace")) for k, v in ev.headers]
                    status = int(dict(got)[":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    finished = True
            sock.sendall(conn.data_to_send())
            if finished:
                break
        return status, got, body
    finally:
        sock.close()


def base(gate, path: str, method: str = "GET", authority: str | None = None) -> list:
    return [(":method", method), (":scheme", "http"), (":authority", authority or f"127.0.0.1:{gate.port}"), (":path", path)]


def speaks_h2(gate) -> bool:
    return h2_exchange(gate.port, base(gate, "/public/x")) is not None


@pytest.fixture(scope="module")
def bob_cookie(gate, stack):
    b = Browser()
    assert login(b, gate.url("/users/"), "bob").status == 200
    return b.cookies_for("127.0.0.1", "/")


def test_which_listeners_speak_http2(gate):
    """The assertions below matter where the proxy accepts HTTP/2 from
    clients: Envoy (codec AUTO), Caddy and Traefik do on a plain listener;
    nginx without `http2` on its `listen` does not."""
    expected = gate.name.split("-")[0] in ("envoy", "caddy", "traefik")
    assert speaks_h2(gate) == expected, gate.name


def test_http2_requests_are_decided_as_http1_ones(gate, stack, bob_cookie):
    if not speaks_h2(gate):
        # An HTTP/1.1 listener answers the preface as a bad request.
        assert h2_exchange(gate.port, base(gate, "/admin/") + [("cookie", bob_cookie)]) is None
        return
    anon = h2_exchange(gate.port, base(gate, "/admin/"))
    assert anon and anon[0] == 302 and dict(anon[1]).get("location", "").startswith(stack.idp.issuer), anon[:2]
    bob = h2_exchange(gate.port, base(gate, "/admin/") + [("cookie", bob_cookie)])
    assert bob and bob[0] == 403, bob[:2]
    for spelling in ("/admin./", "/admin%C2%A0/", "/%EF%BD%81dmin/"):
        r = h2_exchange(gate.port, base(gate, spelling) + [("cookie", bob_cookie)])
        assert r and r[0] in (400, 403, 404), (spelling, r[:2])


def injections(gate, marker: str) -> dict:
    hidden = f"\r\nRemote-User: alice\r\nX-Probe: {marker}\r\n\r\nGET /admin/secret HTTP/1.1\r\nX-Probe: {marker}"
    host = f"127.0.0.1:{gate.port}"
    return {
        "CRLF in a value": base(gate, "/public/x") + [("x-note", "a" + hidden)],
        "LF in a value": base(gate, "/public/x") + [("x-note", "a\nRemote-User: alice\nX-Probe: " + marker)],
        "NUL in a value": base(gate, "/public/x") + [("x-note", "a\0Remote-User: alice")],
        "CRLF in :path": base(gate, "/public/x HTTP/1.1" + hidden),
        "space in :path": base(gate, "/public/x /admin/secret"),
        "CRLF in :method": base(gate, "/public/x", method="GET /admin/secret HTTP/1.1" + hidden + "\r\nX: "),
        "CRLF in :authority": base(gate, "/public/x", authority=host + hidden),
        "upper-case name": base(gate, "/public/x") + [("Remote-User", "alice"), ("X-Probe", marker)],
        "connection-specific": base(gate, "/public/x") + [("connection", "keep-alive, remote-user"), ("transfer-encoding", "chunked"),
                                                          ("remote-user", "alice")],
        "pseudo-header after a header": [(":method", "GET"), ("x-a", "1"), (":path", "/admin/secret"), (":scheme", "http"),
                                         (":authority", host)],
        "two :path": base(gate, "/public/x") + [(":path", "/admin/secret")],
    }


CASES = ["CRLF in a value", "LF in a value", "NUL in a value", "CRLF in :path", "space in :path", "CRLF in :method",
         "CRLF in :authority", "upper-case name", "connection-specific", "pseudo-header after a header", "two :path"]


@pytest.mark.parametrize("case", CASES)
def test_nothing_http2_forbids_becomes_a_header_or_request_behind_the_proxy(gate, stack, case):
    marker = uuid.uuid4().hex
    cases = injections(gate, marker)
    assert sorted(cases) == sorted(CASES)
    r = h2_exchange(gate.port, cases[case])
    time.sleep(0.3)
    seen = [line for line in stack.echo.log_text().splitlines() if line.startswith(f"PROBE {marker}")]
    assert not seen, (case, seen)
    if r is None or r[0] != 200:
        return
    echo = json.loads(r[2])
    assert not echo["path"].lower().startswith("/admin"), (case, echo["path"])
    names = {k.lower(): v for k, v in echo["headers"]}
    assert "remote-user" not in names and "x-probe" not in names, (case, echo["headers"])
