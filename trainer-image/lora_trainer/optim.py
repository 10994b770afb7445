"""Optimizers and learning-rate schedules, from `training.optimizer` and `training.lrScheduler`.

Every optimizer is built from a fixed table: a name in the spec never chooses code to import.
Optional packages that are missing end the run with MISSING_PACKAGE and say what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from lora_operator.api import Training
from lora_operator.api.training import OptimizerType, SchedulerType

from .errors import MissingPackageError


def _require(module: str, package: str, optimizer: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingPackageError(
            f"training.optimizer.type: {optimizer} needs the package {package!r}, which is not installed "
            f"in the trainer image (pip install {package}, or pick adamw)"
        ) from err


def _adamw(groups: list[dict], decay: float, device: torch.device) -> torch.optim.Optimizer:
    # Fused on a GPU: one kernel per dtype/device for all tensors instead of a few per tensor group.
    return torch.optim.AdamW(groups, weight_decay=decay, fused=device.type == "cuda")


def _adamw8bit(groups: list[dict], decay: float, device: torch.device) -> torch.optim.Optimizer:
    bnb = _require("bitsandbytes", "bitsandbytes", "adamw8bit")
    return bnb.optim.AdamW8bit(groups, weight_decay=decay)


def _prodigy(groups: list[dict], decay: float, device: torch.device) -> torch.optim.Optimizer:
    # Prodigy estimates the step size itself: the learning rates act as multipliers (1.0 is usual).
    prodigyopt = _require("prodigyopt", "prodigyopt", "prodigy")
    return prodigyopt.Prodigy(groups, weight_decay=decay, safeguard_warmup=True, use_bias_correction=True)


def _adafactor(groups: list[dict], decay: float, device: torch.device) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    return Adafactor(groups, weight_decay=decay, scale_parameter=False, relative_step=False, warmup_init=False)


def _lion(groups: list[dict], decay: float, device: torch.device) -> torch.optim.Optimizer:
    lion = _require("lion_pytorch", "lion-pytorch", "lion")
    return lion.Lion(groups, weight_decay=decay)


OPTIMIZERS: dict[OptimizerType, Callable[[list[dict], float, torch.device], torch.optim.Optimizer]] = {
    OptimizerType.ADAMW: _adamw,
    OptimizerType.ADAMW8BIT: _adamw8bit,
    OptimizerType.PRODIGY: _prodigy,
    OptimizerType.ADAFACTOR: _adafactor,
    OptimizerType.LION: _lion,
}


def build_optimizer(groups: list[dict[str, Any]], training: Training,
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer of `training.optimizer.type` over the parameter groups (each with its lr), on `device`.

    Raises:
        MissingPackageError: the optimizer's package is not installed.
    """
    clean = [{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in groups if g["params"]]
    return OPTIMIZERS[training.optimizer.type](clean, training.optimizer.weight_decay, device or torch.device("cpu"))


def build_scheduler(optimizer: torch.optim.Optimizer, training: Training, total_steps: int) -> Any:
    """diffusers' ``get_scheduler`` for `training.lrScheduler` over `total_steps` optimizer steps."""
    from diffusers.optimization import get_scheduler

    sched = training.lr_scheduler
    kwargs: dict[str, Any] = {"num_warmup_steps": sched.warmup_steps, "num_training_steps": total_steps}
    if sched.type is SchedulerType.COSINE_WITH_RESTARTS:
        kwargs["num_cycles"] = sched.cycles
    if sched.type is SchedulerType.POLYNOMIAL:
        kwargs["power"] = sched.power
    if sched.type is SchedulerType.CONSTANT:
        kwargs = {}
    elif sched.type is SchedulerType.CONSTANT_WITH_WARMUP:
        kwargs.pop("num_training_steps")
    return get_scheduler(str(sched.type), optimizer, **kwargs)
