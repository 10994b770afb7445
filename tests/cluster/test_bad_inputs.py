"""A catalogue of bad inputs on the real control plane, operator and (for data and training cases)
the real tiny trainer run by the kubelet shim.

Every case ends where a user can see it, with the field or file named: refused by the API server
(kubectl's stderr), or the job Failed with a reason and message; cases that are odd but fine
(unicode paths, CMYK or 16-bit images, a 100 KB caption) end Succeeded with the file used. The
operator never crash-loops: a good job applied before the bad ones and one applied after them both
succeed with a single attempt. `table()` renders the catalogue for bench/RESULTS.md.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_operator import end_pod, get_job, running_pod, trainer_pods, wait_phase

from lora_trainer.tiny import build_tiny_model
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.seed import make_dataset, upload

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
API = "lora-operator.io/v1alpha1"
MIXED_PREFIX = "s3://datasets/ünïcødé dir/with spaces/"
"""The dataset of the odd-but-fine cases: its prefix holds unicode and spaces itself."""
BASE = {  # a kwok-run job: nothing trains; only admission and the apiserver matter
    "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
    "dataset": {"uri": "s3://datasets/good/"},
    "output": {"uri": "s3://loras/"},
    "training": {"epochs": 2},
    "placement": {"gpuType": "badkw"},
    "retryPolicy": {"maxRetries": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2},
}
REAL = {  # a real tiny training run (kubelet shim)
    "type": "lora",
    "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
    "dataset": {"uri": "s3://datasets/good/", "crop": {"mode": "center", "size": "32x32"}},
    "network": {"dim": 4, "alpha": 4},
    "training": {"steps": 4, "epochs": 1, "mixedPrecision": "no", "gradientCheckpointing": "off"},
    "checkpoints": {"formats": ["kohya"]},
    "previews": {"everyEpochs": 0},
    "output": {"uri": "s3://loras/"},
    "placement": {"gpuType": "badreal"},
    "retryPolicy": {"maxRetries": 1, "backoffSeconds": 1, "maxBackoffSeconds": 2},
}


def merged(base: dict, patch: dict) -> dict:
    """`base` with `patch` merged in, dicts recursively; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Refused:
    """kubectl apply is refused by the API server; stderr holds every string of `shows`."""

    case: str
    spec: dict
    shows: tuple[str, ...]
    name: str | None = None


