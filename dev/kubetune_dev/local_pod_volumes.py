"""A pod's volumes as folders on the local disk, kept up to date like the kubelet keeps them.

emptyDir is a folder under the pod's directory, a PersistentVolumeClaim maps to
``<state-dir>/pvc/<namespace>/<claim>`` and hostPath is used as is. ConfigMap, Secret,
downwardAPI and projected volumes are written the way the kubelet's AtomicWriter writes them::

    <volume>/..2026_01_31_12_00_00.123456/key   the files of one version (a timestamped dir)
    <volume>/..data -> ..2026_01_31_12_00_00.123456
    <volume>/key -> ..data/key                  what the container opens

An update writes a new timestamped dir, points a ``..data_tmp`` symlink at it and renames that
over ``..data`` (one atomic step), fixes the visible symlinks and deletes the old dir: a reader
sees the old version or the new one, never a half-written file. Containers see a volume through a
bind mount of its folder, so the swap inside the folder reaches them.

While a pod runs, :func:`refresh_volumes` is called about every second and rewrites ConfigMap,
Secret and projected volumes whose sources changed (a real kubelet takes up to its sync period,
about a minute, plus its cache's TTL). A ConfigMap or Secret that is gone keeps its last
content, unless it is ``optional`` (then the volume empties), as with the kubelet. Mounts with a
``subPath`` are not updated (the kubelet does not update them either): the bind mount holds the
file of the version that was current when the container started.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from kubernetes import client

from kubetune_dev.kube import as_dict
from kubetune_dev.local_pod_setup import (
    Pod,
    UnsupportedPodSpec,
    VolumeNotReady,
    claim_path,
    field_value,
    read_config_map,
    read_secret,
)

log = logging.getLogger(__name__)
DATA_LINK = "..data"
DEFAULT_MODE = 0o644
TOKEN_REFRESH_FRACTION = 0.8  # the kubelet renews a projected token at 80 % of its lifetime
REFRESHED_KINDS = ("configMap", "secret", "projected", "downwardAPI")
Payload = dict[str, tuple[bytes, int]]  # path in the volume -> (content, file mode)


class TokenCache:
    """Projected ServiceAccount tokens of one pod, requested again at 80 % of their lifetime."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, int], tuple[str, float]] = {}

    def token(self, core: client.CoreV1Api, pod: Pod, ref: dict[str, Any]) -> str:
        seconds = int(ref.get("expirationSeconds", 3600))
        key = (ref["path"], ref.get("audience", ""), seconds)
        cached = self._tokens.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        spec: dict[str, Any] = {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                               "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
        }
        if ref.get("audience"):
            spec["audiences"] = [ref["audience"]]
        request = core.create_namespaced_service_account_token(
            pod["spec"].get("serviceAccountName", "default"), pod["metadata"]["namespace"],
            {"spec": spec})  # type: ignore[arg-type]  # the client takes dict bodies
        token: str = as_dict(core.api_client, request)["status"]["token"]
        self._tokens[key] = (token, time.monotonic() + TOKEN_REFRESH_FRACTION * seconds)
        return token


def _select(data: dict[str, bytes] | None, items: list[dict[str, Any]] | None,
            mode: int, optional: bool) -> Payload:
    """The files a ConfigMap/Secret source gives: every key, or the listed ``items``."""
    if data is None:  # optional and absent
        return {}
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    payload: Payload = {}
    for item in items:
        if item["key"] in data:
            payload[item["path"]] = (data[item["key"]], item.get("mode", mode))
        elif not optional:
            raise VolumeNotReady(f'key "{item["key"]}" not found')
    return payload


def _downward(pod: Pod, items: list[dict[str, Any]], mode: int, pod_ip: str) -> Payload:
    payload: Payload = {}
    for item in items:
        if "fieldRef" not in item:
            raise UnsupportedPodSpec("downwardAPI resourceFieldRef is not supported")
        value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip)
        payload[item["path"]] = (value.encode(), item.get("mode", mode))
    return payload


def _projected(core: client.CoreV1Api, pod: Pod, volume: dict[str, Any], pod_ip: str,
               tokens: TokenCache) -> Payload:
    namespace = pod["metadata"]["namespace"]
    mode = volume.get("defaultMode", DEFAULT_MODE)
    payload: Payload = {}
    for source in volume.get("sources", []):
        if "configMap" in source or "secret" in source:
            kind = "configMap" if "configMap" in source else "secret"
            ref = source[kind]
            optional = ref.get("optional", False)
            reader = read_config_map if kind == "configMap" else read_secret
            data = reader(core, namespace, ref["name"], optional)
            payload.update(_select(data, ref.get("items"), mode, optional))
        elif "downwardAPI" in source:
            payload.update(_downward(pod, source["downwardAPI"].get("items", []), mode, pod_ip))
        elif "serviceAccountToken" in source:
            ref = source["serviceAccountToken"]
            payload[ref["path"]] = (tokens.token(core, pod, ref).encode(), mode)
        else:
            raise UnsupportedPodSpec(f"projected source {sorted(source)} is not supported")
    return payload


