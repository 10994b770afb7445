"""compute_copies.py: bf16 compute copies of the LoRA weights, refreshed once per optimizer step (`step`),
against autocast's cast per matmul (`op`), in bf16 on CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from lora_trainer.compute_copies import (
    ADAPTER_CAST_ENV,
    COMPUTE_BUFFER,
    ComputeConv2d,
    ComputeLinear,
    adapter_cast,
    install_compute_copies,
)
from lora_trainer.precision import CPU_BF16_ENV

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_step_is_the_default_on_a_gpu_in_bf16_only_and_the_environment_overrides(monkeypatch):
    monkeypatch.delenv(ADAPTER_CAST_ENV, raising=False)
    assert adapter_cast(CUDA, "bf16") == "step"
    assert adapter_cast(CUDA, "fp16") == "op" and adapter_cast(CUDA, "no") == "op"
    assert adapter_cast(CPU, "bf16") == "op"
    monkeypatch.setenv(ADAPTER_CAST_ENV, "op")
    assert adapter_cast(CUDA, "bf16") == "op"
    monkeypatch.setenv(ADAPTER_CAST_ENV, "step")
    assert adapter_cast(CPU, "bf16") == "step"
    monkeypatch.setenv(ADAPTER_CAST_ENV, "always")
    with pytest.raises(ValueError, match="LORA_ADAPTER_CAST='always'"):
        adapter_cast(CUDA, "bf16")


class Casts(TorchDispatchMode):
    """Counts the dtype casts (``_to_copy`` to another dtype, ``copy_`` across dtypes) and the foreach copies
    that run inside, and the casts whose source is one of `masters`."""

    def __init__(self, masters=()):
        super().__init__()
        self.masters = {id(m) for m in masters}
        self.casts = self.of_masters = self.foreach = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype", args[0].dtype) != args[0].dtype:
            self.casts += 1
            self.of_masters += id(args[0]) in self.masters
        elif func is torch.ops.aten.copy_.default and args[0].dtype != args[1].dtype:
            self.casts += 1
        elif func is torch.ops.aten._foreach_copy_.default:
            self.foreach += 1
        return func(*args, **kwargs)


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.b = torch.nn.Linear(32, 8)

    def forward(self, x, image):
        return self.b(torch.nn.functional.silu(self.a(x))).sum() + self.conv(image).pow(2).mean()  # bf16: no cast


def adapted(dora: bool = False) -> torch.nn.Module:
    """A bf16 model with a LoRA (float32, random A and B) on two linears and a convolution."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["a", "b", "conv"], init_lora_weights=False,
                        use_dora=dora)
    model = inject_adapter_in_model(config, _Model().to(torch.bfloat16))
    for name, p in model.named_parameters():
        p.requires_grad_("lora" in name)
        if "lora" in name:
            p.data = p.data.float()
    return model


def lora_params(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def inputs():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, 16, generator=gen).bfloat16(), torch.randn(1, 4, 8, 8, generator=gen).bfloat16())


def test_the_forward_casts_no_lora_weight_and_one_foreach_copy_refreshes_them_all():
    op, step = adapted(), adapted()
    copies = install_compute_copies(step, "step", "bf16")
    assert len(copies) == 6  # lora_A and lora_B of three layers
    assert isinstance(step.a.lora_A["default"], ComputeLinear)
    assert isinstance(step.conv.lora_B["default"], ComputeConv2d)
    assert step.state_dict().keys() == op.state_dict().keys()  # masters saved as before, the copies never
    assert all(p.dtype == torch.float32 for p in lora_params(step).values())
    counts, batch = {}, inputs()
    for name, model in (("op", op), ("step", step)):
        with Casts(lora_params(model).values()) as casts, torch.autocast("cpu", torch.bfloat16):
            model(*batch)
        counts[name] = casts
    assert counts["op"].of_masters == 6 and counts["op"].casts >= 6 + 3  # weights, and peft's input casts
    assert counts["step"].of_masters == 0 and counts["step"].casts == 0
    with Casts() as refresh:
        copies.refresh()
    assert refresh.foreach == 1 and refresh.casts == 0


def test_gradients_reach_the_float32_masters_and_refresh_follows_their_updates():
    op, step = adapted(), adapted()
    copies = install_compute_copies(step, "step", "bf16")
    optimizers = {m: torch.optim.SGD(lora_params(m).values(), lr=0.5) for m in (op, step)}
    for _ in range(3):  # optimizer steps of two accumulated micro-batches each
        for model, optimizer in optimizers.items():
            for _ in range(2):
                with torch.autocast("cpu", torch.bfloat16):
                    (model(*inputs()) / 2).backward()
            grads = {n: p.grad.clone() for n, p in lora_params(model).items()}
            model.grads = grads
            optimizer.step()
            optimizer.zero_grad()
        copies.refresh()
        assert op.grads.keys() == step.grads.keys()
        for name, grad in op.grads.items():
            assert step.grads[name].dtype == torch.float32
            torch.testing.assert_close(step.grads[name], grad, rtol=2e-2, atol=1e-3)
    module = step.a.lora_A["default"]
    assert torch.equal(module._buffers[COMPUTE_BUFFER], module._parameters["weight"].detach().bfloat16())
    for name, p in lora_params(step).items():
        torch.testing.assert_close(p, lora_params(op)[name], rtol=2e-2, atol=1e-3)


