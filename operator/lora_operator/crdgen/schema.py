"""Pydantic JSON schema -> Kubernetes structural schema.

The apiserver accepts only *structural* OpenAPI v3 schemas: every node has a type (or is an
int-or-string or a preserve-unknown-fields node), there are no ``$ref`` s, and JSON-Schema
2020 spellings such as a numeric ``exclusiveMinimum`` or ``const`` must be rewritten. This
module does that rewriting and nothing else; CEL rules come from :mod:`.rules`.

The result still carries the pydantic ``default`` s: :mod:`.reference` documents them and
:mod:`.crd` strips all but the few that are safe to apply in the apiserver (see resolve.py
for why: a template value must be able to fill a field the job left unset).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

Schema = dict[str, Any]

PASSED_KEYS = frozenset({
    "type", "format", "enum", "pattern", "minLength", "maxLength", "minItems", "maxItems",
    "minimum", "maximum", "minProperties", "maxProperties", "uniqueItems", "default",
})
"""Keys copied as they are: their meaning is the same in JSON Schema and the CRD's OpenAPI v3."""

DROPPED_KEYS = frozenset({"title", "$defs", "examples", "discriminator"})
"""Annotations with no meaning to the apiserver (titles are pydantic's, not ours)."""

DEFAULT_MARK = re.compile(r"\bDefault:", re.IGNORECASE)


LIMITS_MARK = re.compile(r"\b(One of|Each of|Range|At most|From -?[0-9])\b")
"""A description that states its allowed values itself is left as written."""


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bound(node: Schema, key: str) -> str:
    exclusive = node.get("exclusiveMinimum" if key == "minimum" else "exclusiveMaximum")
    return _number(node[key]) + (" (exclusive)" if exclusive else "")


def _values(values: list, description: str) -> str:
    """The values, or "" when the description names each of them already."""
    mark = DEFAULT_MARK.search(description)  # a default names one value, not the choices
    words = {w.strip(".") for w in re.findall(r"[\w.-]+", description[:mark.start() if mark else None])}
    return "" if all(str(v) in words for v in values) else ", ".join(map(str, values))


def describe_limits(node: Schema, description: str = "") -> str:
    """What `kubectl explain` does not show of a schema: its enum, its numeric range, its item
    count. A sentence for the description, e.g. ``One of: a, b.``; empty when there is none."""
    parts = []
    items = node.get("items") if isinstance(node.get("items"), dict) else {}
    for values, lead in ((node.get("enum"), "One of"), (items.get("enum"), "Each of")):
        listed = _values(values, description) if values else ""
        if listed:
            parts.append(f"{lead}: {listed}.")
    if "minimum" in node and "maximum" in node:
        parts.append(f"Range: {_bound(node, 'minimum')} to {_bound(node, 'maximum')}.")
    elif "minimum" in node:
        parts.append(f"Range: at least {_bound(node, 'minimum')}.")
    elif "maximum" in node:
        parts.append(f"Range: at most {_bound(node, 'maximum')}.")
    if "maxItems" in node:
        low = node.get("minItems", 0)
        parts.append(f"{low} to {node['maxItems']} items." if low else f"At most {node['maxItems']} items.")
    return " ".join(parts)


class SchemaError(ValueError):
    """A pydantic construct the generator cannot express as a structural schema."""


