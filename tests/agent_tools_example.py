"""A custom tool, as docs/agents.md shows how to write one; tests/test_llm_config.py loads it from TOML.

Imports only `actors` and attrs, like a user's own tool module would.
"""
from attrs import field, frozen

from agentcast.actors import ToolError, tool


@frozen
class WeatherArgs:
    city: str = field(metadata={"description": "a city name"})


@tool("weather", "Today's weather in a city", WeatherArgs)
async def weather(ctx, args: WeatherArgs) -> dict:
    if args.city.lower() == "atlantis":
        raise ToolError("no weather under the sea")
    return {"city": args.city, "sky": "clear", "for_user": ctx.user}
