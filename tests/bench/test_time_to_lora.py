"""Time-to-LoRA on CPU with the tiny Flux: the real `lora-train run` as a pod, cold then warm node cache;
every phase of the breakdown is reported and they sum to the measured total (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ttl(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # bench/: a package at the repository root, not installed
    from bench import time_to_lora

    return time_to_lora


def test_cold_and_warm_runs_report_every_phase_summing_to_the_total(ttl, tmp_path, capsys):
    out = tmp_path / "ttl.json"
    steps = 4
    ttl.main(["--tiny", "--steps", str(steps), "--storage", "minio", "--timeout-s", "900", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["storage"] == "minio (s3://)" and report["steps"] == steps and report["images"] == 20
    cold, warm = report["runs"]["cold"], report["runs"]["warm"]
    for run in (cold, warm):
        assert run["status"] == "ok", run.get("log_tail")
        rows = run["breakdown"]
        assert list(rows) == list(ttl.PHASES)
        assert sum(rows.values()) == pytest.approx(run["wall_s"], abs=0.02)
        assert all(seconds >= 0 for seconds in rows.values())
        # each phase the job has took time: it was timed where it happens, not left in "other"
        for phase in ("model load", "caching", "training", "previews", "export", "upload", "resume states"):
            assert rows[phase] > 0, phase
        assert run["checkpoint_formats"] == ["diffusers", "kohya"]
        assert run["previews"] == 4 * 2  # 4 rounds (every steps/4) x 2 prompts x 1 image
        # the trainer's own phases: fetch and the first step are reported apart
        assert {"fetch", "load", "first_step", "training"} <= set(run["timings"])
        assert run["projected_total_s"] > run["wall_s"]  # 1000 steps take longer than 4
    # cold: the model is downloaded from MinIO into the empty node cache; warm: found there
    assert cold["models"][0]["hit"] is False and cold["models"][0]["bytes"] > 0
    assert warm["models"][0]["hit"] is True and warm["models"][0]["bytes"] == 0
    table = capsys.readouterr().out
    assert "| **total (measured)** |" in table and "projected to 1000 steps" in table


def test_breakdown_takes_compilation_out_of_the_first_step(ttl):
    timings = {"fetch": 1.0, "load": 4.0, "caching": 2.0, "first_step": 10.0, "training": 9.0, "previews": 3.0,
               "export": 0.5, "upload": 0.25, "state": 0.25, "other": 0.5}
    rows = ttl.breakdown(40.0, timings, steps=10)
    assert rows["compilation"] == 9.0  # the first step less one steady step (9 s / 9 steps)
    assert rows["training"] == 10.0 and rows["model load"] == 5.0
    assert rows["startup"] == 9.5  # 40 s of process less the 30.5 s inside the trainer's phases
    assert sum(rows.values()) == pytest.approx(40.0)


SHRINK = {  # the full-size config's classes and keys at test widths (one block each, 64 wide)
    "denoiser": {"num_attention_heads": 1, "num_layers": 1, "num_single_layers": 1, "joint_attention_dim": 64,
                 "pooled_projection_dim": 64},
    "vae": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1},
    "clip": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 1,
             "projection_dim": 64},
    "t5": {"d_model": 64, "d_ff": 128, "num_heads": 2, "d_kv": 32, "num_layers": 1},
}


def test_the_full_size_model_folder_loads_as_the_trainer_loads_flux(ttl, tmp_path, monkeypatch):
    """The GPU run's model: bench/configs/flux.json built and saved as a pipeline folder (here narrowed, the
    same classes and layout) is what the trainer's flux family loads."""
    import torch

    from bench import trainer_models
    from lora_trainer.families import get_family

    real = trainer_models.load_config

    def narrowed(name):
        config = real(name)
        config["denoiser"]["config"].update(SHRINK["denoiser"])
        config["vae"]["config"].update(SHRINK["vae"])
        for encoder in config["text_encoders"]:
            encoder["config"].update(SHRINK[encoder["tokenizer"]])
        return config

    monkeypatch.setattr(trainer_models, "load_config", narrowed)
    folder = ttl.model_folder(False, tmp_path / "model", "cpu")
    assert (folder / "model_index.json").exists() and not (folder / "tokenizers").exists()
    parts = get_family("flux").load(folder, torch.float32)
    assert type(parts.denoiser).__name__ == "FluxTransformer2DModel"
    assert parts.denoiser.config.num_layers == 1 and parts.denoiser.config.attention_head_dim == 128
    assert [type(e).__name__ for e in parts.text_encoders] == ["CLIPTextModel", "T5EncoderModel"]
    assert parts.tokenizers[1].model_max_length == 512  # T5's real padded length, as the bench builds it
