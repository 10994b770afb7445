"""``kubectl lora``: argument parsing and one small function per subcommand."""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml
from PIL import Image

from ..api.conditions import FINISHED_PHASES, Phase
from ..api.contract import attempt_log_key
from ..api.status import Attempt, JobStatus
from . import actions, checkpoints, estimates, sheet, tables, tags
from .errors import CliError
from .kube import Jobs
from .objects import Objects, StorageOptions

UI_PORT = 8765
"""`ui`'s port on 127.0.0.1 when --port is not given."""


def _status(job: dict) -> JobStatus:
    return JobStatus.model_validate(job.get("status") or {})


def cmd_list(args: argparse.Namespace, jobs: Jobs) -> int:
    selector = tags.selector(args.selector, args.tag)
    items = jobs.list(all_namespaces=args.all_namespaces, selector=selector)
    if items:
        now = datetime.now(UTC)
        everyone = items if args.all_namespaces and not selector else jobs.queue_jobs(items)
        starts = estimates.queue_estimates(everyone, jobs.nodes(), now)
        print(tables.jobs_table(items, now, all_namespaces=args.all_namespaces, starts=starts))
        return 0
    where = "in any namespace" if args.all_namespaces else f"in namespace {jobs.namespace}"
    print(f"No LoraTrainingJobs {where}" + (f" match {selector!r}." if selector else "."))
    return 0


def cmd_describe(args: argparse.Namespace, jobs: Jobs) -> int:
    job = jobs.get(args.job)
    status = _status(job)
    print(f"Name:       {job['metadata']['name']}\nNamespace:  {jobs.namespace}\nPhase:      {status.phase.value}")
    if status.message:
        print(f"Message:    {status.message}")
    print(f"Progress:   {tables.progress_line(status)}")
    if status.output and status.output.uri:
        print(f"Output:     {status.output.checkpoint} -> {status.output.uri}")
        if status.output.selection:
            print(f"Selection:  {status.output.selection}")
    print("\nResolved spec:")
    spec = status.resolved_spec or job.get("spec", {})
    print("  " + yaml.safe_dump(spec, sort_keys=False).rstrip().replace("\n", "\n  "))
    print("\nAttempts:")
    print(tables.attempts_table(status.attempts) if status.attempts else "  none")
    print("\nCheckpoints (* lowest validation loss):")
    if status.checkpoints:
        selected = job.get("spec", {}).get("selectedCheckpoint")
        print(tables.checkpoints_table(status.checkpoints, checkpoints.best_checkpoint(status.checkpoints), selected))
    else:
        print("  none")
    return 0


def cmd_watch(args: argparse.Namespace, jobs: Jobs) -> int:
    tty = sys.stdout.isatty()
    last = ""
    while True:
        status = _status(jobs.get(args.job))
        line = tables.progress_line(status)
        if line != last:
            print(("\r\033[K" if tty else "") + line, end="" if tty else "\n", flush=True)
            last = line
        if status.phase in FINISHED_PHASES:
            if tty:
                print()
            if status.message:
                print(status.message)
            return 0 if status.phase == Phase.SUCCEEDED else 1
        time.sleep(args.interval)


def _objects(args: argparse.Namespace) -> Objects:
    return Objects(StorageOptions.resolve(args.s3_endpoint, args.access_key, args.secret_key, args.s3_secure))


def cmd_previews(args: argparse.Namespace, jobs: Jobs) -> int:
    status = _status(jobs.get(args.job))
    records = [p for p in status.previews if args.epoch is None or p.epoch == args.epoch]
    if not records:
        which = "" if args.epoch is None else f" for epoch {args.epoch}"
        raise CliError(f"ltj/{args.job} has no previews{which}")
    objects = _objects(args)
    by_epoch: dict[int, list[Image.Image]] = {}
    for record in sorted(records, key=lambda p: p.epoch):
        for uri in record.uris:
            by_epoch.setdefault(record.epoch, []).append(Image.open(io.BytesIO(objects.get_bytes(uri))))
    image = sheet.contact_sheet([(f"epoch {e}", ims) for e, ims in by_epoch.items()])
    image.save(args.output)
    print(f"wrote {args.output} ({len(by_epoch)} epochs, {sum(map(len, by_epoch.values()))} images)")
    return 0


