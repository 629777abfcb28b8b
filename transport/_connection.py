"""`Connection`: one WebSocket client's connection, from its handshake to its close: its life (the reader,
the writer, the heartbeat and idle timer, the auth guard, closing), its subscriptions, and the actors'
side of it (`actors.LiveOutbox`: outputs in as frames; turns counted in the metrics).

What it delegates: the outbound queue and its bounds (`_outbox.FrameOutbox`), who the client is and what it
may do (`_session.Session`), what a command asks for (`_dispatch.dispatch`), per-user connection counts
(`_admission`). The only module besides `_wsinternals` that talks to trio-websocket. Imports trio, the
actors and the protocol; must not import the store.
"""
from __future__ import annotations

import collections
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .. import actors
from ..actors import Agent, Audience, Busy, NothingToCancel, Output

from . import _admission as admission
from . import protocol as p
from ._auth import Authenticator, Claims
from ._dispatch import Authenticate, CancelTurn, Reply, Resume, Submit, Subscribe, SwitchUser, Unsubscribe, dispatch
from ._frames import COUNTED, frame_of
from ._metrics import Metrics
from ._outbox import FRAME_OVERHEAD, FrameOutbox, OutboxBudget
from ._session import Session
from ._settings import ServerSettings
from ._wsinternals import WRITE_PIECE, abort, direct_writer, send_text_batch, take_messages

__all__ = ["Connection", "OutboxBudget", "FRAME_OVERHEAD", "GOING_AWAY", "ABNORMAL_CLOSURE", "POLICY_VIOLATION",
           "MESSAGE_TOO_BIG", "INTERNAL_ERROR", "TRY_AGAIN_LATER"]

logger = logging.getLogger("agentcast.transport")

#: Close codes (RFC 6455 and IANA registry).
GOING_AWAY = 1001
#: Never sent: the code of a connection that ended without a close handshake.
ABNORMAL_CLOSURE = 1006
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

#: Seconds without a frame either way after which a `response_chunk` for an idle queue is written by the task that
#: has it (`Connection._write_now`): a token streamed at an LLM's pace goes out without waking the writer, while
#: frames that come together (a brain's burst, an instant turn) still go in one write by the writer. Other frames
#: (a turn's start and end, answers to commands) always go through the writer, with what comes with them.
DIRECT_AFTER_QUIET = 0.001


