"""What ships holds no dev tooling: the kubetune wheel, built from the working tree by pip as a
user would, has no dev control plane or local pod runner (`kubetune_dev`, formerly
`kubetune.devcluster`) in it, and nothing the operator image runs imports them. The dev tools are
their own distribution (dev/pyproject.toml, `kubetune-dev`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.unit.test_dockerfiles import (
    OPERATOR_DOCKERFILE,
    OPERATOR_IMAGE_ENTRY_MODULES,
    _module_file,
    copied_files,
    imports_of,
)

ROOT = Path(__file__).resolve().parents[2]
DEV_NAMES = ("kubetune_dev", "devcluster")


def _is_dev(name: str) -> bool:
    return any(part in DEV_NAMES for part in name.replace("/", ".").split("."))


def source_tree(dest: Path) -> Path:
    """The working tree as a fresh clone has it (tracked and untracked files, not the ignored
    ones: no .venv, no egg-info, no build/), copied so the build writes nothing into the repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    tree = source_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    # No network: setuptools from this environment, no dependency resolution.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", str(tree), "-w", str(out)], check=True)
    wheels = list(out.glob("kubetune-*.whl"))
    assert len(wheels) == 1, f"expected one kubetune wheel, got {[w.name for w in out.iterdir()]}"
    with zipfile.ZipFile(wheels[0]) as whl:
        return whl.namelist()


def test_the_kubetune_wheel_holds_no_dev_control_plane_or_local_pod_runner(wheel_names: list[str]) -> None:
    # The wheel is the real one: the operator's entry point and the trainer are inside.
    assert "kubetune/cli.py" in wheel_names
    assert "kubetune/operator/handlers.py" in wheel_names
    assert "kubetune_trainer/pipeline.py" in wheel_names
    dev = [n for n in wheel_names if _is_dev(n)]
    assert not dev, f"dev tooling in the kubetune wheel: {dev}"
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"kubetune", "kubetune_trainer"}, tops


def first_party_closure(root: Path, files: set[Path], entries: tuple[str, ...]) -> set[str]:
    """Every name the `entries` modules import, transitively through the first-party modules
    among `files` (relative to `root`), lazy imports inside functions included."""
    seen: set[str] = set()
    names: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module, files)
        if path is None:
            continue
        for name in imports_of((root / path).read_text(), module, path.name == "__init__.py"):
            names.add(name)
            todo.append(name)
    return names


def test_the_operator_image_copies_no_dev_tooling_and_runs_nothing_that_imports_it() -> None:
    files = copied_files(OPERATOR_DOCKERFILE)
    assert Path("operator/kubetune/cli.py") in files
    copied_dev = sorted(str(f) for f in files if _is_dev(str(f)))
    assert not copied_dev, f"operator/Dockerfile copies dev tooling: {copied_dev}"
    imported = first_party_closure(ROOT, files, OPERATOR_IMAGE_ENTRY_MODULES)
    assert "kubetune.operator.handlers" in imported or "kubetune.operator" in imported
    dev = sorted(n for n in imported if _is_dev(n))
    assert not dev, f"the operator image's modules import dev tooling: {dev}"


def test_the_closure_finds_a_lazy_import_of_the_dev_tools(tmp_path: Path) -> None:
    pkg = tmp_path / "operator" / "kubetune"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("from kubetune import helper\n")
    (pkg / "helper.py").write_text("def run():\n    from kubetune_dev import start_dev_cluster\n")
    files = {p.relative_to(tmp_path) for p in pkg.rglob("*.py")}
    imported = first_party_closure(tmp_path, files, ("kubetune.cli",))
    assert sorted(n for n in imported if _is_dev(n)) == ["kubetune_dev", "kubetune_dev.start_dev_cluster"]
