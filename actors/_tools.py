"""Tools a model may call during a turn: the registry (name → callable + JSON schema), the built-ins
`search_memory`, `remember`, `current_time`, and `Toolbox`, what a turn's tools may touch.

Must not import `transport`, nor write to the store: memory is reached only through `MemoryAccess`.
"""
from __future__ import annotations

import importlib
import inspect
import json
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

import attrs
import cattrs
from attrs import field, frozen
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from ..store import Hit

#: Longest tool result (as JSON text) given back to the model and the client; longer ones are an error.
MAX_RESULT_CHARS = 16_000
#: Longest tool error text given back to the model and the client (and logged); the rest is cut.
MAX_ERROR_CHARS = 2_000


class MemoryAccess(Protocol):
    """This user's memory of this agent, as a turn's tools may use it (supplied by the agent)."""

    async def search(self, query: str, limit: int) -> Sequence[Hit]:
        """The best `limit` long-term matches for `query`, best first."""

    async def remember(self, fact: str) -> int:
        """Store `fact` in long-term memory (logged and committed); returns its event's seq."""


class ToolError(Exception):
    """A tool could not do what it was asked; the text goes back to the model (and the client)."""


@frozen
class ToolContext:
    """What a tool is given besides its arguments: whose turn it is, and their memory."""

    agent_id: str
    user: str
    memory: MemoryAccess
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)


ToolFunction = Callable[[ToolContext, Any], "Awaitable[object] | object"]


@frozen
class Tool:
    """A tool: `function(context, arguments)` (sync or async) returns any JSON value.

    A sync function runs on the server's event loop: it must be quick (no network, no disk, no
    sleeping), as every connection waits while it runs. Make slow work an async function (and
    use `trio.to_thread.run_sync` inside it for blocking calls).

    `arguments` is an instance of `arguments_type` (an attrs class), built from the model's JSON
    with cattrs, strictly: a missing or mistyped field is an error given back to the model. The
    JSON schema the model sees (`parameters`) is derived from the same class.
    """

    name: str
    description: str
    arguments_type: type
    function: ToolFunction = field(repr=False)

    @property
    def parameters(self) -> dict:
        """The JSON schema of the arguments (an object)."""
        return schema_of(self.arguments_type)

    def openai_schema(self) -> dict:
        """The tool as an entry of the Chat Completions `tools` list."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                  "parameters": self.parameters}}


#: Every tool known by name (the built-ins, and any registered with `@tool`).
TOOLS: dict[str, Tool] = {}


def tool(name: str, description: str, arguments_type: type) -> Callable[[ToolFunction], Tool]:
    """Register `function(context, arguments)` as the tool `name`; returns the `Tool`.

    ```python
    @frozen
    class WeatherArgs:
        city: str = field(metadata={"description": "a city name"})

    @tool("weather", "Today's weather in a city", WeatherArgs)
    async def weather(ctx, args):
        return {"city": args.city, "sky": "clear"}
    ```
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum() or len(name) > 64:
        raise ValueError(f"tool name {name!r}: use 1 to 64 letters, digits, _ or -")
    if not attrs.has(arguments_type):
        raise TypeError(f"tool {name!r}: arguments_type must be an attrs class")

    def register(function: ToolFunction) -> Tool:
        made = Tool(name, description, arguments_type, function)
        TOOLS[name] = made
        return made

    return register


