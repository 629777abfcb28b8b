"""Helpers shared by the test files (a test file imports from here, never from another test file).

The common ones are here at the top (`from support import running_server, connect, scaled`); the rest
by what they are:

- `support.server`: a real in-process `Server` on loopback (`running_server`, `llm_server`), a
  trio-websocket JSON `Client` (`connect`), raw handshakes, test tokens, `on_disk`, `assert_healthy`.
- `support.process`: the real `agentcast` command in a subprocess (`start_serve`, `cli`, `replay_json`,
  their bounds) and a `websockets` (asyncio) client of it.
- `support.auth`: the test secrets, tokens signed with them, the `auth` frame.
- `support.harness`: agents and connections over in-memory streams (`Harness`).
- `support.http`: plain HTTP by hand (`get`, `exchange`, `Reply`).
- `support.actors`: agents without a transport (`running`, `Recorder`, `logged`).
- `support.llm`: the `openai` agent's users and the `openai` brain on its own (`brain_for`, `turn_for`).
- `support.fake_openai`: the fake OpenAI-compatible server.
- `support.recorder_contract`: the contract of a store recorder (`RecorderContract`, `InspectionContract`),
  subclassed per backend (tests/test_sqlite_recorder.py).
- `support.dbguard`: the guard against opening a live database file behind SQLite's back.
- `support.timeouts`: `scaled(seconds)`, real-clock bounds scaled by AGENTCAST_TEST_TIMEOUT_SCALE
  (`clock_bound` in helpers that may run under a trio `MockClock`).
"""
from __future__ import annotations

from .server import (
    HANDSHAKE,
    LLM_AGENT,
    Client,
    GatedBrain,
    assert_healthy,
    connect,
    handshake,
    llm_server,
    on_disk,
    running_server,
    token_for,
)
from .timeouts import TIMEOUT_SCALE, clock_bound, scaled

__all__ = [
    "HANDSHAKE", "LLM_AGENT", "TIMEOUT_SCALE", "Client", "GatedBrain", "assert_healthy", "connect", "handshake",
    "clock_bound", "llm_server", "on_disk", "running_server", "scaled", "token_for",
]
