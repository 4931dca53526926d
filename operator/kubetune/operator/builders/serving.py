"""Pure builders of a ModelDeployment's children: the serving ConfigMap, the StatefulSet of
Ollama + serve-agent pods (a StatefulSet so that each pod keeps its own prediction-log claim),
the Service and the PodDisruptionBudget.

Each returns a full object for server-side apply (apiVersion, kind, metadata with the owner
reference, the fields kubetune owns); nothing here calls the API.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from kubetune.api import constants as c
from kubetune.api import serving as s
from kubetune.api.modeldeployment import ModelDeploymentSpec

COMPONENT = "serving"
CONFIG_VOLUME = "serving-config"
MODELS_VOLUME = "models"
PREDICTIONS_VOLUME = "predictions"  # claims are named predictions-<name>-<ordinal>


def configmap_name(md_name: str) -> str:
    return f"{md_name}-serving"


def selector_labels(md_name: str) -> dict[str, str]:
    """The labels that select a ModelDeployment's pods (immutable in the Deployment)."""
    return {c.LABEL_MODELDEPLOYMENT: md_name, c.LABEL_COMPONENT: COMPONENT}


def _labels(md_name: str) -> dict[str, str]:
    return {
        **selector_labels(md_name),
        "app.kubernetes.io/name": "kubetune-serving",
        "app.kubernetes.io/instance": md_name,
        c.LABEL_MANAGED_BY: "kubetune",
    }


