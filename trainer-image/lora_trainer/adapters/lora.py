"""LoRA, LoCon, LoHa and LoKr: adapters on the denoiser (and optionally the text encoders), via peft.

LoCon is LoRA plus adapters on the convolution layers, with their own rank and alpha
(network.convDim / convAlpha) through peft's ``rank_pattern`` / ``alpha_pattern``; LoHa and LoKr
(peft's LoHaConfig / LoKrConfig, `lycoris.py`) adapt the same layers, and the convolution layers when
convDim is set. network.dora makes a LoRA / LoCon a DoRA (peft's ``use_dora``).
The text encoders get a LoRA when ``textEncoderLearningRate`` and ``textEncoderRatio``
are both above 0; it trains for that share of the steps, from the start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lora_operator.api import CheckpointFormat, JobSpec, Network, Training

from ..errors import ConfigError
from ..export import modelspec, peft_layers, trigger_phrase, write_diffusers, write_kohya
from ..families import Components, Family
from ..families.base import text_component
from .base import trainable


def conv_patterns(network: Network, conv_targets: list[str] | None) -> tuple[dict[str, int], dict[str, float]]:
    """peft's rank_pattern / alpha_pattern: the conv layers at convDim / convAlpha (0: convDim)."""
    rank_pattern = {name: network.conv_dim for name in conv_targets or []}
    alpha_pattern = {name: network.conv_alpha or network.conv_dim for name in conv_targets or []}
    return rank_pattern, alpha_pattern


def lora_config(targets: list[str], network: Network, conv_targets: list[str] | None = None,
                exclude: str | None = None) -> Any:
    """A peft LoraConfig: rank dim, alpha, dropout, DoRA; conv layers at convDim / convAlpha when given;
    modules matching the regex `exclude` are left alone."""
    from peft import LoraConfig

    rank_pattern, alpha_pattern = conv_patterns(network, conv_targets)
    return LoraConfig(
        r=network.dim,
        lora_alpha=network.alpha,
        lora_dropout=network.dropout,
        init_lora_weights=True,
        target_modules=[*targets, *(conv_targets or [])],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        exclude_modules=exclude,
        use_dora=network.dora,
    )


LYCORIS_NETWORK_MODULE = "lycoris.kohya"
"""``ss_network_module`` of a LyCORIS (LoHa, LoKr) file, as LyCORIS' kohya plug-in writes it."""


def text_encoder_trains(training: Training) -> bool:
    """Whether the text encoders get a LoRA at all."""
    return training.text_encoder_learning_rate > 0 and training.text_encoder_ratio > 0