REFUSED = [
    Refused("typo in a field name", {"trainig": {"epochs": 2}}, ("unknown field", "spec.trainig")),
    Refused("unknown nested field", {"network": {"rank": 8}}, ("unknown field", "spec.network.rank")),
    Refused("wrong type: string for an integer", {"training": {"epochs": "ten"}},
            ("spec.training.epochs", "must be of type integer")),
    Refused("wrong type: list for an object", {"network": [16, 8]}, ("spec.network", "must be of type object")),
    Refused("wrong type: number for a string", {"placement": {"gpuType": 100}},
            ("spec.placement.gpuType", "must be of type string")),
    Refused("wrong type: string for a boolean", {"suspend": "yes"}, ("spec.suspend", "must be of type boolean")),
    Refused("epochs out of range (0)", {"training": {"epochs": 0}},
            ("spec.training.epochs", "should be greater than or equal to 1")),
    Refused("epochs out of range (1001)", {"training": {"epochs": 1001}},
            ("spec.training.epochs", "should be less than or equal to 1000")),
    Refused("learning rate above 1", {"training": {"unetLearningRate": 5}},
            ("spec.training.unetLearningRate", "should be less than or equal to 1")),
    Refused("negative learning rate", {"training": {"unetLearningRate": -0.001}},
            ("spec.training.unetLearningRate", "should be greater than 0")),
    Refused("batch size 1000", {"training": {"batchSize": 1000}},
            ("spec.training.batchSize", "should be less than or equal to 64")),
    Refused("network dim 0", {"network": {"dim": 0}}, ("spec.network.dim", "should be greater than or equal to 1")),
    Refused("caption dropout 1.5", {"training": {"captionDropout": 1.5}},
            ("spec.training.captionDropout", "should be less than or equal to 1")),
    Refused("negative maxRetries", {"retryPolicy": {"maxRetries": -1}},
            ("spec.retryPolicy.maxRetries", "should be greater than or equal to 0")),
    Refused("steps 0", {"training": {"steps": 0}}, ("spec.training.steps", "or one of: auto")),
    Refused("steps as a word", {"training": {"steps": "many"}}, ("spec.training.steps", "or one of: auto")),
    Refused("unknown base-model family", {"baseModel": {"family": "sd3", "uri": "s3://m/"}},
            ("spec.baseModel.family", "Unsupported value", '"sd15"')),
    Refused("unknown adapter type", {"type": "dora"}, ("spec.type", "Unsupported value")),
    Refused("unknown optimizer", {"training": {"optimizer": {"type": "sgd"}}},
            ("spec.training.optimizer.type", "Unsupported value")),
    Refused("unknown mixed precision", {"training": {"mixedPrecision": "fp64"}},
            ("spec.training.mixedPrecision", "Unsupported value")),
    Refused("base-model URI without a scheme", {"baseModel": {"family": "sd15", "uri": "models/tiny"}},
            ("spec.baseModel.uri", "should match")),
    Refused("output URI on an unsupported scheme", {"output": {"uri": "ftp://host/loras/"}},
            ("spec.output.uri", "should match")),
    Refused("crop size malformed", {"dataset": {"uri": "s3://d/", "crop": {"size": "1024by1024"}}},
            ("spec.dataset.crop.size", "should match")),
    Refused("embedding phrase over 8 characters",
            {"type": "embedding", "embedding": {"initialPhrase": "paintings"}},
            ("spec.embedding.initialPhrase", "may not be more than 8")),
    Refused("embedding settings on a LoRA job", {"type": "lora", "embedding": {"initialPhrase": "dog"}},
            ("spec.embedding", "only allowed with spec.type: embedding")),
    Refused("embedding type without embedding settings", {"type": "embedding"},
            ("spec.embedding", "required with spec.type: embedding")),
    Refused("convDim on a plain LoRA", {"type": "lora", "network": {"dim": 8, "convDim": 4}},
            ("spec.network.convDim", "needs spec.type: locon")),
    Refused("backoff above its maximum", {"retryPolicy": {"backoffSeconds": 900, "maxBackoffSeconds": 600}},
            ("spec.retryPolicy.backoffSeconds", "must not exceed maxBackoffSeconds")),
    Refused("job name with capitals", {}, ("metadata.name", "RFC 1123"), name="Bad_Name"),
    Refused("job name over 253 characters", {}, ("metadata.name", "no more than 253"), name="n" * 254),
]


@dataclass(frozen=True)
class FailsAtAdmission:
    """Accepted by the API server; the operator fails the job at once (no pod) with `reason`."""

    case: str
    spec: dict
    reason: str
    shows: tuple[str, ...]


ADMISSION = [
    FailsAtAdmission("missing Secret", {"storage": {"secretRef": "no-such-secret"}}, "SecretNotFound",
                     ("spec.storage.secretRef", "no-such-secret", "does not exist")),
    FailsAtAdmission("Secret without secretKey", {"storage": {"secretRef": "half-secret"}}, "SecretNotFound",
                     ("spec.storage.secretRef", "half-secret", "lacks key(s) secretKey")),
    FailsAtAdmission("missing template", {"template": "no-such-template"}, "TemplateNotFound",
                     ("spec.template", "no-such-template")),
    FailsAtAdmission("empty dataset prefix", {"dataset": {"uri": "s3://datasets/nothing-here/"}}, "DatasetEmpty",
                     ("spec.dataset.uri", "s3://datasets/nothing-here/", "holds no files")),
    FailsAtAdmission("dataset bucket that does not exist", {"dataset": {"uri": "s3://no-such-bucket/x/"}},
                     "DatasetEmpty", ("spec.dataset.uri", "s3://no-such-bucket/", "does not exist")),
    FailsAtAdmission("dataset missing (no template fills it)", {"dataset": None}, "InvalidSpec", ("dataset",)),
    FailsAtAdmission("template makes convDim invalid", {"template": "sd15-character", "network": {"convDim": 4}},
                     "InvalidSpec", ("convDim",)),
]


@dataclass(frozen=True)
class Trained:
    """A real tiny training run. Fails with `reason` (and shows the strings), or, with reason None,
    Succeeds and the manifest says which files were used (`images`) and skipped (`skipped`)."""

    case: str
    spec: dict
    reason: str | None
    shows: tuple[str, ...] = ()
    file: str = ""
    """The dataset file the case is about (odd-but-fine cases share one dataset)."""
    user_sees: str = ""


