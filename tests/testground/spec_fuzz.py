"""Hypothesis strategies drawn from the generated CRD's OpenAPI schema (crds/), for the schema-driven
fuzzer (tests/cluster/test_fuzz_specs.py): values of every field the API server's schema allows,
edge values included (bounds, longest strings, patterns, odd unicode). The CEL rules are not
modelled: the API server refuses what breaks them, and the fuzzer counts those refusals."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
JOB_CRD = REPO / "crds" / "lora-operator.io_loratrainingjobs.yaml"
INT64 = (-(2**63), 2**63 - 1)
MAX_TEXT = 40
"""Longest free text drawn (a field's maxLength caps it further; patterns draw their own)."""
MAX_ITEMS = 3


def job_spec_schema(crd: Path = JOB_CRD) -> dict[str, Any]:
    """The openAPIV3Schema of `spec` of the served version."""
    doc = yaml.safe_load(crd.read_text())
    version = next(v for v in doc["spec"]["versions"] if v.get("served"))
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def strategy(schema: dict[str, Any]) -> st.SearchStrategy:
    """Values valid for `schema` (a structural schema node) as far as OpenAPI goes."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string"):
        words = re.findall(r"'([^']*)'", " ".join(r["rule"] for r in schema.get("x-kubernetes-validations", [])))
        return st.one_of(st.integers(*INT64), st.sampled_from(words or ["auto"]), st.text(max_size=8))
    kind = schema.get("type")
    if kind == "object":
        return _object(schema)
    if kind == "array":
        return st.lists(strategy(schema["items"]), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS))
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low, high = schema.get("minimum", INT64[0]), schema.get("maximum", INT64[1])
        return st.one_of(st.sampled_from([low, high]), st.integers(low, high))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False,
                         exclude_min=bool(schema.get("exclusiveMinimum")),
                         exclude_max=bool(schema.get("exclusiveMaximum")))
    if kind == "boolean":
        return st.booleans()
    return st.just({})  # x-kubernetes-preserve-unknown-fields


def _object(schema: dict[str, Any]) -> st.SearchStrategy:
    if "additionalProperties" in schema:
        return st.dictionaries(st.text(min_size=1, max_size=20), strategy(schema["additionalProperties"]),
                               max_size=min(schema.get("maxProperties", MAX_ITEMS), MAX_ITEMS))
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries({k: strategy(v) for k, v in props.items() if k in required},
                                 optional={k: strategy(v) for k, v in props.items() if k not in required})


def _string(schema: dict[str, Any]) -> st.SearchStrategy:
    longest = schema.get("maxLength", MAX_TEXT)
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) <= longest)
    size = min(longest, MAX_TEXT)
    return st.one_of(st.text(min_size=schema.get("minLength", 0), max_size=size),
                     st.text("abc-./%_ ", min_size=max(schema.get("minLength", 0), 1), max_size=size))


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` over `base`, objects merged recursively."""
    out = dict(base)
    for key, value in patch.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def specs(base: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` specs: half drawn from the schema alone, half drawn over `base` (a job that could
    run), so both the operator's checks and its admission and pod creation see them."""
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list[dict[str, Any]] = []
    spec = strategy(job_spec_schema())

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=True)
    @given(spec, st.booleans())
    def collect(value: dict[str, Any], over_base: bool) -> None:
        drawn.append(merged(base, value) if over_base else value)

    collect()
    return drawn[:count]


__all__ = ["job_spec_schema", "merged", "specs", "strategy"]
