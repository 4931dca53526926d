"""Turn a pod spec into what the local runner needs to start a container as a process.

Volumes are materialised as folders under the pod's directory (ConfigMap and Secret files,
emptyDir, projected token/ConfigMap/downward API), PersistentVolumeClaims map to
``<state-dir>/pvc/<namespace>/<claim>`` and hostPath is used as is. Environment variables are
resolved the way the kubelet does (``value``, ``valueFrom``, ``envFrom``, ``$(VAR)``
expansion). Pods are plain dicts in the API's camelCase form.
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

from kubetune.devcluster.kube import as_dict

Pod = dict[str, Any]
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
LOCAL_IP = "127.0.0.1"


class VolumeNotReady(RuntimeError):
    """A referenced ConfigMap/Secret does not exist (yet); the kubelet would keep waiting."""


class UnsupportedPodSpec(RuntimeError):
    """The pod uses something the local runner cannot do; the pod fails with this message."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchPlan:
    """Everything :mod:`kubetune.devcluster.local_exec` needs; written as JSON."""

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


def _read_config_map(core: client.CoreV1Api, namespace: str, name: str,
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


def _read_secret(core: client.CoreV1Api, namespace: str, name: str,
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


def _write_items(folder: Path, data: dict[str, bytes], items: list[dict[str, Any]] | None,
                 default_mode: int) -> None:
    selected = [(item["key"], item["path"], item.get("mode", default_mode)) for item in items] \
        if items else [(key, key, default_mode) for key in data]
    for key, relative, mode in selected:
        if key not in data:
            raise VolumeNotReady(f'key "{key}" not found')
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(mode)


def field_value(pod: Pod, field_path: str) -> str:
    """Value of a downward-API ``fieldRef.fieldPath`` for a pod on the local node."""
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
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
    }
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    if field_path not in simple:
        raise UnsupportedPodSpec(f"fieldRef {field_path!r} is not supported by the local runner")
    return str(simple[field_path])


def _projected(core: client.CoreV1Api, pod: Pod, folder: Path, volume: dict[str, Any]) -> None:
    namespace = pod["metadata"]["namespace"]
    mode = volume.get("defaultMode", 0o644)
    for source in volume.get("sources", []):
        if "configMap" in source:
            ref = source["configMap"]
            data = _read_config_map(core, namespace, ref["name"], ref.get("optional", False))
            if data is not None:
                _write_items(folder, data, ref.get("items"), mode)
        elif "secret" in source:
            ref = source["secret"]
            data = _read_secret(core, namespace, ref["name"], ref.get("optional", False))
            if data is not None:
                _write_items(folder, data, ref.get("items"), mode)
        elif "downwardAPI" in source:
            _downward(pod, folder, source["downwardAPI"].get("items", []), mode)
        elif "serviceAccountToken" in source:
            ref = source["serviceAccountToken"]
            spec: dict[str, Any] = {
                "expirationSeconds": ref.get("expirationSeconds", 3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                   "name": pod["metadata"]["name"],
                                   "uid": pod["metadata"]["uid"]},
            }
            if ref.get("audience"):
                spec["audiences"] = [ref["audience"]]
            request = core.create_namespaced_service_account_token(
                pod["spec"].get("serviceAccountName", "default"), namespace,
                {"spec": spec})  # type: ignore[arg-type]  # the client takes dict bodies
            path = folder / ref["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(as_dict(core.api_client, request)["status"]["token"])
            path.chmod(mode)
        else:
            raise UnsupportedPodSpec(f"projected source {sorted(source)} is not supported")


def _downward(pod: Pod, folder: Path, items: list[dict[str, Any]], mode: int) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise UnsupportedPodSpec("downwardAPI resourceFieldRef is not supported")
        path = folder / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(field_value(pod, item["fieldRef"]["fieldPath"]))
        path.chmod(item.get("mode", mode))


def materialise_volumes(core: client.CoreV1Api, pod: Pod, pod_dir: Path,
                        state_dir: Path) -> dict[str, Path]:
    """Create every volume of ``pod`` on the local disk; return volume name -> folder/file."""
    namespace = pod["metadata"]["namespace"]
    paths: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        folder = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume:
            ref = volume["configMap"]
            folder.mkdir(parents=True, exist_ok=True)
            data = _read_config_map(core, namespace, ref["name"], ref.get("optional", False))
            _write_items(folder, data or {}, ref.get("items"), ref.get("defaultMode", 0o644))
        elif "secret" in volume:
            ref = volume["secret"]
            folder.mkdir(parents=True, exist_ok=True)
            data = _read_secret(core, namespace, ref["secretName"], ref.get("optional", False))
            _write_items(folder, data or {}, ref.get("items"), ref.get("defaultMode", 0o644))
        elif "projected" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            _projected(core, pod, folder, volume["projected"])
        elif "downwardAPI" in volume:
            folder.mkdir(parents=True, exist_ok=True)
            downward = volume["downwardAPI"]
            _downward(pod, folder, downward.get("items", []), downward.get("defaultMode", 0o644))
        elif "persistentVolumeClaim" in volume:
            folder = claim_path(state_dir, namespace, volume["persistentVolumeClaim"]["claimName"])
            folder.mkdir(parents=True, exist_ok=True)
        elif "hostPath" in volume:
            folder = Path(volume["hostPath"]["path"])
            kind = volume["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                folder.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.touch()
            elif kind and not folder.exists():
                raise VolumeNotReady(f"hostPath {folder} does not exist")
        else:
            kinds = sorted(set(volume) - {"name"})
            raise UnsupportedPodSpec(f"volume {name!r} of type {kinds} is not supported")
        paths[name] = folder
    return paths


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(replace, text)


def resolve_env(core: client.CoreV1Api, pod: Pod, container: dict[str, Any],
                base: dict[str, str]) -> dict[str, str]:
    """The container's environment: ``base``, then ``envFrom``, then ``env`` in order."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = _read_config_map(core, namespace, ref["name"], ref.get("optional", False))
        else:
            ref = source["secretRef"]
            data = _read_secret(core, namespace, ref["name"], ref.get("optional", False))
        env.update({prefix + key: value.decode() for key, value in (data or {}).items()})
    for var in container.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[var["name"]] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            is_cm = "configMapKeyRef" in source
            ref = source["configMapKeyRef" if is_cm else "secretKeyRef"]
            reader = _read_config_map if is_cm else _read_secret
            data = reader(core, namespace, ref["name"], ref.get("optional", False))
            if data is not None and ref["key"] in data:
                env[var["name"]] = data[ref["key"]].decode()
            elif not ref.get("optional", False):
                raise VolumeNotReady(f'key "{ref["key"]}" not found in {ref["name"]}')
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
                      base_env: dict[str, str]) -> LaunchPlan:
    """Command, environment, working dir and bind mounts for one container of ``pod``."""
    name = container["name"]
    env = resolve_env(core, pod, container, base_env)
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
