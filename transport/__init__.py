"""The transport: agentcast's WebSocket server (`transport.server`), its sans-IO wire protocol
(`transport.protocol`), a trio client (`transport.client`) and the `agentcast` command line (`transport.cli`).

This package imports nothing itself, so that `transport.protocol` can be used without trio:
`from transport import open_agent_client` loads `transport.client` only when asked for.
"""

__all__ = ["open_agent_client"]


def __getattr__(name: str):
    if name == "open_agent_client":
        from .client import open_agent_client

        return open_agent_client
    raise AttributeError(f"module 'transport' has no attribute {name!r}")
