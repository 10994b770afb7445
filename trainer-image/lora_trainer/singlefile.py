"""Base models as users have them: one ``.safetensors`` checkpoint in the original layout.

SD1.5 and SDXL files (Civitai, A1111, ComfyUI) hold the UNet, VAE and text encoders under the Stability
prefixes; a Flux.1 file holds the transformer in the Black Forest Labs layout, its text encoders,
tokenizers, VAE and scheduler coming from a diffusers folder (``baseModel.components``). Each part is
built by diffusers' single-file loaders from a config folder: ``baseModel.config`` when the job names
one (a non-standard architecture), else the standard configs shipped in ``model_configs/``, so nothing
is fetched from a hub. The family is checked against the file's keys before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError

if TYPE_CHECKING:  # the laptop CLI imports this module (through inputs) without torch
    import torch

BUNDLED_CONFIGS = Path(__file__).parent / "model_configs"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model")
"""A tokenizer folder holds its vocabulary in one of these (fast, BPE, SentencePiece)."""
SUFFIX = ".safetensors"
PARTS_IN_FILE = {
    "sd15": {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.", "vae."),
             "text_encoder": ("cond_stage_model.",)},
    "sdxl": {"unet": ("model.diffusion_model.",), "vae": ("first_stage_model.", "vae."),
             "text_encoder": ("conditioner.embedders.0.",), "text_encoder_2": ("conditioner.embedders.1.",)},
    "flux": {"transformer": ("",)},
}
"""Per family: the components the file holds, each with the key prefixes of its tensors. A component
gets only its own tensors, so the loaders never mistake one text encoder for the other."""
LAYOUTS = {
    "flux": "a Flux.1 transformer (double_blocks.*, single_blocks.*)",
    "sdxl": "an SDXL checkpoint (model.diffusion_model.* UNet, conditioner.embedders.0/1 text encoders)",
    "sd15": "an SD1.x checkpoint (model.diffusion_model.* UNet, cond_stage_model.* text encoder)",
}
"""What a file of each family looks like, for messages."""


def is_single_file(path: Path) -> bool:
    """Whether a fetched base model is one checkpoint file rather than a diffusers folder."""
    return path.is_file()


def layout_of(keys: set[str]) -> str | None:
    """The family whose original layout the tensor names follow (None: none of sd15, sdxl, flux)."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("double_blocks.") or has("model.diffusion_model.double_blocks."):
        return "flux"
    if has("model.diffusion_model.input_blocks.") and has("conditioner.embedders.1."):
        return "sdxl"
    if has("model.diffusion_model.input_blocks.") and has("cond_stage_model."):
        return "sd15"
    return None


def read_keys(file: Path, field_name: str = "baseModel.uri") -> set[str]:
    """The tensor names of a safetensors file (its header only).

    Raises:
        ModelError: not a .safetensors file, or unreadable (names the field and file).
    """
    from safetensors import safe_open

    if file.suffix != SUFFIX:
        raise ModelError(f"{field_name}: {file.name} is not a {SUFFIX} file (pickled .ckpt / .pt files are "
                         "refused: loading them can run code)")
    try:
        with safe_open(file, framework="pt") as handle:
            return set(handle.keys())
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, or ValueError
        raise ModelError(f"{field_name}: {file.name} is not a readable safetensors file: "
                         f"{str(err).splitlines()[0]}") from err


def check_family(family: str, file: Path, keys: set[str]) -> None:
    """Refuse a file whose keys are not the layout of `family`.

    Raises:
        ModelError: naming baseModel.family, the file and what its keys say.
    """
    if family not in PARTS_IN_FILE:
        raise ModelError(f"baseModel.family: single-file checkpoints are read for {', '.join(PARTS_IN_FILE)}, "
                         f"not {family}; give a diffusers model folder in baseModel.uri")
    found = layout_of(keys)
    if found != family:
        what = LAYOUTS[found] if found else "none of the SD1.5, SDXL or Flux.1 layouts"
        sample = ", ".join(sorted(keys)[:3])
        raise ModelError(f"baseModel.family is {family} but {file.name} is {what}; its keys begin {sample}. "
                         f"Set baseModel.family to match the file{f' ({found})' if found else ''}.")


