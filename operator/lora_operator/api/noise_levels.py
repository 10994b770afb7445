"""How training draws its noise levels: training.flow for flow-matching families, training.timestepBias for
the epsilon / v families (sd15, sdxl); each is refused where it does not apply."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from .base import ApiModel
from .families import family_row

if TYPE_CHECKING:
    from .training import Training

class TimestepSampling(StrEnum):
    """How flow-matching training draws its sigmas (diffusers' compute_density_for_timestep_sampling)."""

    LOGIT_NORMAL = "logit_normal"
    UNIFORM = "uniform"
    MODE = "mode"


class LossWeighting(StrEnum):
    """Per-sigma loss weights of flow matching (diffusers' compute_loss_weighting_for_sd3)."""

    NONE = "none"
    SIGMA_SQRT = "sigma_sqrt"
    COSMAP = "cosmap"


class Flow(ApiModel):
    """Timestep sampling, shift, loss weighting and guidance of flow-matching families (Flux and the
    other rectified-flow families); refused for the epsilon / v families (sd15, sdxl)."""

    sampling: TimestepSampling = TimestepSampling.LOGIT_NORMAL
    """How the training sigmas are drawn: logit_normal (the sigmoid of a normal with logitMean and
    logitStd; the defaults 0 and 1 are what other trainers call sigmoid sampling, SD3 / Flux),
    uniform (every noise level alike) or mode (a density with its peak moved by modeScale).
    Default: logit_normal."""
    logit_mean: float = Field(default=0.0, ge=-10.0, le=10.0)
    """Mean of the normal behind logit_normal sampling; above 0 draws noisier sigmas. Default: 0."""
    logit_std: float = Field(default=1.0, gt=0.0, le=10.0)
    """Standard deviation of the normal behind logit_normal sampling. Default: 1."""
    mode_scale: float = Field(default=1.29, ge=-1.0, le=2.0)
    """Scale of mode sampling (SD3 paper); 0 is uniform, above 0 favours the middle sigmas. Default: 1.29."""
    shift: float | None = Field(default=None, gt=0.0, le=100.0)
    """A fixed shift of the drawn sigmas toward noise, s' = shift x s / (1 + (shift - 1) x s) as
    FlowMatchEulerDiscreteScheduler shifts; unset: the family's own (Flux.1: none). Not with
    resolutionShift."""
    resolution_shift: bool = Field(default=False)
    """Shift each image's sigmas by its size, as the base model's scheduler does when it generates
    (use_dynamic_shifting): mu grows linearly with the image's latent tokens from baseShift at
    baseImageSeqLen to maxShift at maxImageSeqLen of the scheduler config, and s' = e^mu /
    (e^mu + 1/s - 1). Larger images train noisier. Default: false."""
    weighting: LossWeighting = LossWeighting.NONE
    """Loss weight of each sample by its sigma: none, sigma_sqrt (1 / sigma^2) or cosmap (SD3 paper).
    Default: none."""
    guidance: float = Field(default=1.0, ge=0.0, le=100.0)
    """The distilled guidance a guidance-distilled transformer (Flux.1 dev) is given while training;
    refused by a base without a guidance embedder (Flux.1 schnell). Default: 1."""

    @model_validator(mode="after")
    def _one_shift(self) -> Flow:
        if self.shift is not None and self.resolution_shift:
            raise ValueError("shift and resolutionShift exclude each other: set one")
        return self


class BiasStrategy(StrEnum):
    """Which DDPM timesteps training.timestepBias weights."""

    NONE = "none"
    EARLIER = "earlier"
    LATER = "later"
    RANGE = "range"


class TimestepBias(ApiModel):
    """Draw some DDPM timesteps more (or less) often than the rest, for the epsilon / v families (sd15,
    sdxl), which otherwise draw every timestep alike; the timestep bias of diffusers' SDXL script and
    SimpleTuner. Later (noisier) timesteps are where a caption decides composition and shape, earlier
    ones where it decides texture and detail. Refused for flow families: training.flow draws theirs."""

    strategy: BiasStrategy = BiasStrategy.NONE
    """none (uniform), earlier (the first `portion` of the timesteps, the least noisy), later (the last
    `portion`, the noisiest) or range (timesteps begin to end). Default: none."""
    multiplier: float = Field(default=1.0, ge=0.0, le=100.0)
    """Weight of the chosen timesteps against 1 for the others: 3 draws each of them three times as often,
    0 never draws them (kohya's min / max timestep). Must not be 1 with a strategy. Default: 1."""
    portion: float = Field(default=0.25, gt=0.0, lt=1.0)
    """Share of the timesteps that earlier or later weights. Default: 0.25."""
    begin: int = Field(default=0, ge=0, le=1000)
    """First timestep that range weights. Default: 0."""
    end: int = Field(default=1000, ge=1, le=1000)
    """The timestep after the last one range weights (at most the scheduler's num_train_timesteps, 1000 for
    SD1.5 and SDXL). Default: 1000."""

    @model_validator(mode="after")
    def _used_fields(self) -> TimestepBias:
        # an option the strategy ignores is refused rather than dropped in silence; a resolved spec spells
        # out every default, so fields are compared with their defaults, not by whether they were set
        # (every field here is one word: its name is its resource name)
        unused = {BiasStrategy.NONE: ("multiplier", "portion", "begin", "end"),
                  BiasStrategy.EARLIER: ("begin", "end"), BiasStrategy.LATER: ("begin", "end"),
                  BiasStrategy.RANGE: ("portion",)}[self.strategy]
        for name in unused:
            if getattr(self, name) != type(self).model_fields[name].default:
                raise ValueError(f"{name} has no effect with strategy {self.strategy.value}")
        if self.strategy != BiasStrategy.NONE and self.multiplier == 1.0:
            raise ValueError(f"strategy {self.strategy.value} with multiplier 1 weights every timestep alike: "
                             "set a multiplier above 1 to favour them or below to draw them less")
        if self.begin >= self.end:
            raise ValueError(f"begin ({self.begin}) must be below end ({self.end})")
        if self.strategy == BiasStrategy.RANGE and self.multiplier == 0 and (self.begin, self.end) == (0, 1000):
            raise ValueError("a range of every timestep with multiplier 0 leaves none to draw")
        return self


def noise_level_problems(family: str, training: Training | None) -> list[tuple[str, str]]:
    """(field, message) when training.flow is set for a family that does not train by flow matching, or
    training.timestepBias for one that does."""
    if training is None:
        return []
    row = family_row(family)
    # compared with the defaults, not by fields set: a resolved spec (the trainer pod's) spells them all out
    if row.prediction == "flow" and training.timestep_bias != TimestepBias():
        return [("training.timestepBias", f"family {row.name} trains by flow matching: its sigmas are drawn by "
                                          "training.flow (logitMean above 0 draws noisier ones, shift moves them "
                                          "toward noise); leave training.timestepBias out")]
    if row.prediction != "flow" and training.flow != Flow():
        return [("training.flow", f"family {row.name} is not a flow-matching model ({row.prediction} prediction): "
                                  "timestep sampling, shift, weighting and guidance apply to flow families only; "
                                  "leave training.flow out (training.timestepBias draws its timesteps, "
                                  "minSnrGamma weights its loss)")]
    return []
