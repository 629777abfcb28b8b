"""Plain HTTP on the WebSocket port (transport/_http.py and Server): request heads, static files, the
routes, hostile requests, TLS, package data; and that WebSocket clients are served as before beside it."""
from __future__ import annotations

import fnmatch
import os
import ssl
import tomllib
from pathlib import Path

import pytest
import trio
import trio.testing

from agentcast.actors import agent_specs
from support import HANDSHAKE, assert_healthy, connect, handshake, running_server, scaled
from support.http import Reply, exchange, get
from agentcast.transport._http import (
    MAX_HEAD_BYTES,
    PAGE_CSP,
    BadRequest,
    PrefixedStream,
    Router,
    load_static_files,
    package_static_dir,
    read_request_head,
)
from agentcast.transport.server import Server, ServerSettings

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

ROOT = Path(__file__).resolve().parent.parent


def assert_common_headers(reply: Reply) -> None:
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["connection"] == "close"
    assert "cache-control" in reply.headers and "content-security-policy" in reply.headers
    if reply.status != 304:
        assert int(reply.headers["content-length"]) == len(reply.body)


# -- request heads and streams (no sockets) ------------------------------------------------------


async def read_head_of(*pieces: bytes, max_bytes: int = MAX_HEAD_BYTES):
    send, receive = trio.testing.memory_stream_pair()
    for piece in pieces:
        await send.send_all(piece)
    await send.aclose()
    return await read_request_head(receive, max_bytes)


async def test_a_request_head_is_parsed_from_pieces_and_keeps_every_byte_read():
    request = b"GET /static/app.css?v=2 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\n\r\n"
    head = await read_head_of(request[:7], request[7:30], request[30:] + b"\x81\x05extra")
    assert (head.method, head.target, head.path) == ("GET", "/static/app.css?v=2", "/static/app.css")
    assert head.header(b"if-none-match") == b'"a"' and head.header(b"origin") is None
    assert head.raw == request + b"\x81\x05extra"  # what came after the head is replayed too
    assert not head.wants_websocket