def clean_text(text: str) -> str:
    """A docstring as one paragraph per blank-line-separated block, whitespace collapsed."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def format_default(value: Any) -> str | None:
    """How a default reads in a description; None for empty defaults that say nothing."""
    if value is None or value in ("", [], {}):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(format_default(v) or '""' for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


class Converter:
    """Turns one pydantic model's JSON schema into a structural schema.

    Args:
        root: the output of ``Model.model_json_schema(mode="validation", by_alias=True)``;
            its ``$defs`` are inlined wherever they are referenced.
        rules: CEL rules (``x-kubernetes-validations`` entries) keyed by ``$defs`` name,
            attached wherever that model is inlined.
        document_defaults: append "Default: X." to a description that does not state
            its default already (off for status, which users do not write).
    """

    def __init__(self, root: Schema, rules: Mapping[str, list[dict]] | None = None,
                 document_defaults: bool = True):
        self.defs: dict[str, Schema] = root.get("$defs", {})
        self.rules = rules or {}
        self.document_defaults = document_defaults

    def convert(self, schema: Schema, path: str = "") -> Schema:
        """The structural form of `schema` found at `path` (for error messages)."""
        schema = self._flatten(schema, path)
        if "x-kubernetes-int-or-string" in schema:
            return schema
        out: Schema = {}
        for key, value in schema.items():
            self._copy_key(key, value, out, path)
        if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            raise SchemaError(f"{path or '<root>'}: no type (a structural schema needs one on every node)")
        return out

    def _copy_key(self, key: str, value: Any, out: Schema, path: str) -> None:
        """Write one JSON-schema keyword into `out` in its structural form."""
        if key in DROPPED_KEYS:
            return
        if key == "description":
            out[key] = clean_text(value)
        elif key in PASSED_KEYS or key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            # JSON Schema 2020 gives the bound; OpenAPI v3.0 wants the bound plus a flag.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: self.convert_property(sub, f"{path}.{name}") for name, sub in sorted(value.items())}
        elif key == "required":
            out[key] = sorted(value)
        elif key == "items":
            out[key] = self.convert(value, f"{path}[]")
        elif key == "additionalProperties":
            self._additional(value, out, path)
        else:
            raise SchemaError(f"{path or '<root>'}: unsupported JSON-schema key {key!r}")

    def convert_property(self, raw: Schema, path: str) -> Schema:
        """Like `convert`, with the allowed values and the default stated in the description."""
        node = self.convert(raw, path)
        description = node.get("description", "")
        limits = describe_limits(node, description)
        if self.document_defaults and limits and not LIMITS_MARK.search(description):
            mark = DEFAULT_MARK.search(description)
            at = mark.start() if mark else len(description)
            head = description[:at].rstrip()
            head += "" if not head or head.endswith(".") else "."
            description = node["description"] = " ".join(p for p in (head, limits, description[at:].strip()) if p)
        default = format_default(raw.get("default", node.get("default")))
        if self.document_defaults and default is not None and not DEFAULT_MARK.search(description):
            node["description"] = f"{description.rstrip('.')}. Default: {default}.".lstrip(". ")
        return node

    def _additional(self, value: Any, out: Schema, path: str) -> None:
        if value is False:
            return  # pruning already refuses unknown fields; the apiserver refuses the key
        if value is True or value == {}:
            out["x-kubernetes-preserve-unknown-fields"] = True
        else:
            out["additionalProperties"] = self.convert(value, f"{path}{{}}")

    def _flatten(self, schema: Schema, path: str) -> Schema:
        """Inline a ``$ref``, drop the null branch of an optional, fold int-or-string."""
        schema = dict(schema)
        if "$ref" in schema:
            name = schema.pop("$ref").rsplit("/", 1)[-1]
            if name not in self.defs:
                raise SchemaError(f"{path}: unknown $ref {name!r}")
            target = dict(self.defs[name])
            rules = self.rules.get(name)
            if rules:
                target["x-kubernetes-validations"] = list(rules)
            # Siblings of the $ref (the field's own docstring, its default) win over the model's.
            return self._flatten({**target, **schema}, path)
        if "anyOf" in schema or "oneOf" in schema:
            branches = [b for b in schema.pop("anyOf", None) or schema.pop("oneOf") if b.get("type") != "null"]
            if len(branches) == 1:
                return self._flatten({**branches[0], **schema}, path)
            return self._union(branches, schema, path)
        return schema

    def _union(self, branches: list[Schema], rest: Schema, path: str) -> Schema:
        branches = [self._flatten(b, path) for b in branches]
        types = sorted(b.get("type", "?") for b in branches)
        if types != ["integer", "string"]:
            raise SchemaError(
                f"{path}: a union of {types} has no structural form; use an int-or-string, or "
                "optional sub-objects with a CEL rule that exactly one is set"
            )
        integer = next(b for b in branches if b["type"] == "integer")
        string = next(b for b in branches if b["type"] == "string")
        node: Schema = {"x-kubernetes-int-or-string": True}
        if "description" in rest:
            node["description"] = clean_text(rest["description"])
        if "default" in rest:
            node["default"] = rest["default"]
        node["x-kubernetes-validations"] = [int_or_string_rule(integer, string)]
        return node


def int_or_string_rule(integer: Schema, string: Schema) -> dict:
    """The CEL rule that gives an int-or-string the bounds its two branches had."""
    words = list(string.get("enum", [])) + ([string["const"]] if "const" in string else [])
    if not words:
        raise SchemaError("int-or-string: the string branch must be a const or an enum")
    low, high = integer.get("minimum"), integer.get("maximum")
    checks = [f"self >= {low}"] if low is not None else []
    checks += [f"self <= {high}"] if high is not None else []
    int_check = " && ".join(checks) or "true"
    listed = ", ".join(f"'{w}'" for w in words)
    bounds = f" from {low}" if low is not None else ""
    bounds += f" to {high}" if high is not None else ""
    return {
        "rule": f"type(self) == string ? self in [{listed}] : ({int_check})",
        "message": f"must be an integer{bounds} or one of: {', '.join(words)}",
    }


def walk(node: Schema, path: str = ""):
    """Yield (path, node) for `node` and every schema below it (properties, items, maps)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
