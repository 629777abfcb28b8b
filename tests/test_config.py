"""The configuration file: bad values are refused with a message naming the setting, before
anything runs (a NaN timeout would otherwise crash the server on its first connection)."""
from __future__ import annotations

import pytest

from actors import ConfigError
from transport._config import load_config, server_settings


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
