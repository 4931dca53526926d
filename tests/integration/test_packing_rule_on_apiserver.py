"""The packing rule on a real kube-apiserver: `training.packing: true` without
`attentionImplementation: flash_attention_2` is rejected with the words pydantic uses, and the CEL
rule compiles next to the training fields' immutability rule."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune.api import constants as c
from kubetune.api.finetunejob import TRAINING_RULES
from kubetune_dev import DevCluster
from kubetune_dev.finetunejobs import install_crds
from tests.spec_rules import MINIMAL

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def api(cluster: DevCluster) -> client.CustomObjectsApi:
    install_crds(cluster)
    return client.CustomObjectsApi(cluster.api_client())


def _create(api: client.CustomObjectsApi, namespace: str, training: dict[str, Any]) -> None:
    body = {
        "apiVersion": c.API_VERSION,
        "kind": c.FINETUNEJOB_KIND,
        "metadata": {"name": f"x-{uuid.uuid4().hex[:6]}"},
        "spec": {**MINIMAL, "training": training},
    }
    api.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.FINETUNEJOB_PLURAL, body)


@pytest.mark.parametrize("impl", [None, "sdpa", "eager"])
def test_packing_without_flash_attention_is_rejected_with_the_same_words(
    api: client.CustomObjectsApi, namespace: str, impl: str | None
) -> None:
    training: dict[str, Any] = {"packing": True}
    if impl is not None:
        training["attentionImplementation"] = impl
    with pytest.raises(ApiException) as info:
        _create(api, namespace, training)
    assert info.value.status == 422, info.value.body
    [rule] = TRAINING_RULES
    assert rule.message in json.loads(str(info.value.body))["message"]


def test_packing_with_flash_attention_and_no_packing_are_accepted(
    api: client.CustomObjectsApi, namespace: str
) -> None:
    _create(api, namespace, {"packing": True, "attentionImplementation": "flash_attention_2"})
    _create(api, namespace, {"epochs": 1})  # packing defaults to false
    _create(api, namespace, {"packing": False, "attentionImplementation": "sdpa"})
