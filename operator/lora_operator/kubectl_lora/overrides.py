"""``retrain --set a.b=value``: dotted camelCase paths into a spec, values parsed as YAML scalars."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from ..api.spec import JobSpec
from .errors import CliError

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
"""YAML 1.1 reads ``5e-5`` as a string; learning rates are written that way, so numbers are fixed up."""

DROPPED_FIELDS = ("selectedCheckpoint", "deleteUnselected", "cancel")
"""Fields of a finished job's spec that belong to that run, not to a new one (a retrain of a
cancelled job must not start cancelled)."""


def parse_value(raw: str) -> Any:
    """A YAML scalar (or flow list/map): ``5e-5`` -> 5e-05, ``true`` -> True, ``[a, b]`` -> list."""
    if _NUMBER.match(raw.strip()):
        number = float(raw)
        return int(number) if re.fullmatch(r"[-+]?\d+", raw.strip()) else number
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise CliError(f"cannot parse value {raw!r}: {err.problem or err}") from err


def parse_assignment(expr: str) -> tuple[list[str], Any]:
    """Split ``training.unetLearningRate=5e-5`` into its path and parsed value.

    Raises:
        CliError: No ``=``, or an empty path segment.
    """
    path, sep, raw = expr.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise CliError(f"--set {expr!r}: expected path.to.field=value")
    if any("_" in key for key in keys):
        # The models also accept snake_case names, but the apiserver would prune them silently.
        camel = ".".join(to_camel(k) for k in keys)
        raise CliError(f"--set {path.strip()}: paths are camelCase as in the resource ({camel})")
    return keys, parse_value(raw)


def set_path(spec: dict, keys: list[str], value: Any) -> None:
    """Set ``spec[k1][k2]... = value`` in place, creating maps; a null value removes the field.

    Raises:
        CliError: A segment on the way is not a map.
    """
    node = spec
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise CliError(f"--set {'.'.join(keys)}: {'.'.join(keys[:i + 1])} is not a map")
        node = child
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


def apply_overrides(spec: dict, assignments: Iterable[str]) -> dict:
    """A copy of ``spec`` with the run-specific fields dropped and every ``--set`` applied, validated.

    Raises:
        CliError: A bad assignment, or a result that is not a valid JobSpec (naming the field).
    """
    result = copy.deepcopy(spec)
    for field in DROPPED_FIELDS:
        result.pop(field, None)
    for expr in assignments:
        set_path(result, *parse_assignment(expr))
    try:
        JobSpec.model_validate(result)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"spec.{where}: {first['msg']}") from err
    return result


def retrain_body(source: dict, spec: dict, name: str | None) -> dict:
    """The new LoraTrainingJob: the source's labels, ``name`` or a generated ``<source>-retrain-xxxxx``."""
    meta = source["metadata"]
    metadata: dict[str, Any] = {"namespace": meta["namespace"],
                                "annotations": {"lora-operator.io/retrained-from": meta["name"]}}
    if meta.get("labels"):
        metadata["labels"] = dict(meta["labels"])
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{meta['name'][:50]}-retrain-"
    return {"apiVersion": source["apiVersion"], "kind": source["kind"], "metadata": metadata, "spec": spec}
