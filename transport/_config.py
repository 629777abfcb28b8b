"""The configuration file (TOML): `[server]` settings and `[agents.ID]` tables.

Reads files and validates; imports actors (for agent specs) and server settings, nothing else.
"""
from __future__ import annotations

import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from actors import AgentSpec, ConfigError, agent_specs

from ._settings import ServerSettings


def _type_name(type_: Any) -> str:
    """The TOML type a setting takes: "str", "int", "float" or "list of str" (optional settings are just absent)."""
    args = set(typing.get_args(type_))
    if typing.get_origin(type_) is tuple:
        return "list of str"
    if args and type(None) in args:  # `str | None`
        (type_,) = args - {type(None)}
    return type_.__name__


_SETTING_TYPES = {f.name: _type_name(f.type) for f in attrs.fields(attrs.resolve_types(ServerSettings))}


def _has_type(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return False
    if name == "list of str":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, {"str": str, "int": int, "float": (int, float)}[name])


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
        if not _has_type(value, _SETTING_TYPES[key]):
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
