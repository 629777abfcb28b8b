"""The actors: one trio task per agent, a bounded mailbox, a lane per user, and the brains they think with.

Must not import `transport` (enforced by tests/test_layers.py).
"""
from ._agent import ON_BUSY, Agent, Agents, AgentSpec, Audience, Busy, LaneBudget, NothingToCancel, RunningTurn, utc_now
from ._brain import BRAINS, Brain, BrainError, BrainItem, EchoBrain, ToolCall, ToolResult, Turn, Usage, split_chunks
from ._openai import OpenAIBrain
from ._tools import TOOLS, MemoryAccess, Tool, ToolContext, ToolError, Toolbox, ToolOutcome, resolve_tools, tool
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
    TurnCancelled,
    TurnChunk,
    TurnDone,
    TurnResponse,
    TurnStarted,
    TurnToolCall,
    TurnToolResult,
    UserSaid,
)

__all__ = [
    "Agent", "AgentCommand", "AgentSpec", "Agents", "Audience", "BRAINS", "Brain", "BrainError",
    "Busy", "ChatTurn", "ClearMemory", "ConfigError", "DEFAULT_AGENTS", "EchoBrain", "Failed", "Found",
    "Journal", "MemoryWasCleared", "Outbox", "Output", "SearchMemory", "SearchResults", "Turn",
    "TurnChunk", "TurnDone", "TurnResponse", "TurnStarted", "agent_specs", "split_chunks", "utc_now",
    "PacedOutbox", "Resume", "Resumed", "UserSaid", "LaneBudget",
    # real models: the openai brain, tools, cancellation
    "BrainItem", "MemoryAccess", "NothingToCancel", "ON_BUSY", "OpenAIBrain", "RunningTurn", "TOOLS", "Tool",
    "ToolCall", "ToolContext", "ToolError", "ToolOutcome", "ToolResult", "Toolbox", "TurnCancelled", "TurnToolCall",
    "TurnToolResult", "Usage", "resolve_tools", "tool",
]