def volume_payload(core: client.CoreV1Api, pod: Pod, volume: dict[str, Any], pod_ip: str,
                   tokens: TokenCache) -> Payload:
    """The files of a ConfigMap, Secret, downwardAPI or projected volume, read now."""
    namespace = pod["metadata"]["namespace"]
    if "configMap" in volume or "secret" in volume:
        is_cm = "configMap" in volume
        ref = volume["configMap" if is_cm else "secret"]
        optional = ref.get("optional", False)
        data = (read_config_map(core, namespace, ref["name"], optional) if is_cm
                else read_secret(core, namespace, ref["secretName"], optional))
        return _select(data, ref.get("items"), ref.get("defaultMode", DEFAULT_MODE), optional)
    if "downwardAPI" in volume:
        downward = volume["downwardAPI"]
        return _downward(pod, downward.get("items", []),
                         downward.get("defaultMode", DEFAULT_MODE), pod_ip)
    if "projected" in volume:
        return _projected(core, pod, volume["projected"], pod_ip, tokens)
    raise ValueError(f"volume {volume['name']!r} is not written from API objects")


# -- the atomic writer ------------------------------------------------------------------------


def _check_path(relative: str) -> PurePosixPath:
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts \
            or path.parts[0].startswith(".."):
        raise UnsupportedPodSpec(f"volume file path {relative!r} is not allowed")
    return path


def _holds(version: Path, payload: Payload) -> bool:
    """Whether the timestamped dir ``version`` has exactly the files of ``payload``."""
    files = [path for path in version.rglob("*") if path.is_file()]
    if len(files) != len(payload):
        return False
    for relative, (content, mode) in payload.items():
        path = version / relative
        try:
            if path.read_bytes() != content or (path.stat().st_mode & 0o7777) != mode:
                return False
        except OSError:
            return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_atomically(folder: Path, payload: Payload) -> bool:
    """Make ``folder`` show ``payload`` (see the module docstring); False when it already did."""
    for relative in payload:
        _check_path(relative)
    folder.mkdir(parents=True, exist_ok=True)
    data_link = folder / DATA_LINK
    current = os.readlink(data_link) if data_link.is_symlink() else None
    if current is not None and _holds(folder / current, payload):
        return False
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    version = Path(tempfile.mkdtemp(prefix=stamp, dir=folder))
    version.chmod(0o755)
    for relative, (content, mode) in payload.items():
        path = version / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    staged = folder / f"{DATA_LINK}_tmp"
    staged.unlink(missing_ok=True)
    os.symlink(version.name, staged)
    os.rename(staged, data_link)  # the atomic step: readers now resolve to the new version
    visible = {_check_path(relative).parts[0] for relative in payload}
    for name in visible:
        link, target = folder / name, f"{DATA_LINK}/{name}"
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.exists() or link.is_symlink():
            _remove(link)  # a plain file from an older layout
        os.symlink(target, link)
    for entry in folder.iterdir():
        stale_file = not entry.name.startswith("..") and entry.name not in visible
        old_version = entry.name.startswith("..") and entry.name not in (version.name, DATA_LINK)
        if stale_file or old_version:
            _remove(entry)
    return True


# -- materialising and refreshing -------------------------------------------------------------


def materialise_volumes(core: client.CoreV1Api, pod: Pod, pod_dir: Path, state_dir: Path,
                        pod_ip: str, tokens: TokenCache) -> dict[str, Path]:
    """Create every volume of ``pod`` on the local disk; return volume name -> folder/file.

    Raises VolumeNotReady while a referenced ConfigMap/Secret/claim is missing (the caller
    retries) and UnsupportedPodSpec for volume kinds the local runner cannot provide.
    """
    namespace = pod["metadata"]["namespace"]
    paths: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        folder = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
        elif any(kind in volume for kind in REFRESHED_KINDS):
            write_atomically(folder, volume_payload(core, pod, volume, pod_ip, tokens))
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


def refresh_volumes(core: client.CoreV1Api, pod: Pod, pod_dir: Path, pod_ip: str,
                    tokens: TokenCache) -> list[str]:
    """Rewrite the ConfigMap/Secret/downwardAPI/projected volumes whose content changed;
    return their names. A source that cannot be read now leaves its volume as it is."""
    changed = []
    for volume in pod["spec"].get("volumes") or []:
        if not any(kind in volume for kind in REFRESHED_KINDS):
            continue
        try:
            payload = volume_payload(core, pod, volume, pod_ip, tokens)
        except VolumeNotReady as error:
            log.debug("volume %s keeps its content: %s", volume["name"], error)
            continue
        if write_atomically(pod_dir / "volumes" / volume["name"], payload):
            changed.append(volume["name"])
    return changed
