"""Trainer speed: our recipe's training step against a diffusers-example LoRA loop, same model and data.

One command, one run; per case (model, resolution, batch) the rows are:

- ``ours``: `LoraRecipe.train_step` of lora_trainer, set up by its own `setup` (latents and
  text embeddings cached when the spec allows, frozen weights in bf16 on a GPU, LoRA in fp32);
- ``reference``: the diffusers text-to-image LoRA example's step (`trainer_reference`): VAE and
  text encoders every step, no caching, no compile;
- ``ours-uncached`` (default with ``--tiny``, or ``--equal-work``): our step with an encoder that
  caches nothing, i.e. the reference's work; its ratio to the reference is our machinery's overhead.

Rows alternate step by step after warm-up, in one process on one device. Each row reports
images/s, median and p90 step time, peak memory (GPU: max_memory_allocated; CPU: rise of the
peak RSS during a step), FLOPs of one step (FlopCounterMode; gradient checkpointing's
recomputed forward excluded) and, on a GPU with a known peak, MFU.

Examples:
    python bench/trainer.py --device cuda --case all --json bench/results-gpu/all.json
    python bench/trainer.py --device cpu --tiny --case all --json bench/results-cpu.json
    python bench/trainer.py --device cuda --case sdxl-1024 --batch 4 --profile
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# the tiny models are test fixtures (tests/tinymodels), not part of the trainer image
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.trainer_measure import dense_bf16_peak, gpu_name  # noqa: E402
from bench.trainer_models import full_size_loader, tiny_model  # noqa: E402
from bench.trainer_reference import REFERENCE_FAMILIES, ReferenceLoop  # noqa: E402
from bench.trainer_rows import measure, profile_ours, ratios, table  # noqa: E402
from lora_trainer.speed import eager, training_attention  # noqa: E402

TINY_RESOLUTION = 32
RANK = 16


@dataclass(frozen=True)
class Case:
    """A benchmark case: model family, resolution, batch sizes."""

    family: str
    resolution: int
    batches: tuple[int, ...]
    config: str | None = None
    """The full-size config (bench/configs/NAME.json) when not the family's own (a variant's size)."""
    pairs: bool = False
    """An edit case: bench.memory counts the control image's tokens beside the target's (twice the image
    sequence); the timed rows run on the bench's images without pairs."""


CASES = {
    "sd15-512": Case("sd15", 512, (1, 4)),
    "sdxl-1024": Case("sdxl", 1024, (1, 4)),
    "flux-1024": Case("flux", 1024, (1, 2)),
    # Flux.2 dev (32B) needs the fp8 / nf4 base of the features issue on an 80 GB GPU: the case exists for
    # larger GPUs and for that base; `python -m bench.memory` prints the plan.
    "flux2-1024": Case("flux2", 1024, (1,)),
    "flux2-klein-1024": Case("flux2-klein", 1024, (1, 2)),
    "flux2-klein-9b-1024": Case("flux2-klein", 1024, (1,), config="flux2-klein-9b"),
    "z-image-1024": Case("z-image", 1024, (1, 2)),
    "qwen-image-1024": Case("qwen-image", 1024, (1,)),
    "chroma-1024": Case("chroma", 1024, (1, 2)),
    # Kontext's transformer is FLUX.1-dev's config. Edit cases: see Case.pairs.
    "flux-kontext-1024": Case("flux-kontext", 1024, (1,), config="flux", pairs=True),
    "flux2-klein-edit-1024": Case("flux2-klein", 1024, (1,), pairs=True),
}
"""z-image and qwen-image have no diffusers example loop to compare with: their cases time ours only."""


def write_dataset(folder: Path, n: int, size: int) -> Path:
    """`n` distinct size x size images with captions (content does not matter for speed)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth noise: cheap to write and decode
        Image.fromarray(low).resize((size, size), Image.BILINEAR).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a photo of a subject, number {i}, soft light, detailed background")
    return folder


def bench_spec(family: str, model: Path, data: Path, out: Path, resolution: int, batch: int,
               training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job spec both rows follow: LoRA rank 16, bf16, AdamW, clipping at 1.0, no augmentation.

    `training` overrides training fields (gradientCheckpointing, compile).
    """
    spec = {
        "type": "lora",
        "baseModel": {"family": family, "uri": model.as_uri()},
        "dataset": {"uri": data.as_uri(), "captionPrefix": "tkxw, ", "validationSplit": 0.0, "flip": False,
                    "crop": {"mode": "center", "size": f"{resolution}x{resolution}"}},
        "network": {"dim": RANK, "alpha": RANK},
        "training": {"steps": 100_000, "epochs": 1, "batchSize": batch, "unetLearningRate": 1e-4,
                     "textEncoderLearningRate": 0.0, "mixedPrecision": "bf16", "lrScheduler": {"type": "constant"},
                     "maxGradNorm": 1.0, "gradientCheckpointing": "auto", "cacheLatents": True, "seed": 7},
        "previews": {"everyEpochs": 0},
        "output": {"uri": out.as_uri()},
    }
    spec["training"].update(training or {})
    return spec