async def test_malformed_oversized_and_cut_off_heads():
    with pytest.raises(BadRequest) as bad:
        await read_head_of(b"GARBAGE\r\n\r\n")
    assert bad.value.status == 400
    with pytest.raises(BadRequest) as bad:
        await read_head_of(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n", max_bytes=4096)
    assert bad.value.status == 431
    with pytest.raises(BadRequest) as bad:
        await read_head_of(b"GET / HTTP/1.1\r\nHost: x\r\n")  # then the client hangs up
    assert bad.value.status == 400
    assert await read_head_of() is None  # connected and left without a byte


async def test_a_prefixed_stream_replays_its_prefix_then_reads_on():
    send, receive = trio.testing.memory_stream_pair()
    stream = PrefixedStream(receive, b"abcdef")
    await send.send_all(b"ghi")
    assert await stream.receive_some(4) == b"abcd"
    assert await stream.receive_some() == b"ef"
    assert await stream.receive_some() == b"ghi"
    await stream.send_all(b"back")
    assert await send.receive_some() == b"back"
    assert repr(stream) == "?"  # no socket behind a memory stream


async def websocket_head(*headers: bytes, method: bytes = b"GET"):
    lines = b"".join(h + b"\r\n" for h in headers)
    return await read_head_of(method + b" /ws HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")


async def test_websocket_handshakes_are_told_apart_and_checked():
    good = (b"Upgrade: WebSocket", b"Connection: keep-alive, Upgrade", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"Sec-WebSocket-Version: 13")
    head = await websocket_head(*good)
    assert head.wants_websocket and head.websocket_problem() is None
    assert (await websocket_head(*good, method=b"POST")).websocket_problem().status == 405
    assert (await websocket_head(*good[:1], *good[2:])).websocket_problem().status == 400  # no Connection: Upgrade
    old = await websocket_head(*good[:3], b"Sec-WebSocket-Version: 8")
    assert old.websocket_problem().status == 426 and ("Sec-WebSocket-Version", "13") in old.websocket_problem().extra
    assert (await websocket_head(*good[:2], good[3])).websocket_problem().status == 400  # no key
    assert not (await websocket_head(b"Upgrade: h2c", b"Connection: Upgrade")).wants_websocket


# -- static files --------------------------------------------------------------------------------


def make_static(tmp_path: Path) -> Path:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>t</title>")
    (static / "agentcast.js").write_text("export const x = 1;\n")
    (static / "app.css").write_text("body { margin: 0 }\n")
    (static / "logo.bin").write_bytes(b"\x00\x01")
    (static / ".secret").write_text("hidden")
    (static / "bad name.txt").write_text("spaces")
    (static / "sub").mkdir()
    (static / "sub" / "x.js").write_text("nested")
    (tmp_path / "outside.txt").write_text("outside")
    os.symlink(tmp_path / "outside.txt", static / "link.txt")
    return static


def test_only_plain_regular_files_of_the_directory_are_served(tmp_path):
    files = load_static_files(make_static(tmp_path))
    assert sorted(files) == ["agentcast.js", "app.css", "index.html", "logo.bin"]
    assert files["index.html"].content_type == "text/html; charset=utf-8"
    assert files["agentcast.js"].content_type == "text/javascript; charset=utf-8"
    assert files["app.css"].content_type == "text/css; charset=utf-8"
    assert files["logo.bin"].content_type == "application/octet-stream"
    assert load_static_files(tmp_path / "missing") == {}


async def test_no_request_path_reaches_outside_the_listed_files(tmp_path):
    router = Router(load_static_files(make_static(tmp_path)), {})
    for path in ("/static/../outside.txt", "/static/%2e%2e/outside.txt", "/static/..%2foutside.txt",
                 "/static/.secret", "/static/sub/x.js", "/static/link.txt", "/static/", "/static",
                 "/static/bad%20name.txt", "/index.html/", "//static/app.css", "/static/app.css/"):
        head = await read_head_of(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await router.respond(head)).status == 404, path
    head = await read_head_of(b"GET /static/app.css HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await router.respond(head)).body == b"body { margin: 0 }\n"


def test_the_package_ships_every_static_file():
    """`pip install .` (not editable) installs transport/static/* only if package-data names it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "agentcast.transport" in config["packages"]
    patterns = config["package-data"]["agentcast.transport"]
    static = ROOT / "transport" / "static"
    assert package_static_dir() == static
    names = sorted(p.name for p in static.iterdir())
    assert "index.html" in names and "agentcast.js" in names
    for name in names:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name
    assert sorted(load_static_files(static)) == names  # and every file there is servable by name


# -- over a real socket ----------------------------------------------------------------------------


async def test_the_page_and_the_client_script(server):
    static = package_static_dir()
    page = await get(server.port, "/")
    assert page.status == 200 and page.body == (static / "index.html").read_bytes()
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert "unsafe-inline" not in PAGE_CSP and "unsafe-eval" not in PAGE_CSP and "script-src 'self'" in PAGE_CSP
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
    assert_common_headers(page)
    script = await get(server.port, "/agentcast.js?v=1")
    assert script.status == 200 and script.body == (static / "agentcast.js").read_bytes()
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert_common_headers(script)
    assert (await get(server.port, "/static/agentcast.js")).body == script.body
    # HEAD: the same headers, no body
    head = await get(server.port, "/", "HEAD")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == str(len(page.body))
    # revalidation
    unchanged = await get(server.port, "/", "GET", f"If-None-Match: {page.headers['etag']}")
    assert unchanged.status == 304 and unchanged.body == b""
    assert_common_headers(unchanged)
    assert (await get(server.port, "/", "GET", 'If-None-Match: "other"')).status == 200


async def test_files_of_another_static_directory_by_name(tmp_path, db_path):
    server = Server(ServerSettings(host="127.0.0.1", port=0, db=db_path), agent_specs(None),
                    static_dir=make_static(tmp_path))
    async with trio.open_nursery() as nursery:
        server.port = await nursery.start(server.run)
        css = await get(server.port, "/static/app.css")
        assert (css.status, css.body, css.headers["content-type"]) == (200, b"body { margin: 0 }\n",
                                                                       "text/css; charset=utf-8")
        assert css.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert (await get(server.port, "/")).body == b"<!doctype html><title>t</title>"
        for path in ("/static/.secret", "/static/link.txt", "/static/../outside.txt", "/outside.txt"):
            assert (await get(server.port, path)).status == 404, path
        server.stop()


async def test_unknown_paths_other_methods_and_the_websocket_path(server):
    missing = await get(server.port, "/nope")
    assert missing.status == 404 and missing.headers["content-type"].startswith("text/plain")
    assert_common_headers(missing)
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        refused = await get(server.port, "/", method)
        assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD", method
    posted = await exchange(server.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
                            + b"x" * 5000)  # a body it never reads: still a clean answer, no reset
    assert posted.status == 405
    plain = await get(server.port, "/ws")
    assert plain.status == 426 and plain.headers["upgrade"] == "websocket"
    async with connect(server.port) as c:  # while the WebSocket endpoint works as ever
        assert c.hello["type"] == "connected"


async def test_hostile_requests_get_a_clear_answer_and_the_server_goes_on(db_path):
    async with running_server(db_path, handshake_timeout=0.5) as server:
        assert (await exchange(server.port, b"GARBAGE\r\n\r\n")).status == 400
        assert (await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")).status == 400
        assert (await exchange(server.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
                ).status == 400  # TLS to a plain-text server
        huge = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
        too_big = await exchange(server.port, huge + b"\r\n")
        assert too_big.status == 431 and b"Bad request" in too_big.body
        assert (await get(server.port, "/" + "a" * 20_000)).status == 431
        # slowloris: a head that never ends is dropped after handshake_timeout, answered nothing
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as slow:
            await slow.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            with trio.fail_after(scaled(5)):
                for _ in range(3):
                    await trio.sleep(0.1)
                    await slow.send_all(b"X-Drip: 1\r\n")
                assert await slow.receive_some() == b""
        await assert_healthy(server)


async def test_websocket_handshakes_that_are_not_quite(server):
    no_key = HANDSHAKE.format(path="/ws").replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
    assert (await exchange(server.port, no_key.encode())).status == 400
    old = HANDSHAKE.format(path="/ws").replace("Version: 13", "Version: 8")
    reply = await exchange(server.port, old.encode())
    assert reply.status == 426 and reply.headers["sec-websocket-version"] == "13"
    assert (await handshake(server.port)).startswith(b"HTTP/1.1 101")
    await assert_healthy(server)


@pytest.mark.process
async def test_plain_http_over_tls(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile = tmp_path / "cert.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with running_server(str(tmp_path / "a.db"), certfile=str(certfile), close_timeout=0.2) as server:
        page = await get(server.port, "/", context=context)
        assert page.status == 200 and page.body == (package_static_dir() / "index.html").read_bytes()
        assert (await get(server.port, "/healthz", context=context)).status == 200
        assert (await get(server.port, "/nope", context=context)).status == 404
        # plain text to the TLS port is refused, and the server goes on
        with trio.move_on_after(1):
            assert b"HTTP/1.1 200" not in (await exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).raw
        assert (await get(server.port, "/agentcast.js", context=context)).status == 200


async def test_a_failing_route_is_a_500_and_the_server_goes_on(server):
    async def boom():
        raise ValueError("a bug in a route")

    server.http.handlers["/boom"] = boom
    reply = await get(server.port, "/boom")
    assert reply.status == 500 and b"Traceback" not in reply.body and b"a bug" not in reply.body
    await assert_healthy(server)


async def test_a_stop_does_not_wait_for_half_sent_requests(db_path):
    async with running_server(db_path, handshake_timeout=60, close_timeout=0.2) as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stalled:
            await stalled.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            assert (await get(server.port, "/healthz")).status == 200
            server.stop()
            with trio.fail_after(scaled(5)):  # not the 60 s of handshake_timeout
                await server.stopped.wait()
                assert await stalled.receive_some() == b""