def resolve_tools(names: Sequence[str]) -> tuple[Tool, ...]:
    """The tools named in an agent's config: registered names, or `package.module:attribute` (a `Tool`)."""
    found: list[Tool] = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError("tools must be a list of tool names")
        if ":" in name:
            module_name, _, attribute = name.partition(":")
            try:
                made = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"tool {name!r} cannot be imported: {exc}") from None
            except Exception as exc:  # the module itself failed (a missing setting, a bug): still a config error
                raise ValueError(f"tool {name!r} cannot be imported: its module {module_name!r} failed: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from None
            if not isinstance(made, Tool):
                raise ValueError(f"tool {name!r} is not a Tool (decorate the function with actors.tool)")
        else:
            made = TOOLS.get(name)
            if made is None:
                raise ValueError(f"unknown tool {name!r} (known: {', '.join(sorted(TOOLS))}, or package.module:name)")
        if any(t.name == made.name for t in found):
            raise ValueError(f"tool {made.name!r} is listed twice")
        found.append(made)
    return tuple(found)


# -- calling a tool ------------------------------------------------------------------------------


@frozen
class ToolOutcome:
    """What a tool call gave: a JSON `result`, or an `error` for the model (never both)."""

    result: object = None
    error: str | None = field(default=None, converter=lambda e: e if e is None or len(e) <= MAX_ERROR_CHARS
                              else e[:MAX_ERROR_CHARS] + "…")

    def for_model(self) -> str:
        """The text the model is given as the tool's answer."""
        if self.error is not None:
            return json.dumps({"error": self.error}, ensure_ascii=False)
        return json.dumps(self.result, ensure_ascii=False)


class Toolbox:
    """The tools of one turn, and what they may touch (`ToolContext`)."""

    def __init__(self, tools: Sequence[Tool], context: ToolContext) -> None:
        self.tools = {t.name: t for t in tools}
        self.context = context

    async def run(self, name: str, arguments: object) -> ToolOutcome:
        """Run tool `name` with `arguments` (the model's JSON object); never raises but for cancellation."""
        made = self.tools.get(name)
        if made is None:
            return ToolOutcome(error=f"there is no tool {name!r} (tools: {', '.join(sorted(self.tools)) or 'none'})")
        if not isinstance(arguments, Mapping):
            return ToolOutcome(error="the arguments must be a JSON object")
        try:
            args = _arguments.structure(dict(arguments), made.arguments_type)
        except ClassValidationError as exc:
            return ToolOutcome(error=f"invalid arguments for {name}: {_describe(exc)}")
        except (ValueError, TypeError, KeyError) as exc:
            return ToolOutcome(error=f"invalid arguments for {name}: {exc}")
        try:
            result = made.function(self.context, args)
            if inspect.isawaitable(result):
                result = await result
            text = json.dumps(result, ensure_ascii=False)
        except ToolError as exc:
            return ToolOutcome(error=str(exc) or f"{name} failed")
        except (TypeError, ValueError) as exc:
            if "JSON serializable" in str(exc):
                return ToolOutcome(error=f"{name} returned something that is not JSON")
            return ToolOutcome(error=f"{name} failed: {exc}")
        except Exception as exc:  # a tool's bug is the model's (and the client's) to see, not the server's
            return ToolOutcome(error=f"{name} failed: {type(exc).__name__}: {exc}")
        if len(text) > MAX_RESULT_CHARS:
            return ToolOutcome(error=f"{name} returned {len(text)} characters; at most {MAX_RESULT_CHARS} are allowed")
        return ToolOutcome(result=result)


def _describe(exc: ClassValidationError) -> str:
    problems = []
    for sub in exc.exceptions:
        if isinstance(sub, ForbiddenExtraKeysError):
            problems.append(f"unknown field(s) {', '.join(sorted(sub.extra_fields))}")
            continue
        names = [n.name for n in getattr(sub, "__notes__", ()) if hasattr(n, "name")]
        where = f"'{names[0]}'" if names else "a field"
        problems.append(f"{where} is missing" if isinstance(sub, KeyError) else f"{where}: {sub}")
    return "; ".join(problems) or str(exc)


def _strict(kind: type, label: str):
    def check(value, _type):
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise ValueError(f"must be {label}")
        return value
    return check


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    return conv


#: Builds a tool's arguments from the model's JSON, strictly (no "5" for 5, no unknown keys).
_arguments = _make_converter()

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def schema_of(cls: type) -> dict:
    """The JSON schema (an object) of an attrs class of tool arguments: str, int, float, bool,
    lists of those, and Optional; a field's `metadata={"description": ...}` describes it."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, dict] = {}
    required: list[str] = []
    for a in attrs.fields(cls):
        prop = _schema_of_type(hints[a.name], f"{cls.__name__}.{a.name}")
        if "description" in a.metadata:
            prop["description"] = a.metadata["description"]
        properties[a.name] = prop
        if a.default is attrs.NOTHING:
            required.append(a.name)
        elif not isinstance(a.default, attrs.Factory) and a.default is not None:
            prop["default"] = a.default
    schema: dict[str, object] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _schema_of_type(hint: object, where: str) -> dict:
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple, Sequence) and args:
        return {"type": "array", "items": _schema_of_type(args[0], where)}
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        inner = _schema_of_type(next(a for a in args if a is not type(None)), where)
        return {**inner, "type": [inner["type"], "null"]}
    raise TypeError(f"{where}: tool argument types are str, int, float, bool, lists of them and Optional")


# -- the built-in tools ----------------------------------------------------------------------------


@frozen
class SearchMemoryArgs:
    query: str = field(metadata={"description": "words to look for in what the user said and what was remembered"})
    limit: int = field(default=5, metadata={"description": "how many results, 1 to 20"})


@tool("search_memory", "Search your long-term memory of this user (their earlier messages, your answers, "
      "remembered facts). Returns the best matches first.", SearchMemoryArgs)
async def search_memory(ctx: ToolContext, args: SearchMemoryArgs) -> list[dict]:
    if not 1 <= args.limit <= 20:
        raise ToolError("limit must be from 1 to 20")
    if not args.query.strip():
        raise ToolError("query must not be empty")
    hits = await ctx.memory.search(args.query, args.limit)
    return [{"role": h.role, "content": h.content, "timestamp": h.at} for h in hits]


@frozen
class RememberArgs:
    fact: str = field(metadata={"description": "one short fact about the user, worth remembering later"})


#: The longest fact `remember` stores.
MAX_FACT_CHARS = 2000


@tool("remember", "Store a fact about the user in long-term memory, to find it in later conversations.",
      RememberArgs)
async def remember(ctx: ToolContext, args: RememberArgs) -> dict:
    fact = args.fact.strip()
    if not fact:
        raise ToolError("fact must not be empty")
    if len(fact) > MAX_FACT_CHARS:
        raise ToolError(f"fact is longer than {MAX_FACT_CHARS} characters")
    seq = await ctx.memory.remember(fact)
    return {"remembered": fact, "seq": seq}


@frozen
class CurrentTimeArgs:
    pass


@tool("current_time", "The current date and time (UTC, ISO 8601).", CurrentTimeArgs)
def current_time(ctx: ToolContext, args: CurrentTimeArgs) -> dict:
    now = ctx.now().astimezone(timezone.utc)
    return {"utc": now.isoformat(timespec="seconds").replace("+00:00", "Z"), "weekday": now.strftime("%A")}
