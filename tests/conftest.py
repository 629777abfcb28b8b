"""Shared fixtures: a temporary database path, a running in-process server (see support.py) and `serve`, a real `agentcast serve` process (see test_cli.py)."""
from __future__ import annotations

import pytest

from support import running_server
from test_cli import ServeProcess, start_serve


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "agentcast.db")


@pytest.fixture
async def server(db_path):
    async with running_server(db_path) as srv:
        yield srv


@pytest.fixture
def serve():
    """`serve(db, *args)` starts a server; every server started is killed at teardown, pass or fail."""
    started: list[ServeProcess] = []

    def start(db, *args, cwd=None) -> ServeProcess:
        server = start_serve(db, *args, cwd=cwd)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