MIXED_FILES = {  # file in the mixed dataset -> the case
    "gray.png": "grayscale image",
    "palette.png": "palette (P mode) image",
    "rgba.png": "RGBA image with transparency",
    "cmyk.jpg": "CMYK JPEG",
    "sixteen.png": "16-bit grayscale PNG",
    "ünïcødé 画像.png": "unicode and spaces in a file name",
    "long-caption.png": "a 100 KB caption",
}
TRAINED = [
    Trained("all-corrupt dataset", {"dataset": {"uri": "s3://datasets/corrupt/"}}, "InputError",
            ("BAD_DATASET (65)", "broken0.png", "broken1.jpg")),
    Trained("missing base model", {"baseModel": {"uri": "s3://models/no-such-model"}}, "InputError",
            ("BAD_MODEL (66)", "s3://models/no-such-model")),
    Trained("learning rate that makes the loss NaN",
            {"network": {"dim": 4, "alpha": 1024}, "training": {"unetLearningRate": 1.0, "maxGradNorm": 0,
                                                                "steps": 30}},
            "InputError", ("NAN_LOSS (67)", "unetLearningRate")),
    *[Trained(case, {"dataset": {"uri": MIXED_PREFIX}}, None, file=name,
              user_sees="Succeeded; the file is trained on (manifest.json images count)")
      for name, case in MIXED_FILES.items()],
    Trained("unicode and spaces in the dataset prefix", {"dataset": {"uri": MIXED_PREFIX}}, None, file="*",
            user_sees="Succeeded; every file under the prefix is read"),
    Trained("a 20000x20000 image", {"dataset": {"uri": MIXED_PREFIX}}, None, file="huge.png",
            user_sees="Succeeded without it: status.skippedFiles (and manifest.json) name huge.png, 400 MP "
                      "above the 100 MP limit"),
]
OTHER = [
    ("malformed YAML (bad indentation)",
     "kubectl: error converting YAML to JSON: yaml: line 7: did not find expected key"),
    ("edit of an immutable field after admission",
     "kubectl patch refused: spec.training is immutable once the job was admitted; create a new job"),
    ("job name at the 253-character limit",
     "runs and Succeeds; pod name cut to 63 with a hash suffix, job label hashed"),
]


