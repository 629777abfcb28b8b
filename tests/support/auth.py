"""Authentication in the tests: the test secrets (and the environment variable a server reads one from),
tokens signed with them, and the `auth` frame sent over a `support.server.Client`."""
from __future__ import annotations

import time

from agentcast.transport._auth import mint

from .server import Client

SECRET = b"k" * 40
OTHER_SECRET = b"o" * 40
SECRET_ENV = "AGENTCAST_TEST_AUTH_SECRET"


def token_for(user, ttl=3600, secret=SECRET) -> str:
    return mint(secret, user, int(time.time()) + ttl)


async def authenticate(client: Client, token: str, rid=None) -> dict:
    await client.send({"type": "auth", "token": token, **({"request_id": rid} if rid else {})})
    return await client.recv()
