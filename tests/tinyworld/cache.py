"""The pretrained tiny bases, built once and cached outside the clone like the test ground's binaries.

A base lives under ``~/.cache/lora-operator/tinybase/<key>/`` (``LORA_TINYBASE_CACHE``
overrides the root), where the key hashes the recipe and the source of the code that
builds it: a change to either builds a new base, an unchanged one is reused. Builds go
to a temporary folder renamed into place, under a file lock, so parallel test processes
build it once and never see half a model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from . import pretrain, pretrain_flux
from .pretrain import Recipe
from .pretrain_flux import FluxRecipe

SOURCES = {Recipe: ("world.py", "pretrain.py"), FluxRecipe: ("world.py", "pretrain.py", "pretrain_flux.py")}
"""The files whose text decides what a recipe of each kind builds."""
BUILDERS = {Recipe: pretrain.pretrain, FluxRecipe: pretrain_flux.pretrain}
"""Recipe kind -> the function that pretrains it: an SD1.5-topology UNet or a Flux-topology transformer."""
RECIPES = {"epsilon": Recipe(), "flow": FluxRecipe(), "vpred": Recipe(prediction_type="v_prediction"),
           "flow-crosses": FluxRecipe(vae_crosses=True), "epsilon-crosses": Recipe(vae_crosses=True),
           "vpred-crosses": Recipe(prediction_type="v_prediction", vae_crosses=True)}
"""The bases the tests and the demo use, by name: noise prediction and v-prediction (SD1.5 topology, the same
recipe but for the objective) and flow matching (Flux topology); each ``-crosses`` base is its objective's base
whose VAE also trained on crosses (its denoiser never saw one), so a LoRA can draw the concept's shape: the shape
proofs' bases (tests/trainer/test_learning_shape.py): ``make test-learning`` builds them before its tests, not
``make tinybase``."""
PREBUILT = ("epsilon", "flow", "vpred")
"""The bases ``make tinybase`` (``python -m tinyworld``) builds, the ones ``make test`` uses: one per training
objective the trainer has, each with its learning proof in ``make test``."""


def cache_root() -> Path:
    """``$LORA_TINYBASE_CACHE``, else ``~/.cache/lora-operator/tinybase``."""
    env = os.environ.get("LORA_TINYBASE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lora-operator" / "tinybase"


def recipe_key(recipe: Recipe | FluxRecipe) -> str:
    """A short hash of the recipe and the building code."""
    digest = hashlib.sha256(json.dumps(recipe.as_dict(), sort_keys=True).encode())
    here = Path(__file__).parent
    for name in SOURCES[type(recipe)]:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def tinybase(kind: str = "epsilon", root: Path | None = None, recipe: Recipe | FluxRecipe | None = None) -> Path:
    """The folder of the pretrained base `kind` (a diffusers StableDiffusionPipeline or FluxPipeline), built if
    missing.

    Args:
        kind: A name of `RECIPES`, or the folder-name prefix of `recipe`.
        root: The cache root (default `cache_root`).
        recipe: Build this recipe instead of ``RECIPES[kind]``.
    """
    recipe = recipe or RECIPES[kind]
    root = root or cache_root()
    folder = root / f"{kind}-{recipe_key(recipe)}"
    if (folder / "model_index.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "model_index.json").is_file():  # another process built it while we waited
            return folder
        partial = root / f".{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        BUILDERS[type(recipe)](recipe, partial)
        (partial / "recipe.json").write_text(json.dumps(recipe.as_dict(), indent=1))
        partial.rename(folder)
    return folder
