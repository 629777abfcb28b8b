"""`Server`: the agentcast process core: event log, journal, agents and the WebSocket endpoint, with graceful shutdown.

Owns the nursery tree of a running server. Imports trio, trio_websocket, actors and store.
"""
from __future__ import annotations

import collections
import logging
import os
import ssl
from collections.abc import Callable, Sequence

import trio
from trio_websocket import WebSocketRequest, WebSocketServer

from actors import Agents, AgentSpec, Audience, ConfigError, Journal, utc_now
from store import EventLog

from ._auth import Authenticator, TokenError, bearer_token, origin_allowed
from ._connection import GOING_AWAY, Connection
from ._wsinternals import drop_handshake_parser, reject
from ._settings import ServerSettings

logger = logging.getLogger("agentcast.transport")

WS_PATH = "/ws"


class Server:
    """A running agentcast server: `await nursery.start(server.run)` returns the port it listens on.

    `stop()` shuts it down gracefully: stop accepting, give running turns `shutdown_grace`
    seconds, close every client with 1001, then close the database.

    With `settings.auth_secret_env` (or an `auth`), clients must authenticate with a token; with
    `settings.certfile`, it serves wss:// (TLS). A missing or short secret, or unreadable certificate
    files, raise `ConfigError` here, before anything listens.
    """

    def __init__(
        self,
        settings: ServerSettings,
        specs: Sequence[AgentSpec],
        *,
        clock: Callable[[], str] = utc_now,
        auth: Authenticator | None = None,
    ) -> None:
        if auth is None and settings.auth_secret_env is not None:
            auth = Authenticator.from_env(settings.auth_secret_env)
        #: Verifies tokens; None when authentication is off.
        self.auth = auth
        self._ssl = _ssl_context(settings)
        #: "wss" with TLS, else "ws".
        self.scheme = "wss" if self._ssl is not None else "ws"
        self.settings = settings
        self._specs = list(specs)
        self._clock = clock
        self._stop = trio.Event()
        #: Set when `run` has finished (the database is closed).
        self.stopped = trio.Event()
        self._accepting = False
        self.connections: set[Connection] = set()
        self._handshakes = 0  # handshakes past the connection cap check, not yet connections
        #: Open connections per user.
        self.users: collections.Counter[str] = collections.Counter()
        self.audience = Audience()
        self.agents: Agents | None = None
        self.journal: Journal | None = None

    def stop(self) -> None:
        """Begin a graceful shutdown; `run` returns when it is complete."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stop.is_set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        log = EventLog.open(s.db, synchronous=s.synchronous.upper())
        db = os.fspath(s.db)
        try:
            self.journal = Journal(log, lambda: EventLog.open(db, readonly=True), readers=s.readers)
            self.agents = Agents(self._specs, self.journal, self.audience, self._clock)
            async with trio.open_nursery() as root:
                await root.start(self.journal.run)
                async with trio.open_nursery() as work:
                    await work.start(self.agents.run)
                    async with trio.open_nursery() as clients:
                        await self._listen(clients, task_status)
                        # No new connections from here on; no new commands either.
                        self._accepting = False
                        with trio.move_on_after(s.shutdown_grace):
                            await self.agents.wait_idle()
                        for conn in list(self.connections):
                            conn.close(GOING_AWAY, "server shutting down")
                        # Clients get `close_timeout` to acknowledge; then whatever is left
                        # (e.g. a rejected handshake whose client never hangs up) is cancelled.
                        clients.cancel_scope.deadline = trio.current_time() + s.close_timeout
                    work.cancel_scope.cancel()
                root.cancel_scope.cancel()
        finally:
            log.close()
            self.stopped.set()
            logger.info("stopped; database %s closed", s.db)

    async def _listen(self, clients: trio.Nursery, task_status: trio.TaskStatus[int]) -> None:
        s = self.settings
        try:
            listeners = await trio.open_tcp_listeners(s.port, host=s.host)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}") from None
        sockets = [listener.socket for listener in listeners]
        if self._ssl is not None:
            listeners = [trio.SSLListener(listener, self._ssl, https_compatible=True) for listener in listeners]
        endpoint = WebSocketServer(
            self._handle,
            listeners,
            handler_nursery=clients,
            message_queue_size=8,
            max_message_size=s.max_message_size,
            connect_timeout=s.handshake_timeout,
            disconnect_timeout=s.close_timeout,
        )
        async with trio.open_nursery() as accept:
            await accept.start(endpoint.run)
            self._accepting = True
            port = sockets[0].getsockname()[1]
            logger.info("listening on %s://%s:%d%s (authentication %s)", self.scheme, s.host, port, WS_PATH,
                        "on" if self.auth is not None else "off")
            task_status.started(port)
            await self._stop.wait()
            accept.cancel_scope.cancel()

    async def _handle(self, request: WebSocketRequest) -> None:
        """One client, from handshake to close. Nothing escapes: an exception here would end the server."""
        reserved = False
        try:
            if request.path.split("?", 1)[0] != WS_PATH:
                await reject(request, 404, body=f"Not found: the WebSocket endpoint is {WS_PATH}\n".encode())
                return
            if not origin_allowed(request.headers, self.settings.allow_origins):
                origins = [v.decode("latin-1")[:200] for n, v in request.headers if n.lower() == b"origin"]
                logger.info("refused a handshake from Origin %s (remote %s)", ", ".join(origins), request.remote)
                await reject(request, 403, body=b"Forbidden: this Origin may not connect (see allow_origins)\n")
                return
            if not self._accepting:
                await reject(request, 503, body=b"The server is shutting down\n")
                return
            if len(self.connections) + self._handshakes >= self.settings.max_connections:
                logger.warning("refused a connection: %d connections open", len(self.connections))
                await reject(request, 503, body=b"The server has as many connections as it may hold\n")
                return
            self._handshakes += 1  # a place is held for this handshake (concurrent ones count too)
            reserved = True
            claims = None
            token = bearer_token(request.headers) if self.auth is not None else None
            if token is not None:  # auth on and an Authorization header: the connection starts authenticated
                try:
                    if not token:
                        raise TokenError("malformed", "The Authorization header must be 'Bearer <token>'")
                    claims = self.auth.verify(token)
                except TokenError as exc:
                    logger.info("refused a handshake: %s (remote %s)", exc.message, request.remote)
                    await reject(
                        request,
                        401,
                        extra_headers=[(b"WWW-Authenticate", b'Bearer error="invalid_token"')],
                        body=f"Unauthorized: {exc.message}\n".encode(),
                    )
                    return
            ws = await request.accept()
            drop_handshake_parser(ws)
        except Exception as exc:  # the client left during the handshake
            logger.debug("handshake failed: %r", exc)
            return
        finally:
            if reserved:
                self._handshakes -= 1
        conn = Connection(
            ws,
            self.agents,
            self.audience,
            clock=self._clock,
            settings=self.settings,
            accepting=lambda: self._accepting,
            users=self.users,
            auth=self.auth,
            claims=claims,
        )
        if not self._accepting:  # shutdown began during the handshake: close like the others
            conn.close(GOING_AWAY, "server shutting down")
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:  # Connection.run promises not to raise; this keeps the server up if it ever does
            logger.exception("client=%s: connection handler failed", conn.client_id)
        finally:
            self.connections.discard(conn)


def _ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The TLS context for `settings.certfile`/`keyfile`, or None without a certificate."""
    if settings.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = settings.certfile + (f" / {settings.keyfile}" if settings.keyfile else "")
        raise ConfigError(f"cannot load the TLS certificate {files}: {getattr(exc, 'strerror', None) or exc}") from None
    return context
