"""The example config (transport/agentcast.example.toml, which `agentcast config example` prints) keeps step with
the code: every [server] setting and every agent setting with its real default, every setting of the echo and
openai brains, agents on OpenAI, Ollama and vLLM; `agentcast config check` accepts it; the package ships it; and
the unit each size limit's comment claims (bytes or characters) is the one the server enforces."""
from __future__ import annotations

import inspect
import json
import re
import tomllib
from pathlib import Path

import attrs
import pytest
from trio_websocket import ConnectionClosed

from agentcast.actors import AgentSpec, EchoBrain, LocalEmbedder, OpenAIBrain, OpenAIBrainSettings, OpenAIEmbedder
from support import connect, running_server
from support.process import cli
from agentcast.transport._config import effective_settings, example_config, load_config
from agentcast.transport._settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "transport" / "agentcast.example.toml"
TEXT = EXAMPLE.read_text()
DATA = tomllib.loads(TEXT)


def table_lines(header: str) -> list[str]:
    """The lines of the table `[header]` (commented ones included), up to the next table header."""
    lines = TEXT.splitlines()
    start = lines.index(f"[{header}]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    return lines[start:end]


def commented(header: str, key: str) -> bool:
    """Whether `# key = ...` (a setting shown but not set, its default being "none") is in table `header`."""
    return any(re.match(rf"#\s*{key} = ", line) for line in table_lines(header))


def same(value, default) -> bool:
    if isinstance(default, tuple):
        default = list(default)
    return value == default and type(value) is type(default)


def test_every_server_setting_is_there_with_its_default():
    server = DATA["server"]
    for field in attrs.fields(attrs.resolve_types(ServerSettings)):
        if field.default is None:
            assert field.name not in server and commented("server", field.name), field.name
        else:
            assert field.name in server, f"server.{field.name} is missing from the example"
            assert same(server[field.name], field.default), (field.name, server[field.name], field.default)


def test_every_agent_setting_and_echo_brain_setting_is_there_with_its_default():
    agent = DATA["agents"]["my_agent"]
    for field in attrs.fields(attrs.resolve_types(AgentSpec)):
        if field.name in ("agent_id", "brain", "description"):
            continue
        if field.name == "embedder":  # its default is the server's: shown commented
            assert field.name not in agent and commented("agents.my_agent", field.name)
            continue
        assert field.name in agent, f"agents.my_agent.{field.name} is missing from the example"
        assert agent[field.name] == field.default and type(agent[field.name]) is type(field.default), field.name
    assert agent["description"] and agent["brain"]["kind"] == "echo"
    for name, param in inspect.signature(EchoBrain).parameters.items():
        assert agent["brain"][name] == param.default, name


def test_every_openai_brain_setting_is_there_with_its_default():
    brain = DATA["agents"]["gpt"]["brain"]
    assert brain["kind"] == "openai" and brain["model"] and brain["api_key_env"] == "OPENAI_API_KEY"
    for field in attrs.fields(OpenAIBrainSettings):  # the brain's table is its settings object
        name, default = field.name, field.default
        if default is attrs.NOTHING or name == "api_key_env":
            assert name in brain, name  # required (model), or set on purpose
        elif default is None:
            assert name not in brain and commented("agents.gpt.brain", name), name
        else:
            assert name in brain, f"agents.gpt.brain.{name} is missing from the example"
            assert same(brain[name], default), (name, brain[name], default)


def test_every_embedder_setting_is_there_with_its_default():
    assert DATA["server"]["embedder"] == "none" and commented("server", "embedder")
    shown = "\n".join(table_lines("server"))
    local = inspect.signature(LocalEmbedder).parameters
    for name, param in local.items():  # the local embedder's settings, in the comments of [server]
        assert re.search(rf"\b{name} = " + (re.escape(json.dumps(param.default)) if param.default is not None else ""),
                         shown), name
    embedder = DATA["agents"]["gpt"]["embedder"]
    assert embedder["kind"] == "openai" and embedder["api_key_env"] == "OPENAI_API_KEY"
    for name, param in inspect.signature(OpenAIEmbedder).parameters.items():
        assert name in embedder, f"agents.gpt.embedder.{name} is missing from the example"
        if param.default is not inspect.Parameter.empty and name != "api_key_env":
            assert same(embedder[name], param.default), (name, embedder[name], param.default)
    specs = {spec.agent_id: spec for spec in load_config(EXAMPLE).agents}
    assert specs["gpt"].embedder.kind == "openai" and specs["my_agent"].embedder is None


def test_agents_for_openai_ollama_and_vllm():
    urls = {agent_id: agent["brain"].get("base_url") for agent_id, agent in DATA["agents"].items()}
    assert urls["gpt"] == "https://api.openai.com/v1"
    assert urls["llama"] == "http://localhost:11434/v1" and "Ollama" in DATA["agents"]["llama"]["description"]
    assert urls["qwen"].endswith(":8000/v1") and "vLLM" in DATA["agents"]["qwen"]["description"]
    kinds = {agent_id: type(spec.brain) for agent_id, spec in ((s.agent_id, s) for s in load_config(EXAMPLE).agents)}
    assert kinds == {"my_agent": EchoBrain, "gpt": OpenAIBrain, "llama": OpenAIBrain, "qwen": OpenAIBrain}


def test_the_package_ships_it():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert EXAMPLE.name in package_data["agentcast.transport"]
    assert example_config() == TEXT


@pytest.mark.process
def test_config_example_prints_it_and_config_check_accepts_it(tmp_path, monkeypatch):
    example = cli("config", "example", cwd=tmp_path)
    assert example.returncode == 0 and example.stderr == "" and example.stdout == TEXT
    check = cli("config", "check", "--config", str(EXAMPLE), cwd=tmp_path)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    assert check.stdout.startswith(f"# {EXAMPLE} is valid.")
    # What it prints is TOML that gives the same settings again.
    printed = tmp_path / "printed.toml"
    printed.write_text(check.stdout)
    assert effective_settings(load_config(printed)) == effective_settings(load_config(EXAMPLE))


# -- the units the comments claim are the ones enforced ----------------------------------------------------


def claimed_unit(key: str) -> str:
    (line,) = [line for line in table_lines("server") if line.startswith(f"{key} = ")]
    unit = re.search(r"#\s*(bytes|characters)\b", line)
    assert unit, f"the example does not say whether {key} counts bytes or characters: {line!r}"
    return unit[1]


#: Two bytes in UTF-8, one character.
WIDE = "é"


async def test_max_message_size_counts_what_the_example_says(db_path):
    frame = json.dumps({"type": "chat", "agent_id": "my_agent", "message": WIDE * 300}, ensure_ascii=False)
    limit = len(frame)  # the frame is exactly at the limit in characters, past it in bytes
    assert len(frame.encode()) > limit
    async with running_server(db_path, max_message_size=limit, max_chat_chars=1000) as server, \
            connect(server.port) as client:
        await client.send(frame)
        try:
            accepted = (await client.recv())["type"] == "agent_thinking"
        except ConnectionClosed as exc:
            assert exc.reason.code == 1009, exc.reason
            accepted = False
    assert accepted == (claimed_unit("max_message_size") == "characters")


@pytest.mark.parametrize("key, frame", [
    ("max_chat_chars", {"type": "chat", "agent_id": "my_agent", "message": WIDE * 50}),
    ("max_query_chars", {"type": "search_memory", "agent_id": "my_agent", "query": WIDE * 50}),
])
async def test_text_limits_count_what_the_example_says(db_path, key, frame):
    async with running_server(db_path, **{key: 50}) as server, connect(server.port) as client:
        await client.send(frame)
        answer = await client.recv()
    refused = answer["type"] == "error" and answer["code"] == "too_long"
    assert refused == (claimed_unit(key) == "bytes"), answer
