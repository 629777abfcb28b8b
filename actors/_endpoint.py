"""An OpenAI-compatible HTTP endpoint as the `openai` brain and the `openai` embedder use it: its URL and the
secrets in it, the API key from the environment, what a failed request tells a person, retries' timing.

Shared by actors/_openai.py and actors/_embedders.py (whose responses, httpx's or `_http11`'s, are read through
`HTTPResponse`); must not import `transport` or the store. An API key is read from the environment at each call, never kept.
"""
from __future__ import annotations

import json
import math
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

#: HTTP statuses worth another try: rate limited, or the server failing.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: The longest wait between two tries, whatever a Retry-After header asks.
MAX_RETRY_DELAY = 60.0
#: How much of an error body is read to find the provider's reason.
MAX_ERROR_BODY = 4096
#: How much of the provider's reason for an error is shown (in the error frame and the log).
MAX_REASON_CHARS = 300

#: The TLS settings every client shares (see `shared_ssl_context`).
_SSL_CONTEXT: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """The TLS settings of every request, made once per process when the first brain or embedder is configured
    (before the server's event loop runs): loading the CA bundle takes tens of milliseconds, which a turn making
    its own would stall every connection for. The CAs are those of the file SSL_CERT_FILE or the folder
    SSL_CERT_DIR if either is set, else certifi's bundle (if installed), else the system's."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        if os.environ.get("SSL_CERT_FILE"):
            context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        elif os.environ.get("SSL_CERT_DIR"):
            context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
        else:
            try:
                import certifi
            except ImportError:
                context = ssl.create_default_context()
            else:
                context = ssl.create_default_context(cafile=certifi.where())
        _SSL_CONTEXT = context
    return _SSL_CONTEXT


class HTTPResponse(Protocol):
    """What `error_body` and `retry_after` read of a response (httpx's, or `_http11.Response`)."""

    @property
    def headers(self) -> Mapping[str, str]: ...  # looked up by lower-case name

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


def is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def looks_like_a_key(api_key_env: object) -> bool:
    """True if what was given as the NAME of an environment variable looks like a key itself."""
    return isinstance(api_key_env, str) and api_key_env.startswith(("sk-", "Bearer "))


class Endpoint:
    """An OpenAI-compatible base URL and the route requests go to under it (`path`, e.g. "/chat/completions").

    `url` is what requests go to, with the credentials and query of `base_url` (never shown); `shown_url` is
    `base_url` without them (what errors, logs and repr show); `scrub` masks them, and the API key, in any
    text that might echo them.
    """

    def __init__(self, base_url: str, path: str) -> None:
        parts = urlsplit(base_url)
        route = parts.path.rstrip("/")
        #: As configured (credentials and query included): only ever used to send requests.
        self.base_url = urlunsplit(parts._replace(path=route))
        self.url = urlunsplit(parts._replace(path=route + path))
        self.shown_url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], route, "", ""))
        secrets = [parts.query, *(v for _, v in parse_qsl(parts.query)), parts.password or ""]
        self._secrets = tuple(sorted({x for x in secrets if len(x) >= 3}, key=len, reverse=True))

    def scrub(self, text: str, key: str | None) -> str:
        """`text` with the API key and `base_url`'s credentials and query (should anything echo them) masked."""
        text = text.replace(self.base_url, self.shown_url)
        for secret in (key, *self._secrets):
            if secret:
                text = text.replace(secret, "***")
        return text

    def masked_url(self) -> str:
        """`base_url` with its password and query values masked (for `agentcast config check`)."""
        parts = urlsplit(self.base_url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True)) or (
            "***" if parts.query else "")
        return urlunsplit(parts._replace(netloc=netloc, query=query))


def api_key(api_key_env: str | None, error: type[Exception]) -> str | None:
    """The API key in the environment variable `api_key_env` (None without one), stripped; `error` (with
    the reason, never the value) if it is not set or not usable as an HTTP header."""
    if api_key_env is None:
        return None
    key = (os.environ.get(api_key_env) or "").strip()  # a secret made from a file often ends in a newline
    if not key:
        raise error(f"the API key is missing: the environment variable {api_key_env} (api_key_env) is not set "
                    "on the server")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        # never the value: an HTTP library refusing it as a header would quote it in its error
        raise error(f"the API key in the environment variable {api_key_env} (api_key_env) is not usable: it "
                    "holds spaces, control or non-ASCII characters")
    return key


def http_failure(status: int, reason: str, *, server: str, missing: str) -> str:
    """What a non-200 answer of `server` ("the model server") tells a person: `missing` is what a 404 means
    ("is the model 'x' served at URL?"), `reason` the provider's (scrubbed), if any."""
    what = {
        401: f"{server} refused the API key",
        403: f"{server} refused access",
        404: f"not found: {missing}",
        429: f"{server} is rate limiting us",
    }.get(status, f"{server} failed" if status >= 500 else f"{server} refused the request")
    return f"{what} (HTTP {status})" + (f": {reason}" if reason else "")


async def error_body(response: HTTPResponse) -> bytes:
    """At most MAX_ERROR_BODY bytes of a failed answer's body (to find the provider's reason)."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]


def reason_of(obj: dict) -> str:
    """The provider's reason in a JSON error object (OpenAI's `error.message`, or what there is)."""
    error = obj.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    if isinstance(obj.get("message"), str):
        return obj["message"]
    return json.dumps(error if error is not None else obj, ensure_ascii=False)[:MAX_REASON_CHARS]


def reason_of_body(body: bytes) -> str:
    """The provider's reason in an error body (JSON or text), cut to MAX_REASON_CHARS."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:MAX_REASON_CHARS]
    return reason_of(obj)[:MAX_REASON_CHARS] if isinstance(obj, dict) else text[:MAX_REASON_CHARS]


def retry_after(response: HTTPResponse) -> float | None:
    """The seconds a Retry-After header asks to wait (at most MAX_RETRY_DELAY), or None."""
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or not math.isfinite(seconds) or seconds < 0 else min(seconds, MAX_RETRY_DELAY)
