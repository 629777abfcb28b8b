"""Token authentication and handshake checks: minting and verifying signed tokens, the secret,
token lifetimes ("15m"), the Origin allow-list and the warning for an exposed server without auth.

A token is two base64url texts (no padding) joined by a dot:

    base64url(JSON {"sub": <user id>, "exp": <unix seconds>}) "." base64url(HMAC-SHA256(secret, <first part>))

The MAC is computed over the first part exactly as sent (its ASCII bytes). `sub` keeps its JSON
type (an integer or a string); `exp` is an integer. Pure stdlib (`hmac`, `hashlib`, `base64`,
`json`); imports neither trio nor the rest of the project except `ConfigError`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from attrs import frozen

from ..actors import ConfigError

#: The shortest secret accepted, in bytes (the length of an HMAC-SHA256 key's block of security).
MIN_SECRET_BYTES = 32
#: The longest token accepted, in characters (in an `auth` frame and in an `Authorization` header).
MAX_TOKEN_LENGTH = 4096
#: The longest user id (as in `set_user`): a string of at most this many bytes as UTF-8, an integer whose
#: decimal form has at most this many characters.
MAX_USER_ID_BYTES = 256
#: The latest expiry a token may carry: 9999-12-31T23:59:59Z.
MAX_EXP = 253402300799

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_TTL = re.compile(r"(?P<n>[0-9]+)(?P<unit>[smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenError(Exception):
    """A token that is refused. `reason` is "malformed", "bad_signature" or "expired"; the message never
    contains the token."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@frozen
class Claims:
    """What a valid token says: who (`user_id`, int or str as minted) and until when (unix seconds)."""

    user_id: int | str
    expires_at: int

    @property
    def expires_iso(self) -> str:
        """`expires_at` as ISO 8601 UTC, e.g. "2026-11-29T02:33:59Z"."""
        return iso_utc(self.expires_at)


