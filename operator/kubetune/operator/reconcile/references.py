"""What a FineTuneJob's spec references: Secrets (API keys, tokens), ConfigMaps (datasets kept
beside the job) and PersistentVolumeClaims (base model, datasets, the artifacts claim). Checked
before the trainer Job is created, so a missing one (or a missing key) is named in status
instead of leaving the pod stuck in CreateContainerConfigError, ContainerCreating (FailedMount)
or Pending (claim not found) while it holds a GPU. `secret_problems` is shared with
`kubetune validate`; only key names are compared, values are never used.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import kubernetes
from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import Reason
from kubetune.api.finetunejob import FineTuneJobSpec, secret_refs

# Key names of a Secret: (namespace, name) -> its keys, or None when it does not exist; raises
# PermissionError when it may not be read (that reference is then not checked).
SecretKeys = Callable[[str, str], Collection[str] | None]


def secret_problems(spec: FineTuneJobSpec, namespace: str, secret_keys: SecretKeys) -> list[str]:
    """What is missing of the Secrets `spec` references: one message per reference whose Secret
    or key does not exist, naming the field, the Secret and the key."""
    problems = []
    for field, ref in secret_refs(spec):
        try:
            keys = secret_keys(namespace, ref.name)
        except PermissionError:
            continue
        if keys is None:
            problems.append(
                f"{field}: Secret {ref.name!r} not found in namespace {namespace!r}; create it with key "
                f"{ref.key!r} (kubectl create secret generic {ref.name} -n {namespace} "
                f"--from-literal={ref.key}=...)"
            )
        elif ref.key not in keys:
            problems.append(
                f"{field}: Secret {ref.name!r} in namespace {namespace!r} has no key {ref.key!r} "
                f"(its keys: {', '.join(sorted(keys)) or 'none'}); add the key, or set {field}.key to one of them"
            )
    return problems


def read_secret_keys(
    core: kubernetes.client.CoreV1Api, namespace: str, name: str
) -> list[str] | None:
    """The key names of a Secret (never its values), None when it does not exist; raises
    PermissionError when the credentials may not `get` it."""
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            raise PermissionError(f"may not get Secret {namespace}/{name}") from exc
        raise
    return [*(secret.data or {}), *(secret.string_data or {})]


# (namespace, name) -> the ConfigMap's keys, or None when it does not exist; raises
# PermissionError when it may not be read (that reference is then not checked).
ConfigMapKeys = Callable[[str, str], Collection[str] | None]
# (namespace, name) -> whether the claim exists; raises PermissionError like ConfigMapKeys.
ClaimExists = Callable[[str, str], bool]


@dataclass(frozen=True)
class Problem:
    """One missing reference: the reason for status and an actionable message."""

    reason: str
    message: str


def _sources(spec: FineTuneJobSpec) -> list[tuple[str, object]]:
    sources: list[tuple[str, object]] = [("dataset.source", spec.dataset.source)]
    if spec.dataset.general is not None:
        sources.append(("dataset.general.source", spec.dataset.general.source))
    if spec.evaluation.forgetting_set is not None:
        sources.append(("evaluation.forgettingSet", spec.evaluation.forgetting_set))
    return sources


def referenced_claims(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """(field path, claim name) of every PersistentVolumeClaim the trainer pod mounts."""
    uris = [("baseModel.uri", spec.base_model.uri)]
    uris += [(f"{field}.uri", getattr(source, "uri", None) or "") for field, source in _sources(spec)]
    claims = [(field, uri[len("pvc://"):].split("/", 1)[0]) for field, uri in uris if uri.startswith("pvc://")]
    claims.append(("export.output.pvcName", spec.export.output.pvc_name))
    return claims


def reference_problems(
    spec: FineTuneJobSpec, namespace: str, configmap_keys: ConfigMapKeys, claim_exists: ClaimExists
) -> list[Problem]:
    """One problem per referenced ConfigMap (or key) and claim that does not exist."""
    problems: list[Problem] = []
    for field, source in _sources(spec):
        ref = getattr(source, "config_map", None)
        if ref is None:
            continue
        try:
            keys = configmap_keys(namespace, ref.name)
        except PermissionError:
            continue
        if keys is None:
            problems.append(Problem(Reason.CONFIGMAP_NOT_FOUND, (
                f"{field}.configMap: ConfigMap {ref.name!r} not found in namespace {namespace!r}; create it "
                f"with key {ref.key!r} (kubectl create configmap {ref.name} -n {namespace} "
                f"--from-file={ref.key}=<file>)")))
        elif ref.key not in keys:
            problems.append(Problem(Reason.CONFIGMAP_NOT_FOUND, (
                f"{field}.configMap: ConfigMap {ref.name!r} in namespace {namespace!r} has no key {ref.key!r} "
                f"(its keys: {', '.join(sorted(keys)) or 'none'}); add the key, or set "
                f"{field}.configMap.key to one of them")))
    seen: set[str] = set()
    for field, claim in referenced_claims(spec):
        if claim in seen:
            continue
        seen.add(claim)
        try:
            exists = claim_exists(namespace, claim)
        except PermissionError:
            continue
        if not exists:
            problems.append(Problem(Reason.PVC_NOT_FOUND, (
                f"{field}: PersistentVolumeClaim {claim!r} not found in namespace {namespace!r}; create it "
                f"(kubectl get pvc -n {namespace} lists those there are) or point {field} at one that exists")))
    return problems


def read_configmap_keys(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> list[str] | None:
    """The keys of a ConfigMap, None when it does not exist; PermissionError when forbidden."""
    try:
        cm = core.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            raise PermissionError(f"may not get ConfigMap {namespace}/{name}") from exc
        raise
    return [*(cm.data or {}), *(cm.binary_data or {})]


def read_claim_access_modes(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> list[str] | None:
    """A PersistentVolumeClaim's access modes (as bound, else as asked), None when it does not
    exist; PermissionError when forbidden."""
    try:
        claim = core.read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 403:
            raise PermissionError(f"may not get PersistentVolumeClaim {namespace}/{name}") from exc
        raise
    status = getattr(claim, "status", None)
    spec = getattr(claim, "spec", None)
    return list(getattr(status, "access_modes", None) or getattr(spec, "access_modes", None) or [])


def single_node_only(access_modes: list[str]) -> bool:
    """Whether a claim with these access modes attaches to one node at a time."""
    return bool(access_modes) and "ReadWriteMany" not in access_modes