class Connection:
    """A client's connection. Implements `actors.LiveOutbox`: an agent's outputs become frames in its queue.

    Frames for the client wait in its `FrameOutbox`, bounded in frames and in bytes, written by one task; a
    client that lets it overflow is closed with 1013, so no agent ever waits on it. The bytes held by all
    the server's queues together are bounded too (`budget`).
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
        self._session = Session(self.client_id, settings, auth, claims)
        self.subscriptions: set[str] = set()
        self._ws = ws
        self._agents = agents
        self._audience = audience
        self._clock = clock
        self._settings = settings
        self._users = users if users is not None else collections.Counter()
        admission.enter(self._users, self._session.user)
        self._last_activity = trio.current_time()
        self._accepting = accepting
        #: The outbound queue; closed (takes no more frames) once `close` was called or `run` has ended.
        self._outbox = FrameOutbox(settings, budget if budget is not None else OutboxBudget(settings.outbox_bytes_total, (self,)))
        self._ended = False  # `run` has finished
        #: Writes a streamed token to the socket from the task that has it (`_write_now`; None: never).
        self._direct = direct_writer(ws)
        #: The cancel scope of `run`'s nursery; one made by `close` before `run` lends it its deadline.
        self._scope: trio.CancelScope | None = None
        self._closing: tuple[int, str] | None = None  # (code, reason) once `close` was called
        self._mid_frame = False  # a frame write was cut short: the stream can take no more frames
        self._metrics = metrics
        #: Per agent: the trio time each chat of this connection arrived, oldest first, until its agent_done.
        self._chats_waiting: dict[str, collections.deque[float]] = {}
        # Memory per idle connection (bench/idle.py): CPython 3.11 keeps an instance's attributes in
        # its compact shared-key layout only while the class has fewer than 30 of them (checked by
        # tests/test_limits.py; 30 or more and every Connection gets a full dict, about 1.3 KiB more
        # each). Derive from `_settings` rather than copy settings here, and add no attribute without
        # a reason: state of the queue belongs in `FrameOutbox`, of the user in `Session` (both slotted).

    # -- who the client is ----------------------------------------------------------------------

    @property
    def user(self) -> str:
        """The user, as memory is keyed: the text form of `user_id`, else this connection's own id."""
        return self._session.user

    @property
    def user_id(self) -> int | str | None:
        """The user's id as the client gave it (int or str); None until `set_user` (or authentication)."""
        return self._session.user_id

    @property
    def claims(self) -> Claims | None:
        """The claims of the token the connection is authenticated with (auth on); None until then."""
        return self._session.claims

    # -- actors.LiveOutbox ------------------------------------------------------------------------

    @property
    def gone(self) -> bool:
        """True once the connection has ended: what is delivered to it is dropped."""
        return self._ended

    def deliver(self, output: Output) -> None:
        if self._metrics is not None and type(output) in COUNTED:
            self._count(output)  # type: ignore[arg-type]
        frame = frame_of(output)
        if type(frame) is p.ResponseChunk and self._direct is not None and self._outbox.idle() and self._write_now(frame):
            return
        if not self._outbox.put(frame):
            self._overflowed()

    def hold(self) -> None:
        """Keep queued frames from the writer until a `release`, so that what is queued meanwhile goes
        out with them in one write. A close does not wait for it."""
        self._outbox.hold()

    def release(self) -> None:
        """End one `hold`. The queue then goes out even if other holds remain (lanes of other agents holding
        this connection in turn): a frame waits for one commit at most. It is written to the socket by this
        task, in one write, where the writer waits with nothing of its own to write (no wake-up of the
        writer); else the writer takes it."""
        direct = self._direct
        if direct is None or not direct.can_write_now():
            self._outbox.release()
            return
        outbox = self._outbox
        taken = outbox.release_taking(WRITE_PIECE)
        if taken is None:
            return
        frames, size = taken
        left = direct.write_batch_now([f if type(f) is bytes else f.encode() for f in frames])  # type: ignore[union-attr]
        outbox.written(size)
        if left:
            outbox.kept(left)
        self._last_activity = trio.current_time()

    async def room(self) -> None:
        """Return once the outbound queue is at most half full (in frames and in bytes), or
        the connection is closing.

        A backlog waits on this before each frame, so it flows at the pace the client reads it.
        A client that takes no frame for `close_timeout` seconds while its queue is that full is
        not reading: it is closed with 1013 (as if its queue had overflowed), so nobody waits longer.
        """
        outbox = self._outbox
        if not outbox.crowded():
            return
        with trio.move_on_after(self._settings.close_timeout):
            await outbox.wait_for_room()
        if outbox.crowded():
            logger.warning("client=%s user=%s: not reading, outbound queue stays full; closing", self.client_id, p.shown(self.user))
            self.close(TRY_AGAIN_LATER, "outbound queue full: the client is not reading", drain=False)

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

    # -- the outbound queue -------------------------------------------------------------------------

    @property
    def held_bytes(self) -> int:
        """Bytes counted for the frames queued for the client or being written to it."""
        return self._outbox.held_bytes

    def _queue(self, frame: p.ServerFrame | p.AgentList, *, count_error: bool = True) -> None:
        """Queue `frame` for the client (`FrameOutbox.put`); an `error` frame made here (`count_error`) is
        counted in the metrics. Past the queue's bounds (`outbox_size` frames, `outbox_bytes` bytes) the
        client is not reading and is closed with 1013."""
        if count_error and type(frame) is p.Error and self._metrics is not None:
            self._metrics.errors.labels(frame.code).inc()
        if not self._outbox.put(frame):
            self._overflowed()

    def _write_now(self, frame: p.ResponseChunk) -> bool:
        """Write a streamed token (`frame`) to the socket from this task, the queue being idle
        (`FrameOutbox.idle`: nothing queued, held, being written or kept, so it goes in order) and the connection quiet for
        `DIRECT_AFTER_QUIET`: no wake-up of the writer. What the socket does not take is kept by the stream
        and counted in the queue's bounds (`FrameOutbox.kept`) until the writer has written it, before anything
        else. False if nothing was written: queue it as usual."""
        now = trio.current_time()
        if now - self._last_activity < DIRECT_AFTER_QUIET:
            return False  # part of a burst: the writer takes it with the rest
        assert self._direct is not None
        left = self._direct.write_now(p.encode_utf8(frame))  # type: ignore[arg-type]
        if left < 0:
            return False
        if left:
            self._outbox.kept(left)
        self._last_activity = now
        return True

    def _overflowed(self) -> None:
        """A frame would have passed the queue's bounds: the client is not reading; close it (1013)."""
        logger.warning("client=%s user=%s: not reading, outbound queue full; closing", self.client_id, p.shown(self.user))
        self.close(TRY_AGAIN_LATER, "outbound queue full: the client is not reading", drain=False)

    def evict(self) -> None:
        """Close with 1013, the queue dropped: the server's queues together hold too much, and this
        connection holds the most (`OutboxBudget.make_room`). One already closing keeps its close code
        but loses its queue too."""
        if self._ended:
            return
        if self._closing is not None:
            self._outbox.drop()
            return
        logger.warning("client=%s user=%s: holds %d bytes of outbound frames, the most while all queues together "
                       "reach outbox_bytes_total; closing", self.client_id, self.user, self._outbox.held_bytes)
        self.close(TRY_AGAIN_LATER, "the server's outbound queues are full and this client's holds the most",
                   drain=False)

    async def _write_frames(self) -> None:
        """Write queued frames until the queue is closed (and drained, unless dropped); then end the connection.

        Frames queued together, or while the queue is held (`hold`), go out in one socket write. More than
        WRITE_PIECE bytes of them are taken from the queue a piece of about that size at a time (a socket
        write each), so that what a client that stops reading makes the server hold stays in the queue,
        where a close without draining drops it. Frames count in the queue's bounds until written.
        """
        outbox = self._outbox
        try:
            more = False  # the last take left frames queued: they go on without waiting for a release
            while True:
                taken = await outbox.take(WRITE_PIECE, more)
                if taken is None:
                    return  # closed and drained
                frames, size, more = taken
                taken = None
                self._mid_frame = True
                # Nothing of the batch stays referenced here once it is written (`frames = None`): this
                # frame stays suspended while the writer waits for the next frames.
                await send_text_batch(self._ws, [f if type(f) is bytes else f.encode() for f in frames])  # type: ignore[union-attr]
                frames = None  # type: ignore[assignment]
                self._mid_frame = False
                outbox.written(size)
                self._last_activity = trio.current_time()
        except ConnectionClosed:
            self._mid_frame = False
        finally:
            assert self._scope is not None
            self._scope.cancel()

    # -- life ------------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, drain: bool = True) -> None:
        """Close the connection with `code`, from any task, without waiting.

        With `drain`, frames already queued are written first; without, they are dropped (for
        a client that does not read). Writing them gets at most `close_timeout` seconds, the
        close handshake as long again; a client still not reading is cut off without a close frame.
        """
        if self._closing is None:
            self._closing = (code, reason)
        self._outbox.close(drop=not drain)  # the queue takes no more frames; the writer ends the connection when done
        if self._scope is None:  # before `run`: it takes this scope's deadline
            self._scope = trio.CancelScope()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + self._settings.close_timeout)

    def _remote(self) -> str:
        try:
            remote = self._ws.remote  # getpeername(): fails once the client has reset the connection
        except OSError:
            return "gone"
        return f"{remote.address}:{remote.port}" if hasattr(remote, "address") else str(remote)  # type: ignore[union-attr]

    async def run(self) -> None:
        """Serve the client until it leaves or the connection is closed; never raises."""
        half_closed = False
        session = self._session
        try:
            logger.info("open client=%s remote=%s", self.client_id, self._remote())
            async with trio.open_nursery() as nursery:  # its cancel scope is `_scope` (one scope less to hold)
                if self._scope is not None:  # closed before it ran
                    nursery.cancel_scope.deadline = self._scope.deadline
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._write_frames)
                if self._settings.heartbeat_interval or self._settings.idle_timeout:
                    nursery.start_soon(self._keep_alive)
                self._queue(p.Connected(self.client_id, auth=session.auth_on))
                if session.auth_on:
                    claims = session.claims
                    if claims is not None:  # authenticated by the handshake's Authorization header
                        logger.info("client=%s user=%s: authenticated (header) until %s",
                                    self.client_id, p.shown(self.user), claims.expires_iso)
                        self._queue(p.Authenticated(claims.user_id, claims.expires_iso))
                        if admission.over_cap(self._users, self.user, self._settings.max_connections_per_user):
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
            admission.leave(self._users, self.user)
            self._ended = True
            self._outbox.end()  # the writer has ended: nothing is held any more
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
            session = self._session
            session.take_token(self._settings)
            cmd = p.decode(data)
            if not session.admits(cmd):  # the token's expiry's close is due: take nothing more on
                self._expire()
                return
            self._carry_out(dispatch(cmd, session.user, self, self._agents, self._settings, self._clock, session.auth_on))
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

    async def _guard_auth(self) -> None:
        """With auth on: close (1008) a connection not authenticated within `auth_timeout`, and one whose
        token expires (a new `auth` frame for the same user before then moves the expiry)."""
        timeout = self._settings.auth_timeout
        if not await self._session.wait_authenticated(timeout):
            logger.info("client=%s: not authenticated within %ss; closing", self.client_id, timeout)
            self.close(POLICY_VIOLATION, f"not authenticated within {timeout:g} seconds")
            return
        await self._session.wait_expiry()
        self._expire()

    def _expire(self) -> None:
        claims = self._session.claims
        assert claims is not None
        if self._closing is not None:
            return
        logger.info("client=%s user=%s: token expired; closing", self.client_id, p.shown(self.user))
        self._queue(p.Error("token_expired", f"The token expired at {claims.expires_iso}; reconnect with a new one"))
        self.close(POLICY_VIOLATION, "token expired")

    # -- commands --------------------------------------------------------------------------

    def _carry_out(self, action) -> None:
        """Do what `dispatch` decided for a command; never blocks. Raises `ProtocolError` to refuse it."""
        match action:
            case Submit(agent, command):
                self._submit(agent, command)
                if self._metrics is not None and type(command) is actors.ChatCommand:
                    agent_id = agent.agent_id
                    waiting = self._chats_waiting.get(agent_id)
                    if waiting is None:
                        waiting = self._chats_waiting[agent_id] = collections.deque()
                    waiting.append(trio.current_time())
            case Reply(frame):
                self._queue(frame)
            case CancelTurn(agent, rid):
                try:
                    agent.cancel(self.user, rid, self)
                except NothingToCancel as exc:
                    raise p.ProtocolError("nothing_to_cancel", str(exc), rid) from None
            case Authenticate(token, rid):
                self._authenticate(token, rid)
            case SwitchUser(user_id, rid):
                if self._switch_user(user_id, rid):
                    self._queue(p.UserSet(user_id, rid))
            case Subscribe(agent_id, rid):
                self.subscriptions.add(agent_id)
                self._audience.subscribe(agent_id, self.user, self)
                self._queue(p.Subscribed(agent_id, f"Successfully subscribed to agent {agent_id}", rid))
            case Resume(agent, agent_id, command):
                self._submit(agent, command)
                self.subscriptions.add(agent_id)
                self._audience.subscribe(agent_id, self.user, self, held=True)
            case Unsubscribe(agent_id, rid):
                self.subscriptions.discard(agent_id)
                self._audience.unsubscribe(agent_id, self.user, self)
                self._queue(p.Unsubscribed(agent_id, f"Successfully unsubscribed from agent {agent_id}", rid))

    def _submit(self, agent: Agent, command: actors.AgentCommand) -> None:
        if not self._accepting():
            raise p.ProtocolError("shutting_down", "The server is shutting down; try again shortly", command.request_id)
        try:
            agent.submit(command)
        except Busy as exc:
            raise p.ProtocolError("busy", str(exc), command.request_id) from None

    def _authenticate(self, token: str, rid: str | None) -> None:
        session = self._session
        claims = session.verify(token, rid)
        if session.claims is None and not self._switch_user(claims.user_id, rid):
            return
        session.authenticated(claims)
        logger.info("client=%s user=%s: authenticated until %s", self.client_id, p.shown(self.user), claims.expires_iso)
        self._queue(p.Authenticated(claims.user_id, claims.expires_iso, rid))

    def _too_many_connections(self, user: str, rid: str | None) -> None:
        cap = self._settings.max_connections_per_user
        self._queue(p.Error("too_many_connections", f"User {p.shown(user)} already has {cap} connections", None, rid))
        self.close(TRY_AGAIN_LATER, "too many connections for this user")

    def _switch_user(self, user_id: int | str, rid: str | None) -> bool:
        """Make `user_id` the connection's user; False (and the connection closing with 1013) if that user
        already has `max_connections_per_user` connections."""
        session = self._session
        old, new = session.user, str(user_id)
        if not admission.move(self._users, old, new, self._settings.max_connections_per_user):
            self._too_many_connections(new, rid)
            return False
        for agent_id in self.subscriptions:
            self._audience.unsubscribe(agent_id, old, self)
            self._audience.subscribe(agent_id, new, self)
        session.user_id, session.user = user_id, new
        logger.info("client=%s user=%s: user set", self.client_id, p.shown(self.user))
        return True


if TYPE_CHECKING:  # mypy (tests/test_types.py) checks that a Connection is the outbox the actors take it for
    _implements: type[actors.LiveOutbox] = Connection
