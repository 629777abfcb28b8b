"""Authentication and Origin checks (issue 4, "Hardening"): signed tokens, the `auth` frame and the
`Authorization` header, what an unauthenticated connection may do, its deadline, token expiry,
`set_user` under auth, forged tokens, the Origin allow-list, the exposure warning, `agentcast token`,
`serve` refusing a bad secret, and wss:// with a self-signed certificate."""
from __future__ import annotations

import base64
import calendar
import collections
import json
import logging
import os
import ssl
import subprocess
import sys
import time

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    open_websocket_url,
    wrap_client_stream,
    wrap_server_stream,
)

from agentcast.actors import ConfigError, agent_specs
from agentcast.store import EventLog
from support import HANDSHAKE, Client, connect, handshake, running_server, scaled
from support.auth import OTHER_SECRET, SECRET, SECRET_ENV, authenticate, token_for
from support.harness import Harness
from agentcast.transport import protocol as p
from agentcast.transport._auth import (
    MIN_SECRET_BYTES,
    Authenticator,
    TokenError,
    bearer_token,
    exposure_warning,
    is_loopback,
    mint,
    origin_allowed,
    parse_ttl,
    secret_from_env,
    verify,
)
from agentcast.transport._config import load_config, server_settings
from agentcast.transport._connection import POLICY_VIOLATION, Connection
from agentcast.transport.cli import BadArgument, token_user
from agentcast.transport.server import Server, ServerSettings

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)

NOW = 1_800_000_000
CLI = [sys.executable, "-m", "agentcast.transport.cli"]
#: Bound on one-shot commands and on a server starting.
PROCESS_TIMEOUT = scaled(15)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def chat(message, rid=None, agent="my_agent"):
    frame = {"type": "chat", "agent_id": agent, "message": message}
    return {**frame, "request_id": rid} if rid else frame


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    return SECRET_ENV


# -- tokens ----------------------------------------------------------------------------------


def test_a_minted_token_verifies_with_its_user_and_type_and_expiry():
    for user in (123, "alice", "123", -5, "café ☕"):
        claims = verify(SECRET, mint(SECRET, user, NOW + 60), NOW)
        assert claims.user_id == user and type(claims.user_id) is type(user)
        assert claims.expires_at == NOW + 60
    assert verify(SECRET, mint(SECRET, 1, NOW + 60), NOW).expires_iso == "2027-01-15T08:01:00Z"
    token = mint(SECRET, 123, NOW + 60)
    payload, signature = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(payload + "==")) == {"sub": 123, "exp": NOW + 60}
    assert len(base64.urlsafe_b64decode(signature + "=")) == 32  # HMAC-SHA256


def refused(token, secret=SECRET, now=NOW) -> TokenError:
    with pytest.raises(TokenError) as caught:
        verify(secret, token, now)
    assert not token or token not in caught.value.message  # never echoed
    return caught.value


def test_tampered_wrong_secret_expired_and_malformed_tokens_are_refused_with_distinct_messages():
    good = mint(SECRET, "mallory", NOW + 60)
    payload, signature = good.split(".")
    tampered = b64(json.dumps({"sub": "alice", "exp": NOW + 60}).encode()) + "." + signature
    bad_signature = {refused(tampered), refused(mint(OTHER_SECRET, "alice", NOW + 60))}
    assert {e.reason for e in bad_signature} == {"bad_signature"}
    expired = refused(mint(SECRET, "alice", NOW - 1))
    assert expired.reason == "expired" and "expired" in expired.message
    assert refused(mint(SECRET, "alice", NOW)).reason == "expired"  # valid strictly before exp

    def signed(raw: bytes) -> str:  # a payload that is properly signed but not the documented JSON
        import hashlib
        import hmac

        first = b64(raw)
        return first + "." + b64(hmac.new(SECRET, first.encode(), hashlib.sha256).digest())

    malformed = [
        "", "x" * 5000, "no-dot", good + ".extra", payload + ".", "." + signature, payload + "!." + signature,
        payload + "=." + signature, payload + "." + signature[:-2], payload + "." + b64(b"short"),
        signed(b"not json"), signed(b"[1]"), signed(b'{"sub": "a"}'), signed(b'{"sub": true, "exp": 1900000000}'),
        signed(b'{"sub": "", "exp": 1900000000}'), signed(b'{"sub": "a", "exp": "1900000000"}'),
        signed(b'{"sub": "a", "exp": 1e400}'), signed(b'{"sub": "a", "exp": 99999999999999999999}'),
    ]
    for token in malformed:
        assert refused(token).reason == "malformed", token
    messages = {e.reason: e.message for e in [*bad_signature, expired, refused("no-dot")]}
    assert len(set(messages.values())) == 3
    assert "signature" in messages["bad_signature"] and "malformed" in messages["malformed"]


