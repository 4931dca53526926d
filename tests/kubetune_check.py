"""Run kubetune-check (hack/kubetune-check, built by hack/build-kubetune-check.sh): kstatus from
sigs.k8s.io/cli-utils, Argo CD Lua health checks under gopher-lua, and kind's own config loader.
The tests judge kubetune's objects and files with the code GitOps tools and kind run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kubetune_dev.tools import REPO_ROOT, find_kubetune_check

ARGOCD_DIR = REPO_ROOT / "deploy" / "argocd"
FINETUNEJOB_HEALTH = ARGOCD_DIR / "health-finetunejob.lua"
MODELDEPLOYMENT_HEALTH = ARGOCD_DIR / "health-modeldeployment.lua"


class CheckRefused(Exception):
    """kubetune-check exited non-zero; the message is its stderr."""


def run_check(*args: str, stdin: str | None = None) -> dict[str, Any]:
    """Run kubetune-check with `args`; its JSON answer, or CheckRefused with its stderr."""
    proc = subprocess.run(
        [str(find_kubetune_check()), *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise CheckRefused(proc.stderr.strip())
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def kstatus(obj: dict[str, Any]) -> dict[str, Any]:
    """kstatus.Compute of one object: {status, message, conditions}."""
    return run_check("kstatus", "-", stdin=json.dumps(obj))


def argo_health(script: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """An Argo CD health.lua run against one object, as Argo CD runs it: {status, message}."""
    return run_check("argo-health", str(script), "-", stdin=json.dumps(obj))


def kind_config(path: Path) -> dict[str, Any]:
    """A kind config as kind loads, defaults and validates it (CheckRefused when kind refuses it)."""
    return run_check("kind-config", str(path))