@dataclass
class SingleFileModel:
    """A checkpoint file to load a family's components from (the `folder` argument of `Family.load`).

    Attributes:
        file: The .safetensors checkpoint.
        family: Its family (checked against the keys).
        config: Diffusers-layout folder with the parts' configs, tokenizers and scheduler.
        components: Flux: a diffusers folder with everything but the transformer.
    """

    file: Path
    family: str
    config: Path
    components: Path | None = None

    def __str__(self) -> str:
        return str(self.file)

    def part_state(self, component: str) -> dict[str, torch.Tensor]:
        """The tensors of one component, keys unchanged, read from the file on demand: one component's
        tensors are in memory at a time, and none stay referenced once its model is built."""
        from safetensors import safe_open

        prefixes = PARTS_IN_FILE[self.family][component]
        with safe_open(self.file, framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefixes)}  # noqa: SIM118

    def load_part(self, loader: Any, component: str, **kwargs: Any) -> Any:
        """One component: from the file when it holds it, else from the config or components folder.

        Raises:
            ModelError: the part cannot be built (names the file or folder and the component).
        """
        from diffusers.loaders.single_file_utils import SingleFileComponentError

        if component not in PARTS_IN_FILE[self.family]:
            return self._from_folder(loader, component, **kwargs)
        try:
            return self._from_file(loader, component, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as err:
            raise ModelError(f"baseModel.uri: cannot load {component} from {self.file.name} with the config in "
                             f"{self.config / component}: {str(err).splitlines()[0]}") from err

    def _from_folder(self, loader: Any, component: str, **kwargs: Any) -> Any:
        folder = self.components or self.config
        field_name = "baseModel.components" if self.components else "baseModel.config"
        try:
            # transformers builds a CLIP tokenizer without a vocabulary rather than failing: check first
            if component.startswith("tokenizer") and not any((folder / component / name).is_file()
                                                             for name in TOKENIZER_FILES):
                raise OSError(f"no {' or '.join(TOKENIZER_FILES)} in {component}/")
            return loader.from_pretrained(folder, subfolder=component, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"{field_name}: cannot load {component} from {folder}: "
                             f"{str(err).splitlines()[0]}") from err

    def _from_file(self, loader: Any, component: str, **kwargs: Any) -> Any:
        from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

        state = self.part_state(component)
        common = {"subfolder": component, "config": str(self.config), "local_files_only": True}
        if not hasattr(loader, "from_single_file"):  # a transformers CLIP text encoder
            return create_diffusers_clip_model_from_ldm(loader, state, torch_dtype=kwargs.get("torch_dtype"),
                                                        **common)
        if self.family == "flux":
            from . import bfl

            config = json.loads((self.config / component / "config.json").read_text())
            if bfl.width(config) != bfl.STANDARD_WIDTH:
                state = bfl.bfl_to_diffusers(state, config)
        return loader.from_single_file(state, **common, **kwargs)


def open_single_file(file: Path, family: str, config: Path | None, components: Path | None) -> SingleFileModel:
    """Check a fetched checkpoint file against its family and say where its configs come from.

    Args:
        file: The local .safetensors file (``baseModel.uri``).
        family: ``baseModel.family``.
        config: The local ``baseModel.config`` folder, or None for the standard configs.
        components: The local ``baseModel.components`` folder (Flux: required).

    Raises:
        ModelError: unreadable file, wrong family, a missing components folder, or a config folder that
            lacks a part's config (each naming the field and file).
    """
    keys = read_keys(file)
    check_family(family, file, keys)
    if family == "flux" and components is None:
        raise ModelError(f"baseModel.components: {file.name} is a Flux transformer file; name a diffusers "
                         "Flux folder with its text encoders, tokenizers, VAE and scheduler")
    if config is None:
        dev = any("guidance_in." in k for k in keys)
        config = BUNDLED_CONFIGS / (("flux-dev" if dev else "flux-schnell") if family == "flux" else family)
    for component in PARTS_IN_FILE[family]:
        if not (config / component / "config.json").is_file():
            raise ModelError(f"baseModel.config: {config} has no {component}/config.json "
                             f"(needed to build the {component} of {file.name})")
    return SingleFileModel(file, family, config, components)
