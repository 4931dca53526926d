"""Benchmarks import no test modules: what a bench/ script shares with the tests (dev cluster,
operator subprocess, CRD and PVC set-up, fake Ollama) lives in the dev package kubetune_dev.
Checked by parsing every bench/*.py: its import statements (inside functions too), and code it
hands to a subprocess as a string (`python -c "import tests..."`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted((ROOT / "bench").glob("*.py"))
# `import tests`, `import time, tests.x as f`, `from tests.x import y` inside a code string.
CODE_IMPORT = re.compile(r"\bimport\s+(?:[\w.]+(?:\s+as\s+\w+)?\s*,\s*)*tests\b|\bfrom\s+tests\b")


def imports_of_tests(source: str) -> list[str]:
    """Where `source` imports the tests package: 'line N: <statement>' for each."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else []
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE_IMPORT.search(node.value):
            names = ["tests"]
        else:
            continue
        if any(name == "tests" or name.startswith("tests.") for name in names):
            found.append((node.lineno, f"line {node.lineno}: {ast.get_source_segment(source, node)}"))
    return [text for _, text in sorted(found)]


def test_there_are_benchmarks_to_check() -> None:
    assert {"gateway.py", "operator_scale.py", "serving.py"} <= {p.name for p in BENCHES}


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_the_benchmark_imports_no_test_module(bench: Path) -> None:
    found = imports_of_tests(bench.read_text())
    assert not found, (f"bench/{bench.name} imports the tests package (move what it needs into "
                       f"dev/kubetune_dev):\n" + "\n".join(found))


def test_the_check_finds_every_way_of_importing_tests() -> None:
    source = (
        "import os\n"
        "from tests.integration import x\n"
        "import tests.unit.y as y\n"
        "def f():\n    from tests import z\n"
        "CODE = 'import time, tests.unit.fake as f; f.run()'\n"
        "from kubetune_dev.fake_ollama import free_port\n"
        "NOTE = 'the tests of the gateway'\n"
    )
    assert [line.split(":")[0] for line in imports_of_tests(source)] == ["line 2", "line 3", "line 5", "line 6"]
