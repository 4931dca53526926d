"""``python -m kubetune_dev up|down|status [--state-dir DIR]`` (used by hack/cluster.sh).

``up`` starts a dev cluster that keeps running after this command exits; ``down`` stops the
processes recorded in the state dir and deletes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from kubetune_dev.cluster import INFO_FILE, STOP_ORDER, start_dev_cluster
from kubetune_dev.processes import ComponentError, stop_recorded_processes
from kubetune_dev.tools import REPO_ROOT, ToolchainError

DEFAULT_STATE_DIR = REPO_ROOT / ".kubetune" / "cluster"


def up(state_dir: Path) -> int:
    try:
        cluster = start_dev_cluster(state_dir)
    except (ToolchainError, ComponentError) as error:
        print(f"cluster up failed: {error}", file=sys.stderr)
        return 1
    print(f"dev cluster up in {cluster.startup_seconds:.1f} s")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print(f"  logs: {state_dir.resolve() / 'logs'}; stop: hack/cluster.sh down")
    return 0


def down(state_dir: Path) -> int:
    for name in stop_recorded_processes(state_dir, STOP_ORDER):
        print(f"stopped {name}")
    shutil.rmtree(state_dir, ignore_errors=True)
    print(f"removed {state_dir}")
    return 0


def status(state_dir: Path) -> int:
    info = state_dir / INFO_FILE
    if not info.exists():
        print(f"no dev cluster in {state_dir}")
        return 1
    print(json.dumps(json.loads(info.read_text()), indent=1))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetune_dev", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args()
    state_dir = args.state_dir.resolve()
    sys.exit({"up": up, "down": down, "status": status}[args.command](state_dir))


if __name__ == "__main__":
    main()
