"""Build the ConfigMap and the batch/v1 Job that run a FineTuneJob's trainer.

Pure: a validated spec and the operator settings in, plain dicts out. `kopf.adopt()` adds the
owner reference and namespace when they are applied.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubetune.api import constants as c
from kubetune.api.finetunejob import FineTuneJobSpec
from kubetune.api.trainer_contract import ENV_NPROC_PER_NODE, PERMANENT_FAILURE_EXIT_CODE
from kubetune.operator.builders.names import label_value, spec_configmap_name, training_job_name
from kubetune.operator.settings import Settings

TRAINER_CONTAINER = "trainer"


def labels_for(name: str, component: str) -> dict[str, str]:
    """Labels every child of the FineTuneJob `name` carries (the operator's watches select on
    them). A name over 63 characters is shortened with a hash: the full name is in the
    ANNOTATION_FINETUNEJOB annotation, and the owner reference says which object owns it."""
    return {
        c.LABEL_FINETUNEJOB: label_value(name),
        c.LABEL_COMPONENT: component,
        c.LABEL_MANAGED_BY: "kubetune",
    }


def resolved_spec_json(spec: FineTuneJobSpec) -> str:
    """The spec as the trainer receives it: defaults filled in (the learning rate of the method
    and objective included), secrets referenced by name only."""
    training = spec.training.model_copy(
        update={"learning_rate": spec.training.effective_learning_rate(spec.method, spec.objective)}
    )
    return json.dumps(
        spec.model_copy(update={"training": training}).to_wire(), indent=2, sort_keys=True
    )


def output_path(spec: FineTuneJobSpec, namespace: str, name: str) -> str:
    """Folder inside the artifacts claim: `export.output.path`, default `<namespace>/<name>`."""
    return spec.export.output.path.strip("/") or f"{namespace}/{name}"


def build_spec_configmap(
    name: str, namespace: str, spec: FineTuneJobSpec, *, uid: str
) -> dict[str, Any]:
    """ConfigMap with the resolved spec, mounted into the trainer pod of the FineTuneJob `name`
    whose UID is `uid`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": spec_configmap_name(name, uid),
            "namespace": namespace,
            "labels": labels_for(name, "spec"),
            "annotations": {c.ANNOTATION_FINETUNEJOB: name},
        },
        "data": {c.SPEC_FILE_NAME: resolved_spec_json(spec)},
    }


def _spec_sources(spec: FineTuneJobSpec) -> tuple[list[str], list[str]]:
    """(claims, configmaps) the spec reads from, so the pod can mount them."""
    sources = [spec.dataset.source]
    if spec.dataset.general is not None:
        sources.append(spec.dataset.general.source)
    if spec.evaluation.forgetting_set is not None:
        sources.append(spec.evaluation.forgetting_set)
    uris = [spec.base_model.uri, *(s.uri for s in sources)]
    claims: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri[len("pvc://") :].split("/", 1)[0]
            if claim not in claims:
                claims.append(claim)
    configmaps: list[str] = []
    for source in sources:
        if source.config_map is not None and source.config_map.name not in configmaps:
            configmaps.append(source.config_map.name)
    return claims, configmaps