def iso_utc(unix_seconds: int) -> str:
    return datetime.fromtimestamp(unix_seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding: only its alphabet, and only the canonical encoding."""
    if not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    if _b64encode(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _mac(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def valid_user_id(user_id: object) -> bool:
    """An integer (not a boolean) of at most 256 digits (a minus sign counts as one), or a non-empty string
    of at most 256 bytes as UTF-8 (as `set_user` takes)."""
    if type(user_id) is int:
        return -(10 ** (MAX_USER_ID_BYTES - 1)) < user_id < 10**MAX_USER_ID_BYTES
    if type(user_id) is str and 0 < len(user_id) <= MAX_USER_ID_BYTES:
        try:
            return len(user_id.encode("utf-8")) <= MAX_USER_ID_BYTES
        except UnicodeEncodeError:
            return False
    return False


def mint(secret: bytes, user_id: int | str, expires_at: int) -> str:
    """A token for `user_id` that is valid until `expires_at` (unix seconds)."""
    if not valid_user_id(user_id):
        raise ValueError(f"a user id is an integer of at most {MAX_USER_ID_BYTES} digits or a non-empty string of at "
                         f"most {MAX_USER_ID_BYTES} bytes (UTF-8)")
    if type(expires_at) is not int or not 0 <= expires_at <= MAX_EXP:
        raise ValueError("expires_at must be an integer number of unix seconds")
    payload = json.dumps({"sub": user_id, "exp": expires_at}, ensure_ascii=False, separators=(",", ":"))
    first = _b64encode(payload.encode("utf-8"))
    return first + "." + _b64encode(_mac(secret, first))


def verify(secret: bytes, token: str, now: float) -> Claims:
    """The claims of `token` if it was minted with `secret` and has not expired at `now` (unix seconds).

    Raises `TokenError`: "malformed" (not two base64url parts, a signature of the wrong size, a payload
    that is not the documented JSON), "bad_signature" (not minted with this secret, or altered), "expired".
    The signature is checked (in constant time) before the payload is read.
    """
    if type(token) is not str or not token or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed", f"Token is malformed: it must be 1 to {MAX_TOKEN_LENGTH} characters")
    parts = token.split(".")
    if len(parts) != 2:
        raise TokenError("malformed", "Token is malformed: expected two base64url parts separated by '.'")
    first, signature = parts
    try:
        _b64decode(first)
        mac = _b64decode(signature)
    except ValueError:
        raise TokenError("malformed", "Token is malformed: its parts must be base64url without padding") from None
    if len(mac) != hashlib.sha256().digest_size:
        raise TokenError("malformed", "Token is malformed: the signature is not an HMAC-SHA256")
    if not hmac.compare_digest(mac, _mac(secret, first)):
        raise TokenError("bad_signature", "Token signature is invalid: it was not issued by this server or was altered")
    try:
        payload = json.loads(_b64decode(first).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenError("malformed", "Token is malformed: its payload is not JSON") from None
    if not isinstance(payload, dict) or "sub" not in payload or "exp" not in payload:
        raise TokenError("malformed", "Token is malformed: its payload needs 'sub' and 'exp'")
    sub, exp = payload["sub"], payload["exp"]
    if not valid_user_id(sub) or type(exp) is not int or not 0 <= exp <= MAX_EXP:
        raise TokenError("malformed", "Token is malformed: 'sub' must be a user id and 'exp' unix seconds")
    if exp <= now:
        raise TokenError("expired", f"Token expired at {iso_utc(exp)}")
    return Claims(sub, exp)


class Authenticator:
    """Verifies tokens with the server's secret against a wall clock (unix seconds). Its repr hides the secret."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.now = clock

    def __repr__(self) -> str:
        return "Authenticator(secret=<hidden>)"

    def verify(self, token: str) -> Claims:
        return verify(self._secret, token, self.now())

    def mint(self, user_id: int | str, ttl: int) -> str:
        return mint(self._secret, user_id, int(self.now()) + ttl)

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> Authenticator:
        return cls(secret_from_env(name, environ))


def secret_from_env(name: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The secret in environment variable `name` (its UTF-8 bytes); `ConfigError` if unset or too short.

    The message names the variable, never its value.
    """
    environ = os.environ if environ is None else environ
    if not name:
        raise ConfigError("the auth secret's environment variable name is empty")
    value = environ.get(name)
    if value is None:
        raise ConfigError(f"auth secret: environment variable {name} is not set")
    try:
        secret = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"auth secret: environment variable {name} is not valid text") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"auth secret: environment variable {name} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed "
            "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return secret


def parse_ttl(text: str) -> int:
    """Seconds in a lifetime such as "30s", "15m", "1h", "7d" (a bare number is seconds); `ValueError` if not one."""
    match = _TTL.fullmatch(text.strip())
    if not match or int(match["n"]) == 0:
        raise ValueError(f"a lifetime is a positive number with a unit s, m, h or d (e.g. 30s, 15m, 1h, 7d), not {text!r}")
    seconds = int(match["n"]) * _TTL_UNITS[match["unit"]]
    if seconds > MAX_EXP - int(time.time()):
        raise ValueError(f"lifetime {text!r} is too long")
    return seconds


# -- the handshake ---------------------------------------------------------------------------

def origin_allowed(headers: Sequence[tuple[bytes, bytes]], allowed: Sequence[str]) -> bool:
    """Whether a handshake with `headers` (lower-case names) may proceed as far as its Origin goes.

    No allow-list: every origin. No Origin header (not a browser): allowed. Otherwise the one Origin
    must equal an allowed origin (ASCII case-insensitively); several Origin headers are refused.
    """
    if not allowed:
        return True
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if not origins:
        return True
    if len(origins) > 1:
        return False
    origin = origins[0].decode("latin-1").strip().lower()
    return any(origin == a.lower() for a in allowed)


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of the handshake's `Authorization: Bearer <token>` header; None without an Authorization
    header; "" when the header is there but is not one Bearer token (it is then refused)."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        return ""
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def is_loopback(host: str) -> bool:
    """Whether listening on `host` can only be reached from this machine ("localhost", 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to a public address


def exposure_warning(host: str, auth: bool) -> str | None:
    """The warning `agentcast serve` prints when it listens beyond loopback without authentication."""
    if auth or is_loopback(host):
        return None
    return (
        f"agentcast: WARNING: listening on {host or 'all addresses'} WITHOUT authentication: anyone who can reach "
        "this port can claim any user id and read, search and clear any user's memory.\n"
        "agentcast: WARNING: set --auth-secret-env NAME (see docs/security.md), or listen on 127.0.0.1."
    )
