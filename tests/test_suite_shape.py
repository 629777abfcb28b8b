"""The test suite's own rules: helpers live in the `support` package and no test file imports another;
a test that starts a subprocess or sleeps on the real clock is marked `process` (see support/processguard.py);
pytest-timeout's safety net scales with AGENTCAST_TEST_TIMEOUT_SCALE like the tests' own bounds."""
from __future__ import annotations

import ast
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support import TIMEOUT_SCALE, processguard, scaled

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the modules `path` imports (anywhere in it, functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_file_imports_another_test_file_or_the_conftest():
    """Shared helpers are in `support`: a test file that imports another runs that file's module-level code
    and ties the two together."""
    sources = sorted(TESTS.glob("*.py")) + sorted((TESTS / "support").glob("*.py"))
    assert len(sources) > 40
    offenders = {
        str(path.relative_to(TESTS)): sorted(m for m in imported_modules(path) if m.startswith("test_") or m == "conftest")
        for path in sources
    }
    assert {path: modules for path, modules in offenders.items() if modules} == {}


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "test_example.py"
    source.write_text("import json\n\ndef test_x():\n    from test_other import helper\n")
    assert imported_modules(source) == {"json", "test_other"}


@pytest.mark.process
def test_the_guard_records_a_subprocess_or_a_real_clock_sleep_of_an_unmarked_test():
    with processguard.unmarked() as violations:
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=scaled(30))
        time.sleep(0.001)
        sleeper = threading.Thread(target=time.sleep, args=(0.001,))  # another thread's sleep is not the test's
        sleeper.start()
        sleeper.join(scaled(10))
    assert [v.split(";")[0] for v in violations] == [
        f"started a subprocess [{sys.executable!r}, '-c', 'pass']",
        "slept 0.001 s on the real clock",
    ]
    assert "test_suite_shape.py" in violations[0]  # with the stack that did it
    with processguard.unmarked() as violations:
        pass
    assert violations == []


def test_pytest_timeouts_safety_net_scales_like_the_tests_bounds(request):
    assert request.config._env_timeout == float(request.config.getini("timeout")) * TIMEOUT_SCALE
