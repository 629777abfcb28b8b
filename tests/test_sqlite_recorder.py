"""The SQLite recorder (`store.EventLog`) passes the recorder contract (tests/support/recorder_contract.py): a fresh
database file per test, a second read-only connection as the reader."""
from __future__ import annotations

from support.recorder_contract import InspectionContract, RecorderContract, VectorContract

from agentcast.store import EventLog


class TestSQLiteRecorder(RecorderContract, VectorContract, InspectionContract):
    def open_recorder(self, where):
        return EventLog.open(where / "events.db")

    def open_reader(self, recorder):
        return EventLog.open(recorder.path, readonly=True)