def test_torch_compile_traces_the_copies_and_their_gradients_to_the_masters():
    eager, compiled = adapted(), adapted()
    install_compute_copies(eager, "step", "bf16")
    install_compute_copies(compiled, "step", "bf16")
    # aot_eager: dynamo and AOTAutograd trace the graph (what inductor gets) without generating kernels
    run = torch.compile(compiled, backend="aot_eager", fullgraph=True)
    batch = inputs()
    for forward in (eager, run):
        with torch.autocast("cpu", torch.bfloat16):
            forward(*batch).backward()
    for name, p in lora_params(eager).items():
        assert torch.equal(lora_params(compiled)[name].grad, p.grad), name


def test_dora_layers_other_adapters_and_op_mode_are_left_alone():
    dora = adapted(dora=True)
    assert len(install_compute_copies(dora, "step", "bf16")) == 0
    plain = adapted()
    assert len(install_compute_copies(plain, "op", "bf16")) == 0
    assert len(install_compute_copies(plain, "step", "no")) == 0  # float32 training casts nothing
    assert type(plain.a.lora_A["default"]) is torch.nn.Linear
    assert len(install_compute_copies(copy.deepcopy(plain), "step", "bf16", adapter="other")) == 0


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state; the bf16 runs here need their own (as in test_bf16)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def recorded(recipe) -> None:
    """Records each optimizer step's gradients and each step's loss on the recipe."""
    recipe.grads, recipe.losses = [], []
    optimizer_step, train_step = recipe.optimizer.step, recipe.train_step

    def step_with_grads(*args, **kwargs):
        recipe.grads.append({id(p): p.grad.clone() for g in recipe.optimizer.param_groups for p in g["params"]
                             if p.grad is not None})
        return optimizer_step(*args, **kwargs)

    def step_with_loss(step):
        loss = train_step(step)
        recipe.losses.append(float(loss))
        return loss

    recipe.optimizer.step, recipe.train_step = step_with_grads, step_with_loss


@pytest.mark.trainer
def test_a_locon_run_in_step_mode_matches_op_mode_in_losses_gradients_and_exports(
        train, monkeypatch, fresh_accelerator_state):
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    runs = {}
    for mode in ("op", "step"):
        monkeypatch.setenv(ADAPTER_CAST_ENV, mode)
        runs[mode] = train("sd15", type="locon", after_setup=recorded,
                           network={"dim": 4, "alpha": 4, "convDim": 2, "convAlpha": 2},
                           training={"steps": 3, "gradientAccumulation": 2, "mixedPrecision": "bf16",
                                     "unetLearningRate": 5e-2})
    op, step = runs["op"], runs["step"]
    assert op.adapter_cast == "op" and len(op.compute_copies) == 0
    assert step.adapter_cast == "step" and len(step.compute_copies) > 0
    assert len(op.losses) == len(step.losses) == 3
    torch.testing.assert_close(step.losses, op.losses, rtol=2e-2, atol=1e-3)
    for op_grads, step_grads in zip(op.grads, step.grads, strict=True):
        a, b = (torch.cat([g.flatten() for g in grads.values()]) for grads in (op_grads, step_grads))
        assert b.dtype == torch.float32 and (b - a).norm() / a.norm() < 2e-2
    for name in ("kohya.safetensors", "diffusers/pytorch_lora_weights.safetensors"):
        files = [load_file(r.outputs.workdir / "checkpoints/epoch-0001" / name) for r in (op, step)]
        assert files[0].keys() == files[1].keys()
        for key, value in files[0].items():
            assert files[1][key].dtype == value.dtype
            torch.testing.assert_close(files[1][key], value, rtol=2e-2, atol=2e-3, msg=key)
    counts = {}
    for recipe in (op, step):
        with Casts([p for g in recipe.optimizer.param_groups for p in g["params"]]) as counts[recipe.adapter_cast]:
            recipe.train_step(4)
    assert counts["op"].of_masters >= 2 * len(step.compute_copies)  # each weight in each of two micro-batches
    assert counts["step"].of_masters == 0 and counts["step"].foreach == 1  # none but the one refresh
    assert counts["step"].casts < counts["op"].casts


def test_under_the_ema_average_the_copies_hold_the_average_and_the_trained_weights_after():
    from lora_operator.api.training import Ema
    from lora_trainer.ema import make_ema
    from lora_trainer.save_points import SavePoints

    model = adapted()
    points = SavePoints()
    points.compute_copies = install_compute_copies(model, "step", "bf16")
    params = list(lora_params(model).values())
    points.ema = make_ema([{"params": params}], Ema(enabled=True, decay=0.5))
    points.ema.step()
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # an optimizer step away from the average
    points.compute_copies.refresh()
    module = model.a.lora_A["default"]

    def copy_matches_master() -> bool:
        return torch.equal(module._buffers[COMPUTE_BUFFER], module._parameters["weight"].detach().bfloat16())

    trained = module._parameters["weight"].detach().clone()
    with points._ema_applied():
        assert not torch.equal(module._parameters["weight"], trained) and copy_matches_master()
    assert torch.equal(module._parameters["weight"], trained) and copy_matches_master()
