"""CustomResourceDefinition documents of the three kinds, built from the API models."""

from __future__ import annotations

import copy
from typing import Any

from ..api.resources import GROUP, KINDS, VERSION, LoraTrainingJob, Resource
from .rules import MODEL_RULES, immutability_rules
from .schema import Converter, Schema, walk

CATEGORIES = ["lora"]
"""``kubectl get lora`` lists every kind of the operator."""

APPLIED_DEFAULTS: dict[str, frozenset[str]] = {
    LoraTrainingJob.KIND: frozenset({"spec.priority", "spec.suspend"}),
}
"""The only defaults the apiserver applies: fields a template cannot set. Every other default
is applied by the operator at resolution, after the template (see api/resolve.py)."""

API_VERSION_TEXT = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should "
    "convert recognized schemas to the latest internal value, and may reject unrecognized values."
)
KIND_TEXT = (
    "Kind is a string value representing the REST resource this object represents. Servers may "
    "infer this from the endpoint the client submits requests to. In CamelCase."
)

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "LoraTrainingJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
         "description": "Summary of the conditions."},
        {"name": "Progress%", "type": "integer", "jsonPath": ".status.progress.percent",
         "description": "Percent of the training steps done."},
        {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch",
         "description": "Epochs done."},
        {"name": "Node", "type": "string", "jsonPath": ".status.node",
         "description": "GPU node of the current attempt."},
        {"name": "Queue", "type": "integer", "jsonPath": ".status.queuePosition",
         "description": "Place in the queue while Queued."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1,
         "description": "Last word on the job."},
    ],
}
TEMPLATE_COLUMNS = [
    {"name": "Family", "type": "string", "jsonPath": ".spec.baseModel.family",
     "description": "Base-model family."},
    {"name": "Type", "type": "string", "jsonPath": ".spec.type", "description": "Adapter type."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Description", "type": "string", "jsonPath": ".spec.description", "priority": 1,
     "description": "What the template is for."},
]


def documented_schema(kind: type[Resource]) -> Schema:
    """The kind's structural schema with every pydantic default kept (for the reference)."""
    raw = kind.model_json_schema(mode="validation", by_alias=True)
    props = raw["properties"]
    root: Schema = {
        "description": kind.__doc__.strip().splitlines()[0],
        "type": "object",
        "properties": {
            "apiVersion": {"description": API_VERSION_TEXT, "type": "string"},
            "kind": {"description": KIND_TEXT, "type": "string"},
            # The apiserver owns metadata's schema and refuses anything here but the type.
            "metadata": {"type": "object"},
        },
        "required": sorted(r for r in raw.get("required", []) if r in ("spec", "status")),
    }
    for part, users_write in (("spec", True), ("status", False)):
        if part in props:
            converter = Converter(raw, MODEL_RULES, document_defaults=users_write)
            root["properties"][part] = converter.convert_property(props[part], part)
    if kind is LoraTrainingJob:
        root["x-kubernetes-validations"] = immutability_rules()
    root["properties"] = dict(sorted(root["properties"].items()))
    return root


def crd_schema(kind: type[Resource]) -> Schema:
    """The kind's schema as the CRD carries it: only the defaults in APPLIED_DEFAULTS."""
    schema = copy.deepcopy(documented_schema(kind))
    keep = APPLIED_DEFAULTS.get(kind.KIND, frozenset())
    for path, node in walk(schema):
        if path not in keep:
            node.pop("default", None)
    status = schema["properties"].get("status", {})
    if "conditions" in status.get("properties", {}):
        # Conditions are keyed by type (Kubernetes conventions): a type appears at most once.
        status["properties"]["conditions"].update({
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        })
    if "resolvedSpec" in status.get("properties", {}):
        # The operator writes resolvedSpec whole, once. Tracked field by field, its leaves made up
        # half of a job's size (its managedFields entry listed every one), in every watch event,
        # and the API server rebuilt that field set on each status write (bench/RESULTS.md).
        status["properties"]["resolvedSpec"]["x-kubernetes-map-type"] = "atomic"
    return schema


def build_crd(kind: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of `kind`."""
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": crd_schema(kind)},
        "additionalPrinterColumns": PRINTER_COLUMNS.get(kind.KIND, TEMPLATE_COLUMNS),
    }
    if "status" in kind.model_fields:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "lora-operator", "app.kubernetes.io/part-of": "lora-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": kind.SCOPE,
            "names": {
                "kind": kind.KIND,
                "listKind": f"{kind.KIND}List",
                "plural": kind.PLURAL,
                "singular": kind.KIND.lower(),
                "shortNames": list(kind.SHORT_NAMES),
                "categories": CATEGORIES,
            },
            "versions": [version],
        },
    }


def build_crds() -> dict[str, dict[str, Any]]:
    """File name (``<group>_<plural>.yaml``) -> CRD, for every kind."""
    return {f"{GROUP}_{kind.PLURAL}.yaml": build_crd(kind) for kind in KINDS}
