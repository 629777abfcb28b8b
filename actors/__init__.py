"""The actors: one trio task per agent, a bounded mailbox, a lane per user, and the brains they think with.

Must not import `transport` (enforced by tests/test_layers.py).
"""
from ._admission import Busy
from ._agent import ON_BUSY, Agent, Agents, AgentSpec, NothingToCancel, utc_now
from ._audience import Audience
from ._lanes import LaneBudget
from ._turn import RunningTurn
from ._brain import BRAINS, Brain, BrainError, BrainItem, EchoBrain, ToolCallItem, ToolResultItem, Turn, UsageItem, split_chunks
from ._openai import OpenAIBrain, OpenAIBrainSettings
from ._tools import TOOLS, MemoryAccess, Tool, ToolContext, ToolError, Toolbox, ToolOutcome, resolve_tools, tool
from ._config import DEFAULT_AGENTS, ConfigError, agent_specs
from ._journal import Journal
from ._embedders import (
    Embedder,
    EmbedderChoice,
    EmbedderError,
    EmbedderUnavailable,
    LocalEmbedder,
    OpenAIEmbedder,
    embedder_choice,
    local_embedder_missing,
)
from ._semantic import EmbeddingWorker, SearchUnavailable, SemanticMemory
from ._messages import (
    AgentCommand,
    ChatCommand,
    ClearCommand,
    FailedOutput,
    Found,
    MemoryClearedOutput,
    Outbox,
    is_live,
    Output,
    LiveOutbox,
    ResumeCommand,
    ResumedOutput,
    SearchCommand,
    SearchResultsOutput,
    TurnCancelledOutput,
    TurnChunkOutput,
    TurnDoneOutput,
    TurnResponseOutput,
    TurnStartedOutput,
    ToolCallOutput,
    ToolResultOutput,
    UserMessageOutput,
)

__all__ = [
    "Agent", "AgentCommand", "AgentSpec", "Agents", "Audience", "BRAINS", "Brain", "BrainError",
    "Busy", "ChatCommand", "ClearCommand", "ConfigError", "DEFAULT_AGENTS", "EchoBrain", "FailedOutput", "Found",
    "Journal", "MemoryClearedOutput", "Outbox", "is_live", "Output", "SearchCommand", "SearchResultsOutput", "Turn",
    "TurnChunkOutput", "TurnDoneOutput", "TurnResponseOutput", "TurnStartedOutput", "agent_specs", "split_chunks", "utc_now",
    "LiveOutbox", "ResumeCommand", "ResumedOutput", "UserMessageOutput", "LaneBudget",
    # real models: the openai brain, tools, cancellation
    "BrainItem", "MemoryAccess", "NothingToCancel", "ON_BUSY", "OpenAIBrain", "OpenAIBrainSettings", "RunningTurn", "TOOLS", "Tool",
    "ToolCallItem", "ToolContext", "ToolError", "ToolOutcome", "ToolResultItem", "Toolbox", "TurnCancelledOutput", "ToolCallOutput",
    "ToolResultOutput", "UsageItem", "resolve_tools", "tool",
    # semantic memory: embedders, the embedding worker, the hybrid search
    "Embedder", "EmbedderChoice", "EmbedderError", "EmbedderUnavailable", "EmbeddingWorker", "LocalEmbedder",
    "OpenAIEmbedder", "SearchUnavailable", "SemanticMemory", "embedder_choice", "local_embedder_missing",
]
