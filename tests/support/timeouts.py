"""Real-clock bounds of the tests, scaled for the machine they run on.

A test waiting on the real clock (a subprocess, a real socket) bounds its waits with `scaled(seconds)`;
a helper that may also run under a trio `MockClock` uses `clock_bound(seconds)`. On a loaded machine
`AGENTCAST_TEST_TIMEOUT_SCALE=3 python -m pytest` makes them slower, not failed. These bounds are
safety nets against hangs, never measurements.
"""
from __future__ import annotations

import os

import trio
import trio.testing

#: Multiplies every real-clock timeout of the process tests (subprocesses, real sockets waited on with
#: a wall clock): a loaded machine makes them slower, not failed. `AGENTCAST_TEST_TIMEOUT_SCALE=3 pytest`.
TIMEOUT_SCALE = float(os.environ.get("AGENTCAST_TEST_TIMEOUT_SCALE") or 1)


def scaled(seconds: float) -> float:
    """`seconds` of real time, scaled for this machine (see `TIMEOUT_SCALE`)."""
    return seconds * TIMEOUT_SCALE


def clock_bound(seconds: float) -> float:
    """A bound for a trio wait in a helper that runs on either clock: `scaled(seconds)` on the real clock,
    `seconds` as is under a `MockClock` (virtual time is the test's own, and a load cannot stretch it)."""
    return seconds if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock) else scaled(seconds)
