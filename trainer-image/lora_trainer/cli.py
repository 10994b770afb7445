"""``lora-train``: train from a job YAML on a laptop, or inside the trainer pod.

Local mode: ``lora-train run job.yaml [--storage DIR]`` reads the same YAML as
``kubectl apply`` (a LoraTrainingJob, optionally with the templates it names in the
same file, or a bare spec). ``--storage DIR`` stands in for the object store.

Pod mode: ``lora-train run --spec-env LORA_JOB_SPEC`` reads the resolved spec and
the environment of `lora_operator.api.contract` (docs/CONTRACTS.md).

Datasets: ``lora-train upload FOLDER s3://bucket/prefix/ [--job job.yaml]`` checks a folder
the way the trainer will read it, then uploads what the job will use (`upload`).

Runs: ``lora-train ui --storage DIR`` shows the local runs under DIR in the dashboard's pages
(`run_ui`).

Either mode trains with one process per visible GPU (`launch`): with more than one,
this process starts the workers, each running this same command line, and exits with
their code. ``--processes N`` (or ``LORA_PROCESSES``) sets the count, e.g. 2 on CPU.

The exit code is a `lora_operator.api.ExitCode`; a user error prints one line naming
the field or file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_operator.api import Dataset, ExitCode, JobSpec, ModelFamily, SpecError, resolve_spec
from lora_operator.api.contract import ENV_JOB_UID, ENV_OUTPUT_PREFIX, TrainerEnv, caption_cache_prefix, output_prefix
from lora_operator.storage import StorageError

from . import logtail, timings
from .errors import ConfigError, DatasetError, TrainerError
from .inputs import Resolver, default_cache_dir
from .launch import PROCESSES_ENV, is_worker, launch, wanted_processes
from .outputs import LOCAL_UID, Outputs
from .stop import EXIT_CODE as STOP_EXIT_CODE
from .stop import Stopped, on_sigterm

if TYPE_CHECKING:
    from .run_setup import RunInputs

log = logging.getLogger("lora_trainer")
TEMPLATE_KINDS = ("LoraTrainingTemplate", "ClusterLoraTrainingTemplate")


def load_job_file(path: Path) -> tuple[JobSpec, str, str, str]:
    """Read a job YAML: (resolved spec, namespace, job name, job UID: metadata.uid or "local").

    Raises:
        ConfigError: unreadable YAML, no job in it, or an invalid spec (names the field).
    """
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: {err}".splitlines()[0]) from err
    templates = {
        d.get("metadata", {}).get("name"): d.get("spec") or {} for d in docs if d.get("kind") in TEMPLATE_KINDS
    }
    jobs = [d for d in docs if d.get("kind") not in TEMPLATE_KINDS]
    if len(jobs) != 1:
        raise ConfigError(f"{path}: expected one LoraTrainingJob (or a bare spec), found {len(jobs)}")
    doc = jobs[0]
    if "kind" in doc:
        if doc["kind"] != "LoraTrainingJob":
            raise ConfigError(f"{path}: kind {doc['kind']!r} is not LoraTrainingJob")
        meta, raw = doc.get("metadata") or {}, doc.get("spec") or {}
    else:
        meta, raw = {}, doc
    template = None
    if raw.get("template"):
        if raw["template"] not in templates:
            raise ConfigError(f"spec.template: {raw['template']!r} is not in {path}; local mode reads "
                              "templates from the same file (add the LoraTrainingTemplate document)")
        template = templates[raw["template"]]
    return (_resolve(raw, template), meta.get("namespace") or "default", meta.get("name") or path.stem,
            str(meta.get("uid") or LOCAL_UID))


def _resolve(raw: dict[str, Any], template: dict[str, Any] | None = None) -> JobSpec:
    try:
        return resolve_spec(raw, template)
    except SpecError as err:
        raise ConfigError(str(err)) from err


def fetch_inputs(spec: JobSpec, resolver: Resolver, prefix_uri: str, workdir: Path) -> RunInputs:
    """The local folders of the job's inputs: the base model (node cache), the dataset, regularization images
    and the captioner, fetched as the spec names them."""
    from .loop import RunInputs

    dataset = spec.dataset
    inputs = RunInputs(
        model_dir=resolver.base_model(spec.base_model, workdir),
        dataset_root=resolver.folder(dataset.uri, workdir / "dataset", "dataset.uri", DatasetError),
    )
    if dataset.regularization is not None:
        inputs.regularization_root = resolver.folder(
            dataset.regularization.uri, workdir / "regularization", "dataset.regularization.uri", DatasetError)
    if dataset.auto_caption is not None:
        inputs.captioner_dir = resolver.model_folder(dataset.auto_caption.model, workdir, "dataset.autoCaption.model")
        inputs.caption_cache = resolver.store(caption_cache_prefix(prefix_uri))
    return inputs


def train(spec: JobSpec, resolver: Resolver, prefix_uri: str, workdir: Path, *, job_uid: str = LOCAL_UID,
          job_name: str | None = None, attempt: int = 1, resume: bool = False,
          progress_interval: float = 5.0) -> int:
    """Fetch the inputs, train, upload; returns the exit code."""
    from .loop import run_recipe  # torch: not needed by `upload`

    timings.CLOCK.start()
    rank = int(os.environ.get("RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        workdir = workdir / f"rank-{rank}"  # workers may have been given the same --workdir
    outputs = Outputs(resolver.store(prefix_uri), workdir / "out", job_uid, job_name)
    with timings.phase("fetch"):
        inputs = fetch_inputs(spec, resolver, prefix_uri, workdir)
    started = time.monotonic()
    manifest = run_recipe(spec, inputs, outputs, attempt=attempt, resume=resume, progress_interval=progress_interval)
    from .progress import format_eta

    if rank != 0:
        return ExitCode.SUCCESS
    timings.log_summary()
    print(f"done in {format_eta(time.monotonic() - started)}: {len(manifest.checkpoints)} checkpoint file(s) "
          f"under {outputs.uri('')}", file=sys.stderr)
    for entry in manifest.checkpoints:
        val = f"  validation loss {entry.validation_loss:.4f}" if entry.validation_loss is not None else ""
        print(f"  {entry.path}  {entry.size_bytes} B{val}", file=sys.stderr)
    return ExitCode.SUCCESS


def run_local(job_file: Path, storage: Path | None, workdir: Path | None, env: Mapping[str, str], *,
              resume: bool = False) -> int:
    """Local mode: a job YAML, outputs under <output.uri>/<namespace>/<job>/<uid>/ as in the cluster, with
    the UID "local" unless the YAML gives metadata.uid (so --resume finds the interrupted run's state)."""
    spec, namespace, name, uid = load_job_file(job_file)
    resolver = Resolver(env=env, storage_root=storage, cache_dir=default_cache_dir(env))
    try:
        prefix = output_prefix(spec, namespace, name, uid)
    except ValueError as err:
        raise ConfigError(f"{job_file}: {err}") from err
    with tempfile.TemporaryDirectory(prefix="lora-train-") as tmp:
        return train(spec, resolver, prefix, workdir or Path(tmp), job_uid=uid, job_name=name, resume=resume)


def run_pod(spec_env: str, env: Mapping[str, str], workdir: Path | None) -> int:
    """Pod mode: the resolved spec and the contract's environment."""
    raw = env.get(spec_env)
    if not raw:
        raise ConfigError(f"{spec_env}: environment variable is empty or missing")
    try:
        spec = _resolve(json.loads(raw))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{spec_env}: not JSON: {err}") from err
    try:
        pod = TrainerEnv.from_env(env)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    prefix, uid = pod.output_prefix, pod.job_uid
    if not prefix:
        raise ConfigError(f"{ENV_OUTPUT_PREFIX}: environment variable is missing")
    if not uid or not prefix.rstrip("/").endswith("/" + uid):
        raise ConfigError(f"{ENV_JOB_UID}: {uid!r} is missing or not the last folder of {ENV_OUTPUT_PREFIX} {prefix}")
    resolver = Resolver(env=env, cache_dir=default_cache_dir(env))
    with tempfile.TemporaryDirectory(prefix="lora-train-") as tmp:
        return train(spec, resolver, prefix, workdir or Path(tmp), job_uid=uid, job_name=pod.job_name,
                     attempt=pod.attempt, resume=pod.resume, progress_interval=pod.progress_interval)


def _upload_progress(started: float, every: float = 5.0):
    """A progress callback printing `n/total files` to stderr at most every `every` seconds, and at the end."""
    last = started

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done == total or now - last >= every:
            last = now
            print(f"  {done}/{total} files", file=sys.stderr, flush=True)

    return report


def run_upload(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Check a dataset folder as the trainer will read it, then upload what the job will use."""
    from .upload import plan_upload, upload

    folder: Path = args.folder
    if args.job is not None:
        spec, *_ = load_job_file(args.job)
        dataset, family, training = spec.dataset, spec.base_model.family, spec.training
        if dataset.uri and dataset.uri.rstrip("/") != args.uri.rstrip("/"):
            print(f"note: {args.job} reads its dataset from {dataset.uri}, not {args.uri}")
    else:
        dataset, family, training = Dataset(uri=args.uri, pairs=args.pairs), ModelFamily(args.family), None
    plan = plan_upload(folder, dataset, family, training)
    print(f"{folder}: {plan.usable} usable image(s) for a {family} job, {len(plan.skipped)} file(s) skipped")
    for skipped in plan.skipped:
        print(f"  skipped {skipped.file}: {skipped.reason}")
    for warning in plan.warnings:
        print(f"  warning: {warning}")
    for line in plan.report.lines() if plan.report else ():
        print(line)
    print(f"training plan ({'the job' if args.job else 'default training settings'}, one GPU; "
          f"auto steps divide by the GPUs): {plan.steps}")
    if args.dry_run:
        print(f"dry run: would upload {len(plan.files)} file(s) to {args.uri}")
        return ExitCode.SUCCESS
    store = Resolver(env=env, storage_root=args.storage).store(args.uri)
    done = upload(store, folder, plan.files, progress=_upload_progress(time.monotonic()))
    print(f"uploaded {len(done.sent)} file(s) to {store.uri}; "
          f"{len(done.unchanged)} already there with the same content")
    print(f"dataset.uri: {args.uri}")
    return ExitCode.SUCCESS


def parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="lora-train", description="Train a LoRA, LoCon or embedding.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a job")
    run.add_argument("job", nargs="?", type=Path, help="job YAML (local mode)")
    run.add_argument("--spec-env", help="read the resolved spec (JSON) from this environment variable (pod mode)")
    run.add_argument("--storage", type=Path, help="local folder standing in for s3:// buckets (local mode)")
    run.add_argument("--workdir", type=Path, help="keep intermediate files here instead of a temporary folder")
    run.add_argument("--resume", action="store_true", help="continue from the state saved by an interrupted run")
    run.add_argument("--processes", type=int, metavar="N",
                     help=f"training processes, one per GPU (default: ${PROCESSES_ENV}, else the visible GPUs)")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    up = sub.add_parser("upload", help="check a dataset folder as the trainer will read it, then upload it")
    up.add_argument("folder", type=Path, help="local folder of images, caption .txt files and repeats.json")
    up.add_argument("uri", help="the job's dataset.uri: s3://bucket/prefix/ (S3_ENDPOINT, AWS_* keys) or file://")
    up.add_argument("--job", type=Path, help="check with this job YAML's dataset settings and base-model family")
    up.add_argument("--family", choices=[f.value for f in ModelFamily], default=ModelFamily.SDXL.value,
                    help="base-model family to check sizes for, without --job (default: sdxl)")
    up.add_argument("--pairs", action="store_true",
                    help="check edit pairs (dataset.pairs: x.png + x.control.png or control/x.png) without --job")
    up.add_argument("--storage", type=Path, help="local folder standing in for s3:// buckets (local mode)")
    up.add_argument("--dry-run", action="store_true", help="check and list the files, upload nothing")
    up.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    ui = sub.add_parser("ui", help="the dashboard's pages over the local runs under --storage")
    ui.add_argument("--storage", type=Path, required=True, help="the folder given to `lora-train run --storage`")
    ui.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: 8765)")
    ui.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


LOCAL_UI = "lora_operator.kubectl_lora.ui.local"
"""The dashboard over local runs. The trainer may import only the API models and the storage
client (import-linter), and the pages and web stack belong to the kubectl plugin: the trainer runs
the plugin's module as a program of its own instead of importing it."""


def run_ui(args: argparse.Namespace) -> int:
    """`lora-train ui`: replaces this process with the plugin's local dashboard (`LOCAL_UI`)."""
    if importlib.util.find_spec("lora_operator.kubectl_lora") is None or importlib.util.find_spec("starlette") is None:
        raise ConfigError("lora-train ui: needs the kubectl-lora plugin and its web stack installed "
                          "(its `cli` extra: starlette, jinja2, uvicorn)")
    os.execv(sys.executable, [sys.executable, "-m", LOCAL_UI, "--storage", str(args.storage),
                              "--port", str(args.port)])
    return 0  # not reached: execv replaces the process


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point; returns (and as a script exits with) an ExitCode."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    env = os.environ if env is None else env
    tail = logtail.start_for_pod(env) if args.command == "run" and args.spec_env else None
    # After the tee: logging's handler writes to the sys.stderr of the time it is made.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _run(args, argv, env)
    finally:
        if tail is not None:
            tail.close()


def _run(args: argparse.Namespace, argv: list[str], env: Mapping[str, str]) -> int:
    try:
        if args.command == "upload":
            return int(run_upload(args, env))
        if args.command == "ui":
            return run_ui(args)
        processes = 1 if is_worker(env) else wanted_processes(args.processes, env)
        if processes > 1:
            return launch(argv, processes, {**os.environ, **env})
        with on_sigterm():  # until the steps start: SIGTERM stops at once (the loop defers it)
            if args.spec_env:
                return int(run_pod(args.spec_env, env, args.workdir))
            if args.job is None:
                raise ConfigError("lora-train run: give a job YAML, or --spec-env VAR in the pod")
            return int(run_local(args.job, args.storage, args.workdir, env, resume=args.resume))
    except Stopped as stopped:
        print(f"{stopped}: the next attempt resumes from the saved state", file=sys.stderr)
        return STOP_EXIT_CODE
    except TrainerError as err:
        report_error(str(err), env, pod=bool(getattr(args, "spec_env", None)))
        return int(err.exit_code)
    except StorageError as err:
        report_error(f"storage: {err}", env, pod=bool(getattr(args, "spec_env", None)))
        return int(ExitCode.TRANSIENT if err.transient else ExitCode.BAD_CONFIG)


TERMINATION_LOG = "/dev/termination-log"
"""Where the kubelet reads a container's termination message from (its default path)."""


def report_error(message: str, env: Mapping[str, str], *, pod: bool) -> None:
    """Prints ``error: <message>`` as the last output and, in pod mode, writes it as the termination
    message too, so the pod's status holds the error alone rather than the log's tail."""
    print(f"error: {message}", file=sys.stderr)
    path = Path(env.get("LORA_TERMINATION_MESSAGE_PATH") or TERMINATION_LOG)
    if pod and path.exists():  # the kubelet creates it; a local run never writes the host's
        with contextlib.suppress(OSError):
            path.write_text(f"error: {message}\n")


def _script() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _script()
