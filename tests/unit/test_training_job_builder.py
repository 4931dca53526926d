"""The trainer Job and spec ConfigMap built from a FineTuneJob spec."""

from __future__ import annotations

import json
import re

from kubetune.api import FineTuneJobSpec
from kubetune.api import constants as c
from kubetune.operator.builders.names import (
    child_name,
    label_value,
    spec_configmap_name,
    training_job_name,
)
from kubetune.operator.builders.training_job import (
    PERMANENT_FAILURE_EXIT_CODE,
    build_spec_configmap,
    build_training_job,
)
from kubetune.operator.settings import Settings

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SPEC = {
    "baseModel": {
        "uri": "pvc://models/qwen2.5-7b",
        "tokenSecretRef": {"name": "hf", "key": "token"},
    },
    "dataset": {
        "source": {"configMap": {"name": "support-data", "key": "train.jsonl"}},
        "general": {"source": {"uri": "pvc://datasets/general.jsonl"}},
    },
    "evaluation": {
        "judge": {
            "endpoint": "https://judge.example/v1",
            "model": "gpt-4o",
            "apiKeySecretRef": {"name": "judge-key", "key": "api-key"},
        }
    },
    "resources": {
        "gpus": 2,
        "gpuProduct": "NVIDIA-A100-SXM4-80GB",
        "nodeSelector": {"pool": "train"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
        "memory": "64Gi",
        "cpu": "8",
        "priorityClassName": "training",
    },
    "backoffLimit": 4,
    "activeDeadlineSeconds": 7200,
}


def _job() -> dict:
    return build_training_job(
        "support-bot", "ml", FineTuneJobSpec.model_validate(SPEC), Settings(), uid=UID
    )


def test_job_asks_for_gpus_and_placement() -> None:
    job = _job()
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {c.GPU_RESOURCE: "2", "memory": "64Gi"}
    assert container["resources"]["requests"] == {"memory": "64Gi", "cpu": "8"}
    assert pod["nodeSelector"] == {"pool": "train", c.GPU_PRODUCT_LABEL: "NVIDIA-A100-SXM4-80GB"}
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"key": c.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["priorityClassName"] == "training"


def test_job_is_locked_down() -> None:
    job = _job()
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    )
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 4 and job["spec"]["activeDeadlineSeconds"] == 7200
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [
        PERMANENT_FAILURE_EXIT_CODE
    ]


def test_job_mounts_what_the_spec_reads() -> None:
    pod = _job()["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes[mounts[f"{c.PVC_MOUNT_ROOT}/models"]]["persistentVolumeClaim"]["claimName"]
        == "models"
    )
    assert (
        volumes[mounts[f"{c.PVC_MOUNT_ROOT}/datasets"]]["persistentVolumeClaim"]["readOnly"] is True
    )
    assert (
        volumes[mounts[f"{c.CONFIGMAP_MOUNT_ROOT}/support-data"]]["configMap"]["name"]
        == "support-data"
    )
    assert (
        volumes[mounts[c.ARTIFACTS_MOUNT_DIR]]["persistentVolumeClaim"]["claimName"]
        == c.DEFAULT_ARTIFACTS_PVC
    )
    args = pod["containers"][0]["args"]
    assert args[args.index("--workdir") + 1] == f"{c.ARTIFACTS_MOUNT_DIR}/ml/support-bot"


def test_secrets_are_referenced_never_inlined() -> None:
    job = _job()
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[c.ENV_JUDGE_API_KEY]["valueFrom"]["secretKeyRef"] == {
        "name": "judge-key",
        "key": "api-key",
    }
    assert env[c.ENV_HF_TOKEN]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env[c.ENV_ARTIFACTS_URI]["value"] == "pvc://kubetune-artifacts/ml/support-bot"
    cm = build_spec_configmap("support-bot", "ml", FineTuneJobSpec.model_validate(SPEC), uid=UID)
    resolved = json.loads(cm["data"]["spec.json"])
    assert resolved["evaluation"]["judge"]["apiKeySecretRef"] == {
        "name": "judge-key",
        "key": "api-key",
    }
    assert resolved["lora"]["r"] == 16  # defaults are filled in for the trainer


