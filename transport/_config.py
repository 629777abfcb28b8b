"""The configuration file (TOML): `[server]` settings and `[agents.ID]` tables.

Reads files and validates; imports actors (for agent specs) and server settings, nothing else.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from actors import AgentSpec, ConfigError, agent_specs

from ._settings import ServerSettings

_SETTING_TYPES = {f.name: f.type.__name__ for f in attrs.fields(attrs.resolve_types(ServerSettings))}


@attrs.frozen
class Config:
    server: dict[str, Any]
    agents: list[AgentSpec]


def load_config(path: str | Path | None) -> Config:
    """The configuration in `path`, or the built-in defaults when `path` is None.

    Raises `ConfigError` with a message naming the file and the setting at fault.
    """
    if path is None:
        return Config({}, agent_specs(None))
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(data) - {"server", "agents"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; expected [server] and [agents.ID]")
    server = data.get("server", {})
    if not isinstance(server, Mapping):
        raise ConfigError(f"{path}: [server] must be a table")
    for key, value in server.items():
        if key not in _SETTING_TYPES:
            raise ConfigError(f"{path}: unknown setting server.{key} (known: {', '.join(sorted(_SETTING_TYPES))})")
        expected = {"str": str, "int": int, "float": (int, float)}[_SETTING_TYPES[key]]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(f"{path}: server.{key} must be of type {_SETTING_TYPES[key]}")
    try:
        agents = agent_specs(data.get("agents"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Config(dict(server), agents)


def server_settings(config: Config, **overrides: Any) -> ServerSettings:
    """Settings from the config file, with the non-None `overrides` (command-line flags) on top."""
    values = dict(config.server)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServerSettings(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
