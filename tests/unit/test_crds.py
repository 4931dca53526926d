"""crds/ is generated from the models; a stale file fails here."""

from __future__ import annotations

from pathlib import Path

import yaml

from kubetune.api.crdgen import render_all
from kubetune.api.finetunejob import EXPORT_RULES, SPEC_RULES
from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_crds_match_the_models() -> None:
    for name, text in render_all().items():
        path = ROOT / "crds" / name
        assert path.is_file(), f"{path} missing: run `kubetune crds`"
        assert path.read_text() == text, f"{path} is stale: run `kubetune crds`"
    assert main(["crds", "--check"]) == 0


def _walk(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
    return out


def test_schemas_are_structural_and_documented() -> None:
    for text in render_all().values():
        crd = yaml.safe_load(text)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema["properties"]["spec"], "spec"):
            assert "type" in node, f"{path} has no type"
            for banned in ("$ref", "anyOf", "allOf", "oneOf", "title"):
                assert banned not in node, f"{path} has {banned}"
            assert node.get("additionalProperties") is not False, path
            if path.count(".") >= 1 and not path.endswith("[]"):
                assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"


def test_finetunejob_crd_has_columns_status_and_immutability() -> None:
    crd = yaml.safe_load(render_all()["kubetune.dev_finetunejobs.yaml"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:4] == ["Phase", "Base model", "Progress", "Judge"] and "Age" in names
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    frozen = {k for k, v in spec["properties"].items() if any(r["rule"] == "self == oldSelf" for r in v.get("x-kubernetes-validations", []))}
    assert {"baseModel", "dataset", "lora", "training", "method"} <= frozen
    assert not frozen & {"suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished"}
    assert spec["properties"]["lora"]["properties"]["r"]["default"] == 16
    assert spec["properties"]["lora"]["default"] == {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]}
    assert crd["spec"]["names"]["shortNames"] == ["ftj", "ftjob"]


def test_the_apiserver_gets_the_same_rules_and_words_as_pydantic() -> None:
    crd = yaml.safe_load(render_all()["kubetune.dev_finetunejobs.yaml"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def rules(node: dict[str, object]) -> list[tuple[str, str]]:
        return [(r["rule"], r["message"]) for r in node.get("x-kubernetes-validations", [])]  # type: ignore[attr-defined]

    assert [(r.cel, r.message) for r in SPEC_RULES] == rules(spec)[: len(SPEC_RULES)]
    assert [(r.cel, r.message) for r in EXPORT_RULES] == rules(spec["properties"]["export"])[: len(EXPORT_RULES)]
    gate = spec["properties"]["evaluation"]["properties"]["gate"]["properties"]
    assert gate["minQuantizedAgreement"]["default"] == 0.9
    assert "default" not in gate["maxForgettingDrop"] and "forgettingSet" in gate["maxForgettingDrop"]["description"]
    assert "default" not in gate["requireImprovementOverBase"]
