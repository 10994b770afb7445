"""CEL validation rules (``x-kubernetes-validations``) of the three kinds.

Each rule mirrors a check the models or ``resolve_spec`` make, so the apiserver refuses at
``kubectl apply`` what the operator would refuse later. Because a job's unset fields may come
from its template, a rule only refuses what is wrong whatever the template says: a job that
names a template is checked for explicit contradictions only, and the operator's resolution
catches the rest with the same message.

Rules are keyed by the model (``$defs`` name) they sit on, so they follow the model wherever
it is inlined; the immutability rules sit at the root of the job, the only place that sees
both ``spec`` and ``status``.
"""

from __future__ import annotations

from ..api import names
from ..api.adapters import TYPED_FIELDS, families_without
from ..api.families import edit_families, family_names
from ..api.spec import (
    IMMUTABLE_AFTER_ADMISSION,
    MAX_PREVIEW_IMAGES,
    TOLERATION_EMPTY_KEY,
    TOLERATION_EXISTS_VALUE,
    AdapterType,
)


def rule(expression: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    """One ``x-kubernetes-validations`` entry.

    Args:
        expression: the CEL expression; ``self`` is the object the rule sits on.
        message: what the user reads; names the field, says what to do.
        field_path: the field the error is reported at, relative to ``self`` (``.a.b``).
        reason: FieldValueInvalid (default), FieldValueForbidden or FieldValueRequired.
    """
    entry = {"rule": expression, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def _is_type(types: tuple[str, ...]) -> str:
    """CEL: the spec's type is one of `types`."""
    if len(types) == 1:
        return f"self.type == '{types[0]}'"
    return "self.type in [" + ", ".join(f"'{t}'" for t in types) + "]"


def _not(expression: str) -> str:
    """CEL: not `expression` (parenthesised unless it is one call)."""
    simple = expression.startswith("has(") and expression.count("(") == 1
    return f"!{expression}" if simple else f"!({expression})"


def _is_not_type(types: tuple[str, ...]) -> str:
    """CEL: the spec's type is none of `types`."""
    return f"self.type != '{types[0]}'" if len(types) == 1 else _not(_is_type(types))


def _family_type_rules() -> list[dict]:
    """A type the family's row does not offer (`api.families`), or edit pairs for a family that trains no
    edits, when the object names both."""
    rules = []
    for adapter in AdapterType:
        # One rule per family, so the apiserver's message names the job's family as the operator's does.
        for name in families_without(adapter):
            rules.append(rule(
                f"!has(self.type) || self.type != '{adapter}' || !has(self.baseModel) || "
                f"!has(self.baseModel.family) || self.baseModel.family != '{name}'",
                f"spec.type: {adapter} is not available for family {name}", ".type",
            ))
    for name in (n for n in family_names() if n not in edit_families()):
        rules.append(rule(
            "!has(self.dataset) || !has(self.dataset.pairs) || !self.dataset.pairs || !has(self.baseModel) || "
            f"!has(self.baseModel.family) || self.baseModel.family != '{name}'",
            f"spec.dataset.pairs: family {name} cannot train on edit pairs", ".dataset.pairs",
        ))
    return rules


def _job_spec_rules() -> list[dict]:
    """A job's unset type is its template's, or lora when it names none (rules: `api.adapters.TYPED_FIELDS`)."""
    rules = _family_type_rules()
    for field in TYPED_FIELDS:
        rules.append(rule(f"{_not(field.cel_set)} || (has(self.type) ? {_is_type(field.types)} : has(self.template))",
                          field.forbidden, f".{field.path}", field.forbidden_reason))
        if field.missing:
            expression = f"!has(self.type) || {_is_not_type(field.types)} || {field.cel_set} || has(self.template)"
            rules.append(rule(expression, field.missing, f".{field.path}", "FieldValueRequired"))
    return rules


def _template_spec_rules() -> list[dict]:
    """A template may leave type or embedding to its jobs: only contradictions are refused."""
    return [
        rule(f"{_not(field.cel_set)} || !has(self.type) || {_is_type(field.types)}", field.forbidden, f".{field.path}",
             field.forbidden_reason)
        for field in TYPED_FIELDS
    ] + _family_type_rules()


def _both_set_order(low: str, high: str) -> dict:
    return rule(
        f"!has(self.{low}) || !has(self.{high}) || self.{low} <= self.{high}",
        f"{low} must not exceed {high}", f".{low}",
    )


def _is_label_key(expr: str) -> str:
    """CEL: `expr` is a label key (its prefix, before the one '/', at most 253 characters)."""
    return (f"size({expr}) <= {names.LABEL_KEY_MAX} && {expr}.matches(r'{names.LABEL_KEY}') && "
            f"{expr}.lastIndexOf('/') <= {names.DNS1123_SUBDOMAIN_MAX}")


def _optional_name(field: str, what: str) -> dict:
    return rule(f"!has(self.{field}) || self.{field}.matches(r'{names.DNS1123_SUBDOMAIN}')",
                f"{what} must be {names.SUBDOMAIN_TEXT}", f".{field}")


def name_rules() -> dict[str, list[dict]]:
    """The Pod API's own rules for what a spec passes on to the trainer pod (see `api.names`):
    without them the apiserver accepts a job whose pod it then refuses."""
    return {
        "Storage": [_optional_name("secretRef", "storage.secretRef (the name of a Secret)")],
        "Placement": [
            rule(f"!has(self.nodeSelector) || self.nodeSelector.all(k, {_is_label_key('k')})",
                 f"placement.nodeSelector: every key must be {names.LABEL_KEY_TEXT}", ".nodeSelector"),
            rule(f"!has(self.nodeSelector) || self.nodeSelector.all(k, "
                 f"self.nodeSelector[k].matches(r'{names.LABEL_VALUE}'))",
                 f"placement.nodeSelector: every value must be {names.LABEL_VALUE_TEXT}", ".nodeSelector"),
            rule(f"!has(self.gpuType) || self.gpuType.matches(r'{names.LABEL_VALUE}')",
                 f"placement.gpuType must be {names.LABEL_VALUE_TEXT}", ".gpuType"),
        ],
        "Toleration": [
            rule(f"!has(self.key) || self.key == '' || ({_is_label_key('self.key')})",
                 f"a toleration's key must be {names.LABEL_KEY_TEXT}", ".key"),
            rule(f"!has(self.value) || self.value.matches(r'{names.LABEL_VALUE}')",
                 f"a toleration's value must be {names.LABEL_VALUE_TEXT}", ".value"),
            rule("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                 TOLERATION_EXISTS_VALUE, ".value"),
            rule("(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                 TOLERATION_EMPTY_KEY, ".operator"),
        ],
        "JobSpec": [_optional_name("template", "template (the name of a LoraTrainingTemplate)")],
    }


def _merged(*groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for group in groups:
        for model, rules in group.items():
            out[model] = out.get(model, []) + rules
    return out


MODEL_RULES: dict[str, list[dict]] = _merged(name_rules(), {
    "JobSpec": _job_spec_rules(),
    "TemplateSpec": _template_spec_rules(),
    "ClusterTemplateSpec": _template_spec_rules(),
    "Crop": [_both_set_order("bucketMinSide", "bucketMaxSide")],
    "RetryPolicy": [_both_set_order("backoffSeconds", "maxBackoffSeconds")],
    "Previews": [rule(
        "!has(self.prompts) || !has(self.imagesPerPrompt) || "
        f"self.imagesPerPrompt * size(self.prompts) <= {MAX_PREVIEW_IMAGES}",
        f"previews.imagesPerPrompt x the number of previews.prompts must not exceed {MAX_PREVIEW_IMAGES}",
        ".imagesPerPrompt",
    )],
})
"""Rules by the model they sit on (its JSON-schema ``$defs`` name)."""

IMMUTABLE_MESSAGE = "spec.{field} is immutable once the job was admitted; create a new job (kubectl lora retrain)"


def immutability_rules(fields: tuple[str, ...] = IMMUTABLE_AFTER_ADMISSION) -> list[dict]:
    """One transition rule at the root of LoraTrainingJob: `fields` freeze once status.admittedAt is set.

    The rule sits at the root because only there ``self`` is the whole object: a rule on
    ``spec`` cannot read ``status``. The operator writes ``status.admittedAt`` through the
    status subresource; an update of the main resource keeps the stored status, so
    ``oldSelf.status`` is the truth. Presence counts as a change: adding or removing the
    field after admission is refused too.

    One rule, not one per field: the API server evaluates a root rule on every write of the
    job, the operator's status writes included, and eleven of them took 6 % of its CPU at 5000
    jobs (bench/RESULTS.md). A status write cannot change ``spec``, so ``self.spec ==
    oldSelf.spec`` settles it; the field comparisons run on spec edits only, and
    ``messageExpression`` names the first frozen field that the edit changed.
    """
    admitted = "has(oldSelf.status) && has(oldSelf.status.admittedAt)"

    def unchanged(f: str) -> str:
        return (f"(has(self.spec.{f}) == has(oldSelf.spec.{f}) && "
                f"(!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f}))")

    named = "".join(f"!{unchanged(f)} ? '{IMMUTABLE_MESSAGE.format(field=f)}' : " for f in fields[:-1])
    entry = rule(
        f"!({admitted}) || self.spec == oldSelf.spec || ({' && '.join(unchanged(f) for f in fields)})",
        IMMUTABLE_MESSAGE.format(field="{" + ",".join(fields) + "}"), ".spec", "FieldValueForbidden",
    )
    entry["messageExpression"] = named + f"'{IMMUTABLE_MESSAGE.format(field=fields[-1])}'"
    return [entry]