def test_token_user_ids_have_the_bounds_of_set_user_in_bytes_and_digits():
    """A token's user is one set_user could name: a string of at most 256 bytes as UTF-8, an integer of at
    most 256 digits."""
    for user in ("x" * 256, "\U0001F600" * 64, 10**256 - 1, -(10**255 - 1)):
        assert verify(SECRET, mint(SECRET, user, NOW + 60), NOW).user_id == user
    for user in ("x" * 257, "\U0001F600" * 65, 10**256, -(10**255)):
        with pytest.raises(ValueError, match="256 bytes"):
            mint(SECRET, user, NOW + 60)
        first = b64(json.dumps({"sub": user, "exp": NOW + 60}).encode())  # signed by hand: verify refuses it too
        import hashlib
        import hmac

        token = first + "." + b64(hmac.new(SECRET, first.encode(), hashlib.sha256).digest())
        assert refused(token).reason == "malformed"


def test_the_secret_comes_from_an_environment_variable_of_at_least_32_bytes():
    assert secret_from_env("S", {"S": "s" * MIN_SECRET_BYTES}) == b"s" * MIN_SECRET_BYTES
    with pytest.raises(ConfigError, match="S is not set"):
        secret_from_env("S", {})
    with pytest.raises(ConfigError, match="31 bytes") as short:
        secret_from_env("S", {"S": "t" * 31})
    assert "t" * 31 not in str(short.value)
    assert "hidden" in repr(Authenticator(SECRET)) and SECRET.decode() not in repr(Authenticator(SECRET))


def test_lifetimes():
    assert [parse_ttl(t) for t in ("30s", "15m", "1h", "7d", "90")] == [30, 900, 3600, 7 * 86400, 90]
    for bad in ("", "0", "1w", "-1h", "1.5h", "h", "99999999999d"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


def test_agentcast_token_refuses_a_user_id_over_256_bytes_and_says_bytes():
    assert token_user("\U0001F600" * 64) == "\U0001F600" * 64  # 256 bytes
    for user in ("\U0001F600" * 65, "x" * 257, "9" * 257):
        with pytest.raises(BadArgument, match="256 digits .* 256 bytes"):
            token_user(user)


def test_token_user_ids_keep_their_json_type():
    assert token_user("123") == 123 and token_user("-7") == -7
    assert token_user("alice") == "alice"
    assert token_user("123", as_string=True) == "123"
    assert token_user("007") == "007"  # not a canonical integer: stays text


# -- the decoder -----------------------------------------------------------------------------


def test_the_auth_frame_is_validated_and_errors_never_show_the_token():
    assert p.decode('{"type":"auth","token":"abc.def","request_id":"r"}') == p.Auth("abc.def", "r")
    for frame, code in [
        ({"type": "auth"}, "missing_field"),
        ({"type": "auth", "token": ""}, "invalid_field"),
        ({"type": "auth", "token": 12}, "invalid_field"),
        ({"type": "auth", "token": None}, "invalid_field"),
        ({"type": "auth", "token": "s3cr3t" * 1000}, "invalid_field"),
    ]:
        with pytest.raises(p.ProtocolError) as caught:
            p.decode(json.dumps(frame))
        assert caught.value.code == code and "s3cr3t" not in caught.value.message
    assert p.decode(json.dumps({"type": "auth", "token": "t" * p.MAX_TOKEN_BYTES})).token == "t" * p.MAX_TOKEN_BYTES
    wire = json.loads(p.encode(p.Authenticated(123, "2027-01-15T08:00:00Z", "r")))
    assert wire == {"type": "authenticated", "user_id": 123, "expires_at": "2027-01-15T08:00:00Z", "request_id": "r"}


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["token", "request_id", "type"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.text()))))
def test_decoding_auth_like_frames_is_total(fields):
    try:
        cmd = p.decode(json.dumps({"type": "auth", **fields}))
    except p.ProtocolError:
        return
    assert type(cmd) is p.Auth and cmd.token