def table() -> str:
    """The catalogue as a markdown table (case, where it ends, what the user sees)."""
    rows = ["| # | case | ends | what the user sees |", "|---|---|---|---|"]
    entries = [(c.case, "apiserver refuses", "kubectl: " + " … ".join(c.shows)) for c in REFUSED]
    entries += [(c.case, f"Failed / {c.reason}", " … ".join(c.shows)) for c in ADMISSION]
    entries += [(c.case, f"Failed / {c.reason}" if c.reason else "Succeeded",
                 " … ".join(c.shows) if c.reason else c.user_sees) for c in TRAINED]
    entries += [(case, "Succeeded" if "253" in case else "refused", shows) for case, shows in OTHER]
    for i, (case, ends, shows) in enumerate(entries, start=1):
        rows.append(f"| {i} | {case} | {ends} | {shows.replace('|', '/')} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- fixtures
def write_datasets(root: Path) -> None:
    make_dataset(root / "good", count=3)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (corrupt / "broken1.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (corrupt / "broken1.txt").write_text("a caption for a broken image")
    mixed = root / "mixed"
    make_dataset(mixed, count=1)
    base = Image.open(mixed / "img0.png").convert("RGB")
    base.convert("L").save(mixed / "gray.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(mixed / "palette.png")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(mixed / "rgba.png")
    base.convert("CMYK").save(mixed / "cmyk.jpg")
    sixteen = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    assert sixteen.mode == "I;16"
    sixteen.save(mixed / "sixteen.png")
    base.save(mixed / "ünïcødé 画像.png")
    (mixed / "ünïcødé 画像.txt").write_text("unicode caption, 画像")
    base.save(mixed / "long-caption.png")
    (mixed / "long-caption.txt").write_text(", ".join(f"tag{i}" for i in range(15000))[:100_000])
    Image.new("1", (20000, 20000)).save(mixed / "huge.png")


@dataclass
class Catalogue:
    ground: object
    operator: OperatorProcess
    ns: str
    """Namespace of the kwok-run jobs (the test ends their pods)."""
    real_ns: str
    """Namespace whose trainer pods the kubelet shim runs for real."""
    shim: KubeletShim
    refused: dict[str, str] = field(default_factory=dict)


class NamespaceShim(KubeletShim):
    """The kubelet shim for one namespace only (other tests' pods stay kwok's)."""

    namespace: str = ""

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            listing = self.ground.kubectl("get", "pods", "-n", self.namespace, "-l",
                                          "app.kubernetes.io/component=trainer", "-o", "json", check=False)
            if listing.returncode:
                continue
            for pod in json.loads(listing.stdout)["items"]:
                key = f"{self.namespace}/{pod['metadata']['name']}"
                if pod["status"].get("phase") == "Running" and key not in self.started:
                    self.started.add(key)
                    threading.Thread(target=self.run_pod, args=(pod,), daemon=True).start()


@pytest.fixture(scope="module")
def cat(ground, tmp_path_factory):
    install_crds(ground)
    ground.kubectl("apply", "-f", str(REPO / "examples" / "templates"))
    work = tmp_path_factory.mktemp("bad-inputs")
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", work / "tiny-sd15"))
    write_datasets(work / "data")
    upload(ground, "s3://datasets/good/", work / "data" / "good")
    upload(ground, "s3://datasets/corrupt/", work / "data" / "corrupt")
    upload(ground, MIXED_PREFIX, work / "data" / "mixed")
    if not ground.minio.client().bucket_exists("loras"):
        ground.minio.client().make_bucket("loras")
    ns, real_ns = f"bad-{uuid.uuid4().hex[:6]}", f"badreal-{uuid.uuid4().hex[:6]}"
    for n in (ns, real_ns):
        ground.kubectl("create", "namespace", n)
        ground.apply(storage_secret(ground, n))
    half = storage_secret(ground, ns, "half-secret")
    half["stringData"].pop("secretKey")
    ground.apply(half)
    ground.add_gpu_nodes(2, gpus=1, gpu_type="badkw", prefix="badkw")
    ground.add_gpu_nodes(3, gpus=1, gpu_type="badreal", prefix="badreal")
    operator = OperatorProcess(ground, work / "operator.log").start()
    shim = NamespaceShim(ground, work / "pods")
    shim.namespace = real_ns
    shim.start()
    catalogue = Catalogue(ground, operator, ns, real_ns, shim)
    # a good job before any bad one: it must not be affected by what follows
    ground.apply(job(ns, "before", BASE))
    end_pod(ground, ns, running_pod(ground, ns, "before")["metadata"]["name"], 0)
    yield catalogue
    shim.stop()
    operator.stop()
    ground.kubectl("delete", "namespace", ns, real_ns, "--wait=false", check=False)


def job(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "LoraTrainingJob", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def failed_condition(ground, ns: str, name: str) -> dict:
    status = get_job(ground, ns, name)["status"]
    return next(c for c in status["conditions"] if c["type"] == "Failed")


# --------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("c", REFUSED, ids=[c.case for c in REFUSED])
def test_refused_by_the_apiserver_with_the_field_named(cat, tmp_path, c):
    name = c.name or f"refused-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(cat.ns, name, merged(BASE, c.spec)), allow_unicode=True))
    result = cat.ground.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode != 0, f"{c.case}: accepted"
    for text in c.shows:
        assert text in result.stderr, result.stderr


def test_malformed_yaml_is_refused_by_kubectl_naming_the_line(cat, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(f"apiVersion: {API}\nkind: LoraTrainingJob\nmetadata:\n  name: broken\nspec:\n"
                    "  training:\n    epochs: 2\n   batchSize: 1\n")
    result = cat.ground.kubectl("apply", "-n", cat.ns, "-f", str(path), check=False)
    assert result.returncode != 0 and "line 7" in result.stderr, result.stderr


@pytest.mark.parametrize("c", ADMISSION, ids=[c.case for c in ADMISSION])
def test_fails_at_admission_with_a_reason_naming_the_field(cat, c):
    name = f"adm-{uuid.uuid4().hex[:8]}"
    cat.ground.apply(job(cat.ns, name, merged(BASE, c.spec)))
    wait_phase(cat.ground, cat.operator, cat.ns, name, "Failed")
    failed = failed_condition(cat.ground, cat.ns, name)
    assert failed["reason"] == c.reason, failed
    for text in c.shows:
        assert text in failed["message"], failed
    assert not [p for p in trainer_pods(cat.ground, cat.ns) if p["metadata"]["labels"]["lora-operator.io/job"] == name]


@pytest.fixture(scope="module")
def trained(cat):
    """Applies every trainer-side case at once (one job per distinct spec) and waits for them all."""
    names: dict[str, str] = {}
    for c in TRAINED:
        key = json.dumps(c.spec, sort_keys=True)
        if key not in names:
            names[key] = f"real-{len(names)}"
            cat.ground.apply(job(cat.real_ns, names[key], merged(REAL, c.spec)))
    finished = {"Succeeded", "Failed"}
    for name in names.values():
        cat.ground.wait_for(lambda n=name: get_job(cat.ground, cat.real_ns, n).get("status", {}).get("phase")
                            in finished, timeout=420, interval=1, what=f"{name} finished")
    return {key: get_job(cat.ground, cat.real_ns, name) for key, name in names.items()}


@pytest.mark.parametrize("c", TRAINED, ids=[c.case for c in TRAINED])
def test_trainer_side_case_ends_with_the_file_or_field_named(cat, trained, c):
    result = trained[json.dumps(c.spec, sort_keys=True)]
    status = result["status"]
    if c.reason:
        assert status["phase"] == "Failed", status
        failed = next(x for x in status["conditions"] if x["type"] == "Failed")
        assert failed["reason"] == c.reason and len(status["attempts"]) == 1, status["attempts"]
        for text in c.shows:
            assert text in failed["message"], failed["message"]
        return
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    client = cat.ground.minio.client()
    resp = client.get_object("loras", f"{cat.real_ns}/{result['metadata']['name']}/manifest.json")
    manifest = json.loads(resp.read())
    resp.close()
    skipped = {s["file"]: s["reason"] for s in manifest["skipped"]}
    usable = len(MIXED_FILES) + 1  # + img0.png
    assert manifest["images"] + manifest["validationImages"] == usable, manifest
    if c.file == "huge.png":
        assert list(skipped) == ["huge.png"] and "400 MP" in skipped["huge.png"], skipped
        on_resource = {s["file"]: s["reason"] for s in status.get("skippedFiles", [])}
        assert on_resource == skipped, status.get("skippedFiles")  # kubectl shows it, not only the manifest
    elif c.file != "*":
        assert c.file not in skipped, skipped


def test_immutable_edit_after_admission_is_refused(cat):
    cat.ground.apply(job(cat.ns, "frozen", BASE))
    running_pod(cat.ground, cat.ns, "frozen")
    result = cat.ground.kubectl("patch", "ltj", "frozen", "-n", cat.ns, "--type=merge",
                                "-p", '{"spec":{"training":{"epochs":5}}}', check=False)
    assert result.returncode != 0
    assert "spec.training is immutable once the job was admitted; create a new job" in result.stderr, result.stderr
    end_pod(cat.ground, cat.ns, running_pod(cat.ground, cat.ns, "frozen")["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, "frozen", "Succeeded")


def test_job_name_at_the_253_character_limit_runs(cat):
    name = ("a" * 60 + ".") * 4 + "b" * 9
    assert len(name) == 253
    cat.ground.apply(job(cat.ns, name, BASE))
    pods = []

    def pod_of_job():
        pods[:] = [p for p in trainer_pods(cat.ground, cat.ns) if p["metadata"]["labels"]["lora-operator.io/job-uid"]
                   == get_job(cat.ground, cat.ns, name)["metadata"]["uid"] and p["status"].get("phase") == "Running"]
        return bool(pods)
    cat.ground.wait_for(pod_of_job, timeout=60, what="the long-named job's pod running")
    pod = pods[0]
    assert len(pod["metadata"]["name"]) <= 63 and pod["metadata"]["name"].endswith("-a1")
    assert len(pod["metadata"]["labels"]["lora-operator.io/job"]) <= 63
    end_pod(cat.ground, cat.ns, pod["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, name, "Succeeded")


def test_zz_operator_kept_serving_and_no_other_job_was_affected(cat):
    """Runs last (name order): the job applied before every bad case and one applied after them."""
    assert cat.operator.proc.alive(), cat.operator.tail()
    before = get_job(cat.ground, cat.ns, "before")["status"]
    assert before["phase"] == "Succeeded" and len(before["attempts"]) == 1
    cat.ground.apply(job(cat.ns, "after", BASE))
    end_pod(cat.ground, cat.ns, running_pod(cat.ground, cat.ns, "after")["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, "after", "Succeeded")
    assert len(get_job(cat.ground, cat.ns, "after")["status"]["attempts"]) == 1
    log = cat.operator.proc.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_the_catalogue_has_at_least_30_cases():
    assert len(REFUSED) + len(ADMISSION) + len(TRAINED) + len(OTHER) >= 30
