"""The catalogue of bad inputs that tests/cluster/test_bad_inputs.py runs: each case, what it
should end in and what the user then sees, the datasets its files come from, and `table()`, which
renders it for bench/RESULTS.md."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from testground.seed import make_dataset

REPO = Path(__file__).resolve().parents[2]
ALLOWED_IMAGES = '["registry.example.com/lora/*"]'
"""LORA_TRAINER_ALLOWED_IMAGES of the catalogue's operator."""
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
    Refused("crop size 99999x99999", {"dataset": {"uri": "s3://d/", "crop": {"size": "99999x99999"}}},
            ("spec.dataset.crop.size", "should match")),
    Refused("preview size above 4096", {"previews": {"size": "4097x512"}}, ("spec.previews.size", "should match")),
    Refused("dataset URI climbing out with ..", {"dataset": {"uri": "s3://datasets/team-a/../team-b/"}},
            ("spec.dataset.uri", "should match")),
    Refused("base-model URI with a bucket name S3 refuses", {"baseModel": {"family": "sd15", "uri": "s3://Team_A/m"}},
            ("spec.baseModel.uri", "should match")),
    Refused("file:// output climbing out with ..", {"output": {"uri": "file:///cache/../etc/"}},
            ("spec.output.uri", "should match")),
    Refused("template name with a slash", {"template": "team-b/sd15-character"},
            ("spec.template", "lowercase RFC 1123 subdomain")),
    # values the Pod API refuses in the trainer pod: before the CRD had these rules, the pod create
    # answered 422 and the job looped, holding a node (issue 26, finding 3)
    *[Refused(f"storage.secretRef {ref!r}", {"storage": {"secretRef": ref}},
              ("spec.storage.secretRef", "lowercase RFC 1123 subdomain"))
      for ref in ("lora-storage/", "other-ns/lora-storage", "..", ".", "%2e%2e")],
    Refused("toleration key with spaces", {"placement": {"tolerations": [{"key": "bad key", "operator": "Exists"}]}},
            ("spec.placement.tolerations[0].key", "must be a label key")),
    Refused("toleration with operator Exists and a value",
            {"placement": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
            ("spec.placement.tolerations[0].value", "must be empty when its operator is Exists")),
    Refused("toleration without a key, operator Equal", {"placement": {"tolerations": [{"value": "x"}]}},
            ("spec.placement.tolerations[0].operator", "without a key must have operator Exists")),
    Refused("nodeSelector key with spaces", {"placement": {"nodeSelector": {"bad key": "x"}}},
            ("spec.placement.nodeSelector", "every key must be a label key")),
    Refused("nodeSelector value with a space", {"placement": {"nodeSelector": {"zone": "eu west"}}},
            ("spec.placement.nodeSelector", "every value must be a label value")),
    Refused("nodeSelector value over 63 characters", {"placement": {"nodeSelector": {"zone": "z" * 64}}},
            ("spec.placement.nodeSelector.zone", "may not be more than 63")),
    Refused("gpuType with a space", {"placement": {"gpuType": "h 100"}},
            ("spec.placement.gpuType", "must be a label value")),
    Refused("template named '..'", {"template": ".."}, ("spec.template", "lowercase RFC 1123 subdomain")),
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
                     ("spec.dataset.uri", "nothing under s3://datasets/nothing-here/")),
    FailsAtAdmission("dataset bucket that does not exist", {"dataset": {"uri": "s3://no-such-bucket/x/"}},
                     "DatasetEmpty", ("spec.dataset.uri", "s3://no-such-bucket/", "does not exist")),
    FailsAtAdmission("base model that does not exist", {"baseModel": {"uri": "s3://models/no-such-model"}},
                     "ModelNotFound", ("spec.baseModel.uri", "nothing under s3://models/no-such-model")),
    FailsAtAdmission("base-model bucket that does not exist", {"baseModel": {"uri": "s3://no-such-models/m"}},
                     "ModelNotFound", ("spec.baseModel.uri", "s3://no-such-models/", "does not exist")),
    FailsAtAdmission("regularization images that do not exist",
                     {"dataset": {"regularization": {"uri": "s3://datasets/no-such-class/"}}}, "DatasetEmpty",
                     ("spec.dataset.regularization.uri", "nothing under s3://datasets/no-such-class/")),
    FailsAtAdmission("trainer image off the platform's list", {"placement": {"image": "docker.io/evil/miner:1"}},
                     "NotAllowed", ("spec.placement.image", "docker.io/evil/miner:1", "not an allowed trainer image")),
    FailsAtAdmission("file:///etc as the dataset", {"dataset": {"uri": "file:///etc"}}, "NotAllowed",
                     ("spec.dataset.uri", "file:///etc", "file:// URIs are for local runs")),
    FailsAtAdmission("file:// base model", {"baseModel": {"uri": "file:///usr/lib/python3"}}, "NotAllowed",
                     ("spec.baseModel.uri", "file:// URIs are for local runs")),
    FailsAtAdmission("dataset missing (no template fills it)", {"dataset": None}, "InvalidSpec", ("dataset",)),
    FailsAtAdmission("timestep bias on a flow-matching family",
                     {"baseModel": {"family": "flux", "uri": "s3://models/tiny-flux"},
                      "training": {"timestepBias": {"strategy": "later", "multiplier": 3}}}, "InvalidSpec",
                     ("training.timestepBias", "trains by flow matching")),
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
