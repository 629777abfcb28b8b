"""Dispatch over events and outputs is exhaustive, and type checking proves it: mypy over the store and the
modules that dispatch (the projection, the actors' backlog replay, the wire frames, the command line) finds
nothing, and finds each `assert_never` that a new event type or output would reach unhandled. An event class
that declares no kind, or not what its kind needs, is refused when the store is imported."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from attrs import frozen

from support import scaled

from agentcast.store import _events
from agentcast.store._events import BaseEvent, RememberedMessage, TurnActivity

ROOT = Path(__file__).resolve().parent.parent

#: The modules whose dispatch is checked (with all of the store); the rest of agentcast is read, not checked.
CHECKED = ["-p", "agentcast.store", "-m", "agentcast.actors._agent", "-m", "agentcast.actors._messages",
           "-m", "agentcast.actors._backlog", "-m", "agentcast.actors._turn", "-m", "agentcast.actors._lanes",
           "-m", "agentcast.actors._audience", "-m", "agentcast.actors._admission",
           "-m", "agentcast.actors._journal", "-m", "agentcast.transport._frames", "-m", "agentcast.transport.cli",
           # the connection and its parts: a Connection is checked against the actors' `LiveOutbox` protocol
           "-m", "agentcast.transport._connection", "-m", "agentcast.transport._outbox",
           "-m", "agentcast.transport._session", "-m", "agentcast.transport._dispatch",
           "-m", "agentcast.transport._admission"]


def mypy(package_root: Path, cache: Path) -> subprocess.CompletedProcess:
    """mypy over CHECKED, with `package_root/agentcast` as the package (the repository's root is the package)."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", *CHECKED, "--follow-imports=silent", "--cache-dir", str(cache),
         "--no-error-summary", "--hide-error-context"],
        capture_output=True, text=True, cwd=package_root, env={"MYPYPATH": str(package_root), "PATH": "/usr/bin:/bin"},
        timeout=scaled(300),
    )


def as_package(where: Path, source: Path = ROOT) -> Path:
    """A directory holding `agentcast` (a link to `source`), for mypy to find the package by its name."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "agentcast").symlink_to(source, target_is_directory=True)
    return where


@pytest.mark.process
def test_the_store_and_the_dispatching_modules_type_check(tmp_path):
    result = mypy(as_package(tmp_path / "pkg"), tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


#: A new event type of an existing kind (turn activity), and one of a kind of its own, added to the union.
PROBE_EVENTS = '''
@frozen
class ProbeActivity(TurnActivity):
    """A probe of the type checking of dispatch: turn activity that nothing handles yet."""

    request_id: str | None = None

    TYPE = "probe_activity"

    @classmethod
    def erase(cls, body: dict[str, Any]) -> None:
        pass

    def shown(self) -> tuple[str, str]:
        return "probe", ""


@frozen
class ProbeOfItsOwnKind(BaseEvent):
    """A probe: an event of no kind the projection knows."""

    request_id: str | None = None

    TYPE = "probe_own_kind"


Event = Union[ProbeActivity, ProbeOfItsOwnKind, '''

PROBE_OUTPUT = '''
@frozen
class ProbeOutput:
    """A probe: an output no frame carries yet."""

    agent_id: str


Output = Union[ProbeOutput, '''


@pytest.mark.process
def test_an_event_type_or_output_left_unhandled_fails_type_checking(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("tests", "bench", "docs", ".git", "*.egg-info",
                                                              "__pycache__", "*.db*"))
    events = copy / "store" / "_events.py"
    text = events.read_text()
    assert text.count("\nEvent = Union[") == 1
    events.write_text(text.replace("\nEvent = Union[", PROBE_EVENTS, 1))
    messages = copy / "actors" / "_messages.py"
    text = messages.read_text()
    assert text.count("\nOutput = Union[") == 1
    messages.write_text(text.replace("\nOutput = Union[", PROBE_OUTPUT, 1))

    result = mypy(as_package(tmp_path / "pkg", copy), tmp_path / "cache")
    unhandled = [line for line in result.stdout.splitlines() if "assert_never" in line]
    # the projection: a type of a new kind; the backlog's replay: both; the frames: the output
    assert any("store/_memory.py" in line and '"ProbeOfItsOwnKind"' in line for line in unhandled), result.stdout
    assert any("actors/_backlog.py" in line and "ProbeActivity" in line and "ProbeOfItsOwnKind" in line
               for line in unhandled), result.stdout
    assert any("transport/_frames.py" in line and "ProbeOutput" in line for line in unhandled), result.stdout
    assert len(unhandled) == 3, result.stdout


def test_an_event_class_must_declare_its_kind_type_and_what_its_kind_needs():
    @frozen
    class NoKind(BaseEvent):
        TYPE = "no_kind"

    @frozen
    class NoType(TurnActivity):
        @classmethod
        def erase(cls, body):
            pass

        def shown(self):
            return "", ""

    @frozen
    class NoErase(TurnActivity):
        TYPE = "no_erase"

        def shown(self):
            return "", ""

    @frozen
    class NoRole(RememberedMessage):
        TYPE = "no_role"

    @frozen
    class UncheckedField(TurnActivity):
        when: float
        TYPE = "unchecked"

        @classmethod
        def erase(cls, body):
            pass

        def shown(self):
            return "", ""

    for cls, complaint in ((NoKind, "one kind"), (NoType, "TYPE"), (NoErase, "forgetting erases"),
                           (NoRole, "role"), (UncheckedField, "no check")):
        with pytest.raises(TypeError, match=complaint):
            _events._register(cls)
