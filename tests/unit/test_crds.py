"""The generated CRDs: in sync with the models, structural, documented, with their CEL rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lora_operator.api import IMMUTABLE_AFTER_ADMISSION, KINDS, LoraTrainingJob
from lora_operator.crdgen import SchemaError, build_crds, crd_schema, render, walk
from lora_operator.crdgen.__main__ import main as crdgen_main
from lora_operator.crdgen.schema import Converter

REPO = Path(__file__).resolve().parents[2]
CRDS = build_crds()
JOB_FILE = "lora-operator.io_loratrainingjobs.yaml"
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title", "nullable"}


def schema_of(file: str) -> dict:
    return CRDS[file]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def rules_at(schema: dict, path: str) -> list[dict]:
    return dict(walk(schema))[path].get("x-kubernetes-validations", [])


@pytest.mark.parametrize("path", sorted(render()))
def test_generated_file_matches_the_committed_one(path):
    committed = REPO / path
    assert committed.exists(), f"{path} missing: run python -m lora_operator.crdgen"
    assert committed.read_text() == render()[path], f"{path} drifted: run python -m lora_operator.crdgen"


def test_committed_crds_are_exactly_the_generated_set():
    assert {p.name for p in (REPO / "crds").glob("*.yaml")} == set(CRDS)


def test_check_exits_zero_in_sync_and_one_with_a_diff_when_drifted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert crdgen_main(["--out", "crds", "--reference", "ref.md"]) == 0
    assert crdgen_main(["--check", "--out", "crds", "--reference", "ref.md"]) == 0
    job = tmp_path / "crds" / JOB_FILE
    job.write_text(job.read_text().replace("Progress%", "Percent"))
    capsys.readouterr()
    assert crdgen_main(["--check", "--out", "crds", "--reference", "ref.md"]) == 1
    err = capsys.readouterr().err
    assert JOB_FILE in err and "-      name: Percent" in err and "+      name: Progress%" in err


def test_generation_is_deterministic():
    assert render() == render()


@pytest.mark.parametrize("file", sorted(CRDS))
def test_every_field_at_every_depth_has_a_description(file):
    # Fields are properties; list items and map values are described by their field.
    fields = [(p, n) for p, n in walk(schema_of(file)) if p != "metadata" and not p.endswith(("[]", "{}"))]
    missing = [p for p, node in fields if not node.get("description", "").strip()]
    assert not missing, f"fields without a description (add a docstring under the field): {missing}"


@pytest.mark.parametrize("file", sorted(CRDS))
def test_schema_is_structural(file):
    for path, node in walk(schema_of(file)):
        typed = "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields")
        assert typed, f"{path}: no type"
        assert not FORBIDDEN_KEYS & set(node), f"{path}: {FORBIDDEN_KEYS & set(node)}"
        assert node.get("additionalProperties") is not False, path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(key, True) is True, f"{path}: {key} must be a boolean in OpenAPI v3.0"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path


@pytest.mark.parametrize("file", sorted(CRDS))
def test_only_priority_and_suspend_have_apiserver_defaults(file):
    defaulted = {p: node["default"] for p, node in walk(schema_of(file)) if "default" in node}
    expected = {"spec.priority": 0, "spec.suspend": False} if file == JOB_FILE else {}
    assert defaulted == expected


def test_descriptions_state_defaults_the_docstring_left_out():
    spec = schema_of(JOB_FILE)["properties"]["spec"]["properties"]
    assert spec["priority"]["description"].endswith("Default: 0.")
    assert spec["dataset"]["properties"]["crop"]["properties"]["mode"]["description"].count("Default:") == 1


def test_status_is_strict_except_resolved_spec():
    loose = [p for p, n in walk(schema_of(JOB_FILE)) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert loose == ["status.resolvedSpec"]


def test_resolved_spec_is_one_atomic_field_and_conditions_a_map_by_type():
    status = schema_of(JOB_FILE)["properties"]["status"]["properties"]
    assert status["resolvedSpec"]["x-kubernetes-map-type"] == "atomic"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_steps_is_int_or_auto():
    steps = dict(walk(schema_of(JOB_FILE)))["spec.training.steps"]
    assert steps["x-kubernetes-int-or-string"] is True
    assert "'auto'" in steps["x-kubernetes-validations"][0]["rule"]


def test_enums_bounds_and_maps_survive():
    nodes = dict(walk(schema_of(JOB_FILE)))
    assert nodes["spec.baseModel.family"]["enum"] == ["sd15", "sdxl", "flux", "z-image", "qwen-image"]
    assert nodes["spec.network.alpha"]["minimum"] == 0 and nodes["spec.network.alpha"]["exclusiveMinimum"] is True
    assert nodes["spec.dataset.autoCaption.threshold"]["exclusiveMaximum"] is True
    assert nodes["spec.placement.nodeSelector"]["additionalProperties"] == {"type": "string", "maxLength": 63}
    assert nodes["spec.placement.nodeSelector"]["maxProperties"] == 64
    assert nodes["spec.previews.prompts"]["maxItems"] == 32
    assert "pattern" in nodes["spec.output.uri"]


@pytest.mark.parametrize(("path", "needle"), [
    ("spec", "spec.embedding is only allowed with spec.type: embedding"),
    ("spec", "spec.embedding is required with spec.type: embedding"),
    ("spec", "spec.network.convDim > 0 needs spec.type: locon"),
    ("spec.dataset.crop", "bucketMinSide must not exceed bucketMaxSide"),
    ("spec.retryPolicy", "backoffSeconds must not exceed maxBackoffSeconds"),
    ("spec.previews", "imagesPerPrompt x the number of previews.prompts must not exceed 64"),
])
def test_cel_rule_exists_for_each_cross_field_case(path, needle):
    assert any(needle in r["message"] for r in rules_at(schema_of(JOB_FILE), path))


def test_templates_carry_the_contradiction_rules_without_requiring_what_jobs_may_add():
    for file in CRDS:
        if file == JOB_FILE:
            continue
        messages = [r["message"] for r in rules_at(schema_of(file), "spec")]
        assert any("only allowed with spec.type: embedding" in m for m in messages)
        assert any("convDim" in m for m in messages)
        assert not any("required" in m for m in messages)
        assert "template" not in " ".join(r["rule"] for r in rules_at(schema_of(file), "spec"))


def test_one_root_transition_rule_freezes_every_training_field_once_admitted():
    rules = rules_at(schema_of(JOB_FILE), "")
    assert len(rules) == 1, "one rule: the API server evaluates root rules on every status write too"
    frozen = rules[0]
    assert frozen["fieldPath"] == ".spec" and frozen["reason"] == "FieldValueForbidden"
    guard, fast_path, _ = frozen["rule"].split(" || ", 2)
    assert "oldSelf.status.admittedAt" in guard and fast_path == "self.spec == oldSelf.spec"
    for field in IMMUTABLE_AFTER_ADMISSION:
        assert f"self.spec.{field} == oldSelf.spec.{field}" in frozen["rule"]
        message = f"spec.{field} is immutable once the job was admitted; create a new job (kubectl lora retrain)"
        assert f"'{message}'" in frozen["messageExpression"]


def test_editable_fields_are_not_frozen():
    frozen = " ".join(r["rule"] for r in rules_at(schema_of(JOB_FILE), ""))
    for field in ("suspend", "priority", "selectedCheckpoint", "ttlSecondsAfterFinished"):
        assert f"spec.{field}" not in frozen


def test_names_columns_and_subresources():
    by_kind = {doc["spec"]["names"]["kind"]: doc for doc in CRDS.values()}
    assert {k.KIND for k in KINDS} == set(by_kind)
    for kind in KINDS:
        doc = by_kind[kind.KIND]
        names = doc["spec"]["names"]
        assert names["shortNames"] == list(kind.SHORT_NAMES) and names["categories"] == ["lora"]
        assert doc["spec"]["scope"] == kind.SCOPE
    job = by_kind[LoraTrainingJob.KIND]
    assert job["spec"]["names"]["shortNames"] == ["ltj", "lora"]
    version = job["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Progress%"] == ".status.progress.percent"
    assert columns["Epoch"] == ".status.progress.epoch" and columns["Node"] == ".status.node"
    assert columns["Queue"] == ".status.queuePosition" and "Age" in columns
    assert "subresources" not in by_kind["ClusterLoraTrainingTemplate"]["spec"]["versions"][0]


def test_committed_yaml_round_trips_to_the_generated_object():
    for name, doc in CRDS.items():
        assert yaml.safe_load((REPO / "crds" / name).read_text()) == doc


def test_crd_schema_equals_the_one_in_the_document():
    assert crd_schema(LoraTrainingJob) == schema_of(JOB_FILE)


def test_unions_without_a_structural_form_are_refused_with_the_path():
    root = {"properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}, "type": "object"}
    with pytest.raises(SchemaError, match=r"\.x: a union"):
        Converter(root).convert(root)


def test_unknown_json_schema_keys_are_refused_rather_than_dropped():
    with pytest.raises(SchemaError, match="patternProperties"):
        Converter({}).convert({"type": "object", "patternProperties": {}})


def test_nullable_optional_becomes_the_plain_type_with_its_docstring():
    raw = {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}], "default": None, "description": "Mine."}
    root = {"$defs": {"A": {"type": "object", "description": "Theirs.", "properties": {}}}}
    assert Converter(root).convert_property(raw, "a") == {"type": "object", "description": "Mine.", "default": None,
                                                          "properties": {}}


@pytest.mark.parametrize(("path", "needles"), [
    ("spec.storage.secretRef", ["Default: lora-storage in the job's namespace"]),
    ("spec.training.steps", ["An integer from 1 to 10000000", "or the string auto"]),
    ("spec.checkpoints.formats", ["Formats to write: kohya (", "and/or diffusers (", "1 to 2 items."]),
    ("spec.placement.gpuType", ["label lora-operator.io/gpu-type"]),
    ("spec.priority", ["Range: -1000 to 1000. Default: 0."]),
    ("spec.previews.prompts", ["At most 32 items.", "imagesPerPrompt x prompts is at most 64"]),
    ("spec.previews.imagesPerPrompt", ["Range: 1 to 16. Default: 2."]),
    ("spec.network.alpha", ["Range: 0 (exclusive) to 1024."]),
    ("spec.training.optimizer.type", ["One of: adamw, adamw8bit, prodigy, adafactor, lion."]),
])
def test_explain_text_states_defaults_ranges_values_and_labels(path, needles):
    description = dict(walk(schema_of(JOB_FILE)))[path]["description"]
    for needle in needles:
        assert needle in description, description


def test_choices_the_docstring_names_already_are_not_listed_twice():
    nodes = dict(walk(schema_of(JOB_FILE)))
    assert nodes["spec.baseModel.family"]["description"] == "sd15, sdxl, flux, z-image or qwen-image."
    assert "Range" not in nodes["status.phase"].get("description", "")  # status: users do not write it