# -- the handshake helpers, settings and config ----------------------------------------------


def test_origin_and_bearer_header_rules():
    allowed = ("https://chat.example.com", "http://localhost:3000")
    assert origin_allowed([(b"origin", b"https://evil.example")], ())  # no list: everything
    assert origin_allowed([], allowed)  # no Origin header: not a browser
    assert origin_allowed([(b"origin", b"https://chat.example.com")], allowed)
    assert origin_allowed([(b"origin", b"HTTPS://Chat.Example.com")], allowed)
    for refused_origin in (b"https://evil.example", b"https://chat.example.com.evil.example",
                           b"https://chat.example.com:8443", b"null", b"http://chat.example.com"):
        assert not origin_allowed([(b"origin", refused_origin)], allowed)
    assert not origin_allowed([(b"origin", b"https://chat.example.com"), (b"origin", b"https://x.example")], allowed)
    assert bearer_token([]) is None
    assert bearer_token([(b"authorization", b"Bearer abc.def")]) == "abc.def"
    assert bearer_token([(b"authorization", b"bearer  abc.def ")]) == "abc.def"
    assert bearer_token([(b"authorization", b"Basic dXNlcjpwdw==")]) == ""
    assert bearer_token([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]) == ""


def test_the_exposure_warning_is_for_non_loopback_without_auth():
    for host in ("127.0.0.1", "127.8.9.1", "localhost", "::1", "[::1]"):
        assert is_loopback(host) and exposure_warning(host, auth=False) is None
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "example.com"):
        warning = exposure_warning(host, auth=False)
        assert warning and "anyone" in warning and "any user's memory" in warning and len(warning.splitlines()) <= 2
        assert exposure_warning(host, auth=True) is None


def test_settings_and_config_keys(tmp_path):
    path = tmp_path / "agentcast.toml"
    path.write_text('[server]\nauth_secret_env = "X"\nauth_timeout = 3\nallow_origins = ["https://a.example"]\n')
    s = server_settings(load_config(path))
    assert (s.auth_secret_env, s.auth_timeout, s.allow_origins) == ("X", 3, ("https://a.example",))
    assert server_settings(load_config(path), allow_origins=["https://b.example"]).allow_origins == ("https://b.example",)
    defaults = ServerSettings()
    assert (defaults.auth_secret_env, defaults.auth_timeout, defaults.allow_origins) == (None, 10.0, ())
    for bad, name in [('allow_origins = ["https://a.example/"]', "allow_origins"), ('allow_origins = "x"', "allow_origins"),
                      ("auth_timeout = 0", "auth_timeout"), ('auth_secret_env = ""', "auth_secret_env"),
                      ('keyfile = "k.pem"', "keyfile"), ("auth_secret_env = 5", "auth_secret_env")]:
        path.write_text(f"[server]\n{bad}\n")
        with pytest.raises(ConfigError, match=name):
            server_settings(load_config(path))


