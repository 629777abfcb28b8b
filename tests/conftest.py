"""Shared fixtures: a temporary database path, a running in-process server (see support/server.py) and
`serve`, a real `agentcast serve` process (see support/process.py).

Every test runs under `dbguard`: a Python-level open() of a database file (or its -wal, -shm) that
SQLite holds open in the test process fails the test (it would drop the process's SQLite locks). And
under `processguard`: a test that starts a subprocess or sleeps on the real clock must be marked
`@pytest.mark.process`. pytest-timeout's `timeout` scales with AGENTCAST_TEST_TIMEOUT_SCALE, as the
tests' own real-clock bounds do (support/timeouts.py).
"""
from __future__ import annotations

import pytest

# the helpers' asserts report their values, as the test files' do (registered before the first import)
pytest.register_assert_rewrite("support")

from support import TIMEOUT_SCALE, dbguard, processguard, running_server  # noqa: E402
from support.process import ServeProcess, start_serve  # noqa: E402

dbguard.install()
processguard.install()


@pytest.hookimpl(trylast=True)  # after pytest-timeout's own, which reads the setting
def pytest_configure(config):
    """pytest-timeout's safety net (`timeout` in pyproject.toml) scales with AGENTCAST_TEST_TIMEOUT_SCALE too."""
    if getattr(config, "_env_timeout", None):
        config._env_timeout *= TIMEOUT_SCALE


@pytest.fixture(autouse=True)
def no_database_file_opened_behind_sqlite():
    """Fail the test if anything in it opened a live database file outside SQLite (see `dbguard`)."""
    dbguard.take_violations()
    yield
    violations = dbguard.take_violations()
    if violations:
        pytest.fail(f"{len(violations)} open(s) of a database file behind SQLite's back; the first:\n{violations[0]}",
                    pytrace=False)


@pytest.fixture(autouse=True)
def process_tests_are_marked(request):
    """Fail a test that starts a subprocess or sleeps on the real clock without `@pytest.mark.process`
    (see `processguard`)."""
    if request.node.get_closest_marker("process"):
        yield
        return
    with processguard.unmarked() as violations:
        yield
    if violations:
        pytest.fail(f"an unmarked test {violations[0]}\nMark it `@pytest.mark.process` (its real-clock bounds through "
                    "`support.scaled`).", pytrace=False)


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
