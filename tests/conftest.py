"""Shared fixtures: a temporary database path and a running server (see support.py)."""
from __future__ import annotations

import pytest

from support import running_server


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "agentcast.db")


@pytest.fixture
async def server(db_path):
    async with running_server(db_path) as srv:
        yield srv
