"""The layering rules of the three packages, checked on their source and at import time.

store imports neither trio nor transport/actors; transport.protocol imports no trio; actors never imports transport;
the client side (transport.client, _client*, _chat) imports neither the server side nor actors/store.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports; relative ones stay in the package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


RULES = [
    # (files, forbidden top-level imports)
    (sorted((ROOT / "store").glob("*.py")), {"trio", "trio_websocket", "transport", "actors"}),
    ([ROOT / "transport" / "protocol.py"], {"trio", "trio_websocket", "actors", "store"}),
    (sorted((ROOT / "actors").glob("*.py")), {"transport", "trio_websocket"}),
    # the HTTP side gets health and metrics from the server; the metrics read, they do not schedule
    ([ROOT / "transport" / "_http.py"], {"trio_websocket", "actors", "store"}),
    ([ROOT / "transport" / "_metrics.py"], {"trio", "trio_websocket", "store"}),
]


@pytest.mark.parametrize(
    "path, forbidden",
    [(path, forbidden) for files, forbidden in RULES for path in files],
    ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else "",
)
def test_module_respects_its_layer(path, forbidden):
    assert path.exists()
    assert not imported_roots(path) & forbidden, f"{path.relative_to(ROOT)} imports {imported_roots(path) & forbidden}"


#: The client side of transport: it talks to a server over the wire and shares only the protocol with it.
CLIENT_MODULES = sorted(
    [ROOT / "transport" / "client.py", ROOT / "transport" / "_chat.py", *(ROOT / "transport").glob("_client*.py")]
)
#: What client modules may import from their own package.
CLIENT_MAY_IMPORT = {"protocol", "client", "_chat"}


def transport_modules_imported(path: Path) -> set[str]:
    """The `transport` modules `path` imports, relatively (`from .server import`) or absolutely."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("transport."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("transport."))
    return names


@pytest.mark.parametrize("path", CLIENT_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_client_side_imports_neither_the_server_side_nor_actors_nor_store(path):
    assert path.exists()
    assert not imported_roots(path) & {"actors", "store"}
    other = {m for m in transport_modules_imported(path) if m not in CLIENT_MAY_IMPORT and not m.startswith("_client")}
    assert not other, f"{path.relative_to(ROOT)} imports transport modules {other}"


def test_the_client_checker_sees_relative_and_absolute_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from .server import Server\nfrom . import _connection\nimport transport._auth\nfrom .protocol import x\n")
    assert transport_modules_imported(bad) == {"server", "_connection", "_auth", "protocol"}


def test_importing_the_client_loads_no_server_side():
    code = (
        "import sys, transport.client, transport._chat; from transport import open_agent_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('actors', 'store') "
        "or m in ('transport.server', 'transport._connection', 'transport._auth', 'transport._config')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_rules_cover_every_module():
    assert len(RULES[0][0]) >= 4 and len(RULES[2][0]) >= 5


def test_the_checker_sees_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom trio import sleep\nimport transport.server as s\nfrom . import sibling\n")
    assert imported_roots(bad) == {"os", "trio", "transport"}


@pytest.mark.parametrize(
    "module, forbidden",
    [("store", ["trio", "trio_websocket", "transport", "actors"]), ("transport.protocol", ["trio", "trio_websocket", "actors", "store"])],
)
def test_importing_does_not_load_forbidden_modules(module, forbidden):
    code = f"import sys, {module}; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_every_module_opens_with_a_docstring_of_at_least_two_lines():
    for package in ("store", "actors", "transport"):
        for path in (ROOT / package).glob("*.py"):
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc.strip().splitlines()) >= 2, f"{path.relative_to(ROOT)} needs a two-line docstring"
