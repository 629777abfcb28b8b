"""The transport: agentcast's WebSocket server (`transport.server`), its sans-IO wire protocol
(`transport.protocol`) and the `agentcast` command line (`transport.cli`).

This package imports nothing itself, so that `transport.protocol` can be used without trio.
"""
