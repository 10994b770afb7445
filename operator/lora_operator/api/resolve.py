"""Resolving a job: template values as defaults, then the built-in defaults; a stable hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from .adapters import adapter_checkpoints, adapter_problems
from .families import family_row
from .noise_levels import noise_level_problems
from .pod import PodSettings
from .resources import ClusterLoraTrainingTemplate
from .spec import AdapterType, JobSpec
from .training import offload_problems


class SpecError(ValueError):
    """A spec that cannot be trained, with the field path that is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"spec.{field}: {message}")
        self.field = field


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`; nested objects merge, lists and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


TEMPLATE_ONLY = ("description", "pod")
"""Template fields that are no job defaults: the pod's settings go to the renderer (`template_pod`)."""

REQUIRED = (("baseModel", "base_model"), ("output", "output"))


def resolve_spec(job_spec: dict[str, Any], template_spec: dict[str, Any] | None = None) -> JobSpec:
    """The complete spec of a job: its own fields over its template's, over the defaults.

    Args:
        job_spec: spec of the LoraTrainingJob as stored (camelCase).
        template_spec: spec of the named template, or None.

    Raises:
        SpecError: a required field is missing or a value is invalid; names the field.
    """
    raw = deep_merge({k: v for k, v in (template_spec or {}).items() if k not in TEMPLATE_ONLY}, job_spec)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "spec"
        raise SpecError(field, first["msg"]) from err
    for alias, attr in REQUIRED:
        if getattr(spec, attr) is None:
            raise SpecError(alias, "required (set it in the job or in its template)")
    if spec.dataset is None or spec.dataset.uri is None:
        raise SpecError("dataset.uri", "required (set it in the job or in its template)")
    return fill_defaults(spec)


def template_pod(template: dict[str, Any] | None, base: PodSettings | None = None) -> PodSettings | None:
    """The trainer-pod settings of a template object as `get_template` returned it: those of a
    ClusterLoraTrainingTemplate, never those of a namespaced one (a tenant's), whose schema has no
    such field.

    Args:
        template: The template object.
        base: The operator's settings (LORA_TRAINER_POD) the template's go over, to check the two together.

    Raises:
        SpecError: the cluster template's pod settings are invalid, alone or over `base`.
    """
    if not template or template.get("kind") != ClusterLoraTrainingTemplate.KIND:
        return None
    raw = (template.get("spec") or {}).get("pod")
    if raw is None:
        return None
    try:
        pod = PodSettings.model_validate(raw)
        if base is not None:
            pod.over(base)  # the settings the pod gets must hold together too (a request within its limit)
        return pod
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        name = (template.get("metadata") or {}).get("name")
        kind = ClusterLoraTrainingTemplate.KIND
        where = f"spec.pod.{field}" if field else "spec.pod"
        raise SpecError("template", f"{kind} {name!r} {where}: {first['msg']}") from err


def fill_defaults(spec: JobSpec) -> JobSpec:
    """Replace unset sub-objects with their defaults and check type-dependent fields."""
    adapter = spec.type or AdapterType.LORA
    problems = (adapter_problems(spec, adapter) + noise_level_problems(spec.base_model.family, spec.training)
                + offload_problems(spec))
    distilled = family_row(spec.base_model.family).distilled if spec.base_model else None
    if distilled and spec.base_model.uri and (problem := distilled.problem(spec.base_model.uri)):
        problems.append(problem)
    if problems:
        raise SpecError(*problems[0])
    filled = {}
    for name, field in type(spec).model_fields.items():
        if getattr(spec, name) is None and name not in ("embedding", "template"):
            annotation = field.annotation
            inner = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
            if len(inner) == 1 and hasattr(inner[0], "model_fields"):
                filled[name] = inner[0]()
    filled["checkpoints"] = adapter_checkpoints(spec, adapter)
    return spec.model_copy(update={"type": adapter, **filled})


def spec_hash(spec: JobSpec) -> str:
    """sha256 of the resolved spec in canonical JSON: equal specs train equal adapters."""
    canonical = json.dumps(spec.to_resource(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
