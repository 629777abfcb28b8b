"""The store: agentcast's append-only event log, the events it records and the memory projected from them.

`Recorder` is the interface the rest of agentcast uses; `EventLog` is its SQLite implementation.
Must not import trio, `actors` or `transport` (enforced by tests/test_layers.py).
"""
from ._events import (
    ACTIVITY_TYPES,
    CANCELLED,
    EVENT_TYPES,
    FAILED,
    AgentAnswered,
    BaseEvent,
    Event,
    FactRemembered,
    Recorded,
    RememberedMessage,
    ToolCalled,
    ToolReturned,
    TurnActivity,
    TurnEnded,
    UndecodableEvent,
    UserClearedMemory,
    UserSaid,
)
from ._backup import BackupError, BackupReport, TargetExists, backup
from ._memory import (
    DEFAULT_WINDOW,
    Clear,
    Memory,
    Message,
    Projection,
    fold,
    fold_all,
    fold_rows,
    memory_from_json,
    memory_to_json,
    rebuild,
)
from ._recorder import (
    AppendConflict,
    EmbeddingConflict,
    EmbeddingCursor,
    Fence,
    FoundTurn,
    Hit,
    MessageVector,
    Recorder,
    RecorderInspection,
    SavedSnapshot,
    StoredEvent,
    StoredVectors,
    TextToEmbed,
    Unembedded,
)
from ._schema import MissingEventLog, NotAnEventLog
from ._sqlite import MAX_QUERY_TERMS, EventLog, match_expression
from ._replay import (  # read-side tools: point-in-time replay, raw events
    Cut,
    ReplayReport,
    StreamReplay,
    activity_at,
    clears_at,
    event_fields,
    events_after,
    last_seq_at,
    memory_at,
    parse_instant,
    replay,
)
from ._search import LEGS, LEXICAL, SEMANTIC, QueryVector, SearchResult, search_memory
from ._verify import Check, Rebuilt, VerifyReport, rebuild_all, verify

__all__ = [
    # the events
    "ACTIVITY_TYPES", "AgentAnswered", "BaseEvent", "CANCELLED", "EVENT_TYPES", "Event", "FAILED", "FactRemembered",
    "Recorded", "RememberedMessage", "ToolCalled", "ToolReturned", "TurnActivity", "TurnEnded", "UndecodableEvent",
    "UserClearedMemory", "UserSaid",
    # memory, the projection of the events
    "Clear", "DEFAULT_WINDOW", "Memory", "Message", "Projection", "fold", "fold_all", "fold_rows", "memory_from_json",
    "memory_to_json", "rebuild",
    # the recorder interface, and its SQLite implementation
    "AppendConflict", "EventLog", "Fence", "FoundTurn", "Hit", "MAX_QUERY_TERMS", "MissingEventLog", "NotAnEventLog",
    "Recorder", "RecorderInspection", "SavedSnapshot", "StoredEvent", "match_expression",
    # semantic memory: message vectors (a projection the embedding worker keeps) and the hybrid search
    "EmbeddingConflict", "EmbeddingCursor", "LEGS", "LEXICAL", "MessageVector", "QueryVector", "SEMANTIC",
    "SearchResult", "StoredVectors", "TextToEmbed", "Unembedded", "search_memory",
    # read-side tools: replay, raw events, verify; backup
    "Check", "Cut", "Rebuilt", "ReplayReport", "StreamReplay", "VerifyReport", "activity_at", "clears_at",
    "event_fields", "events_after", "last_seq_at", "memory_at", "parse_instant", "rebuild_all", "replay", "verify",
    "BackupError", "BackupReport", "TargetExists", "backup",
]
