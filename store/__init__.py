"""The store: agentcast's append-only SQLite event log and the memory projected from it.

Must not import trio, `actors` or `transport` (enforced by tests/test_layers.py).
"""
from ._events import (
    AgentMessage,
    Event,
    MemoryCleared,
    Recorded,
    UndecodableEvent,
    UserMessage,
)
from ._log import MAX_QUERY_TERMS, EventLog, Hit, match_expression
from ._memory import DEFAULT_WINDOW, Clear, Memory, Message, fold, memory_from_json, memory_to_json, rebuild
from ._schema import MissingEventLog, NotAnEventLog
from ._inspect import (  # read-side tools: point-in-time replay, raw events, verify
    Check,
    Cut,
    Rebuilt,
    VerifyReport,
    event_fields,
    events_after,
    last_seq_at,
    memory_at,
    parse_instant,
    rebuild_all,
    verify,
)

__all__ = [
    "AgentMessage",
    "Clear",
    "DEFAULT_WINDOW",
    "Event",
    "EventLog",
    "Hit",
    "MAX_QUERY_TERMS",
    "Memory",
    "MemoryCleared",
    "Message",
    "MissingEventLog",
    "NotAnEventLog",
    "Recorded",
    "UndecodableEvent",
    "UserMessage",
    "fold",
    "match_expression",
    "memory_from_json",
    "memory_to_json",
    "rebuild",
    "Check",
    "Cut",
    "Rebuilt",
    "VerifyReport",
    "event_fields",
    "events_after",
    "last_seq_at",
    "memory_at",
    "parse_instant",
    "rebuild_all",
    "verify",
]