def test_a_server_with_auth_on_needs_the_secret(monkeypatch, tmp_path):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    settings_ = ServerSettings(db=str(tmp_path / "a.db"), auth_secret_env=SECRET_ENV)
    with pytest.raises(ConfigError, match="not set"):
        Server(settings_, agent_specs(None))
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ConfigError, match="at least 32"):
        Server(settings_, agent_specs(None))
    assert not (tmp_path / "a.db").exists()


# -- over real sockets -----------------------------------------------------------------------


async def test_first_frame_auth_then_chat_and_search_as_the_tokens_user(db_path, secret_env):
    async with running_server(db_path, auth_secret_env=secret_env) as server:
        async with connect(server.port) as alice:
            answer = await authenticate(alice, token_for("alice"), "a1")
            assert answer["type"] == "authenticated" and answer["user_id"] == "alice" and answer["request_id"] == "a1"
            assert answer["expires_at"].endswith("Z")
            frames = await alice.request(chat("my locker code is 4711", "c1"), "agent_done")
            assert frames[-2]["type"] == "response"
            found = await alice.request({"type": "search_memory", "agent_id": "my_agent", "query": "locker code"},
                                        "memory_results")
            assert "4711" in found[-1]["results"][0]["content"]
        async with connect(server.port) as bob:
            assert (await authenticate(bob, token_for(123)))["user_id"] == 123
            found = await bob.request({"type": "search_memory", "agent_id": "my_agent", "query": "locker code"},
                                      "memory_results")
            assert found[-1]["results"] == []
    with EventLog.open(db_path, readonly=True) as log:
        assert {user for _, user in log.streams()} == {"alice"}


async def test_the_connected_frame_says_whether_authentication_is_on(db_path, secret_env):
    """So that a client (the chat page) offers to sign in only where there is something to sign in to."""
    async with running_server(db_path) as server, connect(server.port) as client:
        assert client.hello == {"type": "connected", "client_id": client.hello["client_id"], "auth": False}
    async with running_server(db_path, auth_secret_env=secret_env) as server, connect(server.port) as client:
        assert client.hello == {"type": "connected", "client_id": client.hello["client_id"], "auth": True}


async def test_a_handshake_with_a_bearer_token_starts_authenticated(db_path, secret_env):
    # close_timeout: trio-websocket's client leaves a rejected connection's socket open, and the server's stop
    # waits that long for it
    async with running_server(db_path, auth_secret_env=secret_env, close_timeout=0.2) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        headers = [(b"Authorization", f"Bearer {token_for(123)}".encode())]
        async with open_websocket_url(url, extra_headers=headers) as ws:
            client = Client(ws)
            assert (await client.recv())["type"] == "connected"
            assert (await client.recv()) | {"expires_at": None} == {"type": "authenticated", "user_id": 123,
                                                                     "expires_at": None}
            frames = await client.request(chat("over a header"), "agent_done")
            assert "over a header" in frames[-2]["message"]
            assert (await client.request({"type": "set_user", "user_id": "123"}, "user_set"))[-1]["user_id"] == "123"
        # a bad token in the header is refused before the WebSocket opens, without echoing it
        for value in (f"Bearer {token_for(123, secret=OTHER_SECRET)}", f"Bearer {token_for(123, ttl=-10)}",
                      "Bearer not-a-token", "Basic dXNlcjpwdw=="):
            head = await handshake(server.port, f"Authorization: {value}")
            assert head.startswith(b"HTTP/1.1 401"), head
            assert value.split()[-1].encode() not in head
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url, extra_headers=[(b"Authorization", b"Bearer x.y")]):
                pass
        assert rejected.value.status_code == 401