def cmd_pull(args: argparse.Namespace, jobs: Jobs) -> int:
    job = jobs.get(args.job)
    status = _status(job)
    name = args.checkpoint or checkpoints.default_checkpoint(status, job.get("spec", {}).get("selectedCheckpoint"))
    record = checkpoints.choose_record(status, name, args.format)
    target_dir = Path(args.output)
    target_dir.mkdir(parents=True, exist_ok=True)
    path = _objects(args).download(record.uri, target_dir)
    print(f"pulled {name} ({record.format}) to {path}")
    return 0


def cmd_select(args: argparse.Namespace, jobs: Jobs) -> int:
    print(actions.select(jobs, args.job, args.checkpoint))
    return 0


def cmd_suspend(args: argparse.Namespace, jobs: Jobs) -> int:
    """`suspend` / `resume`: set spec.suspend; the operator stops the pod, or queues the job again."""
    print(actions.suspend(jobs, args.job, args.command == "suspend"))
    return 0


def _attempt(status: JobStatus, job: str, number: int | None) -> Attempt:
    if not status.attempts:
        raise CliError(f"ltj/{job} has had no trainer pod yet (phase {status.phase.value})")
    if number is None:
        return status.attempts[-1]
    found = next((a for a in status.attempts if a.number == number), None)
    if found is None:
        raise CliError(f"ltj/{job} has no attempt {number} (attempts: "
                       f"{', '.join(str(a.number) for a in status.attempts)})")
    return found


def cmd_logs(args: argparse.Namespace, jobs: Jobs) -> int:
    """`logs`: the trainer pod's log; once the pod is gone, the last lines its trainer kept in storage."""
    status = _status(jobs.get(args.job))
    attempt = _attempt(status, args.job, args.attempt)
    why = f"pod {attempt.pod} is gone"
    try:
        chunks = jobs.pod_log(attempt.pod, args.follow)
        if chunks is not None:
            for chunk in chunks:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            return 0
    except CliError as err:
        why = str(err)
    prefix = status.output.prefix if status.output else None
    if not prefix:
        raise CliError(f"{why}, and ltj/{args.job} has no status.output.prefix to read its kept log from")
    uri = prefix + attempt_log_key(attempt.number)
    try:
        text = _objects(args).get_bytes(uri).decode(errors="replace")
    except CliError as err:
        raise CliError(f"{why}; no kept log of attempt {attempt.number} either: {err}") from err
    print(f"# {why}: the last lines of attempt {attempt.number}, kept at {uri}", file=sys.stderr)
    sys.stdout.write(text)
    return 0


def cmd_cancel(args: argparse.Namespace, jobs: Jobs) -> int:
    """`cancel`: set spec.cancel; the operator ends the job as Cancelled and keeps its finished epochs."""
    print(actions.cancel(jobs, args.job))
    return 0


def cmd_retrain(args: argparse.Namespace, jobs: Jobs) -> int:
    print(actions.retrain(jobs, args.job, args.set, args.name)[0])
    return 0


def cmd_ui(args: argparse.Namespace, jobs: Jobs) -> int:
    """`ui`: the dashboard on 127.0.0.1, acting with this kubeconfig and these storage keys."""
    from .ui import serve  # the web stack loads only for this command

    serve(jobs, _objects(args), args.port)
    return 0


