"""The seed document's own Python client (tests/seed_client.py, verbatim) against the real `agentcast serve` process.

Also checks that tests/seed_client.py is still a verbatim copy of the document's "### Python Client" code.
"""
from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import pytest

from support import scaled

pytestmark = pytest.mark.transport  # run again with AGENTCAST_WS_FAST_PATHS=0 (.ci/run)


SEED_DOC = Path(__file__).resolve().parents[2] / "shared" / "seed" / "websocket-communication.md"
SEED_CLIENT = Path(__file__).resolve().parent / "seed_client.py"
WAIT = scaled(10.0)


def _python_client_section(doc: str) -> str:
    start = doc.index("### Python Client")
    end = doc.find("\n## ", start)
    return doc[start:] if end == -1 else doc[start:end]


def _code_after_docstring(path: Path) -> str:
    text = path.read_text()
    tree = ast.parse(text)
    docstring = tree.body[0]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant), "no module docstring"
    return "".join(text.splitlines(keepends=True)[docstring.end_lineno:])


@pytest.mark.skipif(not SEED_DOC.exists(), reason=f"the seed document is not at {SEED_DOC}")
def test_seed_client_is_a_verbatim_copy_of_the_documents_python_client():
    section = _python_client_section(SEED_DOC.read_text())
    code = _code_after_docstring(SEED_CLIENT)
    assert "class AgentWebSocketClient:" in code
    assert "async def main" not in code and "input(" not in code, "only the class, not the usage example"
    assert code in section, "tests/seed_client.py differs from the seed document's Python client"

    from seed_client import AgentWebSocketClient  # imported here: its logging.basicConfig then changes nothing

    assert inspect.getsource(AgentWebSocketClient) in section


@pytest.mark.process
def test_seed_client_chats_with_the_real_server(tmp_path, serve):  # noqa: F811
    from seed_client import AgentWebSocketClient

    server = serve(tmp_path / "agentcast.db")

    async def scenario() -> dict[str, list[dict]]:
        client = AgentWebSocketClient(url=f"ws://127.0.0.1:{server.port}/ws")
        names = ("connected", "subscribed", "response", "agent_done")
        events = {name: asyncio.Event() for name in names}
        received: dict[str, list[dict]] = {name: [] for name in names}

        def recorder(name: str):
            async def callback(data: dict) -> None:
                received[name].append(data)
                events[name].set()

            return callback

        for name in names:
            client.on(name, recorder(name))
        assert await client.connect() is True
        try:
            await asyncio.wait_for(events["connected"].wait(), WAIT)
            assert await client.subscribe_to_agent("my_agent") is True
            await asyncio.wait_for(events["subscribed"].wait(), WAIT)
            assert await client.send_chat_message("hello from the seed client") is True
            await asyncio.wait_for(events["response"].wait(), WAIT)
            await asyncio.wait_for(events["agent_done"].wait(), WAIT)
        finally:
            await client.close()
        return received

    received = asyncio.run(scenario())
    assert received["connected"][0]["client_id"]
    assert received["subscribed"][0]["agent_id"] == "my_agent"
    assert len(received["response"]) == 1, "a subscribed client must get its answer once"
    response = received["response"][0]
    assert response["agent_id"] == "my_agent"
    assert "hello from the seed client" in response["message"]
    assert received["agent_done"][0]["agent_id"] == "my_agent"
