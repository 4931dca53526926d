"""The generated CRDs on a real kube-apiserver: examples accepted, bad specs rejected with the
field's path, defaults filled in, training fields frozen, docs served to `kubectl explain`."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api import constants as c
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import install_crds

pytestmark = pytest.mark.cluster
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def api(cluster: DevCluster) -> client.CustomObjectsApi:
    install_crds(cluster)
    return client.CustomObjectsApi(cluster.api_client())


def _create(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], kind: str = c.FINETUNEJOB_KIND) -> dict[str, Any]:
    plural = c.FINETUNEJOB_PLURAL if kind == c.FINETUNEJOB_KIND else c.MODELDEPLOYMENT_PLURAL
    body = {"apiVersion": c.API_VERSION, "kind": kind, "metadata": {"name": f"x-{uuid.uuid4().hex[:6]}"}, "spec": spec}
    return api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, plural, body)  # type: ignore[no-any-return]


def _rejected(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as info:
        _create(api, namespace, spec)
    assert info.value.status == 422, info.value.body
    return str(info.value.body)


MINIMAL = {"baseModel": {"uri": "pvc://models/m"}, "dataset": {"source": {"uri": "pvc://d/train.jsonl"}}}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted(cluster: DevCluster, api: client.CustomObjectsApi, namespace: str, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        plural = {c.FINETUNEJOB_KIND: c.FINETUNEJOB_PLURAL, c.MODELDEPLOYMENT_KIND: c.MODELDEPLOYMENT_PLURAL}[doc["kind"]]
        created = api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, plural, doc)
        assert created["metadata"]["uid"]


def test_apiserver_fills_in_defaults(api: client.CustomObjectsApi, namespace: str) -> None:
    spec = _create(api, namespace, MINIMAL)["spec"]
    assert spec["method"] == "qlora" and spec["lora"]["r"] == 16 and spec["lora"]["alpha"] == 32
    assert spec["quantization"] == {"type": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"}
    # learningRate has no schema default: unset means the default of the method and objective,
    # decided in one place (TrainingSpec.effective_learning_rate).
    assert "learningRate" not in spec["training"] and spec["training"]["epochs"] == 3
    assert spec["baseModel"]["trustRemoteCode"] is False
    assert spec["export"]["gguf"] == ["q4_k_m"]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({**MINIMAL, "method": "prefix"}, "spec.method"),
        ({**MINIMAL, "lora": {"r": 0}}, "spec.lora.r"),
        ({**MINIMAL, "baseModel": {"uri": "ftp://x"}}, "spec.baseModel.uri"),
        ({"baseModel": {"uri": "pvc://m/x"}}, "spec.dataset"),
        ({**MINIMAL, "dataset": {"source": {}}}, "set exactly one of uri or configMap"),
        ({**MINIMAL, "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B"}}, "acceptLicense"),
        ({**MINIMAL, "objective": "dpo", "dataset": {"source": {"uri": "pvc://d/x"}, "format": "chat"}}, "objective dpo needs preference"),
        ({**MINIMAL, "export": {"merge": False, "gguf": ["f16"]}}, "needs merge"),
        ({**MINIMAL, "resources": {"gpus": -1}}, "spec.resources.gpus"),
    ],
)
def test_bad_specs_are_rejected_with_the_field(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], words: str) -> None:
    assert words in _rejected(api, namespace, spec)


def test_training_fields_are_frozen_but_suspend_is_not(api: client.CustomObjectsApi, namespace: str) -> None:
    name = _create(api, namespace, MINIMAL)["metadata"]["name"]

    def patch(spec: dict[str, Any]) -> dict[str, Any]:
        return api.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, name, {"spec": spec})  # type: ignore[no-any-return]

    for change, field in [({"method": "lora"}, "spec.method"), ({"lora": {"r": 64}}, "spec.lora"),
                          ({"image": "evil:latest"}, "spec.image")]:
        with pytest.raises(ApiException) as info:
            patch(change)
        assert info.value.status == 422 and f"{field} is immutable" in str(info.value.body)
    assert patch({"suspend": True})["spec"]["suspend"] is True
    assert patch({"activeDeadlineSeconds": 3600})["spec"]["activeDeadlineSeconds"] == 3600


def test_status_is_a_subresource(api: client.CustomObjectsApi, namespace: str) -> None:
    name = _create(api, namespace, MINIMAL)["metadata"]["name"]
    # A status in the main resource is ignored; the status subresource takes it.
    updated = api.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, name, {"status": {"phase": "Running"}})
    assert "status" not in updated or not updated["status"].get("phase")
    updated = api.patch_namespaced_custom_object_status(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, name, {"status": {"phase": "Running"}})
    assert updated["status"]["phase"] == "Running"


def test_kubectl_explain_prints_the_field_docs(cluster: DevCluster, api: client.CustomObjectsApi) -> None:
    out = cluster.wait_for(
        lambda: _explain(cluster, "finetunejob.spec.lora"), timeout=60, what="kubectl explain to see the CRD"
    )
    assert "Rank of the adapter matrices" in out and "alpha" in out
    assert "Scaling numerator" in _explain(cluster, "finetunejob.spec.lora.alpha")
    assert "ftj" in cluster.kubectl("api-resources", "--api-group=kubetune.dev").stdout


def _explain(cluster: DevCluster, what: str) -> str | None:
    try:
        return cluster.kubectl("explain", what).stdout
    except subprocess.CalledProcessError:
        return None