class LoraAdapter:
    """A LoRA (conv=False) or LoCon (conv=True) adapter."""

    make_config = staticmethod(lora_config)
    """(targets, network, conv_targets, exclude) -> the peft config of the adapter."""
    algo: str | None = None
    """The LyCORIS ``algo`` of the kohya metadata (None: a kohya LoRA)."""

    def __init__(self, conv: bool = False):
        self.conv = conv
        self.modules: dict[str, torch.nn.Module] = {}
        self.trains_text = False
        self.text_ratio_applies = True
        self._groups: list[dict[str, Any]] = []
        self._family: Family | None = None
        self._spec: JobSpec | None = None
        self._parts: Components | None = None

    def attach(self, family: Family, parts: Components, spec: JobSpec) -> None:
        """Add LoRA layers to the denoiser (and conv layers for LoCon, text encoders when trained)."""
        network, training = spec.network, spec.training
        conv_targets = None
        if self.algo:  # LoHa / LoKr: conv layers when convDim is set (resolve_spec: only families that have them)
            self.conv = network.conv_dim > 0
        if self.conv:  # the families that support locon are their table rows' (checked in resolve_spec)
            if network.conv_dim < 1:
                raise ConfigError("network.convDim: must be at least 1 for type locon")
            conv_targets = family.conv_targets
        self._family, self._spec, self._parts = family, spec, parts
        parts.denoiser.add_adapter(self.make_config(family.denoiser_targets, network, conv_targets,
                                                    family.denoiser_exclude))
        self.modules = {family.denoiser_name: parts.denoiser}
        self._groups = [
            {"name": family.denoiser_name, "lr": training.unet_learning_rate,
             "params": trainable(list(parts.denoiser.parameters()))}
        ]
        self.trains_text = text_encoder_trains(training)
        if self.trains_text and not family.trainable_text_encoders:
            raise ConfigError(f"training.textEncoderLearningRate: {family.family} trains no text-encoder LoRA (its "
                              "text encoders stay frozen, as in every trainer of it, and no UI loads one); set it or "
                              "training.textEncoderRatio to 0")
        if self.trains_text:
            text_params = []
            encoders = parts.text_encoders[: family.trainable_text_encoders]
            for index, encoder in enumerate(encoders):
                encoder.add_adapter(self.make_config(family.text_encoder_targets, network))
                self.modules[text_component(index)] = encoder
                text_params += trainable(list(encoder.parameters()))
            self._groups.append(
                {"name": "text_encoder", "lr": training.text_encoder_learning_rate, "params": text_params})

    def network_args(self, network: Network) -> dict[str, Any]:
        """``ss_network_args``: conv rank and alpha, LyCORIS' algo, DoRA (``dora_wd``, LyCORIS' name)."""
        args: dict[str, Any] = {"algo": self.algo} if self.algo else {}
        if self.conv:
            args |= {"conv_dim": network.conv_dim, "conv_alpha": network.conv_alpha or network.conv_dim}
        if network.dora:
            args["dora_wd"] = True
        return args

    def param_groups(self) -> list[dict[str, Any]]:
        """The denoiser group (unetLearningRate) and the text group (textEncoderLearningRate)."""
        return self._groups

    def set_text_training(self, enabled: bool) -> None:
        """Freeze or unfreeze the text-encoder LoRA weights."""
        for group in self._groups[1:]:
            for p in group["params"]:
                p.requires_grad_(enabled)
                if not enabled:
                    p.grad = None

    def prepare_caption(self, caption: str) -> str:
        """Captions are used as written."""
        return caption

    def after_step(self) -> None:
        """Nothing to do after a step."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All LoRA weights, keyed component.peft_key."""
        out = {}
        for name, module in self.modules.items():
            for key, value in peft_layers(module)[0].items():
                out[f"{name}.{key}"] = value
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore weights written by `state_dict`."""
        from peft import set_peft_model_state_dict

        for name, module in self.modules.items():
            prefix = f"{name}."
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            set_peft_model_state_dict(module, part)

    def export(self, folder: Path, formats: list[CheckpointFormat], metadata: dict[str, Any]) -> list[tuple[str, Path]]:
        """Write kohya.safetensors and/or diffusers/pytorch_lora_weights.safetensors."""
        layers = {name: peft_layers(module) for name, module in self.modules.items()}
        written = []
        if CheckpointFormat.KOHYA in formats:
            network, family = self._spec.network, self._family
            meta = {
                **metadata,
                "network_module": LYCORIS_NETWORK_MODULE if self.algo else family.kohya_network_module,
                "network_dim": network.dim,
                "network_alpha": network.alpha,
                "network_args": self.network_args(network),
            }
            trigger = trigger_phrase(self._spec.dataset.caption_prefix)
            version = family.model_version(self._parts)
            spec_keys = modelspec(version, "lora", title=str(metadata.get("output_name") or trigger or "LoRA"),
                                  resolution=str(metadata.get("resolution", "")), trigger_phrase=trigger)
            kohya = write_kohya(folder / "kohya.safetensors", layers, family.kohya_layer, meta, version, spec_keys)
            written.append(("kohya", kohya))
        if CheckpointFormat.DIFFUSERS in formats:
            # The file's keys name every adapted module, so diffusers' loader targets exactly those; the
            # denoiser's exclude_modules only chose them, and kept in the config it makes peft warn on load.
            configs = {name: module.peft_config["default"].to_dict() for name, module in self.modules.items()}
            for config in configs.values():
                config.pop("exclude_modules", None)
            written.append(("diffusers", write_diffusers(folder / "diffusers", layers, configs)))
        return written
