"""The trainer benchmark's CPU smoke: both rows run, report throughput and FLOPs (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench_trainer(monkeypatch):
    """bench/trainer.py as a module (bench/ is a package at the repository root, not installed)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import trainer

    return trainer


def test_cpu_tiny_smoke_reports_both_rows_and_the_reference_counts_more_flops(bench_trainer, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU smoke needs a process without a GPU (the recipe would pick it); see make bench-gpu")
    out = tmp_path / "bench.json"
    bench_trainer.main(["--device", "cpu", "--tiny", "--case", "sd15-512", "--batch", "2", "--warmup", "1",
                        "--steps", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert {"ours", "reference"} <= set(rows)
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["flops"] > 0 and row["batch"] == 2
        assert row["mfu"] is None  # no MFU without a GPU peak
        assert row["losses_finite"] and len(row["losses"]) == row["steps"]  # every timed step's loss, read after
    # The reference runs the VAE and the text encoder every step; ours reads them from the caches.
    assert rows["reference"]["flops"] > rows["ours"]["flops"]
    assert not rows["ours"]["encoders_per_step"] and rows["reference"]["encoders_per_step"]
    # At equal work (ours without caches) both count the same FLOPs: same model, data and settings.
    assert rows["ours-uncached"]["flops"] == pytest.approx(rows["reference"]["flops"], rel=1e-6)
    (ratio,) = report["ratios"]
    assert ratio["ours_over_reference"] > 0 and ratio["ours_uncached_over_reference"] > 0


def test_compiled_rows_count_the_same_flops_and_the_reference_stays_eager(bench_trainer, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU smoke needs a process without a GPU (the recipe would pick it); see make bench-gpu")
    out = tmp_path / "bench.json"
    bench_trainer.main(["--device", "cpu", "--tiny", "--case", "sd15-512", "--batch", "1", "--warmup", "1",
                        "--steps", "1", "--compile", "on", "--json", str(out)])
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["ours"]["compiled"] and rows["ours-uncached"]["compiled"] and not rows["reference"]["compiled"]
    # FLOPs are counted eagerly (compiled kernels would bypass the counter): equal work, equal count.
    assert rows["ours-uncached"]["flops"] == pytest.approx(rows["reference"]["flops"], rel=1e-6)


@pytest.mark.parametrize(("case", "denoiser", "text"), [
    ("flux2-1024", 32e9, 24e9),  # FLUX.2-dev: 32B transformer, Mistral-Small-3.1 24B
    ("flux2-klein-1024", 4e9, 4e9),  # FLUX.2-klein-base-4B: Qwen3-4B
    ("flux2-klein-9b-1024", 9e9, 8e9),  # FLUX.2-klein-base-9B: Qwen3-8B
    ("chroma-1024", 8.9e9, 4.76e9),  # Chroma1-HD: "8.9B parameters", T5 v1.1 XXL encoder
    ("flux-kontext-1024", 12e9, 4.88e9),  # FLUX.1-Kontext-dev: "12 billion parameter", CLIP-L + T5 XXL encoder
])
def test_full_size_configs_have_the_model_cards_parameter_counts(bench_trainer, case, denoiser, text):
    from bench.memory import count

    parts = count(bench_trainer.CASES[case])
    assert parts.denoiser == pytest.approx(denoiser, rel=0.05) and parts.text_encoders == pytest.approx(text, rel=0.05)


@pytest.mark.parametrize("case", ["flux2-1024", "flux2-klein-1024", "flux2-klein-9b-1024"])
def test_flux2_cases_construct_on_the_tiny_models_and_run_our_step(bench_trainer, case, tmp_path):
    import math

    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU smoke needs a process without a GPU (the recipe would pick it)")
    bench = bench_trainer.Bench(bench_trainer.CASES[case], 1, True, torch.device("cpu"), tmp_path)
    try:
        assert bench.reference is None  # no diffusers-example reference for Flux.2: ours alone
        assert bench.recipe.encoder.released  # the text encoder left after caching, as in a real run
        bench.prepare("ours")
        assert math.isfinite(float(bench.run("ours")))
    finally:
        bench.close()


def test_the_memory_estimate_plans_flux2_on_an_80gb_gpu(bench_trainer):
    from bench.memory import main

    lines = {line.split()[0]: line for line in main(["--gpu-gib", "80", "--case", "flux2-1024", "--case",
                                                      "flux2-klein-1024", "--case", "flux-1024"]).splitlines()[2:]
             if not line.startswith(" ")}
    # 64 GB of bf16 weights alone; fp8 does not fit while caching: the 47 GB text encoder (never quantized) is
    # on the GPU beside the denoiser then
    assert lines["flux2-1024"].endswith("nf4 base, gradient checkpointing")
    assert lines["flux2-klein-1024"].endswith("bf16 base, no checkpointing")
    assert lines["flux-1024"].endswith("bf16 base, no checkpointing")  # as measured on an H100 (RESULTS.md)
    on_64 = main(["--gpu-gib", "64", "--case", "flux2-1024"]).splitlines()[2]
    assert on_64.endswith("bf16 base, gradient checkpointing, offload blocks")  # nf4 caching: 60 GiB > 57.6
    on_40 = main(["--gpu-gib", "40", "--case", "flux2-1024"]).splitlines()[2]
    assert on_40.endswith("does not fit: needs a larger GPU or CPU offload of the text encoder")


def test_the_memory_estimate_counts_the_control_tokens_of_an_edit_case(bench_trainer):
    from bench.memory import count, estimate

    edit = bench_trainer.CASES["flux2-klein-edit-1024"]
    plain = bench_trainer.CASES["flux2-klein-1024"]
    parts = count(edit)
    with_pairs, without = estimate(edit, parts, "bf16"), estimate(plain, parts, "bf16")
    assert with_pairs["caching"] == without["caching"]
    assert with_pairs["training"] > without["training"] + 1
    assert with_pairs["training_checkpointed"] > without["training_checkpointed"]


# Parameters of the public checkpoints (model cards / safetensors totals): Z-Image 6.15B transformer with
# Qwen3-4B (4.02B); Qwen-Image 20.43B transformer with Qwen2.5-VL-7B-Instruct (8.29B, vision tower included).
PUBLISHED_PARAMETERS = {"z-image": {"denoiser": 6.15e9, "text_encoder_0": 4.02e9},
                        "qwen-image": {"denoiser": 20.43e9, "text_encoder_0": 8.29e9}}


@pytest.mark.parametrize("family", list(PUBLISHED_PARAMETERS))
def test_full_size_configs_have_the_published_parameter_counts(bench_trainer, family):
    import torch
    from bench.trainer_models import _classes, _module, load_config

    spec, classes = load_config(family), _classes()
    entries = {"denoiser": spec["denoiser"], **{f"text_encoder_{i}": e for i, e in enumerate(spec["text_encoders"])}}
    for name, published in PUBLISHED_PARAMETERS[family].items():
        entry = entries[name]
        module = _module(classes[entry["class"]], entry["config"], torch.device("meta"), torch.bfloat16)
        assert sum(p.numel() for p in module.parameters()) == pytest.approx(published, rel=0.005), name


@pytest.mark.parametrize("case", ["z-image-1024", "qwen-image-1024", "chroma-1024", "flux-kontext-1024"])
def test_the_new_family_cases_construct_and_step_on_the_tiny_model(bench_trainer, case, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU smoke needs a process without a GPU (the recipe would pick it); see make bench-gpu")
    bench = bench_trainer.Bench(bench_trainer.CASES[case], 1, True, torch.device("cpu"), tmp_path)
    try:
        assert bench.reference is None and bench.recipe.family.family == bench_trainer.CASES[case].family
        bench.prepare("ours")
        assert torch.isfinite(torch.as_tensor(float(bench.run("ours"))))
    finally:
        bench.close()
