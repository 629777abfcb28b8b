"""The openai brain's HTTP/1.1 client (actors/_http11.py): its sans-IO parts (the response's head, the three
body framings cut at every byte, content decoding, proxies from the environment), then the client against real
loopback servers (tests/support/fake_openai.py, tests/support/proxy.py): bodies of each framing, keep-alive,
a stale kept connection, timeouts, TLS, proxies."""
from __future__ import annotations

import base64
import functools
import gzip
import socket
import zlib

import pytest
import trio

from agentcast.actors import BrainError, OpenAIBrain, OpenAIBrainSettings
from agentcast.actors import _endpoint, _http11
from agentcast.actors._http11 import (INFLATION_FLOOR, MAX_DECODED_READ, MAX_INFLATION, ChunkedBody, CloseBody, ContentDecoder, DecodingError,
                                      LengthBody, Proxy, ProtocolError, ResponseHead, UnsupportedProxy, body_of,
                                      head_end, proxy_from_environment)
from support.fake_openai import FakeOpenAI, Reply, chunk, in_chunk, sse_event, sse_head, text
from support.http import receive_head
from support.llm import brain_for, items_of, turn_for
from support.proxy import FakeProxy


# -- the response's head ----------------------------------------------------------------------------------


def test_a_head_is_parsed_with_lower_case_names_and_repeated_headers_joined():
    head = ResponseHead.parse(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nX-A: 1\r\nx-a:  2 \r\n")
    assert (head.version, head.status, head.reason) == ("HTTP/1.1", 429, "Too Many Requests")
    assert head.headers == {"retry-after": "7", "x-a": "1, 2"}


@pytest.mark.parametrize("data, says", [
    (b"HTTP/2 200 OK", "not an HTTP/1.1 status line"),
    (b"HTTP/1.1 2000 OK", "not an HTTP/1.1 status line"),
    (b"ICY 200 OK", "not an HTTP/1.1 status line"),
    (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded", "folded"),
    (b"HTTP/1.1 200 OK\r\nno colon here", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nBad Name: 1", "malformed header line"),
])
def test_a_malformed_head_is_a_protocol_error(data, says):
    with pytest.raises(ProtocolError, match=says):
        ResponseHead.parse(data)


def test_the_end_of_a_head_is_found_with_crlf_or_lf_line_ends():
    assert head_end(b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\nbody") == (21, 25)
    assert head_end(b"HTTP/1.1 200 OK\nA: 1\n\nbody") == (20, 22)
    assert head_end(b"HTTP/1.1 200 OK\r\nA: 1\r\n") == (-1, -1)


@pytest.mark.parametrize("headers, kind", [
    ({"transfer-encoding": "chunked"}, ChunkedBody),
    ({"transfer-encoding": "gzip, chunked", "content-length": "5"}, ChunkedBody),
    ({"transfer-encoding": "gzip"}, CloseBody),
    ({"content-length": "5"}, LengthBody),
    ({"content-length": "5, 5"}, LengthBody),
    ({}, CloseBody),
])
def test_the_framing_of_a_body_follows_its_head(headers, kind):
    assert type(body_of(ResponseHead("HTTP/1.1", 200, "OK", headers))) is kind


@pytest.mark.parametrize("length", ["-1", "5, 6", "0x10", "١٢", "9" * 19])
def test_a_bad_content_length_is_a_protocol_error(length):
    with pytest.raises(ProtocolError, match="Content-Length"):
        body_of(ResponseHead("HTTP/1.1", 200, "OK", {"content-length": length}))


def test_a_no_content_answer_has_no_body():
    assert body_of(ResponseHead("HTTP/1.1", 204, "No Content", {})).done


# -- bodies, cut at every byte ------------------------------------------------------------------------------

CHUNKED = b"5;ext=1\r\nHello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\n"


def feed_cut(body, data: bytes, cut: int) -> tuple[bytes, bytes]:
    got, after = b"", b""
    for piece in (data[:cut], data[cut:]):
        if piece and not body.done:
            out, after = body.feed(piece)
            got += out
    return got, after


@pytest.mark.parametrize("cut", range(len(CHUNKED) + 1))
def test_a_chunked_body_is_decoded_wherever_the_reads_cut_it(cut):
    body = ChunkedBody()
    got, after = feed_cut(body, CHUNKED + b"NEXT", cut)
    assert (got, after, body.done) == (b"Hello world!", b"NEXT" if cut < len(CHUNKED) else b"", True)


def test_a_chunked_body_decodes_each_read_in_one_pass():
    body = ChunkedBody()
    assert body.feed(in_chunk(b"one") + in_chunk(b"two")) == (b"onetwo", b"")
    assert body.feed(b"5\r\nthr") == (b"thr", b"")
    assert body.feed(b"ee\r\n0\r\n\r\n") == (b"ee", b"") and body.done


@pytest.mark.parametrize("data, says", [
    (b"zz\r\n", "bad chunk size"),
    (b"-1\r\n", "bad chunk size"),
    (b"\r\n", "bad chunk size"),
    (b"1" * 17 + b"\r\n", "bad chunk size"),
    (b"2\r\nabc\r\n", "longer than its size"),
    (b"1" * 5000, "chunk-size line longer"),
])
def test_a_malformed_chunked_body_is_a_protocol_error(data, says):
    with pytest.raises(ProtocolError, match=says):
        ChunkedBody().feed(data)


def test_bodies_that_end_early_are_protocol_errors_but_a_close_delimited_one_is_complete():
    chunked = ChunkedBody()
    chunked.feed(b"5\r\nHel")
    with pytest.raises(ProtocolError, match="before the end of the chunked body"):
        chunked.end()
    sized = LengthBody(10)
    assert sized.feed(b"Hello") == (b"Hello", b"")
    with pytest.raises(ProtocolError, match="5 bytes before the end"):
        sized.end()
    closed = CloseBody()
    assert closed.feed(b"Hello") == (b"Hello", b"")
    closed.end()
    assert closed.done


def test_a_sized_body_gives_what_follows_it_apart():
    body = LengthBody(5)
    assert body.feed(b"Hel") == (b"Hel", b"") and not body.done
    assert body.feed(b"loEXTRA") == (b"lo", b"EXTRA") and body.done


# -- content encodings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
])
def test_gzip_and_deflate_are_decoded_read_by_read(encoding, encode):
    data = b"data: hello\n\n" * 100
    encoded = encode(data)
    decoder = ContentDecoder(encoding)
    got = b"".join(decoder.decode(encoded[i:i + 7]) for i in range(0, len(encoded), 7)) + decoder.flush()
    assert got == data


def test_a_decoded_read_is_bounded_and_the_rest_comes_with_the_next():
    decoder = ContentDecoder("gzip")
    first = decoder.decode(gzip.compress(b"x" * (3 * MAX_DECODED_READ)))
    assert len(first) == MAX_DECODED_READ and decoder.pending
    assert len(decoder.decode(b"")) == MAX_DECODED_READ


@pytest.mark.parametrize("encoding", ["br", "gzip, gzip", "compress"])
def test_an_encoding_not_supported_is_a_decoding_error(encoding):
    with pytest.raises(DecodingError, match="unsupported content encoding"):
        ContentDecoder(encoding)


def test_broken_gzip_is_a_decoding_error():
    with pytest.raises(DecodingError, match="broken content encoding"):
        ContentDecoder("gzip").decode(b"this is not gzip")


# -- proxies from the environment ----------------------------------------------------------------------------

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                   "no_proxy")


@pytest.fixture
def no_proxies(monkeypatch):
    """No proxy variable set (whatever the environment of the tests has)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)



@pytest.mark.parametrize("environ, scheme, host, port, expected", [
    ({}, "https", "api.openai.com", 443, None),
    ({"HTTPS_PROXY": "http://p:3128"}, "https", "api.openai.com", 443, ("p", 3128)),
    ({"HTTPS_PROXY": "http://p:3128"}, "http", "localhost", 11434, None),
    ({"HTTP_PROXY": "p:8080"}, "http", "localhost", 11434, ("p", 8080)),
    ({"ALL_PROXY": "http://p"}, "http", "localhost", 11434, ("p", 80)),
    ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "https", "h", 443, ("lower", 1)),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "openai.com"}, "https", "api.openai.com", 443, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".openai.com,localhost"}, "https", "api.openai.com", 443, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https", "api.openai.com", 443, None),
    ({"HTTP_PROXY": "http://p:1", "no_proxy": "127.0.0.1:8000"}, "http", "127.0.0.1", 8000, None),
    ({"HTTP_PROXY": "http://p:1", "no_proxy": "127.0.0.1:9999"}, "http", "127.0.0.1", 8000, ("p", 1)),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https", "api.openai.com", 443, ("p", 1)),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*.openai.com"}, "https", "api.openai.com", 443, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*.openai.com"}, "https", "notopenai.com", 443, ("p", 1)),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "localhost, *"}, "https", "api.openai.com", 443, None),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "::1"}, "http", "::1", 11434, None),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "[::1]:11434"}, "http", "::1", 11434, None),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "[::1]:80"}, "http", "::1", 11434, ("p", 1)),
    ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "LocalHost:11434"}, "http", "localhost", 11434, None),
])
def test_the_proxy_is_the_one_the_environment_names_for_the_url(no_proxies, monkeypatch, environ, scheme, host, port,
                                                                expected):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    proxy = proxy_from_environment(scheme, host, port)
    assert (proxy if proxy is None else (proxy.host, proxy.port)) == expected


def test_a_proxy_s_credentials_become_its_proxy_authorization(no_proxies, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://us%40er:p%3Ass@p:1")
    proxy = proxy_from_environment("https", "h", 443)
    assert isinstance(proxy, Proxy)
    assert proxy.authorization == b"Proxy-Authorization: Basic " + base64.b64encode(b"us@er:p:ss") + b"\r\n"


@pytest.mark.parametrize("url", ["socks5://user:secret@p:1080", "https://user:secret@p:3128"])
def test_a_proxy_of_another_kind_is_unsupported_saying_which_variable_without_its_url(no_proxies, monkeypatch, url):
    monkeypatch.setenv("HTTPS_PROXY", url)
    proxy = proxy_from_environment("https", "h", 443)
    assert isinstance(proxy, UnsupportedProxy)
    assert "HTTPS_PROXY" in str(proxy) and "secret" not in str(proxy) and "@p" not in str(proxy)


# -- the client against real servers -------------------------------------------------------------------------


@pytest.fixture
async def fake(nursery):
    return await FakeOpenAI().start(nursery)


EVENTS = sse_event(chunk("Hel")) + sse_event(chunk("lo")) + sse_event(chunk(finish="stop")) + sse_event("[DONE]")


async def test_the_request_carries_the_client_s_headers(fake, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-secret-123")
    fake.script(text("ok"))
    brain = brain_for(fake, api_key_env="FAKE_OPENAI_KEY")
    await items_of(brain, turn_for(brain))
    headers = fake.headers[0]
    assert headers["host"] == f"127.0.0.1:{fake.port}" and headers["user-agent"].startswith("agentcast/")
    assert headers["accept"] == "text/event-stream" and headers["accept-encoding"] == "identity"
    assert headers["content-type"] == "application/json" and headers["authorization"] == "Bearer sk-secret-123"
    assert int(headers["content-length"]) > 0 and fake.requests[0]["model"] == "fake-model"


async def test_a_sized_body_streams_and_its_connection_serves_the_next_turn(fake):
    sized = sse_head(f"Content-Length: {len(EVENTS)}", chunked=False) + EVENTS
    fake.script(Reply(raw=[sized[:60], sized[60:]], end="keep"), text("again"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 0]


async def test_a_close_delimited_body_streams_and_its_connection_is_not_kept(fake):
    fake.script(Reply(raw=[sse_head(chunked=False) + EVENTS[:30], EVENTS[30:]]), text("again"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 1]


async def test_a_gzip_body_sent_anyway_is_decoded(fake, autojump_clock):
    encoded = gzip.compress(EVENTS)
    fake.script(Reply(raw=[sse_head("Content-Encoding: gzip") + in_chunk(encoded[:20]), in_chunk(encoded[20:]) + b"0\r\n\r\n"],
                      end="keep"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]


async def test_the_end_of_a_body_that_comes_after_done_is_waited_for_and_the_connection_kept(fake, autojump_clock):
    fake.script(Reply(raw=[sse_head() + in_chunk(EVENTS), b"0\r\n\r\n"], end="keep"), text("again"))
    brain = brain_for(fake, retries=0)
    started = trio.current_time()
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    assert trio.current_time() - started == pytest.approx(0.01)  # the body's end came 10 ms after [DONE]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 0]


async def test_an_informational_answer_before_the_response_is_skipped(fake):
    fake.script(Reply(raw=[b"HTTP/1.1 100 Continue\r\n\r\n" + sse_head() + in_chunk(EVENTS) + b"0\r\n\r\n"]))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]


async def test_a_kept_connection_the_server_closed_is_replaced_without_counting_a_try(fake):
    fake.script(text("one", close_after=True), text("two"))
    brain = brain_for(fake, retries=0)  # a try counted would fail the turn
    assert await items_of(brain, turn_for(brain)) == ["one"]
    await trio.testing.wait_all_tasks_blocked()  # the server has closed its end
    assert await items_of(brain, turn_for(brain)) == ["two"]
    assert fake.connection_of == [0, 1]


async def test_a_kept_connection_is_replaced_once_only(fake, autojump_clock):
    fake.script(text("one"), Reply(raw=[]), Reply(raw=[]))  # the fresh connection closes without an answer too
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["one"]
    with pytest.raises(BrainError, match="closed the connection without sending a response"):
        await items_of(brain, turn_for(brain))


async def test_a_head_longer_than_its_bound_is_refused_even_when_it_ends(fake, autojump_clock):
    head = sse_head("X-Padding: " + "p" * 70_000)
    fake.script(*[Reply(raw=[head + in_chunk(EVENTS) + b"0\r\n\r\n"])] * 2)
    brain = brain_for(fake, retries=1)
    with pytest.raises(BrainError, match="a response head longer than 65536 bytes"):
        await items_of(brain, turn_for(brain))


async def test_a_connection_that_never_opens_is_the_connect_timeout_and_is_retried(autojump_clock):
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # one connection waiting to be accepted fills it: the kernel drops further SYNs
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url=f"http://127.0.0.1:{port}/v1", timeout=5,
                                                retries=1, retry_backoff=0.5))
        started = trio.current_time()
        with pytest.raises(BrainError) as caught:
            await items_of(brain, turn_for(brain))
    assert str(caught.value) == (f"could not connect to the model server at http://127.0.0.1:{port}/v1: no connection "
                                 "within 5 s (timeout) (after 2 tries)")
    assert trio.current_time() - started == pytest.approx(10.5)


async def test_a_head_that_never_comes_is_the_timeout(fake, autojump_clock):
    fake.script(Reply(raw=[b"HTTP/1.1 200 OK\r\n"], end="stall"))
    brain = brain_for(fake, timeout=5, retries=0)
    started = trio.current_time()
    with pytest.raises(BrainError, match=r"sent nothing for 5 s \(timeout\)"):
        await items_of(brain, turn_for(brain))
    assert trio.current_time() - started == pytest.approx(5)


async def test_the_turn_deadline_bounds_a_response_that_trickles(fake, autojump_clock):
    fake.script(Reply(raw=[b"HTTP/1.1 200 OK\r\n", *[b"X-A: 1\r\n"] * 1000], end="stall"))  # a header every 10 ms
    brain = brain_for(fake, timeout=5, turn_timeout=3, retries=0)
    started = trio.current_time()
    with pytest.raises(BrainError, match=r"took longer than 3 s to answer \(turn_timeout\)"):
        await items_of(brain, turn_for(brain))
    assert trio.current_time() - started == pytest.approx(3)


# -- TLS ------------------------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """(a server SSL context, the CA's file) for 127.0.0.1; the shared client context made anew trusting that CA
    through SSL_CERT_FILE."""
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setattr(_endpoint, "_SSL_CONTEXT", None)
    return server, ca_file


async def test_https_is_served_over_tls_with_the_ca_of_ssl_cert_file(nursery, tls, monkeypatch):
    server, ca_file = tls
    fake = await FakeOpenAI(text("secure", "ly"), text("again")).start(nursery, ssl_context=server)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    brain = brain_for(fake)
    assert fake.base_url.startswith("https://")
    assert await items_of(brain, turn_for(brain)) == ["secure", "ly"]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 0]  # kept alive over TLS too


async def test_a_certificate_not_trusted_is_a_clear_connect_error(nursery, tls, monkeypatch, autojump_clock):
    server, _ = tls
    fake = await FakeOpenAI(text("never")).start(nursery, ssl_context=server)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert f"could not connect to the model server at https://127.0.0.1:{fake.port}/v1: TLS handshake failed" in str(caught.value)
    assert "certificate" in str(caught.value) and fake.requests == []


# -- proxies ------------------------------------------------------------------------------------------------


@pytest.fixture
async def proxy(nursery, no_proxies):
    return await FakeProxy("us%40er:s3cret").start(nursery)


async def test_an_http_endpoint_is_reached_through_http_proxy_with_its_credentials(fake, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    fake.script(text("via", " proxy"), text("again"))
    brain = brain_for(fake)
    assert await items_of(brain, turn_for(brain)) == ["via", " proxy"]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    target = f"http://127.0.0.1:{fake.port}/v1/chat/completions"
    assert proxy.asked == [("POST", target, "Basic " + base64.b64encode(b"us@er:s3cret").decode())]  # one connection
    assert fake.connection_of == [0, 0] and fake.targets[0] == "/v1/chat/completions"


async def test_an_https_endpoint_is_reached_through_a_connect_tunnel(nursery, tls, proxy, monkeypatch):
    server, ca_file = tls
    fake = await FakeOpenAI(text("tunnelled")).start(nursery, ssl_context=server)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv("https_proxy", proxy.url)
    brain = brain_for(fake)
    assert await items_of(brain, turn_for(brain)) == ["tunnelled"]
    assert proxy.asked == [("CONNECT", f"127.0.0.1:{fake.port}", "Basic " + base64.b64encode(b"us@er:s3cret").decode())]


async def test_no_proxy_sends_the_request_straight_to_the_server(fake, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    fake.script(text("direct"))
    brain = brain_for(fake)
    assert await items_of(brain, turn_for(brain)) == ["direct"] and proxy.asked == []


async def test_the_proxy_settings_are_read_once_when_the_brain_is_made(fake, proxy, monkeypatch):
    fake.script(text("direct"))
    brain = brain_for(fake)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # too late for this brain
    assert await items_of(brain, turn_for(brain)) == ["direct"] and proxy.asked == []


async def test_a_proxy_refusing_the_tunnel_is_retried_and_its_url_never_shown(nursery, tls, proxy, monkeypatch,
                                                                                autojump_clock):
    server, ca_file = tls
    fake = await FakeOpenAI(text("at last")).start(nursery, ssl_context=server)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    proxy.refusals = 1
    brain = brain_for(fake, retries=1)
    assert await items_of(brain, turn_for(brain)) == ["at last"]
    proxy.refusals, proxy.refuse = 2, 407
    brain = brain_for(fake, retries=1)  # connections of its own (the first brain's is kept, through the tunnel)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == (f"could not reach the model server at https://127.0.0.1:{fake.port}/v1 through the "
                                 "proxy (the proxy answered HTTP 407 to CONNECT) (after 2 tries)")


async def test_a_proxy_that_cannot_be_reached_is_a_proxy_error(fake, no_proxies, monkeypatch, autojump_clock):
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://user:s3cret@127.0.0.1:{port}")
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert "through the proxy (could not connect to the proxy: connection refused)" in str(caught.value)
    assert "s3cret" not in str(caught.value) and str(port) not in str(caught.value)


async def test_a_proxy_refusing_an_http_request_for_its_credentials_is_a_proxy_error(fake, proxy, monkeypatch,
                                                                                   autojump_clock):
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("s3cret", "wrong"))
    proxy.refusals, proxy.refuse = 1, 407
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == (f"could not reach the model server at http://127.0.0.1:{fake.port}/v1 through the proxy "
                                 "(the proxy answered HTTP 407 (its credentials are missing or refused))")


async def test_a_socks_proxy_is_a_clear_error_at_the_first_turn(fake, no_proxies, monkeypatch):
    monkeypatch.setenv("ALL_PROXY", "socks5://user:s3cret@127.0.0.1:1080")
    brain = brain_for(fake)  # made: a config with such an environment still loads
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert "the proxy in ALL_PROXY is a socks5:// proxy" in str(caught.value) and "s3cret" not in str(caught.value)
    assert fake.requests == []


# -- what a server may send that no request asked for -----------------------------------------------------------

SMUGGLED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n"
            % len(sse_event(chunk("another user's answer")) + sse_event("[DONE]"))
            + sse_event(chunk("another user's answer")) + sse_event("[DONE]"))


def sized_answer(events: bytes = EVENTS) -> bytes:
    return sse_head(f"Content-Length: {len(events)}", chunked=False) + events


async def test_bytes_that_come_after_a_whole_response_never_answer_the_next_request(fake, autojump_clock):
    # the first answer is whole; 10 ms later the server sends a second, unasked one, and keeps the connection
    fake.script(Reply(raw=[sized_answer(), SMUGGLED], end="keep"), text("again"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    await trio.sleep(1)  # the unasked answer has come meanwhile
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 1]  # the connection out of step was closed, not lent


async def test_over_tls_bytes_after_a_whole_response_never_answer_the_next_request(nursery, tls, monkeypatch,
                                                                                   autojump_clock):
    server, ca_file = tls
    fake = await FakeOpenAI(Reply(raw=[sized_answer(), SMUGGLED], end="keep"), text("again")).start(
        nursery, ssl_context=server)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    await trio.sleep(1)
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 1]


@pytest.mark.parametrize("trio_buffer", ["read", "absent"])
async def test_a_tls_connection_is_kept_where_trio_s_buffer_can_be_read_and_replaced_where_not(
        nursery, tls, monkeypatch, trio_buffer):
    """Whether a kept TLS connection holds bytes of no request is read in trio.SSLStream's private incoming
    buffer; a trio without it (a version not read) costs keep-alive over TLS, never a stray answer."""
    server, ca_file = tls
    if trio_buffer == "absent":
        monkeypatch.setattr(_http11, "TRIO_SSL_INCOMING", "_not_in_this_trio")
    fake = await FakeOpenAI(text("one"), text("two")).start(nursery, ssl_context=server)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["one"]
    assert await items_of(brain, turn_for(brain)) == ["two"]
    assert fake.connection_of == ([0, 0] if trio_buffer == "read" else [0, 1])


class HeldSends(trio.abc.Stream):
    """A TCP stream whose sends, while `held`, are kept and go out together at `release` (one TCP write): the
    TLS records written meanwhile reach the peer in one read of its socket."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp, self.held, self.kept = tcp, False, b""

    async def send_all(self, data) -> None:
        if self.held:
            self.kept += bytes(data)
        else:
            await self.tcp.send_all(data)

    async def release(self) -> None:
        self.held, data, self.kept = False, self.kept, b""
        await self.tcp.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.tcp.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.tcp.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.tcp.aclose()


async def test_over_tls_an_answer_in_a_record_read_with_the_last_one_never_answers_the_next_request(
        nursery, tls, monkeypatch, autojump_clock):
    server, ca_file = tls
    requests: list[int] = []  # the connection of each request

    async def serve(tcp: trio.SocketStream, number: list[int] = [0]) -> None:
        connection, number[0] = number[0], number[0] + 1
        held = HeldSends(tcp)
        stream = trio.SSLStream(held, server, server_side=True, https_compatible=True)
        received = b""
        try:
            while True:
                if (got := await receive_head(stream, received)) is None:
                    return
                head, received = got
                length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
                while len(received) < length:
                    received += await stream.receive_some(65536)
                received = received[length:]
                requests.append(connection)
                if connection == 0:  # the answer and an unasked one: two TLS records, one TCP write
                    held.held = True
                    await stream.send_all(sized_answer())
                    await stream.send_all(SMUGGLED)
                    await held.release()
                else:
                    await stream.send_all(sized_answer(sse_event(chunk("again")) + sse_event("[DONE]")))
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url=f"https://127.0.0.1:{port}/v1", retries=0))
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert requests == [0, 1]


