"""Time-to-LoRA (issue 21): a Flux.1 LoRA job as a pod runs it, from the trainer's start to its last
checkpoint written, with the base model already in the node cache (warm) and with an empty cache (cold).

What it runs: the real `lora-train run --spec-env` (the pod's command) on a 20-image procedural dataset
(shapes and gradients with captions) at 1024 px, LoRA rank 16, batch 1, previews every 250 steps, kohya and
diffusers exports, resume states every 100 steps (the default). The base model is a random-weight full-size
Flux.1 built from bench/configs/flux.json and saved as a diffusers folder (nothing is downloaded), or the tiny
test model with ``--tiny``. Storage is a local MinIO (the test ground's binary) when it is there, else file://
(the GPU machine has no MinIO: there ``file://`` is read in place, which is what a warm node cache is; the
cold run then reads the model after the kernel's page cache is dropped, when it may be).

The breakdown comes from the trainer's own ``timings:`` log line (`lora_trainer.timings`): fetch and load
(model load), caching, the first step less one steady step (compilation), the steps (training), previews,
export, upload, resume states; what is outside the trainer's phases (interpreter start, imports, exit) is
``startup``. The rows sum to the wall time of the process.

``--steps S`` below 1000 keeps the job's shape (4 preview rounds, 9 resume states: every S/4 and S/10
steps) and projects the 1000-step total as the measured total plus (1000 - S) steady steps.

    python bench/time_to_lora.py --device cuda --steps 1000 --cache warm --cache cold --json ttl.json
    python bench/time_to_lora.py --tiny --steps 8 --json /tmp/ttl.json    # CPU, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tiny models are test fixtures, not part of the trainer image

from lora_operator.api import resolve_spec  # noqa: E402
from lora_operator.api.contract import MANIFEST_KEY, TrainerEnv  # noqa: E402
from lora_operator.storage import open_store  # noqa: E402

TARGET_STEPS = 1000
IMAGES = 20
PHASES = ("startup", "model load", "caching", "compilation", "training", "validation", "previews", "export",
          "upload", "resume states", "other")
"""The breakdown's rows, in the order a run goes through them."""
SUBJECTS = ["a red fox", "a blue bicycle", "a glass teapot", "an old lighthouse", "a paper boat"]
STYLES = ["on a sunny beach", "in a misty forest", "under studio light", "at dusk", "in the snow"]


