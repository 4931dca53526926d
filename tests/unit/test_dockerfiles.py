"""The two images without a Docker engine (none runs here or in CI): every base image is pinned
by digest, every file a COPY takes from the build context exists, the Python dependencies come
from a hash-pinned lock that still satisfies pyproject.toml, and every module the operator image
runs (`kubetune operator`, `kubetune serve-agent`) is inside what operator/Dockerfile copies or
in its lock — found by walking the imports statically, the ones inside functions included."""

from __future__ import annotations

import ast
import fnmatch
import glob
import importlib.metadata
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_DOCKERFILE = ROOT / "operator" / "Dockerfile"
TRAINER_DOCKERFILE = ROOT / "trainer_image" / "Dockerfile"
DOCKERFILES = {"operator": OPERATOR_DOCKERFILE, "trainer": TRAINER_DOCKERFILE}
LOCKS = {"operator": ROOT / "requirements" / "operator.lock", "trainer": ROOT / "requirements" / "trainer.lock"}
# What the operator image runs: its ENTRYPOINT's commands (the operator; the serve-agent and
# gateway of every ModelDeployment pod), and the modules those commands import lazily.
OPERATOR_IMAGE_ENTRY_MODULES = (
    "kubetune.cli",
    "kubetune.operator.handlers",
    "kubetune.serving.server",
    "kubetune.serving.gateway.app",
)
# Where setuptools finds packages (pyproject.toml [tool.setuptools.packages.find] where).
PACKAGE_ROOTS = ("operator", "trainer_image")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: ends inside a continued line"
    return out


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def base_images(path: Path) -> list[tuple[str, int]]:
    """Every FROM's image with the ARG defaults substituted, except references to earlier stages."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[tuple[str, int]] = []
    for ins in instructions(path):
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, default = ins.args.partition("=")
            if name not in args:  # an ARG re-declared inside a stage keeps the global default
                args[name] = _expand(default.strip('"'), args)
        elif ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--platform")]
            image = _expand(words[0], args)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages:
                images.append((image, ins.line))
    return images


def copy_sources(path: Path) -> list[tuple[str, int]]:
    """Build-context sources of every COPY/ADD (not those copied from another stage)."""
    sources: list[tuple[str, int]] = []
    for ins in instructions(path):
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(ins.args)
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources.extend((src, ins.line) for src in paths[:-1])
    return sources


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_base_image_is_pinned_by_digest(image: str) -> None:
    images = base_images(DOCKERFILES[image])
    assert images, "no FROM found"
    for ref, line in images:
        assert re.fullmatch(r"[\w./:-]+:[\w.-]+@sha256:[0-9a-f]{64}", ref), (
            f"{DOCKERFILES[image].name}:{line}: FROM {ref} is not pinned as IMAGE:TAG@sha256:DIGEST")


def dockerignored(path: str, root: Path = ROOT) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context root) out of the build context:
    the path or a folder above it matches a pattern (`**/` matches at any depth)."""
    ignore = root / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")] if ignore.is_file() else []
    parts = Path(path.rstrip("/")).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions in .dockerignore are not understood by this check"
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:])):
                return True
    return False


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_copied_file_exists_in_the_build_context(image: str) -> None:
    sources = copy_sources(DOCKERFILES[image])
    assert sources
    for src, line in sources:
        where = f"{DOCKERFILES[image].relative_to(ROOT)}:{line}: COPY {src}"
        assert glob.glob(str(ROOT / src)), f"{where}: no such file"
        assert not dockerignored(src), f"{where}: excluded by .dockerignore"


def test_dockerignore_keeps_the_environment_out_and_the_sources_in() -> None:
    for path in (".venv", ".git", "operator/kubetune/__pycache__", "kubetune.egg-info"):
        assert dockerignored(path), path
    for path in ("operator/kubetune/cli.py", "requirements/operator.lock", "pyproject.toml"):
        assert not dockerignored(path), path


def locked(image: str) -> dict[str, str]:
    """Distribution name (canonical) → pinned version of the image's lock file."""
    text = LOCKS[image].read_text()
    return {canonicalize_name(m.group(1)): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", text, re.M)}


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_the_image_installs_its_lock_with_hashes_and_the_lock_satisfies_pyproject(image: str) -> None:
    lock = LOCKS[image]
    runs = [i.args for i in instructions(DOCKERFILES[image]) if i.keyword == "RUN"]
    name = f"requirements/{lock.name}"
    assert any(name in r and "--require-hashes" in r for r in runs), f"no RUN installs {name} with --require-hashes"
    assert any(name in s for s, _ in copy_sources(DOCKERFILES[image])), f"{name} is not copied"
    # Every requirement line carries hashes (pip refuses the whole file otherwise).
    text = lock.read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1]):
        if "==" in block:
            assert "--hash=sha256:" in block, f"{lock.name}: {block.splitlines()[0]} has no hash"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    if image == "trainer":
        wanted += project["optional-dependencies"]["trainer"]
    pins = locked(image)
    for spec in wanted:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock.name} lacks {req.name}: run hack/lock-requirements.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {req.name}=={pins[name]}, pyproject wants {req.specifier}: run hack/lock-requirements.sh")


