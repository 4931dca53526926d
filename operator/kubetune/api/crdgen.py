"""Generate the CustomResourceDefinitions in `crds/` from the pydantic models.

Kubernetes wants *structural* OpenAPI v3 schemas: no `$ref`, no `anyOf` for nullability, no
`additionalProperties: false` beside `properties`, OpenAPI 3.0 `exclusiveMinimum`. This module
turns pydantic's JSON Schema into that form, keeps descriptions (for `kubectl explain`),
defaults (so the apiserver fills them in), enums, bounds and CEL rules, and adds printer
columns, short names and the status subresource.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from kubetune.api import constants as c
from kubetune.api.finetunejob import MUTABLE_SPEC_FIELDS, FineTuneJobSpec, FineTuneJobStatus
from kubetune.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus

_DROP_KEYS = {"title", "examples"}


class _DefaultsFromFactories(GenerateJsonSchema):
    """Emit defaults for `default_factory` fields, so the apiserver defaults nested objects.

    A nested model's default is written out whole (not `{}`): the apiserver checks a default
    against the object's CEL rules before nested defaults are applied, so `{}` would fail them.
    """

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None:
            return super().default_schema(schema)
        inner = self.generate_inner(schema["schema"])
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            inner["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        else:
            inner["default"] = copy.deepcopy(value)
        return inner


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True, mode="validation", schema_generator=_DefaultsFromFactories)


def to_structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref`s and rewrite JSON Schema constructs Kubernetes does not accept."""
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = dict(node)
        if "$ref" in node:
            target = walk(defs[node.pop("$ref").rsplit("/", 1)[-1]])
            # Keys beside the $ref (description, default) describe this use and win.
            node = {**target, **{k: walk(v) for k, v in node.items()}}
        if "allOf" in node and len(node["allOf"]) == 1:
            node = {**walk(node.pop("allOf")[0]), **node}
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            if len(options) == 1 and len(options) < len(node["anyOf"]):
                node.pop("anyOf")
                node = {**walk(options[0]), **node, "nullable": True}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP_KEYS or key == "$defs":
                continue
            if key == "default" and value is None:
                continue  # a null default would set the field; absent is what "unset" means
            if key == "additionalProperties" and value is False:
                continue  # unknown fields are pruned (and rejected by kubectl's strict validation)
            if key == "const":
                out["enum"] = [value]
                continue
            if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                bound = "minimum" if key == "exclusiveMinimum" else "maximum"
                out[bound] = value
                out[key] = True
                continue
            if key == "description" and isinstance(value, str):
                out[key] = " ".join(value.split())  # docstrings wrap; kubectl explain re-wraps
                continue
            if key == "properties":
                out[key] = {name: walk(sub) for name, sub in value.items()}
                continue
            out[key] = walk(value)
        if "enum" in out and "type" not in out:
            out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "integer"
        if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out

    return walk({k: v for k, v in schema.items() if k != "$defs"})  # type: ignore[no-any-return]


def _freeze_spec(spec: dict[str, Any], mutable: tuple[str, ...], kind: str) -> None:
    """Add CEL transition rules so only `mutable` spec fields may change after creation."""
    rules = spec.setdefault("x-kubernetes-validations", [])
    for name, prop in spec["properties"].items():
        if name in mutable:
            continue
        message = f"spec.{name} is immutable once the {kind} is created; create a new {kind} instead"
        if "default" in prop or name in spec.get("required", []):
            prop.setdefault("x-kubernetes-validations", []).append({"rule": "self == oldSelf", "message": message})
        else:
            rules.append({"rule": f"has(self.{name}) == has(oldSelf.{name})", "message": message})
            prop.setdefault("x-kubernetes-validations", []).append({"rule": "self == oldSelf", "message": message})


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: tuple[str, ...],
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    columns: list[dict[str, Any]],
    description: str,
    post: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    spec = to_structural(_json_schema(spec_model))
    status = to_structural(_json_schema(status_model))
    if post is not None:
        post(spec)
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object (kubetune.dev/v1alpha1)."},
            "kind": {"type": "string", "description": f"Kind of the object ({kind})."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{c.GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": c.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short_names),
                "categories": list(c.CATEGORIES),
            },
            "versions": [
                {
                    "name": c.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def finetunejob_crd() -> dict[str, Any]:
    """The FineTuneJob CRD."""
    return _crd(
        kind=c.FINETUNEJOB_KIND,
        plural=c.FINETUNEJOB_PLURAL,
        short_names=c.FINETUNEJOB_SHORT_NAMES,
        spec_model=FineTuneJobSpec,
        status_model=FineTuneJobStatus,
        description="FineTuneJob fine-tunes a base model on a dataset (QLoRA, LoRA or full; SFT or DPO), "
        "evaluates it against a quality gate and exports verified GGUF files.",
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Pending, Running, Succeeded, Failed or Suspended."},
            {"name": "Base model", "type": "string", "jsonPath": ".spec.baseModel.uri", "description": "Model being fine-tuned."},
            {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent", "description": "Training progress in percent."},
            {"name": "Judge", "type": "number", "jsonPath": ".status.gate.judgeScore", "description": "Mean judge score (1-5)."},
            {"name": "Gate", "type": "boolean", "jsonPath": ".status.gate.passed", "priority": 1, "description": "Quality gate passed."},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1, "description": "Reason of the current phase."},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        post=lambda spec: _freeze_spec(spec, MUTABLE_SPEC_FIELDS, c.FINETUNEJOB_KIND),
    )


def modeldeployment_crd() -> dict[str, Any]:
    """The ModelDeployment CRD."""
    return _crd(
        kind=c.MODELDEPLOYMENT_KIND,
        plural=c.MODELDEPLOYMENT_PLURAL,
        short_names=c.MODELDEPLOYMENT_SHORT_NAMES,
        spec_model=ModelDeploymentSpec,
        status_model=ModelDeploymentStatus,
        description="ModelDeployment serves chosen fine-tuned versions with Ollama, with sha256 "
        "verification, versioned rollback and drift metrics.",
        columns=[
            {"name": "Served", "type": "string", "jsonPath": ".status.servedVersion", "description": "Version receiving traffic."},
            {"name": "Active", "type": "string", "jsonPath": ".spec.activeVersion", "description": "Version pinned in the spec (empty: newest gated)."},
            {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "description": "Desired version served on every pod."},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1},
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


CRD_FILES: dict[str, Callable[[], dict[str, Any]]] = {
    f"{c.GROUP}_{c.FINETUNEJOB_PLURAL}.yaml": finetunejob_crd,
    f"{c.GROUP}_{c.MODELDEPLOYMENT_PLURAL}.yaml": modeldeployment_crd,
}

_HEADER = "# Generated by `kubetune crds` from kubetune.api — do not edit by hand.\n"


def render_crd(crd: dict[str, Any]) -> str:
    """YAML text of one CRD, stable across runs."""
    return _HEADER + str(yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True))


def render_all() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    return {name: render_crd(build()) for name, build in CRD_FILES.items()}
