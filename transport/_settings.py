"""`ServerSettings`: every knob of a server (listening, storage, limits, timeouts), with its default.

Plain attrs data; imports nothing of the project.
"""
from __future__ import annotations

import math
import re

from attrs import field, frozen

#: An origin as browsers send it: scheme://host[:port], no path.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


@frozen
class ServerSettings:
    """How a server listens and stores. Every field has the default `agentcast serve` uses."""

    host: str = "127.0.0.1"
    port: int = 5050
    db: str = "agentcast.db"
    #: SQLite synchronous mode: "NORMAL" survives a crash of the process, "FULL" also a power cut.
    synchronous: str = "NORMAL"
    #: Largest client frame, in bytes; a larger one closes the connection with 1009.
    max_message_size: int = 64 * 1024
    #: Frames waiting to be written to one client; beyond that it is closed with 1013.
    outbox_size: int = 1024
    #: Bytes of frames waiting to be written to one client (their UTF-8 JSON, plus 64 a frame), counted until
    #: written; beyond that it is closed with 1013.
    outbox_bytes: int = 8 * 1024 * 1024
    #: The same bytes for all clients together; a frame that would pass it first closes (1013) the clients
    #: holding the most.
    outbox_bytes_total: int = 256 * 1024 * 1024
    #: Seconds a client has to finish the WebSocket handshake.
    handshake_timeout: float = 10.0
    #: Seconds to wait for a client to acknowledge a close.
    close_timeout: float = 5.0
    #: Seconds that running turns get to finish when the server shuts down.
    shutdown_grace: float = 5.0
    #: Read-only database connections for searches and memory rebuilds.
    readers: int = 2
    #: Longest chat message and search query a client may send, in characters (`too_long` beyond).
    max_chat_chars: int = 32_000
    max_query_chars: int = 1_000
    #: Connections the server holds at once; beyond, the handshake is refused with HTTP 503.
    max_connections: int = 10_000
    #: Connections of one user at once (a person's devices and tabs); beyond, the newest is closed with 1013.
    max_connections_per_user: int = 32
    #: Users' lanes (their memory) kept in the server's memory, all agents together, and the UTF-8 bytes of
    #: message text in their short-term windows; beyond either, the least recently used idle lanes are
    #: dropped (rebuilt from the log on next use). See `actors.LaneBudget`.
    max_lanes: int = 10_000
    max_lanes_window_bytes: int = 64 * 1024 * 1024
    #: Seconds between WebSocket pings to each client (0: none); no pong within `heartbeat_timeout`
    #: closes the connection with 1011.
    heartbeat_interval: float = 20.0
    heartbeat_timeout: float = 20.0
    #: Seconds without a frame in either direction before a connection is closed with 1001 (0: never).
    idle_timeout: float = 3600.0
    #: Frames per second one connection may send, on average (0: unlimited), with bursts of `rate_burst`;
    #: frames beyond are answered `rate_limited` and not carried out.
    rate_limit: float = 0.0
    rate_burst: int = 20
    #: Bytes per second of one connection's input that the server reads and handles, on average (0: no
    #: limit), with bursts of `input_burst_bytes`; every frame counts 256 bytes more than its size (512 for
    #: control frames, fragments and binary frames, and for each 4 KiB read of a frame larger than that).
    #: Beyond, the server stops reading that connection until its budget refills, so TCP slows the client
    #: down: nothing is refused or dropped.
    input_bytes_per_second: int = 1024 * 1024
    input_burst_bytes: int = 1024 * 1024
    #: Token authentication: the name of the environment variable holding the secret (None: auth off).
    #: The secret itself is never part of the settings.
    auth_secret_env: str | None = None
    #: Seconds a connection has to authenticate (with auth on); then it is closed with 1008.
    auth_timeout: float = 10.0
    #: Origins a browser handshake may come from (exact scheme://host[:port]); others get HTTP 403.
    #: Empty: every origin. Handshakes without an Origin header (non-browser clients) are always allowed.
    allow_origins: tuple[str, ...] = field(default=(), converter=tuple)
    #: TLS: a PEM certificate chain (and its key, unless `keyfile` gives it); None: plain ws://.
    certfile: str | None = None
    keyfile: str | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {self.synchronous!r}")
        for name in ("max_message_size", "outbox_size", "outbox_bytes", "outbox_bytes_total", "readers",
                     "max_chat_chars", "max_query_chars", "max_connections", "max_connections_per_user", "rate_burst",
                     "max_lanes", "max_lanes_window_bytes", "input_burst_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.input_bytes_per_second < 0:
            raise ValueError("input_bytes_per_second must be at least 0 (0: no limit)")
        if self.heartbeat_interval and not self.heartbeat_timeout > 0:
            raise ValueError("heartbeat_timeout must be more than 0 seconds while heartbeat_interval is on")
        for name in ("handshake_timeout", "close_timeout", "shutdown_grace", "heartbeat_interval",
                     "heartbeat_timeout", "idle_timeout", "rate_limit"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0")
        if not (math.isfinite(self.auth_timeout) and self.auth_timeout > 0):
            raise ValueError("auth_timeout must be a finite number of seconds > 0")
        if self.auth_secret_env is not None and not self.auth_secret_env:
            raise ValueError("auth_secret_env must name an environment variable")
        for origin in self.allow_origins:
            if type(origin) is not str or not _ORIGIN.fullmatch(origin.lower()):
                raise ValueError(
                    f"allow_origins: {origin!r} is not an origin such as https://chat.example.com "
                    "(scheme://host[:port], no path, no trailing slash)"
                )
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
