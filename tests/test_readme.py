"""The README's two commands are the ones that work: CI runs the test command verbatim, and the
documented configuration example is a valid config file."""
from __future__ import annotations

import re
from pathlib import Path

from transport._config import load_config, server_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def test_ci_runs_the_readmes_test_command_verbatim():
    test_command = next(b.strip() for b in code_blocks("sh") if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_readme_starts_the_server_with_one_command():
    assert any(b.strip() == "python3 -m pip install . && agentcast serve" for b in code_blocks("sh"))


def test_the_documented_config_is_valid(tmp_path):
    (toml,) = [b for b in code_blocks("toml") if "[server]" in b]
    path = tmp_path / "agentcast.toml"
    path.write_text(toml)
    config = load_config(path)
    settings = server_settings(config)
    assert settings.port == 5050 and settings.synchronous == "NORMAL"
    assert [a.agent_id for a in config.agents] == ["helper"]



def test_the_real_model_example_is_a_valid_openai_agent(tmp_path):
    from actors import OpenAIBrain

    (toml,) = [b for b in code_blocks("toml") if 'kind = "openai"' in b]
    path = tmp_path / "agentcast.toml"
    path.write_text(toml)
    (spec,) = load_config(path).agents
    assert spec.agent_id == "gpt" and isinstance(spec.brain, OpenAIBrain)
    assert spec.brain.api_key_env == "OPENAI_API_KEY" and len(spec.brain.tools) == 3
