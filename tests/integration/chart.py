"""Helpers of the chart tests (tests/integration/test_chart.py, tests/e2e/test_least_privilege.py):
the pinned helm, `helm install` on the dev control plane, and a kubeconfig that authenticates as
the chart's operator ServiceAccount with a token from the TokenRequest API."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from kubetune.api import constants as c
from kubetune_dev import DevCluster
from kubetune_dev.tools import find_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubetune"
INSTALL_DOC = ROOT / "docs" / "install.md"
RELEASE = "kubetune"
RELEASE_NAMESPACE = "kubetune-system"
OPERATOR_SA = "kubetune-operator"  # <fullname>-operator; the release name already says kubetune


def helm_env(home: Path) -> dict[str, str]:
    """helm's environment with its cache, config and data under `home` (not the user's)."""
    return {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data")}


def helm(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(find_helm()), *args], capture_output=True, text=True, env=env, timeout=180)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def adopt_existing_crds(cluster: DevCluster) -> None:
    """CRDs applied earlier with `kubectl apply -f crds/` (as other test modules do) are handed
    to the release the way docs/install.md tells a user to."""
    ext = client.ApiextensionsV1Api(cluster.api_client())
    for plural in (c.FINETUNEJOB_PLURAL, c.MODELDEPLOYMENT_PLURAL):
        name = f"{plural}.{c.GROUP}"
        try:
            ext.read_custom_resource_definition(name)
        except client.ApiException as exc:
            if exc.status == 404:
                continue
            raise
        cluster.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl("annotate", "--overwrite", "crd", name, f"meta.helm.sh/release-name={RELEASE}",
                        f"meta.helm.sh/release-namespace={RELEASE_NAMESPACE}")


def install_chart(cluster: DevCluster, env: dict[str, str], *extra: str) -> None:
    """`helm install` (or upgrade) the chart into RELEASE_NAMESPACE, which enforces the
    restricted Pod Security Standard, and wait until both operator pods exist."""
    core = cluster.core()
    labels = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
    try:
        core.create_namespace({"metadata": {"name": RELEASE_NAMESPACE, "labels": labels}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    adopt_existing_crds(cluster)
    helm(env, "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
         "--kubeconfig", str(cluster.kubeconfig), *extra)
    ext = client.ApiextensionsV1Api(cluster.api_client())
    for plural in (c.FINETUNEJOB_PLURAL, c.MODELDEPLOYMENT_PLURAL):
        cluster.wait_for(lambda p=plural: any(
            cd.type == "Established" and cd.status == "True"
            for cd in ext.read_custom_resource_definition(f"{p}.{c.GROUP}").status.conditions or []),
            what=f"CRD {plural} established")

    def operator_pods() -> list[Any]:
        pods = core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator").items
        return pods if len(pods) == 2 else []

    # The ReplicaSet controller creates them only if Pod Security admission lets them in.
    cluster.wait_for(operator_pods, timeout=60, what="2 operator pods admitted under the restricted standard")



def uninstall_chart(cluster: DevCluster, env: dict[str, str]) -> None:
    helm(env, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--kubeconfig", str(cluster.kubeconfig))


def service_account_kubeconfig(cluster: DevCluster, path: Path, namespace: str = RELEASE_NAMESPACE,
                               name: str = OPERATOR_SA) -> Path:
    """A kubeconfig whose only credential is a bound token of ServiceAccount namespace/name, from
    the TokenRequest API: what the operator's pod would hold."""
    token = cluster.core().create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 7200}}).status.token
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "dev", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_cert)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "dev", "user": name, "namespace": "default"}}],
    }))
    return path


@dataclass(frozen=True)
class Permission:
    """One row of `kubectl auth can-i --list`: a resource (or a non-resource URL) and its verbs."""

    what: str
    verbs: frozenset[str]


_ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def parse_can_i(text: str) -> set[Permission]:
    """`kubectl auth can-i --list` output → permissions, verbs of repeated rows merged."""
    merged: dict[str, set[str]] = {}
    for line in text.splitlines()[1:]:
        m = _ROW.match(line)
        assert m, f"unexpected can-i line: {line!r}"
        resource, urls, names, verbs = m.groups()
        assert not names, f"{line!r}: resourceNames are not expected"
        for what in ([resource] if resource else urls.split()):
            merged.setdefault(what, set()).update(verbs.split())
    return {Permission(w, frozenset(v)) for w, v in merged.items()}


def can_i_list(cluster: DevCluster, kubeconfig: Path, namespace: str) -> str:
    return subprocess.run([str(cluster.tools.kubectl), f"--kubeconfig={kubeconfig}", "auth", "can-i", "--list",
                           "-n", namespace], capture_output=True, text=True, timeout=60, check=True).stdout


def can_i(cluster: DevCluster, kubeconfig: Path, verb: str, resource: str, *flags: str) -> bool:
    """`kubectl auth can-i VERB RESOURCE` as the kubeconfig's identity (exit 0: yes, 1: no)."""
    done = subprocess.run([str(cluster.tools.kubectl), f"--kubeconfig={kubeconfig}", "auth", "can-i", verb, resource,
                           *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.stdout.strip() == "yes"


def documented_permissions(scope: str) -> set[Permission]:
    """The RBAC table of docs/install.md (between `<!-- rbac:begin -->` and `<!-- rbac:end -->`):
    rows whose "where" is `scope` or "every namespace" or "every identity"."""
    text = INSTALL_DOC.read_text()
    table = text.split("<!-- rbac:begin -->", 1)[1].split("<!-- rbac:end -->", 1)[0]
    out: set[Permission] = set()
    for line in table.strip().splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        what, verbs, where = cells[0].strip("`"), cells[1], cells[2]
        if where in (scope, "every namespace", "every identity"):
            out.add(Permission(what, frozenset(v.strip() for v in verbs.split(","))))
    return out
