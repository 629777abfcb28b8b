"""`Server`: the agentcast process core: event log, journal, agents and the one port that serves the
WebSocket endpoint and plain HTTP (the chat page, /healthz, /metrics), with graceful shutdown.

Owns the nursery tree of a running server. Imports trio, trio_websocket, actors and store.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import ssl
from collections.abc import Callable, Sequence

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest

from ..actors import (
    Agents,
    AgentSpec,
    Audience,
    ConfigError,
    Embedder,
    EmbedderChoice,
    EmbedderUnavailable,
    EmbeddingWorker,
    Journal,
    LaneBudget,
    SemanticMemory,
    utc_now,
)
from ..store import EventLog

from ._auth import Authenticator, Claims, TokenError, bearer_token, origin_allowed
from ._connection import GOING_AWAY, Connection, OutboxBudget
from ._http import (
    BadRequest,
    HttpResponse,
    PrefixedStream,
    RequestHead,
    Router,
    json_response,
    load_static_files,
    package_static_dir,
    read_request_head,
    remote_of,
    text_response,
    write_response,
)
from ._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ._metrics import Metrics, ScrapeState
from .protocol import shown
from ._wsinternals import drop_handshake_parser, log_fast_paths, reject, serve_stream
from ._settings import ServerSettings

logger = logging.getLogger("agentcast.transport")

WS_PATH = "/ws"
#: Why a port cannot be listened on, for a person (by errno); others are told as the system says.
_LISTEN_ERRORS = {
    errno.EADDRINUSE: "address already in use (is another agentcast running? choose another port)",
    errno.EACCES: "permission denied (ports below 1024 need privileges; choose another port)",
    errno.EADDRNOTAVAIL: "address not available (the host must be an address of this machine)",
}
#: Seconds /healthz waits for the database's write lock before it reports the database not writable.
HEALTH_LOCK_WAIT = 0.25
#: Seconds /healthz waits in all (for the writer to finish a commit, then for the lock).
HEALTH_TIMEOUT = 5.0


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
        static_dir: str | os.PathLike | None = None,
    ) -> None:
        """`static_dir` holds the files served over plain HTTP (default: the package's transport/static/)."""
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
        #: The bytes all connections' outbound queues hold, bounded by `outbox_bytes_total`.
        self.outbox_budget = OutboxBudget(settings.outbox_bytes_total, self.connections)
        self._handshakes = 0  # handshakes past the connection cap check, not yet connections
        #: Open connections per user.
        self.users: collections.Counter[str] = collections.Counter()
        self.audience = Audience()
        self.agents: Agents | None = None
        self.journal: Journal | None = None
        #: The embedding workers, one per embedder (agents configured alike share one), while running.
        self.embedding: list[EmbeddingWorker] = []
        self._db_bytes = 0  # measured (by the recorder, in a worker thread) at each scrape of /metrics
        self.metrics = Metrics(ScrapeState(
            connections=lambda: len(self.connections),
            agents=lambda: [(a.agent_id, a.in_flight, a.lanes) for a in (self.agents or {}).values()],
            journal=lambda: (self.journal.events_appended, self.journal.commits) if self.journal else (0, 0),
            appends_failing=lambda: self.journal is not None and self.journal.failing is not None,
            db_bytes=lambda: self._db_bytes,
            embedding=lambda: [(w.label, w.embedded, w.backlog, w.failing is not None) for w in self.embedding],
        ))
        files = load_static_files(package_static_dir() if static_dir is None else static_dir)
        self.http = Router(files, {"/healthz": self._health, "/metrics": self._scrape, WS_PATH: _upgrade_required})
        for spec in self._specs:  # every agent's series exist (at 0) from the start
            self.metrics.turns.labels(spec.agent_id)
            self.metrics.turn_seconds.labels(spec.agent_id)

    def stop(self) -> None:
        """Begin a graceful shutdown; `run` returns when it is complete."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stop.is_set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        # The port first: a port that cannot be had is refused before the database file is created or
        # opened. Nothing is accepted until the database is open (connections wait in the backlog).
        listeners = await self._open_listeners()
        try:
            for spec in self._specs:
                for text in getattr(spec.brain, "startup_warnings", list)():
                    logger.warning("agent %s: %s", spec.agent_id, text)
            log = EventLog.open(s.db, synchronous=s.synchronous.upper())
        except BaseException:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            raise
        db = os.fspath(s.db)
        try:
            embedders = await self._make_embedders()
            self.journal = Journal(log, lambda: EventLog.open(db, readonly=True), readers=s.readers)
            semantic = self._semantic_memories(embedders, self.journal)
            self.agents = Agents(self._specs, self.journal, self.audience, self._clock,
                                 LaneBudget(s.max_lanes, s.max_lanes_window_bytes), semantic)
            async with trio.open_nursery() as root:
                await root.start(self.journal.run)
                async with trio.open_nursery() as work:
                    for worker in self.embedding:  # stopped with the agents, before the journal
                        await work.start(worker.run)
                    await work.start(self.agents.run)
                    async with trio.open_nursery() as clients:
                        await self._listen(listeners, clients, task_status)
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
            for listener in listeners:  # already closed unless the server failed before serving
                await trio.aclose_forcefully(listener)
            log.close()
            self.stopped.set()
            logger.info("stopped; database %s closed", s.db)

    async def _make_embedders(self) -> dict[EmbedderChoice, Embedder]:
        """The agents' embedders, one per distinct choice, made in a worker thread (a local model loads in a
        fraction of a second of CPU), and each agent's search logged. An embedder whose modules are missing (the
        semantic extra) leaves its agents' search lexical, said at start; one that cannot be made otherwise (a
        model file that is not the one pinned) is a `ConfigError`."""
        made: dict[EmbedderChoice, Embedder] = {}
        missing: dict[EmbedderChoice, str] = {}
        for spec in self._specs:
            choice = spec.embedder
            if choice is None or choice in made or choice in missing:
                continue
            why = choice.missing()
            if why is not None:
                missing[choice] = why
                continue
            try:
                embedder = made[choice] = await trio.to_thread.run_sync(choice.make)
            except (EmbedderUnavailable, ValueError) as exc:
                raise ConfigError(f"agent {spec.agent_id}: embedder: {exc}") from None
            for text in getattr(embedder, "startup_warnings", list)():
                logger.warning("%s", text)
        for spec in self._specs:
            choice = spec.embedder
            if choice is None:
                logger.info("agent %s: search: lexical only: no embedder configured", spec.agent_id)
            elif choice in missing:
                logger.warning("agent %s: search: lexical only: %s", spec.agent_id, missing[choice])
            else:
                logger.info("agent %s: search: hybrid (lexical + semantic, %s)", spec.agent_id,
                            getattr(made[choice], "describe", lambda: made[choice].name)())
        return made

    def _semantic_memories(self, embedders: dict[EmbedderChoice, Embedder], journal: Journal) -> dict[str, SemanticMemory]:
        """Each agent's semantic memory, by agent id: one embedding worker per embedder, shared by its agents."""
        by_choice: dict[EmbedderChoice, list[str]] = {}
        for spec in self._specs:
            if spec.embedder in embedders:
                by_choice.setdefault(spec.embedder, []).append(spec.agent_id)
        memories: dict[str, SemanticMemory] = {}
        self.embedding = []
        for choice, agent_ids in by_choice.items():
            embedder = embedders[choice]
            label = getattr(embedder, "describe", lambda: embedder.name)()
            worker = EmbeddingWorker(embedder, agent_ids, journal, label=label)
            self.embedding.append(worker)
            memory = SemanticMemory(embedder, worker)
            memories.update((agent_id, memory) for agent_id in agent_ids)
        return memories

    async def _open_listeners(self) -> list[trio.SocketListener]:
        """Bind and listen on `host`:`port`; an address that cannot be had is an `OSError` saying why, in one line."""
        s = self.settings
        try:
            return await trio.open_tcp_listeners(s.port, host=s.host)
        except OSError as exc:
            reason = _LISTEN_ERRORS.get(exc.errno) or exc.strerror or str(exc)
            raise OSError(exc.errno, f"cannot listen on {s.host}:{s.port}: {reason}") from None

    async def _listen(self, listeners: list[trio.SocketListener], clients: trio.Nursery,
                      task_status: trio.TaskStatus[int]) -> None:
        s = self.settings
        sockets = [listener.socket for listener in listeners]
        served: list[trio.abc.Listener] = list(listeners)
        if self._ssl is not None:
            served = [trio.SSLListener(listener, self._ssl, https_compatible=True) for listener in listeners]
        async with trio.open_nursery() as accept:
            await accept.start(lambda task_status: trio.serve_listeners(
                self._serve_connection, served, handler_nursery=clients, task_status=task_status))
            self._accepting = True
            port = sockets[0].getsockname()[1]
            log_fast_paths()  # which path serves the WebSocket connections (the installed versions, the switch)
            logger.info("listening on %s://%s:%d%s (authentication %s); HTTP on the same port: / (%d static files), "
                        "/healthz, /metrics", self.scheme, s.host, port, WS_PATH,
                        "on" if self.auth is not None else "off", len(self.http.files))
            task_status.started(port)
            await self._stop.wait()
            accept.cancel_scope.cancel()

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        """One TCP (or TLS) connection. Its first request decides: a WebSocket handshake goes to
        trio-websocket, anything else is answered as plain HTTP and the connection closed.

        Reading the request head (and the TLS handshake before it) gets `handshake_timeout` seconds, and a
        head over `MAX_HEAD_BYTES` gets 431. Nothing escapes: an exception here would end the server.
        """
        s = self.settings
        deadline = trio.current_time() + s.handshake_timeout
        try:
            head = None
            with trio.move_on_at(deadline):
                try:
                    head = await read_request_head(stream)
                except BadRequest as exc:
                    logger.info("bad HTTP request from %s: %s", remote_of(stream), exc.message)
                    self.metrics.http_requests.labels("bad_request", str(exc.status)).inc()
                    await write_response(stream, text_response(exc.status, exc.message + "\n"))
                    return
            if head is None:  # timed out, or the client left before sending a request
                return
            if head.wants_websocket:
                problem = head.websocket_problem()
                if problem is not None:
                    self.metrics.handshakes_refused.labels(str(problem.status)).inc()
                    with trio.move_on_after(s.handshake_timeout):
                        await write_response(stream, problem)
                    return
                prefixed = PrefixedStream(stream, head.raw)
                del head  # this frame lasts as long as the connection: keep no parsed head (memory per connection)
                await self._serve_websocket(prefixed, deadline)
                return
            with trio.move_on_after(s.handshake_timeout):
                await self._answer_http(stream, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:  # the client left
            logger.debug("connection from %s ended: %r", remote_of(stream), exc)
        except Exception:
            logger.exception("connection handler failed (remote %s)", remote_of(stream))
        finally:
            await trio.aclose_forcefully(stream)

    async def _answer_http(self, stream: trio.abc.Stream, head: RequestHead) -> None:
        try:
            response = await self.http.respond(head)
        except Exception:
            logger.exception("HTTP %s %s failed", shown(head.method), shown(head.path))
            response = text_response(500, "Internal server error\n")
        self.metrics.http_requests.labels(self.http.route_of(head.path), str(response.status)).inc()
        logger.debug("http %s %s -> %d (remote %s)", shown(head.method), shown(head.path), response.status,
                     remote_of(stream))
        await write_response(stream, response, head_only=head.method == "HEAD")

    async def _serve_websocket(self, stream: PrefixedStream, deadline: float) -> None:
        """Hand a connection whose first request is a WebSocket handshake to trio-websocket (it reads the
        handshake again from `stream`), then serve the client; the handshake must be done by `deadline`."""
        async with trio.open_nursery() as nursery:  # the connection's reader task runs here
            request = None
            with trio.move_on_at(deadline):
                request = await serve_stream(
                    nursery, stream, message_queue_size=8, max_message_size=self.settings.max_message_size,
                    input_rate=self.settings.input_bytes_per_second, input_burst=self.settings.input_burst_bytes,
                )
            try:
                accepted = await self._accept(request) if request is not None else None
                del request  # the handshake request is not kept for the connection's life (memory per connection)
                if accepted is not None:
                    await self._run_connection(*accepted)
            finally:
                nursery.cancel_scope.cancel()

    async def _health(self) -> HttpResponse:
        """GET /healthz: 200 if the database is writable now (its write lock can be taken, between group
        commits) and appends succeed, else 503 with the reason. From an append that failed until one
        succeeds (a full disk lets the lock be taken but no commit through), it is 503 with the store's reason."""
        body = {"status": "ok", "db": "writable", "connections": len(self.connections)}
        if not self._accepting or self.journal is None:
            body.update(status="unavailable", reason="the server is shutting down")
            return json_response(503, json.dumps(body).encode())
        failing = self.journal.failing
        if failing is not None:
            body.update(status="unavailable", db="not writable", reason=f"appends fail: {failing}"[:200])
            return json_response(503, json.dumps(body).encode())
        try:
            with trio.fail_after(HEALTH_TIMEOUT):
                await self.journal.check_writable(HEALTH_LOCK_WAIT)
        except trio.TooSlowError:
            body.update(status="unavailable", db="unknown", reason="the database did not answer in time")
        except Exception as exc:
            logger.warning("health check: the database is not writable: %s", exc)
            body.update(status="unavailable", db="not writable", reason=str(exc)[:200])
        return json_response(200 if body["status"] == "ok" else 503, json.dumps(body).encode())

    async def _scrape(self) -> HttpResponse:
        """GET /metrics: the Prometheus text format."""
        if self.journal is not None:  # the recorder says what it takes (a reader, in a worker thread)
            self._db_bytes = await self.journal.read(lambda log: log.storage_bytes())
        return HttpResponse(200, METRICS_CONTENT_TYPE, self.metrics.render())

    async def _accept(self, request: WebSocketRequest) -> tuple[WebSocketConnection, Claims | None] | None:
        """Accept or refuse a client's handshake: the open WebSocket and the claims of the token its
        handshake carried, or None if refused (or the client left). Nothing escapes."""
        reserved = False
        try:
            if request.path.split("?", 1)[0] != WS_PATH:
                await self._refuse(request, 404, body=f"Not found: the WebSocket endpoint is {WS_PATH}\n".encode())
                return
            if not origin_allowed(request.headers, self.settings.allow_origins):
                origins = [shown(v.decode("latin-1")) for n, v in request.headers if n.lower() == b"origin"]
                logger.info("refused a handshake from Origin %s (remote %s)", ", ".join(origins), request.remote)
                await self._refuse(request, 403, body=b"Forbidden: this Origin may not connect (see allow_origins)\n")
                return
            if not self._accepting:
                await self._refuse(request, 503, body=b"The server is shutting down\n")
                return
            if len(self.connections) + self._handshakes >= self.settings.max_connections:
                logger.warning("refused a connection: %d connections open", len(self.connections))
                await self._refuse(request, 503, body=b"The server has as many connections as it may hold\n")
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
                    await self._refuse(
                        request,
                        401,
                        extra_headers=[(b"WWW-Authenticate", b'Bearer error="invalid_token"')],
                        body=f"Unauthorized: {exc.message}\n".encode(),
                    )
                    return
            ws = await request.accept()
            drop_handshake_parser(ws)
        except Exception as exc:  # the client left during the handshake
            logger.debug("handshake failed: %s", shown(repr(exc), 300))
            return None
        finally:
            if reserved:
                self._handshakes -= 1
        return ws, claims

    async def _run_connection(self, ws: WebSocketConnection, claims: Claims | None) -> None:
        """One client, from its accepted handshake to close. Nothing escapes: an exception here would end the server."""
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
            metrics=self.metrics,
            budget=self.outbox_budget,
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
            with trio.move_on_after(self.settings.close_timeout):
                await ws.aclose()  # a no-op once closed; else (a failed handler) a normal close

    async def _refuse(self, request: WebSocketRequest, status: int, **kwargs) -> None:
        self.metrics.handshakes_refused.labels(str(status)).inc()
        await reject(request, status, **kwargs)


async def _upgrade_required() -> HttpResponse:
    """A plain GET of the WebSocket endpoint."""
    return text_response(426, f"{WS_PATH} is the WebSocket endpoint: connect with a WebSocket client\n",
                         extra=(("Upgrade", "websocket"),))


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
