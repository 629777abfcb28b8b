"""One command line: the same flag is spelled, shown and parsed the same in every command (a shared vocabulary,
`transport.cli.FLAGS`), `agentcast` alone prints the help, every --help has a clean usage line, `config check`
validates a file and prints the effective settings with secrets masked, and nothing that calls no model warns
about unset API keys. The real command in a subprocess (helpers from support/process.py); the exhaustive loops over every
command parse in this process.
"""
from __future__ import annotations

import json
import os
import tomllib

import pytest

from agentcast.store import EventLog
from support.process import assert_one_line_error, cli
from agentcast.transport.cli import COMMANDS, FLAGS, command_parser, main

pytestmark = pytest.mark.process

GPT_CONFIG = """
[server]
auth_secret_env = "AGENTCAST_TEST_SECRET"

[agents.gpt]
description = "a model"
brain.kind = "openai"
brain.model = "gpt-4o-mini"
brain.api_key_env = "AGENTCAST_TEST_UNSET_KEY"
brain.base_url = "https://bob:hunter2hunter2@llm.example.com/v1?api-key=querysecret42"
"""


def without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# -- help --------------------------------------------------------------------------------------------------


def test_agentcast_alone_prints_the_help(tmp_path):
    result = cli(cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: agentcast COMMAND [options]\n")
    for name, command in COMMANDS.items():
        assert f"  {name} " in result.stdout and command.help in result.stdout, name


def test_groups_and_unknown_commands(tmp_path):
    group = cli("config", cwd=tmp_path)
    assert group.returncode == 0 and "config check" in group.stdout and "config example" in group.stdout
    for args, expected in ((["bogus"], "unknown command 'bogus'"), (["config", "bogus"], "config check, config example"),
                           (["--db", "x.db"], "the command comes first")):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == ""
        assert_one_line_error(result.stderr, expected)


@pytest.mark.parametrize("name", ["replay events", "replay verify"])
def test_replay_tools_print_a_clean_usage_line(tmp_path, name):
    result = cli(*name.split(), "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    usage = result.stdout.split("\n\n", 1)[0]
    assert usage.startswith(f"usage: agentcast {name} [-h] "), usage
    assert "--db FILE" in usage and "agentcast replay --db" not in usage and usage.count("agentcast") == 1, usage


# -- one vocabulary ----------------------------------------------------------------------------------------


def test_every_command_takes_log_level_in_any_case(capsys):
    assert set(COMMANDS) >= {"serve", "chat", "token", "replay", "replay events", "replay verify", "config check",
                             "config example"}
    for name in COMMANDS:
        for level in ("DEBUG", "Warning", "error"):
            code, out, _ = run_in_process(capsys, *name.split(), "--log-level", level, "--help")
            assert code == 0, (name, level)
            assert "--log-level LEVEL" in out and "any case" in out, name
        code, _, err = run_in_process(capsys, *name.split(), "--log-level", "loud")
        assert code == 2 and "--log-level" in err and "'loud'" in err, name


def test_a_flag_is_spelled_and_shown_the_same_in_every_command():
    spelling = {flag.names[0]: key for key, flag in FLAGS.items()}
    seen = {}
    for name, command in COMMANDS.items():
        for action in command_parser(command)._actions:
            for option in action.option_strings:
                if option in spelling:  # a common flag: as the vocabulary says
                    flag = FLAGS[spelling[option]]
                    assert action.metavar == flag.options.get("metavar"), (name, option)
                    assert action.dest == spelling[option], (name, option)
                elif action.dest in FLAGS and action.help != "==SUPPRESS==":
                    pytest.fail(f"{name}: {option} spells the common flag {FLAGS[action.dest].names[0]} differently")
                seen.setdefault(option, set()).add(name)
    assert seen["--db"] == {"serve", "replay", "replay events", "replay verify", "backup", "embed"}
    assert seen["--auth-secret-env"] == {"serve", "token"}
    assert all(seen["--log-level"] >= {name} for name in COMMANDS)


def test_token_takes_auth_secret_env_like_serve_and_the_old_spelling_still(tmp_path):
    env = {**os.environ, "AGENTCAST_TEST_SECRET": "s" * 40}
    new = cli_env(tmp_path, env, "token", "--user", "7", "--auth-secret-env", "AGENTCAST_TEST_SECRET")
    old = cli_env(tmp_path, env, "token", "--user", "7", "--secret-env", "AGENTCAST_TEST_SECRET")
    for result in (new, old):
        assert result.returncode == 0 and result.stderr == "" and result.stdout.count(".") == 1, result
    shown = cli("token", "--help", cwd=tmp_path).stdout
    assert "--auth-secret-env NAME" in shown and "--secret-env" not in shown  # the old spelling is hidden
    unset = cli_env(tmp_path, without("AGENTCAST_TEST_UNSET"), "token", "--user", "7", "--auth-secret-env",
                    "AGENTCAST_TEST_UNSET")
    assert unset.returncode == 1
    assert_one_line_error(unset.stderr, "AGENTCAST_TEST_UNSET is not set")


def cli_env(cwd, env, *args: str):
    import subprocess
    import sys

    from support.process import START_TIMEOUT

    return subprocess.run([sys.executable, "-m", "agentcast.transport.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=START_TIMEOUT)


def test_replay_reads_agentcast_db_by_default_like_serve(tmp_path):
    EventLog.open(tmp_path / "agentcast.db").close()
    for args, expected in ((["replay"], "agentcast.db: no memory (last seq 0)"),
                           (["replay", "verify"], "agentcast.db: 0 events, 0 streams"),
                           (["replay", "events"], "")):
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)
        assert result.stdout.startswith(expected), (args, result.stdout)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    missing = cli("replay", cwd=elsewhere)  # no agentcast.db here: a clear error, nothing created
    assert missing.returncode == 1 and "agentcast.db" in missing.stderr and os.listdir(elsewhere) == []
    # with --config and no --db: the config's server.db, as serve would use
    config = tmp_path / "c.toml"
    config.write_text(f'[server]\ndb = "{tmp_path / "agentcast.db"}"\n')
    via_config = cli("replay", "--config", str(config), cwd=elsewhere)
    assert via_config.returncode == 0 and "agentcast.db: no memory" in via_config.stdout, via_config.stderr


# -- nothing that calls no model warns about API keys -------------------------------------------------------


def test_replay_and_config_check_do_not_warn_about_unset_api_keys(tmp_path):
    config = tmp_path / "agentcast.toml"
    config.write_text(GPT_CONFIG)
    EventLog.open(tmp_path / "agentcast.db").close()
    env = without("AGENTCAST_TEST_UNSET_KEY", "AGENTCAST_TEST_SECRET")
    for args in (["replay", "--config", str(config)], ["replay", "verify", "--config", str(config)],
                 ["config", "check", "--config", str(config)]):
        result = cli_env(tmp_path, env, *args)
        assert result.returncode == 0 and result.stderr == "", (args, result.stderr)


async def test_serve_warns_naming_the_agent_when_its_key_is_unset(db_path, caplog, monkeypatch):
    from agentcast.actors import agent_specs
    from support import running_server

    monkeypatch.delenv("AGENTCAST_TEST_UNSET_KEY", raising=False)
    specs = agent_specs({"gpt": {"brain": {"kind": "openai", "model": "m", "api_key_env": "AGENTCAST_TEST_UNSET_KEY"}},
                         "echo": {"brain": "echo"}})
    assert "AGENTCAST_TEST_UNSET_KEY" not in caplog.text  # reading the config does not warn
    async with running_server(db_path, specs):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["agent gpt: openai brain (model m): the environment variable AGENTCAST_TEST_UNSET_KEY "
                        "(api_key_env) is not set; its turns will fail until it is"], warnings


# -- config check --------------------------------------------------------------------------------------------


def test_config_check_prints_the_effective_settings_with_secrets_masked(tmp_path):
    config = tmp_path / "agentcast.toml"
    config.write_text(GPT_CONFIG)
    secret = "correct-horse-battery-staple-0123456789"
    env = {**without("AGENTCAST_TEST_UNSET_KEY"), "AGENTCAST_TEST_SECRET": secret}
    result = cli_env(tmp_path, env, "config", "check", "--config", str(config))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    out = result.stdout
    for hidden in (secret, "hunter2hunter2", "querysecret42"):
        assert hidden not in out
    assert 'auth_secret_env = "AGENTCAST_TEST_SECRET"  # set in this environment (value not shown)' in out
    assert 'brain.api_key_env = "AGENTCAST_TEST_UNSET_KEY"  # not set in this environment' in out
    assert 'brain.base_url = "https://bob:***@llm.example.com/v1?api-key=***"' in out
    settings = tomllib.loads(out)  # TOML: defaults included
    assert settings["server"]["port"] == 5050 and settings["server"]["max_chat_chars"] == 32000
    assert settings["agents"]["gpt"]["short_term_window"] == 20 and settings["agents"]["gpt"]["brain"]["retries"] == 2
    as_json = json.loads(cli_env(tmp_path, env, "config", "check", "--config", str(config), "--json").stdout)
    assert as_json["server"]["auth_secret_env"] == "AGENTCAST_TEST_SECRET"
    assert as_json["agents"]["gpt"]["brain"]["base_url"] == "https://bob:***@llm.example.com/v1?api-key=***"
    assert secret not in json.dumps(as_json) and "hunter2" not in json.dumps(as_json)


def test_config_check_without_a_file_shows_the_built_in_defaults(tmp_path):
    result = cli("config", "check", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("# no --config: the built-in defaults.")
    assert set(tomllib.loads(result.stdout)["agents"]) == {"my_agent", "assistant", "multi_user_agent"}


@pytest.mark.parametrize("text, expected", [
    ("[server]\nport = 99999\n", "port must be 0..65535"),
    ("[server]\nprot = 1\n", "unknown setting server.prot"),
    ('[agents.a]\nbrain = { kind = "openai" }\n', "agents.a.brain: the openai brain needs model"),
    ("[server\n", "agentcast.toml"),
])
def test_config_check_refuses_a_bad_file_in_one_line(tmp_path, text, expected):
    config = tmp_path / "agentcast.toml"
    config.write_text(text)
    result = cli("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line_error(result.stderr, expected)


@pytest.mark.parametrize("args", [[], ["--help"], ["replay", "--help"], ["config", "example"], ["config", "check"]],
                         ids=["alone", "help", "replay-help", "example", "check"])
def test_a_reader_that_went_away_is_no_traceback(tmp_path, args):
    import subprocess
    import sys

    from support.process import START_TIMEOUT

    read_end, write_end = os.pipe()
    os.close(read_end)  # like `agentcast ... | head -1` once head has exited: every write fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "agentcast.transport.cli", *args], cwd=tmp_path, stdin=subprocess.DEVNULL,
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=START_TIMEOUT)
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_serve_freezes_what_is_loaded_out_of_the_garbage_collectors_scans(tmp_path, monkeypatch):
    import gc

    import trio

    from agentcast.transport import server as server_module

    class NotServing:
        auth = None

        def __init__(self, settings, agents):
            pass

    frozen = []
    monkeypatch.setattr(server_module, "Server", NotServing)
    monkeypatch.setattr(trio, "run", lambda *args: frozen.append(gc.get_freeze_count()))
    gc.unfreeze()
    try:
        assert main(["serve", "--db", str(tmp_path / "x.db"), "--port", "0"]) == 0
    finally:
        gc.unfreeze()
    assert len(frozen) == 1 and frozen[0] > 1000
