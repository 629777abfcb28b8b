"""`list_agents` → `agents`: the codec (transport.protocol) and the real server, with auth off and on."""
from __future__ import annotations

import json

import pytest

from agentcast.actors import AgentSpec, EchoBrain
from support import connect, running_server
from support.auth import SECRET, SECRET_ENV, authenticate, token_for
from agentcast.transport.protocol import AgentInfo, AgentList, ListAgents, ProtocolError, decode, encode


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    return SECRET_ENV


def test_list_agents_decodes_with_and_without_a_request_id():
    assert decode('{"type": "list_agents"}') == ListAgents()
    assert decode('{"type": "list_agents", "request_id": "r1", "extra": 1}') == ListAgents("r1")
    with pytest.raises(ProtocolError) as bad:
        decode('{"type": "list_agents", "request_id": 5}')
    assert bad.value.code == "invalid_field" and "request_id" in bad.value.message


def test_the_agents_frame_encodes_every_agent_in_order():
    frame = AgentList([AgentInfo("b", "Bee"), AgentInfo("a", "")], "r")
    assert json.loads(encode(frame)) == {
        "type": "agents",
        "agents": [{"agent_id": "b", "description": "Bee"}, {"agent_id": "a", "description": ""}],
        "request_id": "r",
    }
    assert encode(AgentList([])) == '{"type":"agents","agents":[]}'


async def test_list_agents_before_set_user_lists_the_configured_agents(db_path):
    specs = [AgentSpec("zeta", EchoBrain(), description="The last letter"), AgentSpec("alpha", EchoBrain())]
    async with running_server(db_path, specs) as server, connect(server.port) as c:
        (answer,) = await c.request({"type": "list_agents", "request_id": "l1"}, "agents")
        assert answer == {"type": "agents", "request_id": "l1", "agents": [
            {"agent_id": "zeta", "description": "The last letter"}, {"agent_id": "alpha", "description": ""}]}
        await c.request({"type": "set_user", "user_id": 1}, "user_set")
        (again,) = await c.request({"type": "list_agents"}, "agents")
        assert "request_id" not in again and [a["agent_id"] for a in again["agents"]] == ["zeta", "alpha"]


async def test_the_default_agents_with_their_descriptions(server):
    async with connect(server.port) as c:
        (answer,) = await c.request({"type": "list_agents"}, "agents")
        assert [a["agent_id"] for a in answer["agents"]] == ["my_agent", "assistant", "multi_user_agent"]
        assert all(a["description"] for a in answer["agents"])


async def test_with_auth_on_list_agents_waits_for_authentication(db_path, secret_env):
    async with running_server(db_path, auth_secret_env=secret_env) as server, connect(server.port) as c:
        await c.send({"type": "list_agents", "request_id": "early"})
        refused = await c.recv()
        assert (refused["type"], refused["code"], refused["request_id"]) == ("error", "unauthenticated", "early")
        assert (await authenticate(c, token_for("alice")))["type"] == "authenticated"
        (answer,) = await c.request({"type": "list_agents"}, "agents")
        assert len(answer["agents"]) == 3
