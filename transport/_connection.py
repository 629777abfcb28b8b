"""`Connection`: one WebSocket client's session: its user, its subscriptions and its outbound queue.

Turns wire commands into actor commands and actor outputs into wire frames. Imports trio, actors, protocol.
"""
from __future__ import annotations

import collections
import logging
import math
import uuid
from collections.abc import Callable, Collection, Mapping

import outcome
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .. import actors
from ..actors import Agent, Audience, Busy, NothingToCancel, Output

from . import protocol as p
from ._auth import Authenticator, Claims, TokenError
from ._frames import COUNTED, frame_of
from ._metrics import Metrics
from ._settings import ServerSettings
from ._wsinternals import WRITE_PIECE, abort, send_text_batch, take_messages

logger = logging.getLogger("agentcast.transport")

#: Close codes (RFC 6455 and IANA registry).
GOING_AWAY = 1001
#: Never sent: the code of a connection that ended without a close handshake.
ABNORMAL_CLOSURE = 1006
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013


#: Bytes counted for each queued frame beyond its encoded JSON: what holding it costs (a bytes object's
#: header, the queue's slot) and its WebSocket header; so that many tiny frames count too.
FRAME_OVERHEAD = 64

#: The queue holds each frame as its UTF-8 JSON (`protocol.encode_utf8`), or a run of chunks still open to
#: merging (`protocol.ChunkRun`, only ever the last entry while it is open).
_Entry = bytes | p.ChunkRun


def _counted(entry: _Entry) -> int:
    """Bytes an entry of the queue counts for (`FRAME_OVERHEAD` included)."""
    return (len(entry) if type(entry) is bytes else entry.size) + FRAME_OVERHEAD


class OutboxBudget:
    """The bytes held by the outbound queues of all of a server's connections (queued or being written),
    and the cap on them (`outbox_bytes_total`). Owned by the server, shared by its connections.

    A frame that would take the total past the cap first closes (1013, their queues dropped) the
    connections that hold the most, until the total is at most TRIM_TO of the cap: one client or a
    few that stop reading cannot make the server hold more than the cap, however many connections they
    open; and since trimming goes that far below the cap, the scan it takes runs once per quarter of the cap.
    """

    __slots__ = ("cap", "held", "connections")

    #: How far a trim takes the total down, as a fraction of the cap.
    TRIM_TO = 0.75

    def __init__(self, cap: int, connections: Collection[Connection] = ()) -> None:
        #: The most bytes all queues may hold together.
        self.cap = cap
        #: The bytes they hold now.
        self.held = 0
        #: The connections to close when the total would pass the cap (the server's open connections).
        self.connections = connections

    def make_room(self, size: int) -> None:
        """Close the connections holding the most until `size` more bytes fit under the cap, and the total
        is at most TRIM_TO of it (or no connection holds anything that closing it would free at once)."""
        target = min(self.cap - size, int(self.cap * self.TRIM_TO))
        holders = sorted((c for c in self.connections if c.held_bytes), key=_held_bytes, reverse=True)
        for conn in holders:
            if self.held <= target:
                break
            conn.evict()


def _held_bytes(conn: Connection) -> int:
    return conn.held_bytes


