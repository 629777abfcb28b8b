"""The client side of agentcast: `open_agent_client(url)`, a trio client with typed frames and reconnection
(`_client`), and `agentcast chat`, the terminal chat built on it (`_chat`).

This package imports `agentcast.transport.protocol` (the wire protocol, shared with the server) and nothing
else of agentcast: never the server side (`agentcast.transport.server`, `_connection`, ...), `actors` or
`store` (tests/test_layers.py checks), so a program that only talks to a server loads none of them.
"""
from ._client import (
    DEFAULT_URL,
    AgentClient,
    AgentError,
    AgentInfo,
    CannotConnect,
    ChatResult,
    ChatStream,
    ClientError,
    ConnectionLost,
    Disconnected,
    Event,
    Reconnected,
    ToolCall,
    ToolResult,
    Usage,
    frame_type,
    open_agent_client,
)

__all__ = [
    "DEFAULT_URL",
    "AgentClient",
    "AgentError",
    "AgentInfo",
    "CannotConnect",
    "ChatResult",
    "ChatStream",
    "ClientError",
    "ConnectionLost",
    "Disconnected",
    "Event",
    "Reconnected",
    "ToolCall",
    "ToolResult",
    "Usage",
    "frame_type",
    "open_agent_client",
]