@pytest.mark.parametrize("end", ["close", "reset"])
async def test_a_request_the_server_began_to_answer_on_a_kept_connection_is_never_sent_again(fake, autojump_clock, end):
    fake.script(text("one"), Reply(raw=[b"HTTP/1.1 100 Continue\r\n\r\n"], end=end), text("two"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["one"]
    with pytest.raises(BrainError, match="the model server closed the connection"):
        await items_of(brain, turn_for(brain))
    assert len(fake.requests) == 2  # not a third: the request the server had was not sent again


@pytest.mark.parametrize("header, says", [
    ("Content-Length: 5, 6", "a bad Content-Length"),
    ("Content-Encoding: br", "could not be decoded"),
])
async def test_a_response_whose_framing_or_coding_is_refused_has_its_connection_closed_at_once(fake, autojump_clock,
                                                                                              header, says):
    fake.script(Reply(raw=[f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{header}\r\n\r\n".encode()],
                      end="stall"))
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError, match=says):
        await items_of(brain, turn_for(brain))
    with trio.fail_after(0.5):  # not when the timeout (60 s) would have closed it
        await fake.disconnected.wait()


async def test_a_response_framed_by_both_transfer_encoding_and_content_length_does_not_keep_its_connection(
        fake, autojump_clock):
    both = sse_head(f"Content-Length: {len(EVENTS)}") + in_chunk(EVENTS) + b"0\r\n\r\n"  # chunked wins
    fake.script(Reply(raw=[both], end="keep"), text("again"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["Hel", "lo"]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 1]


def gzipped(data: bytes, times: int = 1) -> bytes:
    encoder = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(encoder.compress(data) for _ in range(times)) + encoder.flush()


async def test_a_compressed_body_that_inflates_to_a_bomb_is_refused_before_it_is_read(fake, autojump_clock):
    bomb = gzipped(b"\n" * 1_048_576, 1024)  # 1 GiB of line ends in about 1 MB
    fake.script(Reply(raw=[sse_head("Content-Encoding: gzip") + in_chunk(bomb) + b"0\r\n\r\n"]))
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == ("the model server's answer could not be decoded: a compressed body that inflates "
                                 f"more than {MAX_INFLATION} times (a decompression bomb): refused")


async def test_a_compressed_stream_of_identical_events_is_not_taken_for_a_bomb(fake, autojump_clock):
    events = sse_event(chunk("a")) * 100_000 + sse_event(chunk(finish="stop")) + sse_event("[DONE]")
    encoded = gzipped(events)
    assert len(events) > INFLATION_FLOOR and len(events) / len(encoded) > 250
    fake.script(Reply(raw=[sse_head("Content-Encoding: gzip") + in_chunk(encoded) + b"0\r\n\r\n"]))
    brain = brain_for(fake, retries=0)
    assert "".join(await items_of(brain, turn_for(brain))) == "a" * 100_000


def test_a_decoder_refuses_a_body_past_the_inflation_bound_and_not_before():
    decoder = ContentDecoder("gzip")
    given = 0
    with pytest.raises(DecodingError, match="decompression bomb"):
        data = gzipped(b"\0" * 1_048_576, 64)
        given += len(decoder.decode(data))
        while decoder.pending:
            given += len(decoder.decode(b""))
    assert INFLATION_FLOOR <= given < INFLATION_FLOOR + MAX_DECODED_READ * 2


def test_a_trailer_section_is_bounded_in_bytes():
    body = ChunkedBody()
    body.feed(b"0\r\n")
    with pytest.raises(ProtocolError, match="a trailer section longer than 65536 bytes"):
        for _ in range(10_000):
            body.feed(b"X-Trailer: 1\r\n")


async def test_interim_responses_are_bounded_in_bytes_in_all(fake, autojump_clock):
    interims = [b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n" * 100] * 100  # 500 KB, 10 ms apart
    fake.script(Reply(raw=[*interims, sse_head() + in_chunk(EVENTS) + b"0\r\n\r\n"]))
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError, match=r"interim \(1xx\) responses longer than 65536 bytes in all"):
        await items_of(brain, turn_for(brain))


async def test_a_malformed_body_in_the_middle_of_the_answer_says_what_was_wrong(fake, autojump_clock):
    fake.script(Reply(raw=[sse_head() + in_chunk(sse_event(chunk("Hel"))), b"zz\r\n"]))
    brain = brain_for(fake, retries=0)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == "the model server's answer broke off in the middle: a bad chunk size: b'zz'"


async def test_bytes_after_a_compressed_body_still_being_decoded_do_not_keep_its_connection(fake, autojump_clock):
    events = sse_event(chunk("a" * 100_000)) + sse_event(chunk(finish="stop")) + sse_event("[DONE]")
    encoded = gzipped(events)  # decoded in more than one read: its end comes while the decoder has input left
    head = sse_head("Content-Encoding: gzip", f"Content-Length: {len(encoded)}", chunked=False)
    fake.script(Reply(raw=[head + encoded + b"HTTP/1.1 200 OK\r\n"], end="keep"), text("again"))
    brain = brain_for(fake, retries=0)
    assert await items_of(brain, turn_for(brain)) == ["a" * 100_000]
    assert await items_of(brain, turn_for(brain)) == ["again"]
    assert fake.connection_of == [0, 1]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_not_followed_and_says_where_it_points(fake, monkeypatch, status):
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-secret-123")
    fake.script(Reply(status=status, body="moved", content_type="text/plain",
                      headers={"location": "https://other.example:8443/v1/chat/completions?token=t0ken"}))
    brain = brain_for(fake, api_key_env="FAKE_OPENAI_KEY", retries=2)
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == (f"the model server redirected the request to https://other.example (HTTP {status}); "
                                 "redirects are not followed: set base_url to the URL it points to")
    assert len(fake.requests) == 1  # neither followed nor tried again


async def test_a_host_name_the_resolver_cannot_take_is_a_clear_connect_error(no_proxies, autojump_clock):
    brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url="http://a..b/v1", retries=0))
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == "could not connect to the model server at http://a..b/v1: 'a..b' is not a valid host name"


@pytest.mark.parametrize("through_proxy", [False, True])
async def test_a_server_that_stalls_the_tls_handshake_is_its_fault_not_the_proxy_s(nursery, proxy, monkeypatch,
                                                                                   autojump_clock, through_proxy):
    async def silent(tcp: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    if through_proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    brain = OpenAIBrain(OpenAIBrainSettings(model="m", base_url=f"https://127.0.0.1:{port}/v1", timeout=5, retries=0))
    started = trio.current_time()
    with pytest.raises(BrainError) as caught:
        await items_of(brain, turn_for(brain))
    assert str(caught.value) == (f"could not connect to the model server at https://127.0.0.1:{port}/v1: no TLS "
                                 "handshake within 5 s (timeout)")
    assert trio.current_time() - started == pytest.approx(5)