class Bench:
    """One case at one batch size: the set-up recipe, the reference loop and their step functions."""

    def __init__(self, case: Case, batch: int, tiny: bool, device: torch.device, tmp: Path,
                 resolution: int | None = None, training: dict[str, Any] | None = None, reference: bool = True):
        from lora_operator.api import resolve_spec
        from lora_operator.storage import open_store
        from lora_trainer.loop import LoraRecipe, RunInputs
        from lora_trainer.outputs import Outputs

        self.case, self.batch, self.device = case, batch, device
        self.resolution = resolution or (TINY_RESOLUTION if tiny else case.resolution)
        model = tiny_model(case.family, tmp / "model") if tiny else tmp / "model"
        model.mkdir(parents=True, exist_ok=True)
        data = write_dataset(tmp / "data", 2 * batch, self.resolution)
        spec = resolve_spec(bench_spec(case.family, model, data, tmp / "out", self.resolution, batch,
                                           training))
        self.recipe = LoraRecipe(spec, RunInputs(model_dir=model, dataset_root=data),
                                 Outputs(open_store((tmp / "out").as_uri()), tmp / "work"), progress_interval=3600)
        if not tiny:
            self.recipe.family.load = full_size_loader(case.config or case.family, device)
        self.recipe.setup()
        if self.recipe.device.type != device.type:
            raise SystemExit(f"--device {device.type}: the recipe chose {self.recipe.device.type}")
        self.cached = self.recipe.encoder
        self.uncached = type(self.cached)(self.recipe.family, self.recipe.train_parts, self.recipe.device,
                                          cache_latents=False, cache_text=False)
        # No reference step for the families diffusers' examples were not ported for here: ours alone.
        self.reference = ReferenceLoop(self.recipe) if reference and case.family in REFERENCE_FAMILIES else None
        self.step = 0
        self.ref_index = 0

    # The row functions: `prepare` switches adapters / encoders (untimed), `run` is the timed step.
    def prepare(self, row: str) -> None:
        """Make `row`'s LoRA active (and its encoder current) before its step."""
        if row == "reference":
            self.reference.activate()
        else:
            self.recipe.parts.denoiser.set_adapter("default")
            self.recipe.encoder = self.cached if row == "ours" else self.uncached

    def run(self, row: str) -> float:
        """One training step of `row`; returns its loss."""
        if row == "reference":
            # The diffusers example compiles nothing; its attention runs on the backends ours uses,
            # so that the ratio measures caching and compilation, not a kernel choice.
            with eager(), training_attention(self.device, self.recipe.gradient_checkpointing):
                return self.reference.step(self._reference_batch())
        self.step += 1
        return self.recipe.train_step(self.step)

    def _reference_batch(self) -> list[tuple[Any, str, tuple]]:
        recipe = self.recipe
        indices = recipe.stream.batch(self.ref_index)
        self.ref_index += 1
        rng = random.Random(0)
        return [(s.decoded(), recipe.builder.build(s.caption, rng), (s.original_size, s.crop_top_left))
                for s in (recipe.samples[i] for i in indices)]

    def close(self) -> None:
        """Free the models."""
        self.recipe.cleanup()
        self.recipe = self.reference = self.cached = self.uncached = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--batch", type=int, action="append", help="batch size(s); default: the case's")
    parser.add_argument("--tiny", action="store_true", help="the tiny test models (tests/tinymodels) at 32 px")
    parser.add_argument("--resolution", type=int, help="override the case's resolution (px, a multiple of 64)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per row (default 3; 1 with --tiny)")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 10; 8 with --tiny)")
    parser.add_argument("--equal-work", action=argparse.BooleanOptionalAction, default=None,
                        help="also time ours without caching (default: on with --tiny)")
    parser.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto",
                        help="training.gradientCheckpointing of both rows (default auto: by GPU memory)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="training.compile of our rows (default auto: on with a GPU)")
    parser.add_argument("--base-quantization", choices=["none", "fp8", "nf4", "auto"], default="none",
                        help="training.baseQuantization of both rows (default none: bf16 frozen weights)")
    parser.add_argument("--sdpa", choices=["default", *SDPA_BACKENDS],
                        default="default", help="restrict scaled_dot_product_attention to one backend")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="time the diffusers-example reference too, where one exists (default on)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over our step; print the top ops")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU when it is not in the table")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on a shared 2-core machine OpenMP spin-waits under "
                             "contention made tiny steps up to 40x slower and the rows incomparable)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.steps = args.steps if args.steps is not None else (8 if args.tiny else 10)
    args.equal_work = args.tiny if args.equal_work is None else args.equal_work
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; returns (and writes with --json) the results."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here (use --device cpu --tiny)")
    if device.type == "cpu" and torch.cuda.is_available():
        raise SystemExit("--device cpu: the recipe would pick the GPU; run with CUDA_VISIBLE_DEVICES=")
    name, peak, peak_label = "cpu", None, "cpu: FLOP/s only, no MFU"
    if device.type == "cuda":
        name = gpu_name()
        peak, peak_label = dense_bf16_peak(name)
        if args.peak_tflops:
            peak, peak_label = args.peak_tflops * 1e12, f"{name}: {args.peak_tflops} TFLOP/s (--peak-tflops)"
    print(f"device: {name}; peak: {peak_label}", flush=True)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        results, profiles = run_cases(args, device, peak,
                                      lambda rows, profs: write_report(args, argv, name, peak_label, rows, profs))
    finally:
        torch.set_num_threads(threads)
    report = write_report(args, argv, name, peak_label, results, profiles)
    print("\n" + table(results, report["ratios"], device.type == "cuda"))
    for row in results:
        if not row["losses_finite"]:
            print(f"WARNING: {row['case']} bs{row['batch']} {row['row']}: a timed step's loss was not finite")
    return report


