"""The layering rules of agentcast's packages, checked on their source and at import time.

`agentcast.store` imports neither trio nor `transport`/`actors`; `agentcast.transport.protocol` imports no trio;
`agentcast.actors` never imports `transport`; the client side (`agentcast.transport.client`) imports nothing of
agentcast but the protocol.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support import scaled

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "agentcast"


def module_name(path: Path) -> str:
    """The dotted name a source file of the repository is imported as (`transport/client/_chat.py` ->
    `agentcast.transport.client._chat`; a package's `__init__.py` is the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules `path` imports, relative imports resolved (`from ..store import X`
    in `agentcast/actors/_agent.py` is `agentcast.store`; `from .. import actors` is `agentcast.actors`)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            if node.module is None:  # `from .. import actors`: each name may be a module
                found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return found


def layers(path: Path) -> set[str]:
    """What `path` imports, by layer: `transport`, `actors` or `store` for agentcast's own packages (and the
    module path below `transport` for its modules, e.g. `transport.server`), the top-level name for others."""
    out = set()
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == PACKAGE:
            if len(parts) > 1:
                out.add(parts[1])
                out.add(".".join(parts[1:3]))
        else:
            out.add(parts[0])
    return out


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


RULES = [
    # (files, forbidden layers)
    (sources("store"), {"trio", "trio_websocket", "transport", "actors"}),
    ([ROOT / "transport" / "protocol.py"], {"trio", "trio_websocket", "actors", "store"}),
    (sources("actors"), {"transport", "trio_websocket"}),
    # the HTTP side gets health and metrics from the server; the metrics read, they do not schedule
    ([ROOT / "transport" / "_http.py"], {"trio_websocket", "actors", "store"}),
    ([ROOT / "transport" / "_metrics.py"], {"trio", "trio_websocket", "store"}),
    # the parts of a connection: only `_connection` (and `_wsinternals`) talk to trio-websocket
    ([ROOT / "transport" / "_outbox.py"], {"trio_websocket", "actors", "store"}),
    ([ROOT / "transport" / "_session.py"], {"trio_websocket", "actors", "store"}),
    ([ROOT / "transport" / "_dispatch.py"], {"trio", "trio_websocket", "store"}),
    ([ROOT / "transport" / "_admission.py"], {"trio", "trio_websocket", "actors", "store"}),
    # the parts of an agent: who hears it needs no trio and no store; its admission counts no events
    ([ROOT / "actors" / "_audience.py"], {"trio", "store", "transport"}),
    ([ROOT / "actors" / "_admission.py"], {"store", "transport"}),
]


@pytest.mark.parametrize(
    "path, forbidden",
    [(path, forbidden) for files, forbidden in RULES for path in files],
    ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "",
)
def test_module_respects_its_layer(path, forbidden):
    assert path.exists()
    assert not layers(path) & forbidden, f"{path.relative_to(ROOT)} imports {layers(path) & forbidden}"


#: The client side: it talks to a server over the wire and shares only the protocol with it.
CLIENT_MODULES = sources("transport/client")


@pytest.mark.parametrize("path", CLIENT_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_client_side_imports_nothing_of_agentcast_but_the_protocol(path):
    own = {m for m in imported_modules(path) if m.split(".")[0] == PACKAGE}
    allowed = {f"{PACKAGE}.transport.protocol"}
    other = {m for m in own if m not in allowed and not m.startswith(f"{PACKAGE}.transport.client")}
    assert not other, f"{path.relative_to(ROOT)} imports {other}"


def test_the_checker_resolves_relative_and_absolute_imports(tmp_path):
    assert module_name(ROOT / "transport" / "client" / "_chat.py") == "agentcast.transport.client._chat"
    assert module_name(ROOT / "store" / "__init__.py") == "agentcast.store"
    chat = ROOT / "transport" / "client" / "_chat.py"
    assert "agentcast.transport.protocol" in imported_modules(chat)
    agent = ROOT / "actors" / "_agent.py"
    assert "agentcast.store" in imported_modules(agent) and {"store", "trio"} <= layers(agent)
    connection = ROOT / "transport" / "_connection.py"
    assert {"actors", "transport.protocol"} <= layers(connection)


@pytest.mark.process
def test_importing_the_client_loads_no_server_side():
    code = (
        "import sys, agentcast.transport.client, agentcast.transport.client._chat; "
        "from agentcast import open_agent_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['agentcast', 'actors'], ['agentcast', 'store']) "
        "or m in ('agentcast.transport.server', 'agentcast.transport._connection', 'agentcast.transport._auth', "
        "'agentcast.transport._config')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent,
                         timeout=scaled(60)).stdout
    assert out.strip() == "[]"


def test_rules_cover_every_module():
    assert len(RULES[0][0]) >= 4 and len(RULES[2][0]) >= 5 and len(CLIENT_MODULES) >= 3


@pytest.mark.process
@pytest.mark.parametrize(
    "module, forbidden",
    [("agentcast.store", ["trio", "trio_websocket", "agentcast.transport", "agentcast.actors"]),
     ("agentcast.transport.protocol", ["trio", "trio_websocket", "agentcast.actors", "agentcast.store"])],
)
def test_importing_does_not_load_forbidden_modules(module, forbidden):
    code = f"import sys, {module}; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent,
                         timeout=scaled(60)).stdout
    assert out.strip() == "[]"


def test_every_module_opens_with_a_docstring_of_at_least_two_lines():
    for package in ("store", "actors", "transport"):
        for path in (ROOT / package).rglob("*.py"):
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc.strip().splitlines()) >= 2, f"{path.relative_to(ROOT)} needs a two-line docstring"
    doc = ast.get_docstring(ast.parse((ROOT / "__init__.py").read_text()))
    assert doc and len(doc.strip().splitlines()) >= 2


@pytest.mark.process
def test_the_command_line_loads_the_server_only_to_serve():
    """`agentcast replay`, `replay events`, `replay verify` and `backup` read a log with the store alone: importing
    the command line loads neither the server, nor a connection, nor the actors' machinery, nor trio."""
    code = (
        "import sys, agentcast.transport.cli; "
        "print(sorted(m for m in sys.modules if m in ('agentcast.transport.server', 'agentcast.transport._connection', "
        "'agentcast.transport._frames', 'agentcast.transport._config', 'agentcast.transport._auth', 'trio', "
        "'trio_websocket') or m.split('.')[:2] == ['agentcast', 'actors']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent,
                         timeout=scaled(60)).stdout
    assert out.strip() == "[]"
