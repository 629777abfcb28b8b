"""Shared fixtures: a temporary database path, a running in-process server (see support.py) and `serve`, a real `agentcast serve` process (see test_cli.py).

Every test runs under `dbguard`: a Python-level open() of a database file (or its -wal, -shm) that
SQLite holds open in the test process fails the test (it would drop the process's SQLite locks).
"""
from __future__ import annotations

import pytest

import dbguard
from support import running_server
from test_cli import ServeProcess, start_serve

dbguard.install()


@pytest.fixture(autouse=True)
def no_database_file_opened_behind_sqlite():
    """Fail the test if anything in it opened a live database file outside SQLite (see `dbguard`)."""
    dbguard.take_violations()
    yield
    violations = dbguard.take_violations()
    if violations:
        pytest.fail(f"{len(violations)} open(s) of a database file behind SQLite's back; the first:\n{violations[0]}",
                    pytrace=False)


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
