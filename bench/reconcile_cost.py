"""CPU of the reconciles a handoff costs the operator, in process (no API server, no storage):
the reconcile of a job whose trainer pod ended (its Succeeded write, the pod's delete, the Event),
a follow reconcile of a running job (`Lifecycle.reconcile` + `sync_progress`), and a claim
(`Claims.try_claim`: the trainer pod rendered, Admitted written).

    python -m bench.reconcile_cost [--jobs 2000] [--repeat 3] [--profile]

Each job is a slim body as the job index keeps it (`views.slim_job`), parsed into its view as the
index does once per resourceVersion (`JobView.of`, timed apart). The API server is a fake that
takes every write; the trainer's reports read nothing (`Lifecycle.reports` returns None: their
storage reads are `bench/follow_cost.py`'s part). CPU is `time.process_time` per call, the best of
`--repeat` rounds over `--jobs` jobs.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.follow_cost import job_body
from bench.scheduling_pass import load_average, profile_text, report
from lora_operator.claims import Claims
from lora_operator.config import OperatorConfig
from lora_operator.lifecycle import Lifecycle
from lora_operator.metrics import OperatorMetrics
from lora_operator.own_writes import OwnWrites
from lora_operator.scheduling import Admission
from lora_operator.views import JobView

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class TakingKube:
    """Takes every write (counted), as an API server that never conflicts."""

    def __init__(self) -> None:
        self.own_writes = OwnWrites()
        self.writes = 0
        self.deletes = 0

    def patch_job_status(self, namespace: str, name: str, patch: dict, resource_version: str | None = None):
        self.writes += 1

    def delete_pod(self, namespace: str, name: str) -> None:
        self.deletes += 1

    def get_secret_data(self, namespace: str, name: str) -> None:
        return None


def job(i: int, phase: str) -> tuple[dict, dict[str, dict]]:
    """(slim body, pods by name) of job i (`follow_cost.job_body`): `Queued` (no pod), or `Running` /
    `Succeeded` (its pod's phase)."""
    _, body, pod = job_body(i, "Queued" if phase == "Queued" else "Running")
    if pod is None:
        return body, {}
    return body, {pod["metadata"]["name"]: {**pod, "status": {"phase": phase}}}


def per_call_ms(fn: Callable[[Any], Any], items: list, repeat: int) -> float:
    """CPU ms per fn(item), the best of `repeat` rounds over `items`."""
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        for item in items:
            fn(item)
        best = min(best, (time.process_time() - began) * 1000 / len(items))
    return round(best, 4)


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = OperatorConfig()
    kube = TakingKube()
    lifecycle = Lifecycle(kube, config, OperatorMetrics(), lambda *a: None,  # type: ignore[arg-type]
                          node_exists=lambda name: True)
    lifecycle.reports = lambda *a, **k: None  # type: ignore[method-assign]
    claims = Claims(kube, config, lifecycle.metrics, lambda *a: None, lifecycle)  # type: ignore[arg-type]
    now = START + timedelta(minutes=2)
    ended = [job(i, "Succeeded") for i in range(args.jobs)]
    running = [job(i, "Running") for i in range(args.jobs)]
    queued = [job(i, "Queued")[0] for i in range(args.jobs)]
    ended_views = [(JobView.of(body), pods) for body, pods in ended]
    running_views = [(JobView.of(body), pods) for body, pods in running]
    queued_views = [JobView.of(body) for body in queued]
    profile = cProfile.Profile() if args.profile else None

    def follow(item: tuple[JobView, dict]) -> None:
        lifecycle.reconcile(item[0], item[1], now)
        lifecycle.sync_progress(item[0], now)

    def claim(view: JobView) -> None:
        claims.try_claim((view, Admission(view.uid, f"node-{view.name}", 8)), now)

    if profile:
        profile.enable()
    out = {
        "command": "python -m bench.reconcile_cost " + " ".join(args.argv),
        "load": load_average(), "jobs": args.jobs, "repeat": args.repeat,
        "view_parse_ms": per_call_ms(lambda item: JobView.of(item[0]), ended, args.repeat),
        "pod_ended_reconcile_ms": per_call_ms(lambda item: lifecycle.reconcile(item[0], item[1], now),
                                              ended_views, args.repeat),
        "follow_reconcile_ms": per_call_ms(follow, running_views, args.repeat),
        "claim_ms": per_call_ms(claim, queued_views, args.repeat),
    }
    if profile:
        profile.disable()
        out["profile"] = profile_text(profile, args.profile_lines)
    out["writes"], out["pod_deletes"] = kube.writes, kube.deletes
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the timed calls (cumulative top list)")
    parser.add_argument("--profile-lines", type=int, default=45)
    parser.add_argument("--out", help="write the result JSON here too")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    report(run(args), args.out)


if __name__ == "__main__":
    main()
