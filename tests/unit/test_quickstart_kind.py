"""docs/quickstart-kind.md: what can be checked without Docker. The manifests on the page are
valid kubetune and Kubernetes objects that fit kind-config.yaml, and its `sed` command (run with
the real sed) turns examples/finetune.yaml into a FineTuneJob that reads its data from the
ConfigMap the page creates. The kind, docker and port-forward steps are not run here (the page
says so)."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from kubetune.api import FineTuneJobSpec
from kubetune.api import constants as c
from kubetune.api.modeldeployment import ModelDeploymentSpec
from kubetune_dev.tools import REPO_ROOT
from tests.kubetune_check import kind_config

DOC = REPO_ROOT / "docs" / "quickstart-kind.md"
CONFIGMAP_LIMIT_BYTES = 1 << 20


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _manifests() -> dict[str, dict[str, Any]]:
    docs = [d for block in _blocks("yaml") for d in yaml.safe_load_all(block) if d]
    return {d["kind"]: d for d in docs}


def test_the_sed_command_gives_a_finetunejob_that_reads_the_created_configmap() -> None:
    bash = "\n".join(_blocks("bash"))
    created = re.search(r"kubectl create configmap (\S+) --from-file=(\S+)=(\S+)", bash)
    assert created is not None
    name, key, source = created.groups()
    assert (REPO_ROOT / source).stat().st_size < CONFIGMAP_LIMIT_BYTES
    expression = re.search(r"sed '([^']+)'", bash)
    assert expression is not None
    out = subprocess.run(["sed", expression.group(1), str(REPO_ROOT / "examples" / "finetune.yaml")],
                         capture_output=True, text=True, check=True).stdout
    ftj = yaml.safe_load(out)
    spec = FineTuneJobSpec.model_validate(ftj["spec"])
    assert spec.dataset.source.uri is None and spec.dataset.source.config_map is not None
    assert (spec.dataset.source.config_map.name, spec.dataset.source.config_map.key) == (name, key)
    assert spec.resources.gpus == 1  # lands on the GPU-labelled worker
    assert spec.export.output.pvc_name == c.DEFAULT_ARTIFACTS_PVC
    assert f"kubectl describe ftj {ftj['metadata']['name']}" in DOC.read_text()


def test_the_modeldeployment_serves_the_quickstart_finetunejob() -> None:
    md = _manifests()[c.MODELDEPLOYMENT_KIND]
    spec = ModelDeploymentSpec.model_validate(md["spec"])
    example = yaml.safe_load((REPO_ROOT / "examples" / "finetune.yaml").read_text())
    assert [v.fine_tune_job for v in spec.versions] == [example["metadata"]["name"]]
    assert spec.versions[0].quantization in example["spec"]["export"]["gguf"]
    assert spec.gpus == 0  # runs on the untainted worker
    assert f"svc/{md['metadata']['name']}" in DOC.read_text()


def test_the_artifacts_volume_is_the_folder_kind_mounts_on_every_worker() -> None:
    manifests = _manifests()
    pv, pvc = manifests["PersistentVolume"], manifests["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == c.DEFAULT_ARTIFACTS_PVC == pv["spec"]["claimRef"]["name"]
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pvc["metadata"]["namespace"] == pv["spec"]["claimRef"]["namespace"]
    workers = [n for n in kind_config(REPO_ROOT / "kind-config.yaml")["nodes"] if n["role"] == "worker"]
    assert all(pv["spec"]["hostPath"]["path"] in {m["containerPath"] for m in n["extraMounts"]} for n in workers)
    host = workers[0]["extraMounts"][0]["hostPath"]
    assert f"mkdir -p {host}" in "\n".join(_blocks("bash"))


def test_the_node_names_are_those_kind_gives_the_configured_workers() -> None:
    # kind names nodes <cluster>-control-plane, <cluster>-worker, <cluster>-worker2, ... in order.
    nodes = kind_config(REPO_ROOT / "kind-config.yaml")
    workers = [n for n in nodes["nodes"] if n["role"] == "worker"]
    gpu_node = f"{nodes['name']}-worker" + ("" if workers[0]["labels"].get("nvidia.com/gpu.present") else "2")
    assert gpu_node == "kubetune-worker"
    assert f"kubectl patch node {gpu_node} --subresource=status" in DOC.read_text()
    assert f"kind load docker-image --name {nodes['name']}" in DOC.read_text()
