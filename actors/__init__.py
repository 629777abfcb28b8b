"""The actors: one trio task per agent, a bounded mailbox, a lane per user, and the brains they think with.

Must not import `transport` (enforced by tests/test_layers.py).
"""
from ._agent import Agent, Agents, AgentSpec, Audience, Busy, utc_now
from ._brain import BRAINS, Brain, BrainError, EchoBrain, Turn, split_chunks
from ._config import DEFAULT_AGENTS, ConfigError, agent_specs
from ._journal import Journal
from ._messages import (
    AgentCommand,
    ChatTurn,
    ClearMemory,
    Failed,
    Found,
    MemoryWasCleared,
    Outbox,
    Output,
    PacedOutbox,
    Resume,
    Resumed,
    SearchMemory,
    SearchResults,
    TurnChunk,
    TurnDone,
    TurnResponse,
    TurnStarted,
    UserSaid,
)

__all__ = [
    "Agent", "AgentCommand", "AgentSpec", "Agents", "Audience", "BRAINS", "Brain", "BrainError",
    "Busy", "ChatTurn", "ClearMemory", "ConfigError", "DEFAULT_AGENTS", "EchoBrain", "Failed", "Found",
    "Journal", "MemoryWasCleared", "Outbox", "Output", "SearchMemory", "SearchResults", "Turn",
    "TurnChunk", "TurnDone", "TurnResponse", "TurnStarted", "agent_specs", "split_chunks", "utc_now",
    "PacedOutbox", "Resume", "Resumed", "UserSaid",
]
