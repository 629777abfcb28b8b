"""The configuration file: bad values are refused with a message naming the setting, before
anything runs (a NaN timeout would otherwise crash the server on its first connection)."""
from __future__ import annotations

import pytest

from agentcast.actors import ConfigError, LaneBudget
from agentcast.transport._config import load_config, server_settings
from agentcast.transport._settings import ServerSettings


def test_timeouts_must_be_finite(tmp_path):
    for bad in ("nan", "inf", "-1.0"):
        path = tmp_path / "bad.toml"
        path.write_text(f"[server]\nhandshake_timeout = {bad}\n")
        with pytest.raises(ConfigError, match="handshake_timeout"):
            server_settings(load_config(path))
    path.write_text('[agents.a]\nbrain = { kind = "echo", delay = nan }\n')
    with pytest.raises(ConfigError, match="delay"):
        load_config(path)
    path.write_text('[agents.a]\nbrain = { kind = "echo", chunks = 2.5 }\n')
    with pytest.raises(ConfigError, match="chunks"):
        load_config(path)


def test_lane_bounds_are_server_settings_with_the_budgets_defaults(tmp_path):
    settings, budget = ServerSettings(), LaneBudget()
    assert (settings.max_lanes, settings.max_lanes_window_bytes) == (budget.max_lanes, budget.max_window_bytes)
    path = tmp_path / "lanes.toml"
    path.write_text("[server]\nmax_lanes = 500\nmax_lanes_window_bytes = 1048576\n")
    assert (server_settings(load_config(path)).max_lanes, server_settings(load_config(path)).max_lanes_window_bytes) == (
        500, 1048576)
    for bad in ("max_lanes = 0", "max_lanes_window_bytes = -1"):
        path.write_text(f"[server]\n{bad}\n")
        with pytest.raises(ConfigError, match=bad.split()[0]):
            server_settings(load_config(path))
    path.write_text('[server]\nmax_lanes = "many"\n')
    with pytest.raises(ConfigError, match="max_lanes must be of type int"):
        load_config(path)
    with pytest.raises(ValueError):
        LaneBudget(max_window_bytes=0)


def test_agent_ids_are_at_most_256_bytes_as_utf8_like_the_ids_clients_send(tmp_path):
    """An agent id is named by clients in their frames, where an id is at most 256 bytes (UTF-8): a config
    may not define one no client could name (64 four-byte characters fit, 65 do not)."""
    path = tmp_path / "agents.toml"
    for agent_id in ("x" * 256, "\U0001F600" * 64, "é" * 128):
        path.write_text(f'[agents."{agent_id}"]\nbrain = "echo"\n')
        assert [spec.agent_id for spec in load_config(path).agents] == [agent_id]
    for agent_id in ("x" * 257, "\U0001F600" * 65, "é" * 129):
        path.write_text(f'[agents."{agent_id}"]\nbrain = "echo"\n')
        with pytest.raises(ConfigError, match="must be 1 to 256 bytes"):
            load_config(path)