def _env(
    name: str, namespace: str, spec: FineTuneJobSpec, artifacts_uri: str
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "KUBETUNE_FINETUNEJOB", "value": name},
        {"name": "KUBETUNE_NAMESPACE", "value": namespace},
        {"name": c.ENV_ARTIFACTS_URI, "value": artifacts_uri},
        {"name": c.ENV_METRICS_PORT, "value": str(c.METRICS_PORT)},
        {"name": c.ENV_TERMINATION_LOG, "value": c.TERMINATION_MESSAGE_PATH},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HOME", "value": f"{c.ARTIFACTS_MOUNT_DIR}/.cache/huggingface"},
    ]
    if not spec.base_model.uri.startswith("hf://"):
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if _gpus(spec) > 1:  # one training process per GPU (torchrun, kubetune_trainer.distributed)
        env.append({"name": ENV_NPROC_PER_NODE, "value": str(_gpus(spec))})
    secrets = [(c.ENV_HF_TOKEN, spec.base_model.token_secret_ref)]
    if spec.evaluation.judge is not None:
        secrets.append((c.ENV_JUDGE_API_KEY, spec.evaluation.judge.api_key_secret_ref))
    if spec.provider is not None:
        secrets.append((c.ENV_PROVIDER_API_KEY, spec.provider.api_key_secret_ref))
    if spec.teacher is not None:
        secrets.append((c.ENV_TEACHER_API_KEY, spec.teacher.api_key_secret_ref))
    for var, ref in secrets:
        if ref is not None:
            env.append(
                {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
            )
    return env


def _gpus(spec: FineTuneJobSpec) -> int:
    """GPUs the pod asks for: none with backend openai (the provider trains; the pod only
    prepares data and follows the provider's job)."""
    return spec.resources.gpus if spec.backend == "local" else 0


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if _gpus(spec):
        limits[c.GPU_RESOURCE] = str(_gpus(spec))
    if spec.resources.memory:
        limits["memory"] = requests["memory"] = spec.resources.memory
    if spec.resources.cpu:
        requests["cpu"] = spec.resources.cpu
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _scheduling(spec: FineTuneJobSpec, settings: Settings) -> dict[str, Any]:
    node_selector = dict(spec.resources.node_selector)
    if spec.resources.gpu_product:
        node_selector[c.GPU_PRODUCT_LABEL] = spec.resources.gpu_product
    tolerations = [t.to_wire() for t in spec.resources.tolerations]
    if _gpus(spec) and settings.gpu_toleration:
        # GPU pools are commonly tainted nvidia.com/gpu:NoSchedule (GPU operator, GKE, EKS).
        tolerations.append({"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.resources.priority_class_name:
        out["priorityClassName"] = spec.resources.priority_class_name
    return out


def spec_hash(spec: FineTuneJobSpec) -> str:
    """Short hash of the resolved spec, recorded on the Job to tell which spec it runs."""
    return hashlib.sha256(resolved_spec_json(spec).encode()).hexdigest()[:16]


def build_training_job(
    name: str, namespace: str, spec: FineTuneJobSpec, settings: Settings, *, uid: str,
    single_node_claim: bool = False,
) -> dict[str, Any]:
    """The batch/v1 Job running the trainer for the FineTuneJob `name` whose UID is `uid`.

    `single_node_claim`: the artifacts claim is ReadWriteOnce (attachable to one node at a
    time). Concurrent trainers writing to it would then fail to start on any other node
    (Multi-Attach), so they carry a required pod affinity that puts them on the same node."""
    claims, configmaps = _spec_sources(spec)
    out_claim = spec.export.output.pvc_name
    out_path = output_path(spec, namespace, name)
    workdir = f"{c.ARTIFACTS_MOUNT_DIR}/{out_path}"
    labels = labels_for(name, "trainer")
    annotations = {f"{c.LABEL_PREFIX}/spec-hash": spec_hash(spec), c.ANNOTATION_FINETUNEJOB: name}

    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": spec_configmap_name(name, uid)}},
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": out_claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": c.SPEC_MOUNT_DIR, "readOnly": True},
        {"name": "artifacts", "mountPath": c.ARTIFACTS_MOUNT_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for i, claim in enumerate(claims):
        if claim == out_claim:
            # Mounting one claim twice is fine for RWX but not RWO; read it through /artifacts.
            mounts.append(
                {"name": "artifacts", "mountPath": f"{c.PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
            )
            continue
        volumes.append(
            {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append(
            {"name": f"pvc-{i}", "mountPath": f"{c.PVC_MOUNT_ROOT}/{claim}", "readOnly": True}
        )
    for i, cm in enumerate(configmaps):
        volumes.append({"name": f"cm-{i}", "configMap": {"name": cm}})
        mounts.append(
            {"name": f"cm-{i}", "mountPath": f"{c.CONFIGMAP_MOUNT_ROOT}/{cm}", "readOnly": True}
        )

    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(settings.trainer_command),
        "args": ["run", "--spec", f"{c.SPEC_MOUNT_DIR}/{c.SPEC_FILE_NAME}", "--workdir", workdir],
        "env": _env(name, namespace, spec, f"pvc://{out_claim}/{out_path}"),
        "ports": [{"name": "metrics", "containerPort": c.METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "terminationMessagePath": c.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources

    run_as = settings.trainer_uid
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as,
            "runAsGroup": run_as,
            "fsGroup": run_as,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        **_scheduling(spec, settings),
    }
    if single_node_claim:
        labels = {**labels, c.LABEL_ARTIFACTS_CLAIM: label_value(out_claim)}
        pod_spec["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {c.LABEL_ARTIFACTS_CLAIM: label_value(out_claim)}},
            "topologyKey": "kubernetes.io/hostname",
        }]}}
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": TRAINER_CONTAINER,
                        "operator": "In",
                        "values": [PERMANENT_FAILURE_EXIT_CODE],
                    },
                },
                # A node drain or preemption is not the trainer's fault: retry without counting it.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {
                "labels": labels,
                "annotations": annotations,
            },
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": training_job_name(name, uid),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }


def mutable_job_fields(spec: FineTuneJobSpec) -> dict[str, Any]:
    """The Job spec fields that follow the FineTuneJob's mutable fields after creation
    (MUTABLE_SPEC_FIELDS of the API); None removes the field from the Job."""
    return {
        "suspend": spec.suspend,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
    }