def write_report(args: argparse.Namespace, argv: list[str] | None, device_name: str, peak_label: str,
                 results: list[dict[str, Any]], profiles: dict[str, str]) -> dict[str, Any]:
    """The report of the rows so far; written to --json (after each case too, so a cut-off run keeps them)."""
    report = {
        "date": datetime.date.today().isoformat(), "command": " ".join(["bench/trainer.py", *(argv or sys.argv[1:])]),
        "device": device_name, "peak": peak_label, "torch": torch.__version__, "tiny": args.tiny,
        "cpu_threads": args.threads if args.device == "cpu" else None,
        "rows": results, "ratios": ratios(results), "profiles": profiles,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}


@contextlib.contextmanager
def sdpa_backend(name: str) -> Iterator[None]:
    """scaled_dot_product_attention restricted to one backend (`default`: torch's own choice)."""
    if name == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[name])]):
        yield


def run_cases(args: argparse.Namespace, device: torch.device, peak: float | None,
              done: Callable[[list, dict], object]) -> tuple[list, dict]:
    """Every requested case and batch size, one after the other; (rows, profiles). `done` sees each."""
    rows_wanted = ["ours", "ours-uncached", "reference"] if args.equal_work else ["ours", "reference"]
    results, profiles = [], {}
    for key in CASES if args.case == "all" else [args.case]:
        case = CASES[key]
        for batch in args.batch or case.batches:
            with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
                bench = Bench(case, batch, args.tiny, device, Path(tmp), args.resolution,
                              {"gradientCheckpointing": args.gradient_checkpointing, "compile": args.compile,
                               "baseQuantization": args.base_quantization}, args.reference)
                rows = rows_wanted if bench.reference else [r for r in rows_wanted if r != "reference"]
                try:
                    with sdpa_backend(args.sdpa):
                        results += measure(bench, rows, args.warmup, args.steps, peak)
                        if args.profile:
                            try:
                                profiles[f"{key} bs{batch}"] = profile_ours(bench)
                            except RuntimeError as err:  # keep the measurements when the profiler fails
                                profiles[f"{key} bs{batch}"] = f"profiler failed: {err}"
                            print(f"\n== profile of ours, {key} bs{batch}\n{profiles[f'{key} bs{batch}']}",
                                  flush=True)
                finally:
                    bench.close()
            done(results, profiles)
            print(f"done: {key} bs{batch}", flush=True)
    return results, profiles


if __name__ == "__main__":
    main()