def _metadata(md: dict[str, Any], name: str) -> dict[str, Any]:
    meta = md["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": _labels(meta["name"]),
        "ownerReferences": [
            {
                "apiVersion": c.API_VERSION,
                "kind": c.MODELDEPLOYMENT_KIND,
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def config_revision(model: str, versions: Sequence[s.ServingVersion], served: str | None,
                    keep_loaded: Sequence[str]) -> str:
    """A short hash of everything the pods must converge to."""
    body = json.dumps(
        {
            "model": model,
            "versions": [v.model_dump(mode="json", by_alias=True) for v in versions],
            "served": served,
            "keepLoaded": list(keep_loaded),
        },
        sort_keys=True,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def serving_config(model: str, versions: Sequence[s.ServingVersion], served: str | None,
                   keep_loaded: Sequence[str]) -> s.ServingConfig:
    return s.ServingConfig(
        model=model,
        revision=config_revision(model, versions, served, keep_loaded),
        versions=list(versions),
        served=served,
        keep_loaded=list(keep_loaded),
    )


def build_configmap(md: dict[str, Any], config: s.ServingConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(md, configmap_name(md["metadata"]["name"])),
        "data": {
            s.SERVING_CONFIG_KEY: json.dumps(
                config.model_dump(mode="json", by_alias=True), indent=1, sort_keys=True
            )
        },
    }


def pvc_claims(versions: Sequence[s.ServingVersion]) -> list[str]:
    """Claims the pods must mount read-only (pvc:// sources), sorted."""
    claims: set[str] = set()
    for v in versions:
        for uri in (v.gguf_uri, v.modelfile_uri):
            if uri and uri.startswith("pvc://"):
                claims.add(uri[len("pvc://") :].split("/", 1)[0])
    return sorted(claims)


FALLBACK_API_KEY_ENV = "KUBETUNE_FALLBACK_API_KEY"


def _fallback_args(spec: ModelDeploymentSpec) -> list[str]:
    fallback = spec.fallback
    if fallback is None:
        return []
    args = [
        "--fallback-url", str(fallback.endpoint),
        "--fallback-model", fallback.model,
        "--fallback-timeout-seconds", str(fallback.timeout_seconds),
        "--fallback-on", ",".join(fallback.on),
    ]  # fmt: skip
    if fallback.api_key_secret_ref is not None:  # the key comes from the Secret, by name only
        args += ["--fallback-api-key-env", FALLBACK_API_KEY_ENV]
    return args


def _fallback_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    ref = spec.fallback.api_key_secret_ref if spec.fallback is not None else None
    if ref is None:
        return []
    return [{
        "name": FALLBACK_API_KEY_ENV,
        "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
    }]  # fmt: skip


def prediction_claim(md_name: str, ordinal: int) -> str:
    """The claim the StatefulSet controller makes for pod `<md_name>-<ordinal>`."""
    return f"{PREDICTIONS_VOLUME}-{md_name}-{ordinal}"


def build_statefulset(
    md: dict[str, Any],
    spec: ModelDeploymentSpec,
    claims: Sequence[str],
    *,
    agent_image: str,
    agent_command: Sequence[str],
    ollama_command: Sequence[str],
    image_pull_policy: str = "IfNotPresent",
    uid: int = 1000,
) -> dict[str, Any]:
    """Ollama + serve-agent pods. Every pod has its own model store (an emptyDir) that the
    agent fills from the ConfigMap, and its own prediction log on a claim from
    `volumeClaimTemplates` (or an emptyDir with `logging.storage: EmptyDir`); both containers
    bind the pod's IP so that on the local pod runner (one host) replicas are separate servers,
    as they are on a cluster.

    Pods start and stop in parallel (`podManagementPolicy: Parallel`): switching versions
    restarts no pod (the agent moves the alias), so ordered start-up would only slow scaling.
    A template change (new images, fallback, logging settings) rolls one pod at a time."""
    name = md["metadata"]["name"]
    pod_ip = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    gpu = {c.GPU_RESOURCE: str(spec.gpus)} if spec.gpus else {}
    ollama = {
        "name": "ollama",
        "image": spec.ollama_image,
        "imagePullPolicy": image_pull_policy,
        "command": list(ollama_command),
        "env": [
            pod_ip,
            {"name": "OLLAMA_HOST", "value": f"$(POD_IP):{s.OLLAMA_PORT}"},
            {"name": "OLLAMA_MODELS", "value": s.MODELS_DIR},
            {"name": "HOME", "value": s.MODELS_DIR},  # Ollama writes its key pair under $HOME/.ollama
            # One more than kept loaded: checking a version that is not kept (at pod start, or
            # after an Ollama restart) then never evicts the served runner.
            {"name": "OLLAMA_MAX_LOADED_MODELS", "value": str(spec.max_loaded_models + 1)},
            {"name": "OLLAMA_KEEP_ALIVE", "value": "-1"},  # the agent decides what stays loaded
        ],
        "ports": [{"name": "ollama", "containerPort": s.OLLAMA_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": MODELS_VOLUME, "mountPath": s.MODELS_DIR}],
        "livenessProbe": {
            "httpGet": {"path": "/", "port": s.OLLAMA_PORT},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": {"limits": gpu} if gpu else {},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    agent_mounts = [
        {"name": CONFIG_VOLUME, "mountPath": s.SERVING_CONFIG_DIR, "readOnly": True},
        {"name": MODELS_VOLUME, "mountPath": s.MODELS_DIR},
        {"name": PREDICTIONS_VOLUME, "mountPath": s.PREDICTIONS_DIR},
        *({"name": f"pvc-{i}", "mountPath": f"{s.PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
          for i, claim in enumerate(claims)),
    ]
    agent = {
        "name": "kubetune",
        "image": agent_image,
        "imagePullPolicy": image_pull_policy,
        "command": list(agent_command),
        "args": [
            "--config", f"{s.SERVING_CONFIG_DIR}/{s.SERVING_CONFIG_KEY}",
            "--ollama", f"http://$(POD_IP):{s.OLLAMA_PORT}",
            "--listen", f"$(POD_IP):{s.AGENT_PORT}",
            "--cache-dir", s.CACHE_DIR,
            "--pvc-root", s.PVC_MOUNT_ROOT,
            # The OpenAI-compatible gateway in the same process (prediction log, feedback,
            # metrics): what the Service's `http` port reaches.
            "--gateway", f"$(POD_IP):{s.GATEWAY_PORT}",
            "--model", name,
            "--predictions-db", s.PREDICTIONS_DB,
            "--log-content", spec.logging.content,
            "--log-retention-days", str(spec.logging.retention_days),
            "--log-max-mib", str(spec.logging.max_size_mib),
            "--drift-windows", ",".join(str(x) for x in (
                spec.drift.reference_requests, spec.drift.recent_requests, spec.drift.reference_feedback,
                spec.drift.recent_feedback, spec.drift.min_samples, spec.drift.min_feedback)),
            *_fallback_args(spec),
        ],
        "env": [pod_ip, *_fallback_env(spec)],
        "ports": [
            {"name": "http", "containerPort": s.GATEWAY_PORT, "protocol": "TCP"},
            {"name": "agent", "containerPort": s.AGENT_PORT, "protocol": "TCP"},
        ],
        "volumeMounts": agent_mounts,
        # Ready only while the alias resolves to the configured digest and answers.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": s.AGENT_PORT},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": s.AGENT_PORT},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": configmap_name(name)}},
        {"name": MODELS_VOLUME, "emptyDir": {"sizeLimit": spec.storage_size}},
        *({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
          for i, claim in enumerate(claims)),
    ]
    logging = spec.logging
    claim_templates: list[dict[str, Any]] = []
    if logging.storage == "EmptyDir":
        volumes.append({"name": PREDICTIONS_VOLUME, "emptyDir": {"sizeLimit": logging.volume_size}})
    else:
        claim_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": logging.volume_size}},
        }
        if logging.storage_class_name is not None:
            claim_spec["storageClassName"] = logging.storage_class_name
        claim_templates.append({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": PREDICTIONS_VOLUME, "labels": _labels(name)},
            "spec": claim_spec,
        })  # fmt: skip
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # neither container talks to the Kubernetes API
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [ollama, agent],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.gpus:
        tolerations.append({"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    sts_spec: dict[str, Any] = {
        "replicas": spec.replicas,
        "serviceName": name,
        "selector": {"matchLabels": selector_labels(name)},
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "template": {"metadata": {"labels": _labels(name)}, "spec": pod_spec},
        # Scale-down keeps a pod's log for when it comes back; deleting the ModelDeployment
        # deletes the claims with it (export predictions first: docs/serving.md).
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
    }
    if claim_templates:
        sts_spec["volumeClaimTemplates"] = claim_templates
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(md, name),
        "spec": sts_spec,
    }


def build_service(md: dict[str, Any]) -> dict[str, Any]:
    name = md["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, name),
        "spec": {
            "selector": selector_labels(name),
            "ports": [
                # The gateway: OpenAI-compatible API, prediction log, feedback, /metrics.
                {"name": "http", "port": s.GATEWAY_PORT, "targetPort": "http", "protocol": "TCP"},
                # Ollama's native API, unlogged (for tools that speak it).
                {"name": "ollama", "port": s.OLLAMA_PORT, "targetPort": "ollama", "protocol": "TCP"},
            ],
        },
    }


def build_pdb(md: dict[str, Any]) -> dict[str, Any]:
    name = md["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(md, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }
