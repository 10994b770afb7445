"""The generated CRDs on a real kube-apiserver: examples apply, CEL rules refuse with their
messages, training fields freeze once admitted, `kubectl explain` and `kubectl get` read well."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from lora_operator.api import IMMUTABLE_AFTER_ADMISSION
from lora_operator.crdgen import build_crds

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "crd-validation"
API_VERSION = "lora-operator.io/v1alpha1"
BASE_SPEC = {
    "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
    "dataset": {"uri": "s3://datasets/demo/"},
    "output": {"uri": "s3://loras/"},
    "training": {"epochs": 2},
}


@pytest.fixture(scope="module")
def cluster(ground):
    """The ground with the CRDs established and the examples' namespaces present."""
    ground.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    names = [f"crd/{doc['metadata']['name']}" for doc in build_crds().values()]
    ground.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    for ns in (NAMESPACE, "team-a"):
        ground.kubectl("create", "namespace", ns, check=False)
    yield ground
    ground.kubectl("delete", "ltj", "--all", "-n", NAMESPACE, "--wait=false", check=False)


def job(name: str, **spec) -> dict:
    return {"apiVersion": API_VERSION, "kind": "LoraTrainingJob",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {**copy.deepcopy(BASE_SPEC), **spec}}


def apply(cluster, tmp_path: Path, obj: dict, check: bool = False):
    """kubectl apply of one object (from a file, so the fixture's kubectl needs no stdin)."""
    path = tmp_path / f"{obj['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(obj))
    return cluster.kubectl("apply", "-f", str(path), check=check)


def merge_patch(cluster, name: str, patch: dict, status: bool = False):
    args = ["patch", "ltj", name, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch)]
    return cluster.kubectl(*args, *(["--subresource=status"] if status else []), check=False)


def test_crds_are_established_with_structural_schemas(cluster):
    for doc in build_crds().values():
        out = cluster.kubectl("get", "crd", doc["metadata"]["name"], "-o", "json").stdout
        conditions = {c["type"]: c["status"] for c in json.loads(out)["status"]["conditions"]}
        assert conditions.get("Established") == "True"
        assert conditions.get("NonStructuralSchema", "False") == "False"


def test_every_example_applies(cluster):
    for path in [REPO / "examples" / "templates", *sorted((REPO / "examples").glob("*.yaml"))]:
        result = cluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
        assert result.returncode == 0, f"{path}: {result.stderr}"
    cluster.kubectl("apply", "-f", str(REPO / "examples" / "templates"))
    cluster.kubectl("apply", "-f", str(REPO / "examples" / "sdxl-character-job.yaml"))
    assert "corgi" in cluster.kubectl("get", "lora", "-n", "team-a", "-o", "name").stdout
    cluster.kubectl("delete", "-f", str(REPO / "examples" / "sdxl-character-job.yaml"), "--wait=false")


BAD = [
    ("embedding-without-type", {"embedding": {"initialPhrase": "dog"}},
     "spec.embedding", "spec.embedding is only allowed with spec.type: embedding"),
    ("embedding-type-without-embedding", {"type": "embedding"},
     "spec.embedding", "spec.embedding is required with spec.type: embedding"),
    ("conv-dim-with-lora", {"type": "lora", "network": {"dim": 8, "convDim": 4}},
     "spec.network.convDim", "needs spec.type: locon"),
    ("bucket-min-above-max", {"dataset": {"uri": "s3://d/", "crop": {"bucketMinSide": 1024, "bucketMaxSide": 512}}},
     "spec.dataset.crop.bucketMinSide", "bucketMinSide must not exceed bucketMaxSide"),
    ("backoff-above-max", {"retryPolicy": {"backoffSeconds": 900, "maxBackoffSeconds": 600}},
     "spec.retryPolicy.backoffSeconds", "backoffSeconds must not exceed maxBackoffSeconds"),
    ("too-many-previews", {"previews": {"prompts": ["a"] * 5, "imagesPerPrompt": 16}},
     "spec.previews.imagesPerPrompt", "must not exceed 64"),
    ("steps-zero", {"training": {"steps": 0}}, "spec.training.steps", "or one of: auto"),
    ("steps-word", {"training": {"steps": "many"}}, "spec.training.steps", "or one of: auto"),
    ("unknown-family", {"baseModel": {"family": "sd3", "uri": "s3://m/"}}, "spec.baseModel.family", "Unsupported"),
    ("locon-on-flux", {"type": "locon", "baseModel": {"family": "flux", "uri": "s3://m/"}, "network": {"convDim": 4}},
     "spec.type", "spec.type: locon is not available for family flux"),
    ("pairs-on-flux", {"baseModel": {"family": "flux", "uri": "s3://m/"}, "dataset": {"uri": "s3://d/", "pairs": True}},
     "spec.dataset.pairs", "spec.dataset.pairs: family flux cannot train on edit pairs"),
    ("typo-field", {"trainig": {"epochs": 2}}, "trainig", "unknown field"),
    # final/ is where a selection is copied to: it can never be a selection itself
    ("selected-final", {"selectedCheckpoint": "final"}, "spec.selectedCheckpoint", "should match"),
]


@pytest.mark.parametrize(("name", "spec", "field", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_object_is_refused_with_a_message_naming_the_field(cluster, tmp_path, name, spec, field, message):
    result = apply(cluster, tmp_path, job(name, **spec))
    assert result.returncode != 0, f"{name} was accepted"
    assert field in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize("spec", [
    {"type": "embedding", "embedding": {"initialPhrase": "dog"}},
    {"type": "locon", "network": {"convDim": 4}},
    {"template": "sd15-character", "network": {"convDim": 4}},  # the template may make it a locon
    {"training": {"steps": "auto"}},
    {"training": {"steps": 500}},
    {"selectedCheckpoint": "auto", "deleteUnselected": True},
    {"baseModel": {"family": "flux-kontext", "uri": "s3://m/"}, "dataset": {"uri": "s3://d/", "pairs": True}},
    {"baseModel": {"family": "flux2-klein", "uri": "s3://m/"}, "dataset": {"uri": "s3://d/", "pairs": True}},
], ids=["embedding", "locon", "template-decides", "steps-auto", "steps-500", "selected-auto", "kontext-pairs",
        "klein-pairs"])
def test_good_variants_are_accepted(cluster, tmp_path, spec):
    result = apply(cluster, tmp_path, job(f"good-{abs(hash(json.dumps(spec))) % 10**8}", **spec))
    assert result.returncode == 0, result.stderr


def test_only_priority_and_suspend_are_defaulted_by_the_apiserver(cluster, tmp_path):
    apply(cluster, tmp_path, job("defaults"), check=True)
    spec = json.loads(cluster.kubectl("get", "ltj", "defaults", "-n", NAMESPACE, "-o", "json").stdout)["spec"]
    assert spec["priority"] == 0 and spec["suspend"] is False
    assert spec["training"] == {"epochs": 2}  # template values must still be able to fill the rest


IMMUTABLE_EDITS = {
    "template": {"template": "sdxl-character"},
    "type": {"type": "locon"},
    "baseModel": {"baseModel": {"uri": "s3://models/other"}},
    "dataset": {"dataset": {"repeats": 3}},
    "embedding": {"embedding": {"initialPhrase": "cat"}},
    "network": {"network": {"dim": 8}},
    "training": {"training": {"epochs": 3}},
    "checkpoints": {"checkpoints": {"everyEpochs": 2}},
    "previews": {"previews": {"steps": 4}},
    "output": {"output": {"uri": "s3://elsewhere/"}},
    "storage": {"storage": {"secretRef": "other"}},
    "queueName": {"queueName": "other-queue"},
}


def test_every_immutable_field_has_an_edit_case():
    assert set(IMMUTABLE_EDITS) == set(IMMUTABLE_AFTER_ADMISSION)


def test_training_fields_freeze_once_admitted_while_editable_fields_stay_editable(cluster, tmp_path):
    apply(cluster, tmp_path, job("frozen"), check=True)
    before = merge_patch(cluster, "frozen", {"spec": {"training": {"epochs": 4}}})
    assert before.returncode == 0, f"edits before admission must pass: {before.stderr}"

    admitted = merge_patch(cluster, "frozen", {"status": {"admittedAt": "2026-01-01T00:00:00Z"}}, status=True)
    assert admitted.returncode == 0, admitted.stderr
    for field, edit in IMMUTABLE_EDITS.items():
        result = merge_patch(cluster, "frozen", {"spec": edit})
        assert result.returncode != 0, f"spec.{field} edit was accepted after admission"
        assert (f"spec.{field} is immutable once the job was admitted; create a new job (kubectl lora retrain)"
                in result.stderr), result.stderr

    editable = {"suspend": True, "priority": 7, "selectedCheckpoint": "epoch-0002", "ttlSecondsAfterFinished": 60,
                "deleteUnselected": True}
    result = merge_patch(cluster, "frozen", {"spec": editable})
    assert result.returncode == 0, result.stderr
    spec = json.loads(cluster.kubectl("get", "ltj", "frozen", "-n", NAMESPACE, "-o", "json").stdout)["spec"]
    assert spec["training"] == {"epochs": 4} and spec["priority"] == 7 and spec["suspend"] is True


def test_status_is_strict_so_foreign_keys_are_pruned(cluster, tmp_path):
    apply(cluster, tmp_path, job("pruned"), check=True)
    patch = {"status": {"phase": "Queued", "kopf": {"progress": {"x": 1}}, "resolvedSpec": {"anything": {"goes": 1}}}}
    assert merge_patch(cluster, "pruned", patch, status=True).returncode == 0
    status = json.loads(cluster.kubectl("get", "ltj", "pruned", "-n", NAMESPACE, "-o", "json").stdout)["status"]
    assert status == {"phase": "Queued", "resolvedSpec": {"anything": {"goes": 1}}}


def explain(cluster, path: str) -> str:
    """kubectl explain output with its line wrapping undone."""
    return " ".join(cluster.kubectl("explain", path).stdout.split())


def test_kubectl_explain_shows_the_field_descriptions(cluster):
    out = explain(cluster, "ltj.spec.training")
    assert "DESCRIPTION: Hyperparameters." in out
    assert "unetLearningRate <number> Learning rate of the denoiser (UNet or Flux transformer) adapter." in out
    assert "An integer from 1 to 10000000 (optimizer steps) or the string auto" in explain(
        cluster, "ltj.spec.training.steps")
    assert "Default: cosine_with_restarts" in explain(cluster, "lora.spec.training.lrScheduler.type")
    assert "First admission time" in explain(cluster, "ltj.status.admittedAt")


def test_kubectl_get_shows_the_printer_columns(cluster, tmp_path):
    apply(cluster, tmp_path, job("columns"), check=True)
    status = {"phase": "Running", "node": "gpu-7", "progress": {"percent": 42, "epoch": 4, "totalEpochs": 10}}
    assert merge_patch(cluster, "columns", {"status": status}, status=True).returncode == 0
    header, row = cluster.kubectl("get", "ltj", "columns", "-n", NAMESPACE).stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS%", "EPOCH", "NODE", "QUEUE", "AGE"]
    assert row.split()[:5] == ["columns", "Running", "42", "4", "gpu-7"]
    assert "MESSAGE" in cluster.kubectl("get", "ltj", "columns", "-n", NAMESPACE, "-o", "wide").stdout


def test_get_lora_lists_every_kind_through_the_category(cluster, tmp_path):
    # `lora` is both the category and a short name of the job; kubectl expands categories
    # first, so `kubectl get lora` shows jobs and templates, `kubectl explain lora` the job.
    cluster.kubectl("apply", "-f", str(REPO / "examples" / "templates"))
    apply(cluster, tmp_path, job("category"), check=True)
    out = cluster.kubectl("get", "lora", "-A", "-o", "name").stdout
    assert "clusterloratrainingtemplate.lora-operator.io/sdxl-character" in out
    assert "loratrainingjob.lora-operator.io/category" in out


@pytest.mark.parametrize(("path", "needles"), [
    ("ltj.spec.storage.secretRef", ["Default: lora-storage in the job's namespace"]),
    ("ltj.spec.checkpoints.formats", ["kohya (one .safetensors", "diffusers (a PEFT folder", "1 to 2 items."]),
    ("ltj.spec.placement.gpuType", ["label lora-operator.io/gpu-type"]),
    ("ltj.spec.priority", ["Range: -1000 to 1000. Default: 0."]),
    ("ltj.spec.previews.prompts", ["At most 32 items."]),
    ("ltj.spec.selectedCheckpoint", ["or auto: the one with the lowest validation loss"]),
])
def test_kubectl_explain_states_defaults_ranges_values_and_labels(cluster, path, needles):
    out = explain(cluster, path)
    for needle in needles:
        assert needle in out, out
