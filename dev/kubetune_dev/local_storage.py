"""A tiny dynamic provisioner so PersistentVolumeClaims bind in the dev cluster.

The StorageClass ``kubetune-local`` is the default class. For each Pending claim of that class
this creates a hostPath PersistentVolume at ``<state-dir>/pvc/<namespace>/<claim>`` (the folder
the local runner mounts for that claim), pre-bound to the claim, and the real PV controller in
kube-controller-manager binds them. Released volumes are deleted; their data stays in the state
dir until the cluster is torn down.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from kubernetes import client

from kubetune_dev.kube import Manifest, as_dict, create_unless_exists
from kubetune_dev.local_pod_setup import claim_path

STORAGE_CLASS = "kubetune-local"
PROVISIONER = "kubetune.dev/local-runner"
log = logging.getLogger(__name__)


def storage_class_manifest() -> Manifest:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    }


def volume_for_claim(claim: Manifest, state_dir: Path) -> Manifest:
    """A hostPath PV pre-bound to ``claim`` (pure; the caller creates it)."""
    meta, spec = claim["metadata"], claim["spec"]
    requests = spec.get("resources", {}).get("requests", {})
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": requests.get("storage", "1Gi")},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(claim_path(state_dir, meta["namespace"], meta["name"])),
                         "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"],
                         "uid": meta["uid"]},
        },
    }


def provision_once(core: client.CoreV1Api, state_dir: Path) -> None:
    """Create volumes for pending claims of our class and delete released volumes."""
    claims = as_dict(core.api_client, core.list_persistent_volume_claim_for_all_namespaces())
    for claim in claims["items"]:
        spec, meta = claim["spec"], claim["metadata"]
        if (spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName")
                or claim.get("status", {}).get("phase") != "Pending"):
            continue
        claim_path(state_dir, meta["namespace"], meta["name"]).mkdir(parents=True, exist_ok=True)
        create_unless_exists(core.create_persistent_volume, volume_for_claim(claim, state_dir))
    for volume in as_dict(core.api_client, core.list_persistent_volume())["items"]:
        annotations = volume["metadata"].get("annotations", {})
        if (annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER
                and volume.get("status", {}).get("phase") == "Released"):
            core.delete_persistent_volume(volume["metadata"]["name"])


def run_provisioner(core: client.CoreV1Api, state_dir: Path, stop: threading.Event,
                    interval: float = 0.5) -> None:
    """Provision until ``stop`` is set (polling: a dev cluster has a handful of claims)."""
    while not stop.wait(interval):
        try:
            provision_once(core, state_dir)
        except Exception:  # keep provisioning through apiserver hiccups
            log.exception("provisioning failed; retrying")
