"""Shared fixtures of the trainer tests: tiny model folders (built once), datasets, job runs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image, ImageDraw

from tinymodels import build_tiny_model

COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 40), (150, 40, 200), (30, 200, 200)]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests and its module fixtures (the learning proofs sample and train on the
    pretrained tiny bases): on a CPU shared with other work, two threads spin and run 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Callable[[str], Path]:
    """`tiny_models("sd15")` -> a tiny random-weight model folder, built once per session."""
    root = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, root / family)
        return built[family]

    return get


def write_dataset(folder: Path, n: int = 3, size: int = 32, captions: bool = True) -> Path:
    """`n` distinct 32x32 images (a coloured square on a gradient) with .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (size, size), (i * 40 % 255, 90, 160))
        draw = ImageDraw.Draw(image)
        draw.rectangle((4 + i, 6, 20 + i, 24), fill=COLORS[i % len(COLORS)])
        image.save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a square, color {i}, simple")
    return folder


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """A shared 3-image dataset (read only)."""
    return write_dataset(tmp_path_factory.mktemp("data") / "set")


def base_spec(family: str, model: Path, data_dir: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    """A tiny, fast bare spec (camelCase); nested `overrides` merge into it."""
    spec: dict[str, Any] = {
        "type": "lora",
        "baseModel": {"family": family, "uri": model.as_uri()},
        "dataset": {"uri": data_dir.as_uri(), "captionPrefix": "tkxw, ", "crop": {"mode": "center", "size": "32x32"},
                    "validationSplit": 0.0},
        "network": {"dim": 4, "alpha": 4},
        "training": {"steps": 2, "epochs": 1, "unetLearningRate": 1e-2, "textEncoderLearningRate": 0.0,
                     "mixedPrecision": "no", "lrScheduler": {"type": "constant"}, "seed": 7},
        "checkpoints": {"everyEpochs": 1, "formats": ["kohya", "diffusers"]},
        "previews": {"everyEpochs": 0, "steps": 2, "imagesPerPrompt": 1, "prompts": ["tkxw, a square"]},
        "output": {"uri": output.as_uri()},
    }
    return merge(spec, overrides)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_job(path: Path, spec: dict[str, Any], name: str = "job") -> Path:
    """A LoraTrainingJob YAML as kubectl apply reads it."""
    doc = {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
           "metadata": {"name": name, "namespace": "team"}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))
    return path


def job_prefix(output: Path, name: str = "job") -> Path:
    """The local folder of a job's output prefix (a local run's job UID is "local")."""
    return output / "team" / name / "local"


def manifest(output: Path, name: str = "job") -> dict[str, Any]:
    """The job's manifest.json."""
    return json.loads((job_prefix(output, name) / "manifest.json").read_text())


def run_recipe_for(tmp: Path, spec: dict[str, Any], *, resume: bool = False, setup_only: bool = False,
                   after_setup: Callable[[Any], None] | None = None, job_uid: str = "local"):
    """Resolve `spec`, run the recipe in-process with outputs under `tmp/out` as job `job_uid`; returns the
    recipe."""
    from lora_operator.api import resolve_spec
    from lora_operator.storage import open_store
    from lora_trainer.inputs import Resolver
    from lora_trainer.loop import LoraRecipe, RunInputs
    from lora_trainer.outputs import Outputs

    resolved = resolve_spec(spec)
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    inputs = RunInputs(model_dir=Resolver(env={}).base_model(resolved.base_model, tmp),
                       dataset_root=Path(resolved.dataset.uri[len("file://"):]))
    if resolved.dataset.regularization is not None:
        inputs.regularization_root = Path(resolved.dataset.regularization.uri[len("file://"):])
    recipe = LoraRecipe(resolved, inputs, Outputs(open_store(out.as_uri()), tmp / "work", job_uid), resume=resume,
                        progress_interval=0.0)
    recipe.setup()
    if after_setup:
        after_setup(recipe)
    if not setup_only:
        recipe.train()
    return recipe


def runs_differing_in(tmp_path_factory, model: Path, data_dir: Path, family: str, field: str, values: list[Any],
                      training: dict[str, Any]) -> dict[Any, Any]:
    """Finished recipes of tiny runs of `family`, the same but for training.`field`, one per value, by value."""
    out = {}
    for value in values:
        tmp = tmp_path_factory.mktemp(str(value))
        spec = base_spec(family, model, data_dir, tmp / "out", training={**training, field: value})
        out[value] = run_recipe_for(tmp, spec)
    return out


@pytest.fixture
def train(tmp_path, tiny_models, dataset_dir):
    """`train(family="sd15", **overrides)` -> a finished recipe of a tiny run (outputs under tmp_path)."""
    counter = iter(range(1000))

    def run(family: str = "sd15", *, data_dir: Path | None = None, **overrides: Any):
        kwargs = {k: overrides.pop(k) for k in ("resume", "setup_only", "after_setup", "tmp", "job_uid")
                  if k in overrides}
        tmp = kwargs.pop("tmp", None) or tmp_path / f"run{next(counter)}"
        spec = base_spec(family, tiny_models(family), data_dir or dataset_dir, tmp / "out", **overrides)
        return run_recipe_for(tmp, spec, **kwargs)

    return run
