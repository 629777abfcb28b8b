"""What a client's command asks for, decided without I/O (`transport._dispatch.dispatch`): the action for each
wire command, the actors' command it carries (stamped, with the connection as its origin), and the refusals
that need nothing but the command and what the connection knows."""
from __future__ import annotations

import pytest

from agentcast import actors
from agentcast.actors import AgentSpec, Audience, EchoBrain
from agentcast.transport import protocol as p
from agentcast.transport._dispatch import (
    Authenticate, CancelTurn, Reply, Resume, Submit, Subscribe, SwitchUser, Unsubscribe, dispatch,
)
from agentcast.transport._settings import ServerSettings

AT = "2026-01-01T00:00:00.000Z"
SETTINGS = ServerSettings(max_chat_chars=10, max_query_chars=5)


class Origin:
    def deliver(self, output) -> None:  # pragma: no cover - nothing is delivered by a pure dispatch
        raise AssertionError("dispatch delivered an output")


@pytest.fixture
def agents():
    """An agent that is never run: dispatch must not submit anything to it."""
    agent = actors.Agent(AgentSpec("a", EchoBrain(), description="the echo"), journal=None, audience=Audience())
    return {"a": agent}


def decide(cmd, agents, *, user="u1", auth_on=False, origin=None):
    return dispatch(cmd, user, origin or Origin(), agents, SETTINGS, lambda: AT, auth_on)


def test_a_chat_is_submitted_to_its_agent_stamped_and_answering_to_the_connection(agents):
    origin = Origin()
    action = decide(p.Chat("a", "hello", "r1", "c1"), agents, origin=origin)
    assert action == Submit(agents["a"], actors.ChatCommand("u1", "hello", AT, origin, "r1", "c1"))
    assert agents["a"].in_flight == 0  # decided, not done


def test_searches_and_clears_are_submitted_for_the_connections_user(agents):
    origin = Origin()
    assert decide(p.SearchMemory("a", "cat", 3, True, "r"), agents, user="u2", origin=origin) == Submit(
        agents["a"], actors.SearchCommand("u2", "cat", 3, True, origin, "r"))
    assert decide(p.ClearMemory("a", False, "r"), agents, origin=origin) == Submit(
        agents["a"], actors.ClearCommand("u1", False, AT, origin, "r"))


def test_replies_need_no_agent(agents):
    assert decide(p.Ping("r"), agents) == Reply(p.Pong("r"))
    assert decide(p.ListAgents("r"), agents) == Reply(p.AgentList([p.AgentInfo("a", "the echo")], "r"))


def test_subscriptions_cancels_and_resumes(agents):
    origin = Origin()
    assert decide(p.Subscribe("a", "r"), agents) == Subscribe("a", "r")
    assert decide(p.Unsubscribe("a", "r"), agents) == Unsubscribe("a", "r")
    assert decide(p.Cancel("a", "r"), agents) == CancelTurn(agents["a"], "r")
    assert decide(p.Subscribe("a", "r", 7), agents, origin=origin) == Resume(
        agents["a"], "a", actors.ResumeCommand("u1", 7, origin, "r"))


def test_the_user_is_set_by_set_user_or_by_the_token(agents):
    assert decide(p.SetUser(42, "r"), agents) == SwitchUser(42, "r")
    assert decide(p.Auth("tok", "r"), agents) == Authenticate("tok", "r")
    # With authentication on, set_user may only name the token's user.
    assert decide(p.SetUser(42, "r"), agents, user="42", auth_on=True) == Reply(p.UserSet(42, "r"))
    with pytest.raises(p.ProtocolError) as refused:
        decide(p.SetUser(43, "r"), agents, user="42", auth_on=True)
    assert (refused.value.code, refused.value.request_id) == ("forbidden", "r")


@pytest.mark.parametrize("cmd", [
    p.Chat("nope", "hi", "r"), p.SearchMemory("nope", "q", 1, True, "r"), p.ClearMemory("nope", False, "r"),
    p.Cancel("nope", "r"), p.Subscribe("nope", "r"), p.Subscribe("nope", "r", 3), p.Unsubscribe("nope", "r"),
])
def test_an_unknown_agent_is_refused_whatever_the_command(agents, cmd):
    with pytest.raises(p.ProtocolError) as refused:
        decide(cmd, agents)
    assert (refused.value.code, refused.value.request_id) == ("unknown_agent", "r")


def test_texts_longer_than_their_limits_in_characters_are_refused(agents):
    assert isinstance(decide(p.Chat("a", "é" * 10, "r"), agents), Submit)  # 10 characters (20 bytes): within
    with pytest.raises(p.ProtocolError) as refused:
        decide(p.Chat("a", "x" * 11, "r"), agents)
    assert refused.value.code == "too_long" and "'message'" in refused.value.message
    with pytest.raises(p.ProtocolError) as refused:
        decide(p.SearchMemory("a", "x" * 6, 1, True, "r"), agents)
    assert refused.value.code == "too_long" and "'query'" in refused.value.message
