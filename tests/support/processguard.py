"""The test suite's check that every process test says so: a test that starts a subprocess or sleeps
on the real clock (`time.sleep` in the test's own thread) without `@pytest.mark.process` fails.

Process tests are the ones `-m "not process"` leaves out and whose bounds scale with
AGENTCAST_TEST_TIMEOUT_SCALE (support/timeouts.py); the mark must not depend on remembering it.
`install()` adds an audit hook (the `subprocess.Popen` event) and wraps `time.sleep` (whose audit event
Python 3.11 lacks), which record such a call while `unmarked()` is in force; the conftest fails the test
that made it.
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from contextlib import contextmanager

_main = threading.main_thread()
#: True while an unmarked test runs (set by the conftest around each test).
_guarding = False
#: What the unmarked test did, with the stack that did it.
_violations: list[str] = []
_installed = False


def _record(what: str) -> None:
    _violations.append(f"{what}; from:\n{''.join(traceback.format_stack(limit=12)[:-2])}")


def _hook(event: str, args: tuple) -> None:
    if _guarding and event == "subprocess.Popen":
        _record(f"started a subprocess {args[1]!r}")


def _sleep(seconds: float) -> None:
    # subprocess's own polling while it waits for a child is the subprocess's (recorded as such)
    if _guarding and threading.current_thread() is _main and sys._getframe(1).f_globals.get("__name__") != "subprocess":
        _record(f"slept {seconds!r} s on the real clock")
    _real_sleep(seconds)


_real_sleep = time.sleep


def install() -> None:
    """Add the audit hook (once per process; audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        time.sleep = _sleep
        _installed = True


@contextmanager
def unmarked():
    """While in force, a subprocess or a real-clock sleep is recorded; yields the list of them."""
    global _guarding
    _violations.clear()
    _guarding = True
    try:
        yield _violations
    finally:
        _guarding = False
