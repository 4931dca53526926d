"""The CRD's CEL rules for objective distill, spec.teacher and dataset.augment on a real
kube-apiserver: each broken spec is refused with the very words pydantic gives
(tests/teacher_spec_rules.py, shared with tests/unit/test_distill_api.py), and the fix the
message names is accepted; examples/finetune-distill.yaml is accepted as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import constants as c
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import install_crds
from tests.teacher_spec_rules import TEACHER_RULE_CASES

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune-distill.yaml"


@pytest.fixture(scope="module")
def api(cluster: DevCluster) -> client.CustomObjectsApi:
    install_crds(cluster)
    return client.CustomObjectsApi(cluster.api_client())


def _create(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], name: str) -> None:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.FINETUNEJOB_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, body)


@pytest.mark.parametrize(
    ("spec", "message", "fix"),
    TEACHER_RULE_CASES,
    ids=[f"{i}-{m.split(':')[0]}" for i, (_, m, _) in enumerate(TEACHER_RULE_CASES)],
)
def test_the_apiserver_refuses_teacher_rule_violations_with_the_same_words(
    api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], message: str,
    fix: dict[str, Any],
) -> None:
    with pytest.raises(ApiException) as info:
        _create(api, namespace, spec, "broken")
    assert info.value.status == 422, info.value.body
    assert message in json.loads(str(info.value.body))["message"]
    _create(api, namespace, fix, "fixed")


def test_the_distill_example_is_accepted_with_its_defaults_filled(
    api: client.CustomObjectsApi, namespace: str
) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    _create(api, namespace, doc["spec"], "example")
    live = api.get_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, "example"
    )
    assert live["spec"]["teacher"]["timeoutSeconds"] == 120
    assert live["spec"]["dataset"]["augment"] == {"perExample": 2}
