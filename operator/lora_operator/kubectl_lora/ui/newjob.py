"""The New job form: a template, a name and the fields the seeds show, made into a LoraTrainingJob
and checked as the operator will resolve it, before anything is created."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ...api.resolve import SpecError, resolve_spec
from ...api.resources import GROUP, VERSION, LoraTrainingJob
from ..errors import CliError
from ..overrides import set_path


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


@dataclass(frozen=True)
class FormField:
    """One input of the form and the spec field it sets."""

    key: str
    path: str
    label: str
    parse: Callable[[str], Any] = str
    kind: str = "text"
    strip: bool = True
    """False where spaces count (a caption prefix "corgi, " keeps its space before the caption)."""


FIELDS = (
    FormField("datasetUri", "dataset.uri", "Dataset URI (s3://bucket/prefix/)"),
    FormField("captionPrefix", "dataset.captionPrefix", "Trigger / caption prefix", strip=False),
    FormField("tagsPrepend", "dataset.tags.prepend", "Batch tags at the head (comma-separated)", _tags),
    FormField("tagsAppend", "dataset.tags.append", "Batch tags at the tail (comma-separated)", _tags),
    FormField("repeats", "dataset.repeats", "Repeats per image", int, "number"),
    FormField("epochs", "training.epochs", "Epochs", int, "number"),
    FormField("unetLearningRate", "training.unetLearningRate", "UNet learning rate", float),
    FormField("textEncoderLearningRate", "training.textEncoderLearningRate", "Text encoder learning rate", float),
    FormField("dim", "network.dim", "Network dim", int, "number"),
    FormField("alpha", "network.alpha", "Network alpha", float),
    FormField("prompts", "previews.prompts", "Preview prompts (one a line)", _lines, "textarea"),
    FormField("baseModelUri", "baseModel.uri", "Base model URI (default: the template's)"),
    FormField("outputUri", "output.uri", "Output URI (default: the template's)"),
)
"""The fields, in the form's order; empty inputs leave the template's value."""


def job_body(form: Mapping[str, Any], namespace: str, find_template: Callable[[str], dict | None]) -> dict:
    """The LoraTrainingJob the form describes, resolved once as the operator will (so a bad value
    is named before anything is created).

    Raises:
        CliError: No name or template, a template that does not exist, a value that is not a
            number, or a spec the operator would refuse (naming the field).
    """
    name = str(form.get("name") or "").strip()
    template = str(form.get("template") or "").strip()
    if not name:
        raise CliError("metadata.name: required")
    if not template:
        raise CliError("spec.template: choose a template")
    found = find_template(template)
    if found is None:
        raise CliError(f"spec.template: no LoraTrainingTemplate or ClusterLoraTrainingTemplate named {template!r}")
    spec: dict[str, Any] = {"template": template}
    for field in FIELDS:
        raw = str(form.get(field.key) or "")
        if not raw.strip():
            continue
        raw = raw.strip() if field.strip else raw
        try:
            value = field.parse(raw)
        except ValueError as err:
            raise CliError(f"spec.{field.path}: {raw!r} is not a number") from err
        set_path(spec, field.path.split("."), value)
    try:
        resolve_spec(spec, found.get("spec") or {})
    except SpecError as err:
        raise CliError(str(err)) from err
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": LoraTrainingJob.KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def template_choices(templates: list[dict]) -> list[dict[str, str]]:
    """``{name, kind, description}`` per template, namespaced ones first (they win a name clash)."""
    return [{"name": t["metadata"]["name"], "kind": t.get("kind", ""),
             "description": (t.get("spec") or {}).get("description", "")} for t in templates]
