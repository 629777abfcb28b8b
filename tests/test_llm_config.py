"""Real agents in the TOML config: the `openai` brain's settings, `on_busy`, `cancel_on_disconnect`, tools
by name or `module:name`, and clear `ConfigError`s; the API key never appears in config or reprs."""
from __future__ import annotations

import attrs
import pytest

from agentcast.actors import ConfigError, OpenAIBrain, OpenAIBrainSettings, ToolContext, Toolbox
from agentcast.transport._config import load_config

SIX_LINES = """
[agents.gpt]
brain.kind = "openai"
brain.model = "gpt-4o-mini"
brain.api_key_env = "OPENAI_API_KEY"
"""

FULL = """
[agents.local]
description = "A local model"
on_busy = "interrupt"
cancel_on_disconnect = true
[agents.local.brain]
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"
model = "llama3.2"
system_prompt = "Be brief."
temperature = 0.3
max_tokens = 400
timeout = 30
memory_window = 6
recall = 2
tools = ["search_memory", "remember", "current_time", "agent_tools_example:weather"]
max_tool_rounds = 3
"""


def load(tmp_path, text):
    path = tmp_path / "agentcast.toml"
    path.write_text(text)
    return load_config(path)


def test_six_lines_of_toml_make_an_openai_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shown")
    (spec,) = load(tmp_path, SIX_LINES).agents
    brain = spec.brain
    assert isinstance(brain, OpenAIBrain)
    assert (brain.model, brain.base_url, brain.api_key_env) == ("gpt-4o-mini", "https://api.openai.com/v1",
                                                                 "OPENAI_API_KEY")
    assert (spec.on_busy, spec.cancel_on_disconnect) == ("queue", False)
    assert "sk-never-shown" not in repr(spec) and "sk-never-shown" not in repr(vars(brain))


async def test_every_setting_is_read_and_a_custom_tool_loads_from_its_module(tmp_path):
    (spec,) = load(tmp_path, FULL).agents
    brain = spec.brain
    assert (spec.on_busy, spec.cancel_on_disconnect, spec.description) == ("interrupt", True, "A local model")
    assert (brain.base_url, brain.model, brain.system_prompt) == ("http://127.0.0.1:11434/v1", "llama3.2", "Be brief.")
    assert (brain.temperature, brain.max_tokens, brain.timeout) == (0.3, 400, 30.0)
    assert (brain.memory_window, brain.recall, brain.max_tool_rounds) == (6, 2, 3)
    assert [t.name for t in brain.tools] == ["search_memory", "remember", "current_time", "weather"]
    weather = brain.tools[-1]
    assert weather.parameters == {"type": "object", "properties": {"city": {"type": "string",
                                  "description": "a city name"}}, "additionalProperties": False, "required": ["city"]}
    toolbox = Toolbox(brain.tools, ToolContext("local", "alice", memory=None))
    assert (await toolbox.run("weather", {"city": "Oslo"})).result == {"city": "Oslo", "sky": "clear",
                                                                      "for_user": "alice"}
    assert (await toolbox.run("weather", {"city": "Atlantis"})).error == "no weather under the sea"


def test_the_brain_table_becomes_one_frozen_settings_object_with_the_defaults(tmp_path):
    (spec,) = load(tmp_path, FULL).agents
    settings = spec.brain.config
    assert settings == OpenAIBrainSettings(
        model="llama3.2", base_url="http://127.0.0.1:11434/v1", system_prompt="Be brief.", temperature=0.3,
        max_tokens=400, timeout=30, memory_window=6, recall=2, max_tool_rounds=3,
        tools=("search_memory", "remember", "current_time", "agent_tools_example:weather"))
    assert (settings.retries, settings.include_usage, settings.max_tool_calls) == (2, True, 16)  # the defaults
    assert type(settings.timeout) is float and hash(settings) == hash(OpenAIBrainSettings(**attrs.asdict(settings)))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[agents.a]\non_busy = "drop"\n', "agents.a.on_busy must be one of 'queue', 'reject', 'interrupt'"),
        ("[agents.a]\ncancel_on_disconnect = 1\n", "agents.a.cancel_on_disconnect must be true or false"),
        ('[agents.a]\nbrain = { kind = "openai" }\n', "agents.a.brain: the openai brain needs model"),
        ('[agents.a]\nbrain = { kind = "openai", model = "m", api_key = "sk-x" }\n',
         "agents.a.brain: unknown setting(s) api_key for the openai brain"),
        ('[agents.a]\nbrain = { kind = "openai", model = "m", api_key_env = "sk-abcdef" }\n', "looks like an API key"),
        ('[agents.a]\nbrain = { kind = "openai", model = "m", base_url = "ftp://x" }\n', "agents.a.brain: openai brain: base_url"),
        ('[agents.a]\nbrain = { kind = "openai", model = "m", tools = ["shell"] }\n', "unknown tool 'shell'"),
        ('[agents.a]\nbrain = { kind = "openai", model = "m", timeout = -1 }\n', "timeout must be"),
        ('[agents.a]\nbrain = { kind = "openai", model = "m", temperature = "hot" }\n', "temperature must be"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_setting(tmp_path, text, says):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert says in str(caught.value)
    assert "sk-x" not in str(caught.value)


def test_every_config_in_docs_agents_md_is_valid(tmp_path):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "agents.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    brains = [block for block in blocks if "brain" in block]
    assert len(brains) == 3 and len(blocks) == 4  # OpenAI, Ollama, vLLM; and semantic memory's embedders
    for block in brains:
        (spec,) = load(tmp_path, block).agents
        assert isinstance(spec.brain, OpenAIBrain), block
    (embedders,) = [block for block in blocks if block not in brains]
    assert {spec.agent_id: spec.embedder is not None for spec in load(tmp_path, embedders).agents} == {
        "gpt": True, "notes": False}