def _add_common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Cluster and storage flags. kubectl takes them before or after the subcommand; so does this.

    The subcommand's copies default to SUPPRESS, so a flag given before the subcommand is not
    overwritten by the subcommand's unset copy.
    """
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG or ~/.kube/config)", **default)
    parser.add_argument("--context", help="kubeconfig context (default: the current one)", **default)
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's)", **default)
    store = parser.add_argument_group("storage (for previews, pull and logs of a finished pod)")
    store.add_argument("--s3-endpoint", help="host:port of the S3 endpoint (default: $S3_ENDPOINT)", **default)
    store.add_argument("--access-key", help="S3 access key (default: $AWS_ACCESS_KEY_ID)", **default)
    store.add_argument("--secret-key", help="S3 secret key (default: $AWS_SECRET_ACCESS_KEY)", **default)
    store.add_argument("--s3-secure", action=argparse.BooleanOptionalAction,
                       help="TLS to the endpoint (default: $S3_SECURE, else true)",
                       **({"default": None} if top else default))


def build_parser() -> argparse.ArgumentParser:
    """The ``kubectl lora`` argument parser."""
    parser = argparse.ArgumentParser(prog="kubectl lora", description="Inspect and steer LoraTrainingJobs.")
    _add_common(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, top=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn, text: str, job: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text)
        if job:
            p.add_argument("job")
        p.set_defaults(fn=fn)
        return p

    p = add("list", cmd_list, "NAME PHASE PROGRESS EPOCH QUEUE STARTS AGE", job=False)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="jobs of every namespace")
    p.add_argument("-l", "--selector", help="label selector, as kubectl's (e.g. team=a,stage!=test)")
    p.add_argument("--tag", action="append", default=[],
                   help=f"only jobs with this tag: the label {tags.TAG_PREFIX}<tag> (repeatable: all of them)")
    add("describe", cmd_describe, "resolved spec, attempts, checkpoints")
    p = add("watch", cmd_watch, "live progress until the job finishes (exit 1 unless Succeeded)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default: 2)")
    p = add("previews", cmd_previews, "contact sheet of the preview images (epochs as rows)")
    p.add_argument("--epoch", type=int, help="only this epoch (default: all)")
    p.add_argument("-o", "--output", default="grid.png", help="image to write (default: grid.png)")
    p = add("pull", cmd_pull, "download a checkpoint")
    p.add_argument("--checkpoint", help="e.g. epoch-0007 (default: the selected one, else the last)")
    p.add_argument("--format", choices=["kohya", "diffusers", "embedding"], help="default: kohya if written")
    p.add_argument("-o", "--output", default=".", help="folder to download into (default: .)")
    p = add("select", cmd_select, "set spec.selectedCheckpoint: an epoch, or auto (lowest validation loss)")
    p.add_argument("checkpoint")
    add("suspend", cmd_suspend, "stop a job's pod and hold it (spec.suspend)")
    add("resume", cmd_suspend, "queue a suspended job again")
    p = add("logs", cmd_logs, "the trainer pod's log (the kept last lines once the pod is gone)")
    p.add_argument("--attempt", type=int, help="attempt number (default: the last; see describe)")
    p.add_argument("-f", "--follow", action="store_true", help="stream the live pod's log until it ends")
    add("cancel", cmd_cancel, "end a job as Cancelled, keeping its finished epochs (spec.cancel)")
    p = add("ui", cmd_ui, "the dashboard: a web page on 127.0.0.1 with live progress, previews, picking", job=False)
    p.add_argument("--port", type=int, default=UI_PORT, help=f"port on 127.0.0.1 (default: {UI_PORT})")
    p = add("retrain", cmd_retrain, "new job from a finished one's resolvedSpec with --set overrides")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="camelCase dotted path and YAML value, e.g. training.unetLearningRate=5e-5 (repeatable)")
    p.add_argument("--name", help="name of the new job (default: <job>-retrain-<random>)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kubectl lora``; returns the exit code (0, or 1 with a one-line error on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        jobs = Jobs(args.kubeconfig, args.namespace, args.context)
        return args.fn(args, jobs)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