def test_cpu_only_job_has_no_gpu_limit_or_toleration() -> None:
    spec = FineTuneJobSpec.model_validate({**SPEC, "resources": {"gpus": 0}})
    pod = build_training_job("x", "ns", spec, Settings(), uid=UID)["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert "tolerations" not in pod


def test_names_are_deterministic_and_short() -> None:
    assert training_job_name("support-bot", UID) == "support-bot-0f1e2d-train"
    long = "a" * 80
    assert training_job_name(long, UID) == training_job_name(long, UID)
    assert len(training_job_name(long, UID)) <= 63
    assert child_name(long, "spec", UID) != child_name(long, "spec", "9" + UID[1:])


def test_every_child_name_of_a_253_character_name_is_a_dns_label() -> None:
    name = ".".join(["segment-" + "x" * 54] * 4)[:253].rstrip(".-")
    for child in (training_job_name(name, UID), spec_configmap_name(name, UID)):
        assert len(child) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", child), child
    job = build_training_job(name, "ml", FineTuneJobSpec.model_validate(SPEC), Settings(), uid=UID)
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        value = labels[c.LABEL_FINETUNEJOB]
        assert len(value) <= 63 and re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", value)
    assert job["metadata"]["annotations"][c.ANNOTATION_FINETUNEJOB] == name
    assert job["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_FINETUNEJOB] == name


def test_long_names_sharing_a_prefix_get_different_label_values() -> None:
    assert label_value("short-name") == "short-name"
    assert label_value("a" * 70) != label_value("a" * 71)
    assert len(label_value("a" * 253)) == 63


def test_a_recreated_finetunejob_gets_new_child_names() -> None:
    other = "7a6b5c4d-3e2f-1a0b-9c8d-7e6f5a4b3c2d"
    assert training_job_name("bot", UID) != training_job_name("bot", other)
    assert spec_configmap_name("bot", UID) != spec_configmap_name("bot", other)


def test_resolved_spec_carries_the_learning_rate_of_the_method_and_objective() -> None:
    import json as _json

    from kubetune.api.finetunejob import FineTuneJobSpec
    from kubetune.operator.builders.training_job import resolved_spec_json

    base = {
        "baseModel": {"uri": "builtin://tiny-llama"},
        "dataset": {"source": {"uri": "file://d.jsonl"}},
    }
    qlora = _json.loads(resolved_spec_json(FineTuneJobSpec.model_validate(base)))
    assert qlora["training"]["learningRate"] == 2e-4
    full = _json.loads(
        resolved_spec_json(FineTuneJobSpec.model_validate({**base, "method": "full"}))
    )
    assert full["training"]["learningRate"] == 2e-5
    pinned = FineTuneJobSpec.model_validate({**base, "training": {"learningRate": 1e-3}})
    assert _json.loads(resolved_spec_json(pinned))["training"]["learningRate"] == 1e-3


def test_trainers_sharing_a_read_write_once_claim_are_put_on_one_node() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC)
    plain = build_training_job("a", "ml", spec, Settings(), uid=UID)["spec"]["template"]
    assert "affinity" not in plain["spec"] and c.LABEL_ARTIFACTS_CLAIM not in plain["metadata"]["labels"]
    shared = build_training_job("a", "ml", spec, Settings(), uid=UID, single_node_claim=True)["spec"]["template"]
    assert shared["metadata"]["labels"][c.LABEL_ARTIFACTS_CLAIM] == c.DEFAULT_ARTIFACTS_PVC
    (term,) = shared["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": {c.LABEL_ARTIFACTS_CLAIM: c.DEFAULT_ARTIFACTS_PVC}},
                    "topologyKey": "kubernetes.io/hostname"}
