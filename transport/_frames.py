"""Actor outputs as wire frames: `frame_of`, the one place that says which frame carries each output.

A `match` over every `actors.Output` with `typing.assert_never` after it: an output added to the actors and
not given a frame here fails type checking (tests/test_types.py). Imports actors and the protocol, no trio.
"""
from __future__ import annotations

from typing import assert_never

from .. import actors
from ..actors import Output

from . import protocol as p


def frame_of(output: Output) -> p.ServerFrame:
    """The wire frame that carries one actor output."""
    match output:  # the outputs of every chat turn first, the most frequent first
        case actors.TurnChunkOutput():
            return p.ResponseChunk(output.agent_id, output.delta, output.request_id)
        case actors.TurnStartedOutput():
            return p.AgentThinking(output.agent_id, output.request_id)
        case actors.TurnResponseOutput():
            usage = output.usage
            tokens = None if usage is None else p.Usage(usage.prompt_tokens, usage.completion_tokens)
            return p.Response(output.agent_id, output.message, output.seq, output.request_id, tokens)
        case actors.TurnDoneOutput():
            return p.AgentDone(output.agent_id, output.request_id)
        case actors.FailedOutput(agent_id, code, message, rid):
            return p.Error(code, message, agent_id, rid)
        case actors.SearchResultsOutput(agent_id, query, found, rid, legs):
            results = [p.MemoryResult(f.hit.role, f.hit.content, f.hit.at, f.hit.score, f.source) for f in found]
            return p.MemoryResults(agent_id, query, results, rid, list(legs))
        case actors.MemoryClearedOutput(agent_id, long_term, forgotten, seq, rid):
            return p.MemoryCleared(agent_id, long_term, forgotten, seq, rid)
        case actors.UserMessageOutput(agent_id, message, seq, rid):
            return p.UserMessage(agent_id, message, seq, rid)
        case actors.ResumedOutput(agent_id, after_seq, rid):
            return p.Subscribed(agent_id, f"Successfully subscribed to agent {agent_id}", rid, after_seq)
        case actors.ToolCallOutput(agent_id, call_id, tool, arguments, rid):
            return p.ToolCall(agent_id, call_id, tool, arguments, rid)
        case actors.ToolResultOutput(agent_id, call_id, tool, result, error, rid):
            return p.ToolResult(agent_id, call_id, tool, result, error, rid)
        case actors.TurnCancelledOutput(agent_id, partial, rid):
            return p.Cancelled(agent_id, partial, rid)
        case _:
            assert_never(output)


#: The outputs counted in the metrics (`Connection._count`).
COUNTED = (actors.TurnDoneOutput, actors.FailedOutput)
