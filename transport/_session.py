"""`Session`: who a connection's client is, and what it may do now: its user, its authentication (the token's
claims and when they expire) and its rate limit (a token bucket).

Owns that state and the checks on it, which refuse with `protocol.ProtocolError`; no I/O, no logging, no
closing (the connection acts on what these say). Imports trio (its clock) and the protocol and auth
modules; must not import trio-websocket, the actors or the store.
"""
from __future__ import annotations

import math

import trio

from . import protocol as p
from ._auth import Authenticator, Claims, TokenError
from ._settings import ServerSettings


class Session:
    """A connection's user and authentication, and its rate limit's bucket."""

    __slots__ = ("user_id", "user", "claims", "_auth", "_expires_at", "_auth_changed", "_bucket")

    def __init__(self, client_id: str, settings: ServerSettings, auth: Authenticator | None = None,
                 claims: Claims | None = None) -> None:
        """Without a user named (`set_user`, or a token's), the user is the connection's own `client_id`.
        With `auth` (authentication on) and the `claims` of a token the handshake carried, the session
        starts authenticated as that token's user."""
        #: The user's id as the client gave it (int or str); None until set (or authenticated).
        self.user_id: int | str | None = None
        #: The user, as memory is keyed: the text form of `user_id`, else the connection's own id.
        self.user = client_id
        self._auth = auth
        #: The claims of the token the connection is authenticated with (auth on); None until then.
        self.claims: Claims | None = None
        self._expires_at = math.inf  # trio time at which the token expires
        #: With auth on: set (and replaced) when the session (re)authenticates; None with auth off.
        self._auth_changed = trio.Event() if auth is not None else None
        if auth is not None and claims is not None:
            self.claims, self.user_id, self.user = claims, claims.user_id, str(claims.user_id)
            self._expires_at = self._trio_time_of(claims.expires_at)
        #: The rate limit's token bucket: (tokens, trio time they were counted at).
        self._bucket = (float(settings.rate_burst), trio.current_time())

    @property
    def auth_on(self) -> bool:
        return self._auth is not None

    # -- the rate limit ----------------------------------------------------------------------------

    def take_token(self, settings: ServerSettings) -> None:
        """Spend one frame of the rate limit, or raise `rate_limited` (the frame is then ignored)."""
        rate = settings.rate_limit
        if not rate:
            return
        now = trio.current_time()
        tokens, at = self._bucket
        tokens = min(float(settings.rate_burst), tokens + (now - at) * rate)
        if tokens < 1:
            self._bucket = (tokens, now)
            raise p.ProtocolError("rate_limited", f"Too many messages: at most {rate:g} a second; this one was ignored")
        self._bucket = (tokens - 1, now)

    # -- authentication ------------------------------------------------------------------------------

    def admits(self, cmd: p.Command) -> bool:
        """With auth on, before any command but `auth` and `ping`: raise `unauthenticated` if the session
        is not authenticated; False if its token has expired (its close is due: take nothing more on)."""
        auth = self._auth
        if auth is None or type(cmd) is p.Ping or type(cmd) is p.Auth:
            return True
        if self.claims is None:
            raise p.ProtocolError(
                "unauthenticated",
                'Authenticate first: send {"type":"auth","token":"..."}; until then only auth and ping are accepted',
                cmd.request_id,
            )
        return auth.now() < self.claims.expires_at

    def verify(self, token: str, rid: str | None) -> Claims:
        """The claims of `token`, if it may authenticate this session; else raise why not (auth off, an
        invalid token, or a token of another user than the one the session is authenticated as)."""
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
        return claims

    def authenticated(self, claims: Claims) -> None:
        """The session is authenticated with `claims` (of its user: `user` is already theirs), until they expire."""
        assert self._auth_changed is not None
        self.claims, self.user_id = claims, claims.user_id
        self._expires_at = self._trio_time_of(claims.expires_at)
        self._auth_changed.set()

    async def wait_authenticated(self, timeout: float) -> bool:
        """With auth on: wait (at most `timeout` seconds) until the session is authenticated; False if it is not."""
        if self.claims is None:
            assert self._auth_changed is not None
            with trio.move_on_after(timeout):
                await self._auth_changed.wait()
        return self.claims is not None

    async def wait_expiry(self) -> None:
        """With auth on and authenticated: return once the token has expired (a new `auth` for the same
        user before then moves the expiry)."""
        while True:
            changed = self._auth_changed = trio.Event()
            with trio.move_on_at(self._expires_at):
                await changed.wait()
            if trio.current_time() >= self._expires_at:
                return

    def _trio_time_of(self, unix_seconds: float) -> float:
        """The trio clock's reading at wall-clock time `unix_seconds` (the token clock is the authenticator's)."""
        assert self._auth is not None
        return trio.current_time() + (unix_seconds - self._auth.now())
