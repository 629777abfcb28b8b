"""agentcast: a real-time WebSocket server for AI agents, with an event-sourced SQLite memory.

The one import name of the distribution. Its subpackages are the repository's three folders:

- `agentcast.store`: the event log (SQLite), its events, the memory projected from it, search;
- `agentcast.actors`: agents as trio tasks, a lane per user, brains, the journal (group commit);
- `agentcast.transport`: the WebSocket server, the wire protocol (sans-IO), HTTP, the command line,
  and the client side (`agentcast.transport.client`, which imports nothing of the server).

This module imports nothing itself: `from agentcast import open_agent_client` loads the client
side alone, when asked for; a server is `agentcast.transport.server.Server`.
"""
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("agentcast")
except _PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "unknown"

__all__ = ["open_agent_client", "__version__"]


def __getattr__(name: str):
    if name == "open_agent_client":
        from .transport.client import open_agent_client

        return open_agent_client
    raise AttributeError(f"module 'agentcast' has no attribute {name!r}")
