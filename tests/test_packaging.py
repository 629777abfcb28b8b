"""The installed distribution: one import name, `agentcast`, and nothing else at the top of site-packages.

Builds the wheel from this checkout, installs it (without its dependencies, which the test's own environment
provides) into a fresh virtual environment, and imports it there from outside the repository.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from support import scaled

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=scaled(240))
    (built,) = out.glob("agentcast-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"agentcast"}
    assert {"agentcast/__init__.py", "agentcast/store/__init__.py", "agentcast/actors/__init__.py",
            "agentcast/transport/__init__.py", "agentcast/transport/client/__init__.py",
            "agentcast/transport/static/index.html", "agentcast/transport/static/agentcast.js",
            "agentcast/transport/agentcast.example.toml"} <= set(names)
    assert not [n for n in names if n.startswith(("agentcast/tests/", "agentcast/bench/", "agentcast/docs/"))]


def test_the_installed_wheel_imports_as_agentcast_only(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                    str(wheel)], check=True, capture_output=True, timeout=scaled(120))
    code = """
import importlib, importlib.util, json, sys
import agentcast, agentcast.store, agentcast.actors, agentcast.transport.server, agentcast.transport.client
from agentcast import open_agent_client
from agentcast.transport.protocol import decode
from agentcast.transport._http import package_static_dir
from agentcast.transport._config import example_config
print(json.dumps({
    "file": agentcast.__file__,
    "client": open_agent_client.__module__,
    "tops": {name: importlib.util.find_spec(name) is not None for name in ("store", "actors", "transport")},
    "static": sorted(p.name for p in package_static_dir().iterdir()),
    "example": example_config().startswith("# agentcast"),
}))
"""
    # The dependencies come from this test's environment (on PYTHONPATH: its .pth files, such as the editable
    # install of this checkout, are not run from there); the working directory is outside the repository.
    deps = os.pathsep.join(site.getsitepackages())
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": deps}, timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["file"].startswith(str(env_dir)), seen["file"]
    assert seen["client"] == "agentcast.transport.client._client"
    assert seen["tops"] == {"store": False, "actors": False, "transport": False}
    assert "index.html" in seen["static"] and seen["example"]
    script = subprocess.run([str(env_dir / "bin" / "agentcast"), "--version"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": deps}, timeout=scaled(60))
    assert script.returncode == 0 and script.stdout.startswith("agentcast "), script.stderr
