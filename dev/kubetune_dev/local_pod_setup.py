"""Turn a pod spec into what the local runner needs to start a container as a process.

Environment variables are resolved the way the kubelet does (``value``, ``valueFrom``,
``envFrom``, ``$(VAR)`` expansion); the downward API's ``status.podIP`` is the pod's own address
(see :mod:`kubetune_dev.local_pod_network`), ``status.hostIP`` is ``HOST_IP``. Volumes
are made by :mod:`kubetune_dev.local_pod_volumes`. Pods are plain dicts in the API's
camelCase form.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

Pod = dict[str, Any]
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
HOST_IP = "127.0.0.1"  # the node kubetune-local's InternalIP


class VolumeNotReady(RuntimeError):
    """A referenced ConfigMap/Secret does not exist (yet); the kubelet would keep waiting."""


class ContainerConfigError(RuntimeError):
    """A ConfigMap/Secret (or key) the container's environment references is missing: the
    kubelet keeps the container waiting with reason CreateContainerConfigError and this
    message, in its own words, and tries again."""


class UnsupportedPodSpec(RuntimeError):
    """The pod uses something the local runner cannot do; the pod fails with this message."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    """Everything :mod:`kubetune_dev.local_exec` needs; written as JSON."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    mounts: list[Mount]
    start_error_file: str
    created_paths_file: str

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


def claim_path(state_dir: Path, namespace: str, claim: str) -> Path:
    """The local folder backing PersistentVolumeClaim ``namespace/claim``."""
    return state_dir / "pvc" / namespace / claim


def read_config_map(core: client.CoreV1Api, namespace: str, name: str,
                    optional: bool) -> dict[str, bytes] | None:
    try:
        cm = core.read_namespaced_config_map(name, namespace)
    except ApiException as error:
        if error.status == 404 and optional:
            return None
        if error.status == 404:
            raise VolumeNotReady(f'configmap "{name}" not found') from error
        raise
    data = {key: value.encode() for key, value in (cm.data or {}).items()}
    data.update({key: base64.b64decode(value) for key, value in (cm.binary_data or {}).items()})
    return data


def read_secret(core: client.CoreV1Api, namespace: str, name: str,
                optional: bool) -> dict[str, bytes] | None:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404 and optional:
            return None
        if error.status == 404:
            raise VolumeNotReady(f'secret "{name}" not found') from error
        raise
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def field_value(pod: Pod, field_path: str, pod_ip: str) -> str:
    """Value of a downward-API ``fieldRef.fieldPath`` for a pod on the local node whose
    address is ``pod_ip``."""
    meta, spec = pod["metadata"], pod["spec"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": HOST_IP,
        "status.hostIPs": HOST_IP,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,  # the kubelet joins several with ","; a local pod has one
    }
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    if field_path not in simple:
        raise UnsupportedPodSpec(f"fieldRef {field_path!r} is not supported by the local runner")
    return str(simple[field_path])


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


def resolve_env(core: client.CoreV1Api, pod: Pod, container: dict[str, Any],
                base: dict[str, str], pod_ip: str) -> dict[str, str]:
    """The container's environment: ``base``, then ``envFrom``, then ``env`` in order."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        try:
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = read_config_map(core, namespace, ref["name"], ref.get("optional", False))
            else:
                ref = source["secretRef"]
                data = read_secret(core, namespace, ref["name"], ref.get("optional", False))
        except VolumeNotReady as error:
            raise ContainerConfigError(str(error)) from error
        env.update({prefix + key: value.decode() for key, value in (data or {}).items()})
    for var in container.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip)
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            is_cm = "configMapKeyRef" in source
            ref = source["configMapKeyRef" if is_cm else "secretKeyRef"]
            reader = read_config_map if is_cm else read_secret
            try:
                data = reader(core, namespace, ref["name"], ref.get("optional", False))
            except VolumeNotReady as error:  # 'secret "x" not found', as the kubelet says it
                raise ContainerConfigError(str(error)) from error
            if data is not None and ref["key"] in data:
                env[var["name"]] = data[ref["key"]].decode()
            elif not ref.get("optional", False):
                kind = "ConfigMap" if is_cm else "Secret"
                raise ContainerConfigError(
                    f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
        elif "resourceFieldRef" in source:
            resource = source["resourceFieldRef"]["resource"]  # e.g. limits.cpu
            kind, _, name = resource.partition(".")
            value = (container.get("resources", {}).get(kind) or {}).get(name, "0")
            env[var["name"]] = str(value)
        else:
            raise UnsupportedPodSpec(f"env {var['name']!r}: valueFrom {sorted(source)}")
    return env


def build_launch_plan(core: client.CoreV1Api, pod: Pod, container: dict[str, Any],
                      volumes: dict[str, Path], pod_dir: Path,
                      base_env: dict[str, str], pod_ip: str) -> LaunchPlan:
    """Command, environment, working dir and bind mounts for one container of ``pod``."""
    name = container["name"]
    env = resolve_env(core, pod, container, base_env, pod_ip)
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    if not command:
        raise UnsupportedPodSpec(
            f"container {name!r} has no command: the local runner ignores images, so it "
            "needs spec.containers[].command"
        )
    termination_log = pod_dir / f"{name}.termination-log"
    termination_log.write_bytes(b"")
    mounts = [Mount(str(termination_log),
                    container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)]
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise UnsupportedPodSpec(f"volumeMount {mount['name']!r} has no matching volume")
        source = volumes[mount["name"]]
        if mount.get("subPath"):
            source = source / expand(mount["subPath"], env)
            if not source.exists():
                source.mkdir(parents=True)
        mounts.append(Mount(str(source), mount["mountPath"], bool(mount.get("readOnly"))))
    # Parents are mounted before children, as the kubelet does.
    mounts.sort(key=lambda mount: len(Path(mount.target).parts))
    return LaunchPlan(
        argv=command + args,
        env=env,
        cwd=container.get("workingDir") or str(pod_dir),
        mounts=mounts,
        start_error_file=str(pod_dir / f"{name}.start-error"),
        created_paths_file=str(pod_dir / f"{name}.created-paths"),
    )


def base_environment(pod: Pod, apiserver_host: str, apiserver_port: int) -> dict[str, str]:
    """What every container gets before its own env: PATH (venv first), HOME, service vars."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOSTNAME": pod["metadata"]["name"],
        "KUBERNETES_SERVICE_HOST": apiserver_host,
        "KUBERNETES_SERVICE_PORT": str(apiserver_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(apiserver_port),
    }
