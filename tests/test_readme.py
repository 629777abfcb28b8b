"""The README's two commands are the ones that work: each makes and activates a virtual environment
first (a system Python such as Debian's refuses `pip install` outside one), CI runs the test command
verbatim on a clean clone, the suite ignores the `.venv` they make, and the documented configuration
examples are valid config files."""
from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from support import scaled

from agentcast.transport._config import load_config, server_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


#: How both of the README's commands begin: a virtual environment in .venv, made and activated.
VENV_STEP = "python3 -m venv .venv && . .venv/bin/activate && "


def test_ci_runs_the_readmes_test_command_verbatim():
    test_command = next(b.strip() for b in code_blocks("sh") if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_readme_starts_the_server_with_one_command():
    assert any(b.strip() == VENV_STEP + "python3 -m pip install . && agentcast serve" for b in code_blocks("sh"))


def test_both_commands_are_one_line_that_makes_the_venv_first():
    commands = [b.strip() for b in code_blocks("sh") if "pip install" in b]
    assert len(commands) == 2, commands
    for command in commands:
        assert "\n" not in command and command.startswith(VENV_STEP), command
    assert "apt-get install python3-venv" in README  # what Debian and Ubuntu need for `python3 -m venv`


def test_the_suite_and_git_ignore_the_readmes_venv():
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert pytest_options["testpaths"] == ["tests"]  # `python3 -m pytest` collects tests/ only, never .venv/
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.process
def test_ci_refuses_a_checkout_whose_venv_is_not_fresh(tmp_path):
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_bytes((ROOT / ".ci" / "run").read_bytes())
    (tmp_path / ".venv").mkdir()
    result = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=scaled(30),
                            env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and result.stdout == ""
    assert ".venv already exists" in result.stderr and "clean clone" in result.stderr
    assert os.listdir(tmp_path / ".venv") == []  # left alone


def test_the_documented_config_is_valid(tmp_path):
    (toml,) = [b for b in code_blocks("toml") if "[server]" in b]
    path = tmp_path / "agentcast.toml"
    path.write_text(toml)
    config = load_config(path)
    settings = server_settings(config)
    assert settings.port == 5050 and settings.synchronous == "NORMAL"
    assert [a.agent_id for a in config.agents] == ["helper"]



def test_the_real_model_example_is_a_valid_openai_agent(tmp_path):
    from agentcast.actors import OpenAIBrain

    (toml,) = [b for b in code_blocks("toml") if 'kind = "openai"' in b]
    path = tmp_path / "agentcast.toml"
    path.write_text(toml)
    (spec,) = load_config(path).agents
    assert spec.agent_id == "gpt" and isinstance(spec.brain, OpenAIBrain)
    assert spec.brain.api_key_env == "OPENAI_API_KEY" and len(spec.brain.tools) == 3
