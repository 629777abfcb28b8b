"""The transport: agentcast's WebSocket server (`agentcast.transport.server`), its sans-IO wire protocol
(`agentcast.transport.protocol`), the client side (`agentcast.transport.client`: a trio client and the
terminal chat, sharing only the protocol with the server) and the `agentcast` command line
(`agentcast.transport.cli`).

This package imports nothing itself, so that the protocol can be used without trio and the client side
without the server: `from agentcast.transport import open_agent_client` loads the client only when asked for.
"""

__all__ = ["open_agent_client"]


def __getattr__(name: str):
    if name == "open_agent_client":
        from .client import open_agent_client

        return open_agent_client
    raise AttributeError(f"module 'agentcast.transport' has no attribute {name!r}")
