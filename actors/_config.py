"""Agents from configuration: the `[agents.ID]` tables of the TOML file, and the built-in defaults.

Must not import `transport`.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import attrs

from ._agent import ON_BUSY, AgentSpec
from ._brain import BRAIN_SETTINGS, BRAINS, Brain
from ._embedders import EmbedderChoice, embedder_choice
from ._openai import OpenAIBrain  # noqa: F401  (registers the "openai" brain in BRAINS)


class ConfigError(ValueError):
    """A configuration that cannot be used; the text says where and why."""


#: The agents a server has without a config file: the ids the seed document's examples use.
DEFAULT_AGENTS: dict[str, dict[str, Any]] = {
    "my_agent": {"description": "A general-purpose agent (echo brain)", "brain": "echo"},
    "assistant": {"description": "An assistant (echo brain)", "brain": "echo"},
    "multi_user_agent": {"description": "An agent with separate memory per user (echo brain)", "brain": "echo"},
}

_SPEC_KEYS = {
    "short_term_window": int,
    "mailbox_size": int,
    "lane_size": int,
    "connection_size": int,
    "lane_idle_seconds": (int, float),
}


def _brain(agent_id: str, value: Any) -> Brain:
    if isinstance(value, str):
        kind, options = value, {}
    elif isinstance(value, Mapping) and isinstance(value.get("kind"), str):
        options = dict(value)
        kind = options.pop("kind")
    else:
        raise ConfigError(f"agents.{agent_id}.brain must be a brain name or a table with 'kind'")
    factory = BRAINS.get(kind)
    if factory is None:
        raise ConfigError(f"agents.{agent_id}.brain: unknown brain {kind!r} (known: {', '.join(sorted(BRAINS))})")
    settings_class = BRAIN_SETTINGS.get(kind)
    if settings_class is not None:  # the table is the brain's settings object
        known = [f.name for f in attrs.fields(settings_class)]
        required = [f.name for f in attrs.fields(settings_class) if f.default is attrs.NOTHING]
    else:  # the table is the brain's keyword arguments
        params = inspect.signature(factory).parameters
        known = list(params)
        required = [n for n, prm in params.items() if prm.default is inspect.Parameter.empty]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"agents.{agent_id}.brain: unknown setting(s) {', '.join(unknown)} for the {kind} brain "
                          f"(known: {', '.join(known)})")
    missing = [n for n in required if n not in options]
    if missing:
        raise ConfigError(f"agents.{agent_id}.brain: the {kind} brain needs {', '.join(missing)}")
    try:
        return factory(settings_class(**options)) if settings_class is not None else factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"agents.{agent_id}.brain: {exc}") from None


#: The longest agent id, in bytes as UTF-8: the longest id a client may send (`protocol.MAX_ID_BYTES`).
MAX_AGENT_ID_BYTES = 256


def _agent_id_fits(agent_id: str) -> bool:
    try:
        return 0 < len(agent_id.encode("utf-8")) <= MAX_AGENT_ID_BYTES
    except UnicodeEncodeError:  # a lone surrogate: no client could send it
        return False


def agent_specs(table: Mapping[str, Any] | None, *, embedder: EmbedderChoice | None = None) -> list[AgentSpec]:
    """The agents described by the `[agents]` table (the defaults when it is None); `embedder` is the server's
    (`[server] embedder`), which an agent's own `embedder` setting replaces."""
    if table is None:
        table = DEFAULT_AGENTS
    if not isinstance(table, Mapping) or not table:
        raise ConfigError("[agents] must define at least one agent, as [agents.ID] tables")
    specs = []
    for agent_id, body in table.items():
        if not _agent_id_fits(agent_id):
            raise ConfigError(f"agent id {agent_id!r} must be 1 to {MAX_AGENT_ID_BYTES} bytes (UTF-8): clients name it "
                              "in their frames, where an id is at most that long")
        if not isinstance(body, Mapping):
            raise ConfigError(f"agents.{agent_id} must be a table")
        unknown = set(body) - {"brain", "description", "cancel_on_disconnect", "on_busy", "embedder", *_SPEC_KEYS}
        if unknown:
            raise ConfigError(f"agents.{agent_id}: unknown setting(s) {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for key, types in _SPEC_KEYS.items():
            if key in body:
                value = body[key]
                if isinstance(value, bool) or not isinstance(value, types):
                    raise ConfigError(f"agents.{agent_id}.{key} must be a number")
                kwargs[key] = value
        description = body.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"agents.{agent_id}.description must be a string")
        if "cancel_on_disconnect" in body:
            if type(body["cancel_on_disconnect"]) is not bool:
                raise ConfigError(f"agents.{agent_id}.cancel_on_disconnect must be true or false")
            kwargs["cancel_on_disconnect"] = body["cancel_on_disconnect"]
        if "on_busy" in body:
            if body["on_busy"] not in ON_BUSY:
                raise ConfigError(f"agents.{agent_id}.on_busy must be one of {', '.join(map(repr, ON_BUSY))} "
                                  f"(got {body['on_busy']!r})")
            kwargs["on_busy"] = body["on_busy"]
        kwargs["embedder"] = embedder
        if "embedder" in body:
            try:
                kwargs["embedder"] = embedder_choice(body["embedder"])
            except ValueError as exc:
                raise ConfigError(f"agents.{agent_id}.{exc}" if str(exc).startswith("embedder") else
                                  f"agents.{agent_id}.embedder: {exc}") from None
        try:
            specs.append(AgentSpec(agent_id, _brain(agent_id, body.get("brain", "echo")), description, **kwargs))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return specs
