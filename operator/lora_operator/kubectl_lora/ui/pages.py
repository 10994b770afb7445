"""What the dashboard's pages show of a job, from the same rows and lines the CLI prints."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import yaml

from ...api.conditions import FINISHED_PHASES, Phase
from ...api.status import JobStatus
from .. import checkpoints, tables


def status_of(job: Mapping[str, Any]) -> JobStatus:
    return JobStatus.model_validate(job.get("status") or {})


def job_summary(job: Mapping[str, Any], starts: Mapping[str, datetime], now: datetime) -> dict[str, Any]:
    """One job as the Jobs table and the live updates show it (the cells of `tables.job_row`)."""
    status = status_of(job)
    name, phase, progress, epoch, queue, start, age = tables.job_row(dict(job), now, starts)
    p = status.progress
    estimate = starts.get(job["metadata"].get("uid"))
    return {
        "name": name, "phase": phase, "progress": progress, "epoch": epoch, "queue": queue, "starts": start,
        "startsAt": estimate.isoformat(timespec="seconds") if estimate else None, "age": age,
        "percent": tables.percent(p) if p else 0,
        "step": p.step if p else None, "totalSteps": p.total_steps if p else None,
        "loss": None if p is None or p.loss is None else f"{p.loss:.4f}",
        "eta": tables.format_duration(p.eta_seconds) if p else None,
        "line": tables.progress_line(status), "message": status.message,
    }


def previews_by_epoch(status: JobStatus) -> list[tuple[int, list[dict[str, str]]]]:
    """Every epoch's preview images, oldest epoch first: ``(epoch, [{uri, prompt}])``."""
    by_epoch: dict[int, list[dict[str, str]]] = {}
    for record in status.previews:
        by_epoch.setdefault(record.epoch, []).extend({"uri": u, "prompt": record.prompt} for u in record.uris)
    return sorted(by_epoch.items())


def preview_uris(status: JobStatus) -> set[str]:
    return {u for record in status.previews for u in record.uris}


def job_detail(job: Mapping[str, Any], events: list[dict], starts: Mapping[str, datetime],
               now: datetime) -> dict[str, Any]:
    """Everything the Job page shows."""
    status = status_of(job)
    spec = job.get("spec") or {}
    selected = spec.get("selectedCheckpoint")
    formats: dict[str, list[str]] = {}
    for record in status.checkpoints:
        formats.setdefault(record.name, []).append(record.format)
    return {
        "job": job_summary(job, starts, now), "status": status, "selected": selected,
        "output": status.output,
        "finished": status.phase in FINISHED_PHASES, "suspended": bool(spec.get("suspend")),
        "selectable": status.phase in (Phase.SUCCEEDED, Phase.CANCELLED),
        "checkpoint_headers": tables.CHECKPOINT_HEADERS,
        "checkpoint_rows": tables.checkpoint_rows(status.checkpoints, checkpoints.best_checkpoint(status.checkpoints),
                                                  selected),
        "formats": formats,
        "previews": previews_by_epoch(status),
        "attempt_headers": tables.ATTEMPT_HEADERS, "attempt_rows": tables.attempt_rows(status.attempts),
        "events": [[e.get("lastTimestamp") or e.get("eventTime"), e.get("type"), e.get("reason"), e.get("message")]
                   for e in events],
        "spec_yaml": yaml.safe_dump(status.resolved_spec or spec, sort_keys=False),
    }


def loss_series(status: JobStatus, training: list[tuple[int, float]]) -> dict[str, list]:
    """The loss chart's data: training loss by step (as reported while watched) and the validation
    loss of each checkpoint at its step."""
    validation = sorted({(r.step, r.validation_loss) for r in status.checkpoints if r.validation_loss is not None})
    return {"training": [list(p) for p in training], "validation": [list(p) for p in validation]}