def procedural_dataset(folder: Path, size: int, count: int = IMAGES) -> Path:
    """`count` size x size images (gradients with shapes, distinct per image) and a caption .txt each."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
        tint = Image.new("RGB", (size, size), ((40 * i) % 256, (90 + 25 * i) % 256, (200 - 9 * i) % 256))
        image = Image.blend(image, tint, 0.6)
        draw, r = ImageDraw.Draw(image), size // 6
        x, y = size // 4 + (i * size // 13) % (size // 2), size // 3 + (i * size // 7) % (size // 3)
        (draw.ellipse if i % 2 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=(250 - 11 * i, 30 + 9 * i, 60))
        image.save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"{SUBJECTS[i % 5]} {STYLES[(i // 5) % 5]}, photo, detailed")
    return folder


def model_folder(tiny: bool, folder: Path, device: str) -> Path:
    """The Flux.1 base model as a diffusers folder: the tiny test model, or full-size random weights
    built on `device` and saved (safetensors, bf16) as the pipeline's folder layout."""
    if tiny:
        from tinymodels import build_tiny_model

        return build_tiny_model("flux", folder)
    import torch
    from diffusers import FluxPipeline

    from bench.trainer_models import build_full_size

    parts = build_full_size("flux", folder / "tokenizers", torch.bfloat16, torch.device(device))
    (clip, t5), (tok, tok2) = parts.text_encoders, parts.tokenizers
    FluxPipeline(scheduler=parts.noise_scheduler, vae=parts.vae, text_encoder=clip, tokenizer=tok,
                 text_encoder_2=t5, tokenizer_2=tok2, transformer=parts.denoiser).save_pretrained(folder)
    shutil.rmtree(folder / "tokenizers")
    del parts, clip, t5
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def job_spec(model_uri: str, data_uri: str, out_uri: str, resolution: int, steps: int,
             tiny: bool = False) -> dict[str, Any]:
    """The job: the issue's 1000-step Flux LoRA, its previews and states spaced as in 1000 steps.

    `tiny` (the CPU test) samples previews with 2 steps and 1 image a prompt instead of the defaults (20, 2)
    and holds no images out for validation.
    """
    sampling = {"steps": 2, "imagesPerPrompt": 1} if tiny else {}
    held_out = {"validationSplit": 0.0} if tiny else {}  # full size: the default split and validation loss
    return resolve_spec({
        "type": "lora",
        "baseModel": {"family": "flux", "uri": model_uri},
        "dataset": {"uri": data_uri, "captionPrefix": "tkxw, ", **held_out, "crop": {"mode": "center",
                                                                        "size": f"{resolution}x{resolution}"}},
        "network": {"dim": 16, "alpha": 16},
        "training": {"steps": steps, "epochs": 1, "batchSize": 1, "mixedPrecision": "bf16", "seed": 7},
        "previews": {"everySteps": max(1, steps // 4), "prompts": ["tkxw, a red fox in the snow",
                                                                   "tkxw, a paper boat at dusk"], **sampling},
        "checkpoints": {"formats": ["kohya", "diffusers"], "stateEverySteps": max(1, steps // 10)},
        "output": {"uri": out_uri},
    }).to_resource()


class Storage:
    """Where the model, the dataset and the outputs live: a local MinIO (s3://) or file:// folders."""

    def __init__(self, work: Path, kind: str):
        self.work, self.kind, self.minio = work, kind, None
        if kind == "minio":
            from testground import MinioServer, tools_dir

            self.minio = MinioServer(tools_dir() / "minio", work / "minio-data", work / "minio.log").start()
            for bucket in ("models", "datasets", "loras"):
                if not self.minio.client().bucket_exists(bucket):
                    self.minio.client().make_bucket(bucket)

    def put(self, folder: Path, name: str) -> str:
        """`folder` stored under `name`; its URI."""
        if self.minio is None:
            return folder.resolve().as_uri() + "/"
        uri = f"s3://{'models' if name == 'model' else 'datasets'}/ttl-{name}/"
        self.store(uri).upload_dir(folder)
        return uri

    def out_uri(self) -> str:
        """The output.uri of the job."""
        return "s3://loras/" if self.minio else (self.work / "out").resolve().as_uri() + "/"

    def store(self, uri: str):
        """An ObjectStore on `uri`."""
        if self.minio is None:
            return open_store(uri)
        m = self.minio
        return open_store(uri, endpoint=m.endpoint, access_key=m.access_key, secret_key=m.secret_key, secure=False)

    def env(self) -> dict[str, str]:
        """The storage part of the pod's environment."""
        return self.minio.env() if self.minio else {}

    def close(self) -> None:
        """Stop MinIO."""
        if self.minio is not None:
            self.minio.stop()


def minio_binary() -> bool:
    """Whether the test ground's MinIO binary is built here (not on the GPU machine)."""
    from testground import ToolsMissing, tools_dir

    try:
        return (tools_dir() / "minio").exists()
    except ToolsMissing:
        return False


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only): a cold read of a file:// model. False when refused."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_timings(log: str) -> dict[str, float]:
    """The trainer's ``timings: {...}`` line (`lora_trainer.timings`) from its log."""
    from lora_trainer.timings import PREFIX

    for line in reversed(log.splitlines()):
        if PREFIX in line:
            return json.loads(line.split(PREFIX, 1)[1])
    raise RuntimeError("the trainer's log has no timings line (did it finish?)")


def breakdown(wall: float, timings: dict[str, float], steps: int) -> dict[str, float]:
    """The issue's rows from the trainer's phases; they sum to `wall`.

    compilation = the first step less one steady step (steady = the other steps' mean, loop included).
    """
    t = dict(timings)
    first, rest = t.pop("first_step", 0.0), t.pop("training", 0.0)
    steady = rest / (steps - 1) if steps > 1 else 0.0
    compilation = max(0.0, first - steady)
    rows = {
        "model load": t.pop("fetch", 0.0) + t.pop("load", 0.0), "caching": t.pop("caching", 0.0),
        "compilation": compilation, "training": rest + first - compilation,
        "validation": t.pop("validation", 0.0), "previews": t.pop("previews", 0.0),
        "export": t.pop("export", 0.0), "upload": t.pop("upload", 0.0),
        "resume states": t.pop("state", 0.0), "other": t.pop("other", 0.0) + sum(t.values()),
    }
    rows["startup"] = wall - sum(rows.values())
    return {name: round(rows[name], 3) for name in PHASES}


def run_job(storage: Storage, spec: dict, cache: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    """One `lora-train run --spec-env` as a pod: wall seconds, the trainer's timings, the manifest."""
    uid = uuid.uuid4().hex[:12]
    prefix = f"{spec['output']['uri'].rstrip('/')}/bench/time-to-lora/{uid}/"
    contract = TrainerEnv(output_prefix=prefix, job_uid=uid, job_name="time-to-lora", job_namespace="bench",
                          cache_dir=str(cache), progress_interval=5.0)
    # The caller's LORA_* speed overrides (LORA_COMPILE_*, LORA_ADAPTER_CAST) go through; storage and the
    # pod contract are this run's.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))},
           **storage.env(), **contract.to_env(), "LORA_JOB_SPEC": json.dumps(spec), "LORA_NODE_NAME": "bench"}
    binary = shutil.which("lora-train", path=str(Path(sys.executable).parent))
    command = [binary, "run"] if binary else [sys.executable, "-m", "lora_trainer.cli", "run"]
    log_path = work / f"trainer-{uid}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*command, "--spec-env", "LORA_JOB_SPEC"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=work)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    wall = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    if code != 0:
        tail = "\n".join(text.splitlines()[-15:])
        return {"status": "timeout" if code is None else f"exit {code}", "wall_s": round(wall, 2), "log_tail": tail}
    manifest = json.loads(storage.store(prefix).get_bytes(MANIFEST_KEY))
    return {"status": "ok", "wall_s": round(wall, 3), "timings": read_timings(text),
            "checkpoint_formats": sorted({c["format"] for c in manifest["checkpoints"]}),
            "previews": len(manifest.get("previews", [])), "models": manifest.get("models", [])}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every requested cache state, in order (cold before warm shares the cache folder it filled)."""
    storage = Storage(work, args.storage)
    try:
        resolution = 32 if args.tiny else 1024
        model = args.model_dir or work / "model"
        if not (model / "model_index.json").exists():  # a --model-dir written by an earlier run is reused
            model = model_folder(args.tiny, model, args.device)
        spec = job_spec(storage.put(model, "model"), storage.put(procedural_dataset(work / "data", resolution), "data"),
                        storage.out_uri(), resolution, args.steps, args.tiny)
        cache, runs = work / "node-cache", {}
        for state in args.cache:
            if state == "cold":
                shutil.rmtree(cache, ignore_errors=True)
                # The kernel's cache is the machine's, not this run's: dropped on the lent GPU machine only,
                # never on a shared CPU worker where the tiny model is read anyway.
                dropped = None if args.tiny else drop_page_cache()
            else:
                dropped = None
            deadline = args.timeout_s - (time.monotonic() - args.started)
            run = run_job(storage, spec, cache, work, max(deadline, 1.0))
            run["page_cache_dropped"] = dropped
            if run["status"] == "ok":
                run["breakdown"] = breakdown(run["wall_s"], run["timings"], args.steps)
                steady = run["timings"].get("training", 0.0) / max(args.steps - 1, 1)
                run["steady_step_s"] = round(steady, 4)
                run["projected_total_s"] = round(run["wall_s"] + max(0, TARGET_STEPS - args.steps) * steady, 1)
            runs[state] = run
        return {"storage": "minio (s3://)" if storage.minio else "file://", "model": "tiny" if args.tiny else
                "full-size random-weight Flux.1 (bench/configs/flux.json)", "resolution": resolution,
                "steps": args.steps, "target_steps": TARGET_STEPS, "images": IMAGES, "runs": runs}
    finally:
        storage.close()


def table(report: dict[str, Any]) -> str:
    """The breakdown as a markdown table: one column per cache state."""
    runs = {k: v for k, v in report["runs"].items() if v["status"] == "ok"}
    head = "| phase | " + " | ".join(f"{k} cache, s" for k in runs) + " |"
    lines = [head, "|---|" + "---|" * len(runs)]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(f"{r['breakdown'][phase]:.1f}" for r in runs.values()) + " |")
    lines.append("| **total (measured)** | " + " | ".join(f"**{r['wall_s']:.1f}**" for r in runs.values()) + " |")
    if report["steps"] < report["target_steps"]:
        lines.append(f"| total projected to {report['target_steps']} steps | "
                     + " | ".join(f"{r['projected_total_s']:.1f}" for r in runs.values()) + " |")
    for state, run in report["runs"].items():
        if run["status"] != "ok":
            lines.append(f"\n{state} cache: {run['status']} after {run['wall_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run; print the table; returns (and writes with --json) the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test Flux at 32 px (CPU, seconds)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where the full-size model is built")
    parser.add_argument("--steps", type=int, default=TARGET_STEPS, help=f"optimizer steps (default {TARGET_STEPS})")
    parser.add_argument("--cache", action="append", choices=["warm", "cold"],
                        help="cache states to run, in order (default: cold then warm)")
    parser.add_argument("--storage", choices=["auto", "minio", "file"], default="auto",
                        help="auto: MinIO when the test ground's binary is there, else file://")
    parser.add_argument("--model-dir", type=Path, help="reuse (or write) the model folder here")
    parser.add_argument("--timeout-s", type=float, default=3600, help="for all runs together")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.started, args.cache = time.monotonic(), args.cache or ["cold", "warm"]
    if args.storage == "auto":
        args.storage = "minio" if minio_binary() else "file"
    work = Path(tempfile.mkdtemp(prefix="lora-ttl-"))
    try:
        report = {"date": datetime.date.today().isoformat(),
                  "command": " ".join(["bench/time_to_lora.py", *(argv if argv is not None else sys.argv[1:])]),
                  **measure(args, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report), flush=True)
    return report


if __name__ == "__main__":
    main()