async def test_until_authenticated_only_auth_and_ping_are_accepted(db_path, secret_env):
    async with running_server(db_path, auth_secret_env=secret_env) as server, connect(server.port) as c:
        await c.send({"type": "ping", "request_id": "p"})
        assert await c.recv() == {"type": "ping", "request_id": "p"}
        for frame in (chat("hello", "c1"), {"type": "set_user", "user_id": 1, "request_id": "c1"},
                      {"type": "subscribe", "agent_id": "my_agent", "request_id": "c1"},
                      {"type": "search_memory", "agent_id": "my_agent", "query": "x", "request_id": "c1"},
                      {"type": "clear_memory", "agent_id": "my_agent", "request_id": "c1"}):
            await c.send(frame)
            error = await c.recv()
            assert error["type"] == "error" and error["code"] == "unauthenticated" and error["request_id"] == "c1"
        for token, word in ((token_for("x", secret=OTHER_SECRET), "signature"), (token_for("x", ttl=-5), "expired"),
                            ("garbage", "malformed")):
            error = await authenticate(c, token, "bad")
            assert error["code"] == "invalid_token" and word in error["message"] and token not in error["message"]
        assert (await authenticate(c, token_for("x")))["type"] == "authenticated"  # a later good one works
        assert (await c.request(chat("now fine"), "agent_done"))[-2]["type"] == "response"


async def test_set_user_under_auth_only_for_the_tokens_user(db_path, secret_env):
    async with running_server(db_path, auth_secret_env=secret_env) as server, connect(server.port) as c:
        await authenticate(c, token_for(123))
        for same in (123, "123"):  # the seed's clients send set_user: for the token's user it works as before
            await c.send({"type": "set_user", "user_id": same, "request_id": "s"})
            answer = await c.recv()
            assert answer == {"type": "user_set", "user_id": same, "request_id": "s"}
        await c.send({"type": "set_user", "user_id": 124, "request_id": "s"})
        error = await c.recv()
        assert error["code"] == "forbidden" and error["request_id"] == "s"
        error = await authenticate(c, token_for("someone else"))  # re-auth as another user: forbidden too
        assert error["code"] == "forbidden"
        refreshed = await authenticate(c, token_for(123, ttl=7200))  # the same user: a refresh
        assert refreshed["type"] == "authenticated" and refreshed["user_id"] == 123
        await c.request(chat("still me"), "agent_done")
    with EventLog.open(db_path, readonly=True) as log:
        assert {user for _, user in log.streams()} == {"123"}


async def test_forged_tokens_cannot_read_another_users_memory(db_path, secret_env):
    async with running_server(db_path, auth_secret_env=secret_env) as server:
        async with connect(server.port) as alice:
            await authenticate(alice, token_for("alice"))
            await alice.request(chat("the vault combination is 31-7-22"), "agent_done")
        mallory_token = token_for("mallory")
        signature = mallory_token.split(".")[1]
        forged = [
            b64(json.dumps({"sub": "alice", "exp": NOW}).encode()) + "." + signature,  # payload swapped
            token_for("alice", secret=OTHER_SECRET),  # signed with a guessed secret
            b64(json.dumps({"sub": "alice", "exp": NOW}).encode()) + "." + b64(b"\0" * 32),
        ]
        async with connect(server.port) as mallory:
            for token in forged:
                assert (await authenticate(mallory, token))["code"] == "invalid_token"
            await mallory.send({"type": "search_memory", "agent_id": "my_agent", "query": "vault combination"})
            assert (await mallory.recv())["code"] == "unauthenticated"
            await authenticate(mallory, mallory_token)
            for frame in ({"type": "set_user", "user_id": "alice"},
                          {"type": "subscribe", "agent_id": "my_agent", "after_seq": 0}):
                await mallory.send(frame)
                answer = await mallory.recv()
                assert answer["type"] in ("error", "subscribed") and "31-7-22" not in json.dumps(answer)
            found = await mallory.request({"type": "search_memory", "agent_id": "my_agent", "query": "vault combination"},
                                          "memory_results")
            assert found[-1]["results"] == []
        for token in forged:
            assert (await handshake(server.port, f"Authorization: Bearer {token}")).startswith(b"HTTP/1.1 401")