class Connection:
    """A client's session. Implements `actors.PacedOutbox`.

    Frames for the client wait in a queue bounded in frames and in bytes (its frames' UTF-8 JSON, counted
    until they are written), written by one task; a client that lets it overflow is closed with 1013, so
    no agent ever waits on it. The bytes held by all the server's queues together are bounded too (`budget`).
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        agents: Mapping[str, Agent],
        audience: Audience,
        *,
        clock: Callable[[], str],
        settings: ServerSettings = ServerSettings(),
        accepting: Callable[[], bool] = lambda: True,
        users: collections.Counter | None = None,
        auth: Authenticator | None = None,
        claims: Claims | None = None,
        metrics: Metrics | None = None,
        budget: OutboxBudget | None = None,
    ) -> None:
        """`users` counts the connections of each user across the server (for the per-user cap).

        `budget` counts the bytes that the outbound queues of all the server's connections hold, against
        `outbox_bytes_total` (by default the connection has one of its own).

        `metrics`, if given, counts this connection's turns and errors and times its chats.

        With `auth` (authentication on), the connection must authenticate (an `auth` frame) within
        `auth_timeout`, unless it starts with the `claims` of a token its handshake carried.
        """
        self.client_id = str(uuid.uuid4())
        #: The user's id as the client gave it (int or str); None until `set_user` (or authentication).
        self.user_id: int | str | None = None
        #: The user, as memory is keyed: the text form of `user_id`, else this connection's own id.
        self.user = self.client_id
        self._auth = auth
        #: The claims of the token the connection is authenticated with (auth on); None until then.
        self.claims: Claims | None = None
        self._expires_at = math.inf  # trio time at which the token expires
        #: With auth on: set (and replaced) when the connection (re)authenticates; None with auth off.
        self._auth_changed = trio.Event() if auth is not None else None
        if auth is not None and claims is not None:
            self.claims, self.user_id, self.user = claims, claims.user_id, str(claims.user_id)
            self._expires_at = self._trio_time_of(claims.expires_at)
        self.subscriptions: set[str] = set()
        self._ws = ws
        self._agents = agents
        self._audience = audience
        self._clock = clock
        self._settings = settings
        self._users = users if users is not None else collections.Counter()
        self._users[self.user] += 1
        self._last_activity = trio.current_time()
        #: The rate limit's token bucket: (tokens, trio time they were counted at).
        self._bucket = (float(settings.rate_burst), self._last_activity)
        self._accepting = accepting
        #: The outbound queue: frames not yet taken by the writer (None while empty), encoded. The queue
        #: is closed (takes no more frames) once `close` was called or `run` has ended.
        self._outbox: list[_Entry] | None = None
        self._writer: trio.lowlevel.Task | None = None  # the writer, while it waits for frames
        #: Set (and dropped) each time the writer takes queued frames; made only when `room` waits.
        self._drained: trio.Event | None = None
        self._ended = False  # `run` has finished
        #: Bytes counted for the frames queued or being written (`_counted`), also in `_budget.held`.
        self._held_bytes = 0
        self._budget = budget if budget is not None else OutboxBudget(settings.outbox_bytes_total, (self,))
        #: The cancel scope of `run`'s nursery; one made by `close` before `run` lends it its deadline.
        self._scope: trio.CancelScope | None = None
        self._closing: tuple[int, str] | None = None  # (code, reason) once `close` was called
        self._mid_frame = False  # a frame write was cut short: the stream can take no more frames
        self._holds = 0  # `hold`s not yet released: `_queue` does not wake the writer meanwhile
        self._metrics = metrics
        #: Per agent: the trio time each chat of this connection arrived, oldest first, until its agent_done.
        self._chats_waiting: dict[str, collections.deque[float]] = {}
        # Memory per idle connection (bench/idle.py): CPython 3.11 keeps an instance's attributes in
        # its compact shared-key layout only while the class has fewer than 30 of them (29 here; 30
        # or more and every Connection gets a full dict, about 1.3 KiB more each; checked by
        # tests/test_limits.py). Derive from `_settings` rather than copy settings here, and add no
        # attribute without removing one.

    # -- actors.Outbox -----------------------------------------------------------------

    @property
    def gone(self) -> bool:
        """True once the connection has ended: what is delivered to it is dropped."""
        return self._ended

    def deliver(self, output: Output) -> None:
        if self._metrics is not None and type(output) in COUNTED:
            self._count(output)
        self._queue(frame_of(output), count_error=False)

    def hold(self) -> None:
        """Keep queued frames from the writer until a `release`, so that what is queued meanwhile goes
        out with them in one write. A close does not wait for it."""
        self._holds += 1

    def release(self) -> None:
        """End one `hold`. The writer then takes the queue even if other holds remain (lanes of other
        agents holding this connection in turn): a frame waits for one commit at most."""
        self._holds -= 1
        writer = self._writer
        if writer is not None and self._outbox is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer, outcome.Value(True))  # others wake it with None

    def _count(self, output: actors.TurnDoneOutput | actors.FailedOutput) -> None:
        """Count a finished turn (and time it) or a failure, once: on its delivery to the command's sender."""
        assert self._metrics is not None
        if not self._metrics.first_delivery(output):
            return  # a copy for a subscriber; the sender's connection counted it
        if type(output) is actors.FailedOutput:
            self._metrics.errors.labels(output.code).inc()
            return
        seconds = None
        waiting = self._chats_waiting.get(output.agent_id)
        if waiting:  # the user's turns with this agent finish in the order they arrived
            seconds = trio.current_time() - waiting.popleft()
            if not waiting:
                del self._chats_waiting[output.agent_id]
        self._metrics.turn_done(output.agent_id, seconds)

    async def room(self) -> None:
        """Return once the outbound queue is at most half full (in frames and in bytes), or
        the connection is closing.

        A backlog waits on this before each frame, so it flows at the pace the client reads it.
        A client that takes no frame for `close_timeout` seconds while its queue is that full is
        not reading: it is closed with 1013 (as if its queue had overflowed), so nobody waits longer.
        """
        if not self._crowded():
            return
        with trio.move_on_after(self._settings.close_timeout):
            while self._crowded():
                if self._drained is None:
                    self._drained = trio.Event()
                await self._drained.wait()
        if self._crowded():
            logger.warning("client=%s user=%s: not reading, outbound queue stays full; closing", self.client_id, p.shown(self.user))
            self.close(TRY_AGAIN_LATER, "outbound queue full: the client is not reading", drain=False)

    def _crowded(self) -> bool:
        if self._closing is not None or self._ended:
            return False
        frames = len(self._outbox) if self._outbox is not None else 0
        return frames * 2 > self._settings.outbox_size or self._held_bytes * 2 > self._settings.outbox_bytes

    def _wake_room(self) -> None:
        drained = self._drained
        if drained is not None:
            self._drained = None
            drained.set()

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)

    def _abort_wait(self, _raise_cancel) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED

    # -- life ------------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, drain: bool = True) -> None:
        """Close the connection with `code`, from any task, without waiting.

        With `drain`, frames already queued are written first; without, they are dropped (for
        a client that does not read). Writing them gets at most `close_timeout` seconds, the
        close handshake as long again; a client still not reading is cut off without a close frame.
        """
        if self._closing is None:
            self._closing = (code, reason)
        if not drain:
            self._drop_queue()
        self._wake_writer()  # the queue takes no more frames; the writer ends the connection when done
        self._wake_room()
        if self._scope is None:  # before `run`: it takes this scope's deadline
            self._scope = trio.CancelScope()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + self._settings.close_timeout)

    @property
    def held_bytes(self) -> int:
        """Bytes counted for the frames queued for the client or being written to it."""
        return self._held_bytes

    def evict(self) -> None:
        """Close with 1013, the queue dropped: the server's queues together hold too much, and this
        connection holds the most (`OutboxBudget.make_room`). One already closing keeps its close code
        but loses its queue too."""
        if self._ended:
            return
        if self._closing is not None:
            self._drop_queue()
            return
        logger.warning("client=%s user=%s: holds %d bytes of outbound frames, the most while all queues together "
                       "reach outbox_bytes_total; closing", self.client_id, self.user, self._held_bytes)
        self.close(TRY_AGAIN_LATER, "the server's outbound queues are full and this client's holds the most",
                   drain=False)

    def _drop_queue(self) -> None:
        """Drop the frames not yet taken by the writer (what it is writing stays counted until written)."""
        outbox = self._outbox
        if outbox is not None:
            self._outbox = None
            self._release(sum(_counted(entry) for entry in outbox))

    def _release(self, size: int) -> None:
        """`size` bytes counted in the queue are no longer held (written or dropped)."""
        self._held_bytes -= size
        self._budget.held -= size

    def _remote(self) -> str:
        try:
            remote = self._ws.remote  # getpeername(): fails once the client has reset the connection
        except OSError:
            return "gone"
        return f"{remote.address}:{remote.port}" if hasattr(remote, "address") else str(remote)

    async def run(self) -> None:
        """Serve the client until it leaves or the connection is closed; never raises."""
        half_closed = False
        try:
            logger.info("open client=%s remote=%s", self.client_id, self._remote())
            async with trio.open_nursery() as nursery:  # its cancel scope is `_scope` (one scope less to hold)
                if self._scope is not None:  # closed before it ran
                    nursery.cancel_scope.deadline = self._scope.deadline
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._write_frames)
                if self._settings.heartbeat_interval or self._settings.idle_timeout:
                    nursery.start_soon(self._keep_alive)
                self._queue(p.Connected(self.client_id, auth=self._auth is not None))
                if self._auth is not None:
                    if self.claims is not None:  # authenticated by the handshake's Authorization header
                        logger.info("client=%s user=%s: authenticated (header) until %s",
                                    self.client_id, p.shown(self.user), self.claims.expires_iso)
                        self._queue(p.Authenticated(self.claims.user_id, self.claims.expires_iso))
                        cap = self._settings.max_connections_per_user
                        if self._users[self.user] > cap:
                            self._too_many_connections(self.user, None)
                    nursery.start_soon(self._guard_auth)
                await self._read_frames()
                if self._ws.closed is None and self._closing is None:
                    # The client sent EOF without a close frame (_wsinternals._end_input): it may still read, so
                    # what is queued until now is written (within close_timeout); then TCP is closed without a
                    # close frame (1006: the client started no close handshake, and could not answer one).
                    half_closed = True
                    self.close(ABNORMAL_CLOSURE, "the client ended its side without a close frame")
                elif self._ws.closed is not None:  # else closing already: the writer drains, then ends the nursery
                    nursery.cancel_scope.cancel()
        except Exception:
            logger.exception("client=%s user=%s: connection failed", self.client_id, p.shown(self.user))
        finally:
            for agent_id in self.subscriptions:
                self._audience.unsubscribe(agent_id, self.user, self)
            self._users[self.user] -= 1
            if not self._users[self.user]:
                del self._users[self.user]
            self._ended = True
            self._outbox = None
            self._release(self._held_bytes)  # the writer has ended: nothing is held any more
            self._wake_writer()
            self._wake_room()
            for agent in self._agents.values():  # `gone` now: an agent may cancel this connection's turns
                agent.disconnected(self)
            with trio.move_on_after(self._settings.close_timeout) as cleanup:
                cleanup.shield = True
                if self._mid_frame or half_closed:  # a write was cut short: no close frame can follow it
                    await abort(self._ws)
                elif self._closing is not None:
                    await self._ws.aclose(*self._closing)
            close = self._ws.closed
            logger.info(
                "close client=%s user=%s code=%s",
                self.client_id,
                p.shown(self.user),
                close.code if close is not None else self._closing[0] if self._closing is not None else None,
            )

    def _queue(self, frame: p.ServerFrame, *, count_error: bool = True) -> None:
        """Queue `frame` for the client, encoded; an `error` frame made here (`count_error`) is counted in the metrics.

        A `response_chunk` right behind another of the same turn joins its run (one frame, `protocol.ChunkRun`).
        The queue's bounds count each frame's UTF-8 bytes plus `FRAME_OVERHEAD` from here until it is written:
        past `outbox_size` frames or `outbox_bytes` bytes (a frame bigger than that alone is taken while
        nothing else is held), the client is not reading and is closed with 1013; past the server's
        `outbox_bytes_total`, the connections holding the most are closed first (`OutboxBudget`)."""
        if count_error and type(frame) is p.Error and self._metrics is not None:
            self._metrics.errors.labels(frame.code).inc()
        if self._closing is not None or self._ended:
            return  # closing or gone; what it missed is in the log
        outbox = self._outbox
        run = None
        if type(frame) is p.ResponseChunk:
            last = outbox[-1] if outbox is not None else None
            if type(last) is p.ChunkRun and last.continued_by(frame):
                run, entry = last, p.json_text(frame.delta)
                size = len(entry)
            else:
                entry = p.ChunkRun(frame)
                size = entry.size + FRAME_OVERHEAD
        else:
            entry = p.encode_utf8(frame)
            size = len(entry) + FRAME_OVERHEAD
        held = self._held_bytes
        if (run is None and outbox is not None and len(outbox) >= self._settings.outbox_size
                or held and held + size > self._settings.outbox_bytes):
            logger.warning("client=%s user=%s: not reading, outbound queue full; closing", self.client_id, p.shown(self.user))
            self.close(TRY_AGAIN_LATER, "outbound queue full: the client is not reading", drain=False)
            return
        budget = self._budget
        if budget.held + size > budget.cap:
            budget.make_room(size)
            if self._closing is not None:
                return  # this connection held the most
        if run is not None:
            run.add(entry)
        elif outbox is None:
            self._outbox = [entry]
        else:
            outbox.append(entry)
        self._held_bytes += size
        budget.held += size
        if not self._holds:
            self._wake_writer()

    async def _write_frames(self) -> None:
        """Write queued frames until the queue is closed (and drained, unless dropped); then end the connection.

        Frames queued together, or while the queue is held (`hold`), go out in one socket write. More than
        WRITE_PIECE bytes of them are taken from the queue a piece of about that size at a time (a socket
        write each), so that what a client that stops reading makes the server hold stays in the queue,
        where a close without draining drops it. Frames count in the queue's bounds until written.
        """
        try:
            more = False  # the last take left frames queued: they go on without waiting for a release
            while True:
                # Wait for frames, and while they are held for a release too (which wakes the writer
                # with True); then whatever holds remain, the writer takes the queue.
                released = more
                while self._outbox is None or (
                    self._holds and not released and self._closing is None and not self._ended
                ):
                    if self._outbox is None and (self._closing is not None or self._ended):
                        return  # closed and drained
                    self._writer = trio.lowlevel.current_task()
                    released = await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
                frames = self._outbox
                taken = self._held_bytes  # nothing is being written now: all of it is queued
                if taken <= WRITE_PIECE:
                    self._outbox = None
                    more = False
                else:
                    frames, taken = self._take_piece(frames)
                    more = self._outbox is not None
                self._wake_room()
                self._mid_frame = True
                # Nothing of the batch stays referenced here once it is written (`frames = None`): this
                # frame stays suspended while the writer waits for the next frames.
                await send_text_batch(self._ws, [f if type(f) is bytes else f.encode() for f in frames])
                frames = None
                self._mid_frame = False
                self._release(taken)
                self._wake_room()
                self._last_activity = trio.current_time()
        except ConnectionClosed:
            self._mid_frame = False
        finally:
            self._scope.cancel()

    def _take_piece(self, outbox: list[_Entry]) -> tuple[list[_Entry], int]:
        """Take the first frames of the queue, about WRITE_PIECE bytes of them (at least one); and the bytes they count."""
        size = 0
        for n, entry in enumerate(outbox, 1):
            size += _counted(entry)
            if size >= WRITE_PIECE:
                break
        if n == len(outbox):
            self._outbox = None
            return outbox, size
        piece = outbox[:n]
        del outbox[:n]
        return piece, size

    async def _read_frames(self) -> None:
        """Take the client's messages until the connection ends.

        Each message is handled (`_take`) in the WebSocket's reader task as it arrives; this task then
        only waits for the end. Without the fast paths (`_wsinternals.FAST_PATHS`) it receives them here,
        and a text message over `max_message_size` bytes of UTF-8 closes the connection with 1009 (the
        limit trio-websocket's reader applies counts characters)."""
        take_messages(self._ws, self._take)
        limit = self._settings.max_message_size
        while True:
            try:
                data = await self._ws.get_message()
            except ConnectionClosed:
                return
            if type(data) is str and len(data) > limit // 4 and len(data.encode("utf-8")) > limit:
                self.close(MESSAGE_TOO_BIG, f"Exceeded maximum message size: {limit} bytes", drain=False)
                continue
            self._take(data)

    def _take(self, data: str | bytes) -> None:
        """One message from the client; never raises (it runs in the WebSocket's reader task)."""
        self._last_activity = trio.current_time()
        if self._closing is not None or self._ended:
            return  # closing (or gone): nothing more is taken on
        cmd = None
        try:
            self._take_token()
            cmd = p.decode(data)
            self._handle(cmd)
        except p.ProtocolError as exc:
            logger.info("client=%s user=%s error=%s: %s", self.client_id, p.shown(self.user), exc.code, exc.message)
            self._queue(p.error_frame(exc, getattr(cmd, "agent_id", None)))
        except Exception:
            logger.exception("client=%s user=%s: failed to handle a frame", self.client_id, p.shown(self.user))
            self._queue(p.Error("internal_error", "The server failed to handle this message"))

    async def _keep_alive(self) -> None:
        """The heartbeat and the idle timeout, in one task (a task per connection less to hold):

        ping the client every `heartbeat_interval`, closing it (1011) if no pong comes within
        `heartbeat_timeout`; close it (1001) after `idle_timeout` seconds without a frame either
        way. An idle timeout falling due while a ping waits for its pong is acted on after it.
        """
        s = self._settings
        ping_at = trio.current_time() + s.heartbeat_interval if s.heartbeat_interval else math.inf
        while True:
            idle_at = self._last_activity + s.idle_timeout if s.idle_timeout else math.inf
            await trio.sleep_until(min(ping_at, idle_at))
            if s.idle_timeout and trio.current_time() >= self._last_activity + s.idle_timeout:
                logger.info("client=%s user=%s: idle for %ss; closing", self.client_id, p.shown(self.user), s.idle_timeout)
                self.close(GOING_AWAY, f"idle for {s.idle_timeout:g} seconds")
                return
            if trio.current_time() < ping_at:
                continue
            with trio.move_on_after(s.heartbeat_timeout) as waited:
                try:
                    await self._ws.ping()
                except ConnectionClosed:
                    return
            if waited.cancelled_caught:
                logger.info("client=%s user=%s: no pong in %ss; closing", self.client_id, p.shown(self.user), s.heartbeat_timeout)
                self.close(INTERNAL_ERROR, "no pong to the keepalive ping", drain=False)
                return
            ping_at = trio.current_time() + s.heartbeat_interval

    def _trio_time_of(self, unix_seconds: float) -> float:
        """The trio clock's reading at wall-clock time `unix_seconds` (the token clock is the authenticator's)."""
        assert self._auth is not None
        return trio.current_time() + (unix_seconds - self._auth.now())

    async def _guard_auth(self) -> None:
        """With auth on: close (1008) a connection not authenticated within `auth_timeout`, and one whose
        token expires (a new `auth` frame for the same user before then moves the expiry)."""
        if self.claims is None:
            timeout = self._settings.auth_timeout
            with trio.move_on_after(timeout):
                await self._auth_changed.wait()
            if self.claims is None:
                logger.info("client=%s: not authenticated within %ss; closing", self.client_id, timeout)
                self.close(POLICY_VIOLATION, f"not authenticated within {timeout:g} seconds")
                return
        while True:
            changed = self._auth_changed = trio.Event()
            with trio.move_on_at(self._expires_at):
                await changed.wait()
            if trio.current_time() >= self._expires_at:
                self._expire()
                return

    def _expire(self) -> None:
        assert self.claims is not None
        if self._closing is not None:
            return
        logger.info("client=%s user=%s: token expired; closing", self.client_id, p.shown(self.user))
        self._queue(p.Error("token_expired", f"The token expired at {self.claims.expires_iso}; reconnect with a new one"))
        self.close(POLICY_VIOLATION, "token expired")

    def _take_token(self) -> None:
        """Spend one frame of the rate limit, or raise `rate_limited` (the frame is then ignored)."""
        rate = self._settings.rate_limit
        if not rate:
            return
        now = trio.current_time()
        tokens, at = self._bucket
        tokens = min(float(self._settings.rate_burst), tokens + (now - at) * rate)
        if tokens < 1:
            self._bucket = (tokens, now)
            raise p.ProtocolError("rate_limited", f"Too many messages: at most {rate:g} a second; this one was ignored")
        self._bucket = (tokens - 1, now)

    def _check_length(self, field: str, text: str, limit: int, request_id: str | None) -> None:
        if len(text) > limit:
            raise p.ProtocolError("too_long", f"Field '{field}' is longer than {limit} characters", request_id)

    # -- commands --------------------------------------------------------------------------

    def _agent(self, agent_id: str, request_id: str | None) -> Agent:
        agent = self._agents.get(agent_id)
        if agent is None:
            raise p.ProtocolError("unknown_agent", f"No agent with ID '{p.shown(agent_id)}' exists", request_id)
        return agent

    def _submit(self, agent: Agent, command: actors.AgentCommand) -> None:
        if not self._accepting():
            raise p.ProtocolError("shutting_down", "The server is shutting down; try again shortly", command.request_id)
        try:
            agent.submit(command)
        except Busy as exc:
            raise p.ProtocolError("busy", str(exc), command.request_id) from None

    def _authenticate(self, token: str, rid: str | None) -> None:
        if self._auth is None:
            raise p.ProtocolError(
                "auth_disabled",
                "Authentication is off on this server: the token was not checked; set_user chooses the user",
                rid,
            )
        try:
            claims = self._auth.verify(token)
        except TokenError as exc:
            raise p.ProtocolError("invalid_token", exc.message, rid) from None
        if self.claims is not None and str(claims.user_id) != self.user:
            raise p.ProtocolError(
                "forbidden", "This connection is authenticated as another user; open a new connection for this one", rid
            )
        if self.claims is None and not self._switch_user(claims.user_id, rid):
            return
        self.claims, self.user_id = claims, claims.user_id
        self._expires_at = self._trio_time_of(claims.expires_at)
        self._auth_changed.set()
        logger.info("client=%s user=%s: authenticated until %s", self.client_id, p.shown(self.user), claims.expires_iso)
        self._queue(p.Authenticated(claims.user_id, claims.expires_iso, rid))

    def _too_many_connections(self, user: str, rid: str | None) -> None:
        cap = self._settings.max_connections_per_user
        self._queue(p.Error("too_many_connections", f"User {p.shown(user)} already has {cap} connections", None, rid))
        self.close(TRY_AGAIN_LATER, "too many connections for this user")

    def _switch_user(self, user_id: int | str, rid: str | None) -> bool:
        """Make `user_id` the connection's user; False (and the connection closing with 1013) if that user
        already has `max_connections_per_user` connections."""
        new_user = str(user_id)
        if new_user != self.user and self._users[new_user] >= self._settings.max_connections_per_user:
            self._too_many_connections(new_user, rid)
            return False
        self._users[self.user] -= 1
        if not self._users[self.user]:
            del self._users[self.user]
        self._users[new_user] += 1
        for agent_id in self.subscriptions:
            self._audience.unsubscribe(agent_id, self.user, self)
            self._audience.subscribe(agent_id, new_user, self)
        self.user_id, self.user = user_id, new_user
        logger.info("client=%s user=%s: user set", self.client_id, p.shown(self.user))
        return True

    def _handle(self, cmd: p.Command) -> None:
        """Carry out one decoded command; never blocks. Raises `ProtocolError` to refuse it."""
        if self._auth is not None and type(cmd) is not p.Ping and type(cmd) is not p.Auth:
            if self.claims is None:
                raise p.ProtocolError(
                    "unauthenticated",
                    'Authenticate first: send {"type":"auth","token":"..."}; until then only auth and ping are accepted',
                    cmd.request_id,
                )
            if self._auth.now() >= self.claims.expires_at:  # the expiry's close is due: take nothing more on
                self._expire()
                return
        match cmd:
            case p.Chat(agent_id, message, rid, command_id):
                self._check_length("message", message, self._settings.max_chat_chars, rid)
                turn = actors.ChatCommand(self.user, message, self._clock(), self, rid, command_id)
                self._submit(self._agent(agent_id, rid), turn)
                if self._metrics is not None:
                    waiting = self._chats_waiting.get(agent_id)
                    if waiting is None:
                        waiting = self._chats_waiting[agent_id] = collections.deque()
                    waiting.append(trio.current_time())
            case p.Ping(rid):
                self._queue(p.Pong(rid))
            case p.ListAgents(rid):
                infos = [p.AgentInfo(agent.agent_id, agent.spec.description) for agent in self._agents.values()]
                self._queue(p.AgentList(infos, rid))
            case p.SearchMemory(agent_id, query, limit, use_long_term, rid):
                self._check_length("query", query, self._settings.max_query_chars, rid)
                self._submit(self._agent(agent_id, rid), actors.SearchCommand(self.user, query, limit, use_long_term, self, rid))
            case p.ClearMemory(agent_id, long_term, rid):
                self._submit(self._agent(agent_id, rid), actors.ClearCommand(self.user, long_term, self._clock(), self, rid))
            case p.Cancel(agent_id, rid):
                # Not through the mailbox: the lane is busy with the very turn to cancel.
                try:
                    self._agent(agent_id, rid).cancel(self.user, rid, self)
                except NothingToCancel as exc:
                    raise p.ProtocolError("nothing_to_cancel", str(exc), rid) from None
            case p.Auth(token, rid):
                self._authenticate(token, rid)
            case p.SetUser(user_id, rid) if self._auth is not None:
                # With auth on the token decides the user: set_user may only name that same user.
                if str(user_id) != self.user:
                    raise p.ProtocolError(
                        "forbidden", f"This connection is authenticated as user {p.shown(self.user)}; set_user may name only it", rid
                    )
                self._queue(p.UserSet(user_id, rid))
            case p.SetUser(user_id, rid):
                if self._switch_user(user_id, rid):
                    self._queue(p.UserSet(user_id, rid))
            case p.Subscribe(agent_id, rid, None):
                self._agent(agent_id, rid)
                self.subscriptions.add(agent_id)
                self._audience.subscribe(agent_id, self.user, self)
                self._queue(p.Subscribed(agent_id, f"Successfully subscribed to agent {agent_id}", rid))
            case p.Subscribe(agent_id, rid, after_seq):
                # Resume: the agent sends `subscribed` and the backlog from this user's lane, then
                # makes the held subscription live (see actors.ResumeCommand); until then it hears nothing new.
                self._submit(self._agent(agent_id, rid), actors.ResumeCommand(self.user, after_seq, self, rid))
                self.subscriptions.add(agent_id)
                self._audience.subscribe(agent_id, self.user, self, held=True)
            case p.Unsubscribe(agent_id, rid):
                self._agent(agent_id, rid)
                self.subscriptions.discard(agent_id)
                self._audience.unsubscribe(agent_id, self.user, self)
                self._queue(p.Unsubscribed(agent_id, f"Successfully unsubscribed from agent {agent_id}", rid))
