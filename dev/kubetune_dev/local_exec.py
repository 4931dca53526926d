"""Container entry point of the local runner, run inside a private mount namespace.

``unshare --mount --propagation private -- python -m kubetune_dev.local_exec PLAN``
bind-mounts every volume at its mount path (visible to this process tree only), then
``exec``s the container's command. Mount points that do not exist are created first and
listed in the plan's ``created_paths_file`` so that the runner can remove them later. A failure
before ``exec`` is written to ``start_error_file`` and ends with exit code 128, like a
container runtime's StartError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

START_ERROR_EXIT_CODE = 128


def _create_mount_point(source: Path, target: Path, created: list[str]) -> None:
    missing = []
    parent = target if source.is_dir() else target.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
        created.append(str(folder))
    if not source.is_dir() and not target.exists():
        target.touch()
        created.append(str(target))


def _bind(source: str, target: str, read_only: bool) -> None:
    subprocess.run(["mount", "--bind", source, target], check=True, capture_output=True,
                   text=True, timeout=10)
    if read_only:
        subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True,
                       capture_output=True, text=True, timeout=10)


def prepare_and_exec(plan: dict[str, Any]) -> None:
    created: list[str] = []
    try:
        for mount in plan["mounts"]:
            _create_mount_point(Path(mount["source"]), Path(mount["target"]), created)
            _bind(mount["source"], mount["target"], mount["read_only"])
        os.chdir(plan["cwd"])
    finally:
        with Path(plan["created_paths_file"]).open("a") as listing:  # restarts append
            listing.write("".join(f"{path}\n" for path in created))
    sys.stdout.flush()
    os.execvpe(plan["argv"][0], plan["argv"], plan["env"])


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    try:
        prepare_and_exec(plan)
    except subprocess.CalledProcessError as error:
        message = f"mount failed: {' '.join(error.cmd)}: {error.stderr.strip()}"
    except OSError as error:
        message = f"failed to start {plan['argv'][0]!r}: {error}"
    Path(plan["start_error_file"]).write_text(message)
    print(message, file=sys.stderr)
    sys.exit(START_ERROR_EXIT_CODE)


if __name__ == "__main__":
    main()