async def test_auth_when_auth_is_off_is_auth_disabled_and_nothing_changes(server):
    async with connect(server.port) as c:
        error = await authenticate(c, token_for("alice"), "a")
        assert error["code"] == "auth_disabled" and error["request_id"] == "a"
        assert (await c.request({"type": "set_user", "user_id": 5}, "user_set"))[-1]["user_id"] == 5
        assert (await c.request(chat("auth is off"), "agent_done"))[-2]["type"] == "response"
    # and an Authorization header is not looked at
    async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws",
                                  extra_headers=[(b"Authorization", b"Bearer nonsense")]) as ws:
        assert json.loads(await ws.get_message())["type"] == "connected"


async def test_origins_outside_the_allow_list_get_403(db_path):
    async with running_server(db_path, allow_origins=["https://chat.example.com"], close_timeout=0.2) as server:
        assert (await handshake(server.port, "Origin: https://chat.example.com")).startswith(b"HTTP/1.1 101")
        assert (await handshake(server.port)).startswith(b"HTTP/1.1 101")  # no Origin: not a browser
        for origin in ("https://evil.example", "null", "https://chat.example.com:444"):
            assert (await handshake(server.port, f"Origin: {origin}")).startswith(b"HTTP/1.1 403"), origin
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"ws://127.0.0.1:{server.port}/ws",
                                          extra_headers=[(b"Origin", b"https://evil.example")]):
                pass
        assert rejected.value.status_code == 403
    async with running_server(db_path) as server:  # no list: every origin (the documented risk)
        assert (await handshake(server.port, "Origin: https://evil.example")).startswith(b"HTTP/1.1 101")


async def test_secrets_and_tokens_never_reach_the_log(db_path, secret_env, caplog):
    caplog.set_level(logging.DEBUG)
    good, bad = token_for("alice"), token_for("alice", secret=OTHER_SECRET)
    async with running_server(db_path, auth_secret_env=secret_env) as server:
        async with connect(server.port) as c:
            await authenticate(c, bad)
            await authenticate(c, good)
            await c.request(chat("hi"), "agent_done")
        await handshake(server.port, f"Authorization: Bearer {bad}")
    text = caplog.text
    assert "authenticated" in text and SECRET.decode() not in text
    assert good not in text and bad not in text and bad.split(".")[1] not in text


# -- time: the auth deadline and token expiry (virtual time, in-memory streams) --------------


class AuthHarness(Harness):
    """Connections with auth on over in-memory streams; the token clock is NOW + trio's (virtual) clock."""

    async def client(self, *, claims=None, **settings_):
        server_stream, client_stream = trio.testing.memory_stream_pair()
        self.authenticator = Authenticator(SECRET, clock=lambda: NOW + trio.current_time())
        ready = trio.Event()

        async def serve():
            ws = await (await wrap_server_stream(self.nursery, server_stream)).accept()
            conn = Connection(ws, self.agents, self.audience, clock=lambda: "2026-01-01T00:00:00.000Z",
                              settings=ServerSettings(close_timeout=0.5, heartbeat_interval=0, idle_timeout=0, **settings_),
                              auth=self.authenticator, claims=claims, users=self.users)
            self.current = conn
            ready.set()
            await conn.run()
            self.finished.append(conn)

        self.nursery.start_soon(serve)
        ws = await wrap_client_stream(self.nursery, client_stream, "127.0.0.1", "/ws")
        await ready.wait()
        client = Client(ws)
        assert (await client.recv())["type"] == "connected"
        return client, self.current


@pytest.fixture
async def ah(nursery, tmp_path):
    harness = AuthHarness(nursery, str(tmp_path / "agentcast.db"))
    harness.users = collections.Counter()  # connections per user, shared by the harness's clients
    await harness.start()
    return harness