def test_the_uv_that_wrote_the_locks_is_the_pinned_one() -> None:
    versions = dict(
        line.split("=", 1) for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#"))
    uv = versions["UV_VERSION"]
    assert f"ARG UV_VERSION={uv}\n" in TRAINER_DOCKERFILE.read_text()
    for lock in LOCKS.values():
        assert lock.read_text().startswith(f"# Generated by hack/lock-requirements.sh (uv {uv})")


# -- what the operator image needs ----------------------------------------------------------------


def copied_files(path: Path, root: Path = ROOT) -> set[Path]:
    """Repository files (relative) that the Dockerfile's COPYs take from the build context."""
    out: set[Path] = set()
    for src, _ in copy_sources(path):
        for match in glob.glob(str(root / src)):
            p = Path(match)
            files = [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
            out.update(f.relative_to(root) for f in files if not dockerignored(str(f.relative_to(root)), root))
    return out


def _module_file(module: str, files: set[Path]) -> Path | None:
    parts = module.split(".")
    for package_root in PACKAGE_ROOTS:
        for candidate in (Path(package_root, *parts).with_suffix(".py"), Path(package_root, *parts, "__init__.py")):
            if candidate in files:
                return candidate
    return None


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `try: … except ImportError` (a feature that says what to install when absent)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                if any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types):
                    return True
        if isinstance(parent, ast.If) and node in parent.body and "TYPE_CHECKING" in ast.unparse(parent.test):
            return True
        node = parent
    return False


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of what `module` imports, inside functions too, without the optional
    and TYPE_CHECKING ones; `from a import b` yields `a` and `a.b` (b may be a submodule)."""
    tree = ast.parse(source)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _optional(node, parents):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        names.add(target)
        names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def image_problems(root: Path, files: set[Path], entries: tuple[str, ...], pins: set[str]) -> list[str]:
    """What an image holding `files` (relative to `root`) lacks to run the `entries` modules:
    first-party modules it does not copy, third-party ones its lock (`pins`) does not install."""
    first_party = {"kubetune", "kubetune_trainer"}
    repo = {p.relative_to(root) for r in PACKAGE_ROOTS for p in (root / r).rglob("*.py")}
    problems: list[str] = []
    third_party: dict[str, str] = {}
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module, files)
        if path is None:
            problems.append(f"{module} is not in the image")
            continue
        todo.extend(".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1))
        for name in sorted(imports_of((root / path).read_text(), module, path.name == "__init__.py")):
            top = name.split(".")[0]
            if top in first_party:
                if _module_file(name, files) is not None:
                    todo.append(name)
                elif _module_file(name, repo) is not None:
                    problems.append(f"{module} imports {name}, which the image does not copy")
                elif (_module_file(name.rpartition(".")[0], files) is None
                      and _module_file(name.rpartition(".")[0], repo) is None):
                    problems.append(f"{module} imports {name}, which is not in the image")
                # else: a name defined in a module (its own import reports it when not copied)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, module)
    packages = importlib.metadata.packages_distributions()
    for top, importer in sorted(third_party.items()):
        dists = {canonicalize_name(d) for d in packages.get(top, [])}
        if not dists & pins:
            problems.append(f"{importer} imports {top} ({', '.join(sorted(dists)) or 'no distribution'}), "
                            "which the lock does not install")
    return problems


# Imported only after `importlib.util.find_spec` found them, with an error saying what to
# install otherwise: not dependencies of the image.
OPTIONAL_THIRD_PARTY = {
    "boto3": "s3:// serving sources (kubetune.serving.fetch): not installable beside kubernetes 37",
}
# Gaps this check found that are not fixed yet. Each is a real failure of the built image; the
# test fails when one is fixed too, so that the entry goes.
KNOWN_GAPS: set[str] = set()


def test_everything_the_operator_image_runs_is_inside_it_but_the_known_gaps() -> None:
    problems = [
        p for p in image_problems(ROOT, copied_files(OPERATOR_DOCKERFILE), OPERATOR_IMAGE_ENTRY_MODULES,
                                  set(locked("operator")))
        if not any(p.startswith(f"{m} imports {name} ") for name in OPTIONAL_THIRD_PARTY
                   for m in ("kubetune.serving.fetch",))
    ]
    new = sorted(set(problems) - KNOWN_GAPS)
    assert not new, "operator/Dockerfile or requirements/operator.lock lacks:\n" + "\n".join(new)
    fixed = sorted(KNOWN_GAPS - set(problems))
    assert not fixed, "fixed, remove from KNOWN_GAPS:\n" + "\n".join(fixed)


def test_the_check_finds_an_uncopied_module_and_an_unlocked_dependency(tmp_path: Path) -> None:
    pkg = tmp_path / "operator" / "kubetune"
    (pkg / "operator").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "operator" / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(
        "from kubetune.operator import run\n"
        "def main():\n    from kubetune.extra import helper  # lazy: found all the same\n"
        "    import yaml\n"
        "try:\n    import rich\nexcept ImportError:\n    rich = None\n")
    (pkg / "extra.py").write_text("import kopf\n")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x\nCOPY operator/kubetune/__init__.py operator/kubetune/cli.py operator/kubetune/\n"
                          "COPY operator/kubetune/operator/ operator/kubetune/operator/\n")
    files = copied_files(dockerfile, tmp_path)
    assert image_problems(tmp_path, files, ("kubetune.cli",), {"pyyaml"}) == [
        "kubetune.cli imports kubetune.extra, which the image does not copy"]
    assert image_problems(tmp_path, files, ("kubetune.cli",), set()) == [
        "kubetune.cli imports kubetune.extra, which the image does not copy",
        "kubetune.cli imports yaml (pyyaml), which the lock does not install"]