async def closed_with(client: Client) -> tuple[int, float]:
    """The close code, and the (virtual) time it came."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.ws.get_message()
    return closed.value.reason.code, trio.current_time()


async def test_an_unauthenticated_connection_is_closed_with_1008_after_the_deadline(ah, autojump_clock):
    client, _ = await ah.client()  # default auth_timeout: 10 s
    start = trio.current_time()
    await client.send({"type": "ping"})  # pings and failed attempts do not extend it
    assert (await client.recv())["type"] == "ping"
    await client.send({"type": "auth", "token": "bad.token"})
    assert (await client.recv())["code"] == "invalid_token"
    code, at = await closed_with(client)
    assert code == POLICY_VIOLATION and 10 <= at - start <= 10.5
    client, _ = await ah.client(auth_timeout=3)  # authenticating in time keeps it open
    await trio.sleep(2)
    assert (await authenticate(client, mint(SECRET, "u", NOW + 3600)))["type"] == "authenticated"
    await trio.sleep(30)
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "ping"


async def test_a_token_that_expires_closes_the_connection_with_1008_and_a_refresh_extends_it(ah, autojump_clock):
    client, conn = await ah.client()
    answer = await authenticate(client, mint(SECRET, "u", NOW + 100))
    assert answer["expires_at"] == "2027-01-15T08:01:40Z"
    await trio.sleep(50)
    assert (await authenticate(client, mint(SECRET, "u", NOW + 200)))["type"] == "authenticated"  # refresh
    await trio.sleep(60)  # past the first token's expiry
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "ping"
    error = await client.recv(timeout=1000)
    assert error["code"] == "token_expired"
    code, at = await closed_with(client)
    assert code == POLICY_VIOLATION and 200 <= at <= 200.5
    # A refresh may also shorten it; one for another user is forbidden and changes nothing.
    client, conn = await ah.client()
    await authenticate(client, mint(SECRET, "v", int(NOW + trio.current_time()) + 500))
    assert (await authenticate(client, mint(SECRET, "w", int(NOW + trio.current_time()) + 900)))["code"] == "forbidden"
    start = trio.current_time()
    await authenticate(client, mint(SECRET, "v", int(NOW + start) + 20))
    assert (await client.recv(timeout=1000))["code"] == "token_expired"
    code, at = await closed_with(client)
    assert code == POLICY_VIOLATION and at - start <= 21 and conn.user == "v"


async def test_a_header_authenticated_connection_expires_too_and_counts_for_the_per_user_cap(ah, autojump_clock):
    await ah.client()  # makes the authenticator
    claims = ah.authenticator.verify(mint(SECRET, 7, NOW + 30))
    client, conn = await ah.client(claims=claims, max_connections_per_user=1)
    assert (await client.recv())["type"] == "authenticated" and conn.user == "7"
    second, _ = await ah.client(claims=claims, max_connections_per_user=1)
    assert (await second.recv())["type"] == "authenticated"
    assert (await second.recv())["code"] == "too_many_connections"
    assert (await closed_with(second))[0] == 1013
    assert (await client.recv(timeout=1000))["code"] == "token_expired"
    code, at = await closed_with(client)
    assert code == POLICY_VIOLATION and 30 <= at <= 30.5


# -- the command line ------------------------------------------------------------------------


@pytest.mark.process
async def test_agentcast_token_mints_a_token_the_server_accepts(db_path, secret_env):
    env = {**os.environ, "AGENTCAST_AUTH_SECRET": SECRET.decode()}
    minted = {}
    for args, env_ in ((["--user", "123", "--ttl", "15m"], env), (["--user", "123", "--user-string"], env),
                       (["--user", "alice", "--auth-secret-env", secret_env, "--ttl", "7d"], os.environ)):
        result = await trio.run_process(CLI + ["token", *args], capture_stdout=True, capture_stderr=True, env=env_)
        assert result.stderr == b""
        token = result.stdout.decode()
        assert token.endswith("\n") and token.count("\n") == 1
        minted[tuple(args)] = token.strip()
    tokens = list(minted.values())
    assert SECRET.decode() not in "".join(tokens)
    async with running_server(db_path, auth_secret_env=secret_env) as server, connect(server.port) as c:
        answers = [await authenticate(c, t) for t in tokens[:2]]
        assert [a.get("user_id") for a in answers] == [123, "123"]
        expires = calendar.timegm(time.strptime(answers[0]["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
        assert 14 * 60 <= expires - time.time() <= 15 * 60 + 5
        assert (await authenticate(c, tokens[2]))["code"] == "forbidden"  # another user on this connection
    for bad in (["--user", "u", "--ttl", "1w"], ["--user", "u", "--auth-secret-env", "AGENTCAST_TEST_UNSET_VARIABLE"]):
        result = await trio.run_process(CLI + ["token", *bad], capture_stdout=True, capture_stderr=True, check=False,
                                        env={k: v for k, v in env.items() if k != "AGENTCAST_TEST_UNSET_VARIABLE"})
        assert result.returncode != 0 and result.stdout == b"" and result.stderr.count(b"\n") == 1


@pytest.mark.process
def test_serve_refuses_a_missing_or_short_secret(tmp_path):
    db = tmp_path / "agentcast.db"
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    for value in (None, "only-31-bytes-long-000000000000"):
        if value is not None:
            env[SECRET_ENV] = value
        result = subprocess.run(CLI + ["serve", "--port", "0", "--db", str(db), "--auth-secret-env", SECRET_ENV],
                                capture_output=True, text=True, env=env, timeout=PROCESS_TIMEOUT, check=False)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.startswith("agentcast: error: auth secret:") and result.stderr.count("\n") == 1
        assert SECRET_ENV in result.stderr and (value is None or value not in result.stderr)
    assert not db.exists()


@pytest.mark.process
def test_serving_beyond_loopback_without_auth_warns_at_start(tmp_path):
    proc = subprocess.Popen(CLI + ["serve", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "a.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # bounded: the process is killed below if the test times out
        assert line.startswith("agentcast listening on ws://0.0.0.0:")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    warning = [l for l in err.splitlines() if "WARNING" in l]
    assert warning and "anyone who can reach this port" in warning[0] and "any user's memory" in warning[0]
    assert err.index("WARNING") < err.index("listening on")


# -- TLS ---------------------------------------------------------------------------------------


@pytest.mark.process
async def test_wss_with_a_self_signed_certificate(tmp_path, secret_env):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        with open(certfile, "ab") as f:
            f.write(pem.bytes())
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    db = str(tmp_path / "a.db")
    # close_timeout: the stop would otherwise wait that long for the plain-text client's half-made handshake
    async with running_server(db, certfile=str(certfile), keyfile=str(keyfile), auth_secret_env=secret_env,
                              close_timeout=0.2) as server:
        assert server.scheme == "wss"
        async with open_websocket_url(f"wss://127.0.0.1:{server.port}/ws", client_context) as ws:
            c = Client(ws)
            assert (await c.recv())["type"] == "connected"
            assert (await authenticate(c, token_for("tls")))["type"] == "authenticated"
            assert (await c.request(chat("over TLS"), "agent_done"))[-2]["type"] == "response"
        # a plain-text client gets nowhere, and the server goes on
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(HANDSHAKE.format(path="/ws").encode())
            with trio.move_on_after(0.5):
                assert b"101" not in await stream.receive_some()
        async with open_websocket_url(f"wss://127.0.0.1:{server.port}/ws", client_context) as ws:
            assert json.loads(await ws.get_message())["type"] == "connected"
    with pytest.raises(ConfigError, match="TLS certificate"):
        Server(ServerSettings(db=db, certfile=str(tmp_path / "missing.pem")), agent_specs(None))
