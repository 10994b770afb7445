"""Pure text formatting: tables, ages, durations and the live progress line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from ..api.status import Attempt, CheckpointRecord, JobStatus, Progress


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by three spaces, like ``kubectl get``.

    None cells print as ``-``; trailing spaces are stripped from every line.
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def format_duration(seconds: float | None) -> str:
    """A short human duration: ``45s``, ``3m12s``, ``2h5m``, ``3d4h``; ``-`` when unknown."""
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def format_age(created: str | None, now: datetime | None = None) -> str:
    """Age of an object from its RFC 3339 creationTimestamp, as kubectl prints it."""
    if not created:
        return "-"
    then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return format_duration(((now or datetime.now(UTC)) - then).total_seconds())


def format_start(start: datetime | None, now: datetime | None = None) -> str | None:
    """An estimated start as a time from now: ``~now``, ``~12m``; None when unknown."""
    if start is None:
        return None
    seconds = (start - (now or datetime.now(UTC))).total_seconds()
    return "~now" if seconds < 1 else f"~{format_duration(seconds)}"


def percent(progress: Progress) -> int:
    if progress.total_steps:
        return min(100, int(100 * progress.step / progress.total_steps))
    return progress.percent


def job_row(job: dict, now: datetime | None = None, starts: Mapping[str, datetime] | None = None) -> list[object]:
    """One row of ``list``: NAME PHASE PROGRESS EPOCH QUEUE STARTS AGE (``starts``: estimates by uid)."""
    status = JobStatus.model_validate(job.get("status") or {})
    meta = job.get("metadata", {})
    progress = status.progress
    return [
        meta.get("name"),
        status.phase.value,
        f"{percent(progress)}%" if progress else None,
        f"{progress.epoch}/{progress.total_epochs}" if progress and progress.total_epochs else None,
        status.queue_position,
        format_start((starts or {}).get(meta.get("uid")), now),
        format_age(meta.get("creationTimestamp"), now),
    ]


JOB_HEADERS = ("NAME", "PHASE", "PROGRESS", "EPOCH", "QUEUE", "STARTS", "AGE")


def jobs_table(jobs: Sequence[dict], now: datetime | None = None, all_namespaces: bool = False,
               starts: Mapping[str, datetime] | None = None) -> str:
    """The ``list`` table, sorted by name; with ``all_namespaces`` a NAMESPACE column first, as kubectl's -A.
    STARTS is the estimated start of a queued job (``starts``, by uid)."""
    headers = list(JOB_HEADERS)
    if all_namespaces:
        ordered = sorted(jobs, key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"]))
        return format_table(["NAMESPACE", *headers],
                            [[j["metadata"].get("namespace"), *job_row(j, now, starts)] for j in ordered])
    rows = [job_row(j, now, starts) for j in sorted(jobs, key=lambda j: j["metadata"]["name"])]
    return format_table(headers, rows)


ATTEMPT_HEADERS = ("#", "POD", "NODE", "REASON", "EXIT", "COUNTED", "MESSAGE")
CHECKPOINT_HEADERS = ("NAME", "EPOCH", "STEP", "FORMATS", "VAL LOSS", "BEST")


def attempt_rows(attempts: Sequence[Attempt]) -> list[list[object]]:
    """Every trainer pod of a job (columns `ATTEMPT_HEADERS`): number, pod, node, reason, exit code, counted."""
    return [[a.number, a.pod, a.node, a.reason, a.exit_code, "yes" if a.counted else "no", a.message]
            for a in attempts]


def attempts_table(attempts: Sequence[Attempt]) -> str:
    """`attempt_rows` as text."""
    return format_table(ATTEMPT_HEADERS, attempt_rows(attempts))


def checkpoint_rows(checkpoints: Sequence[CheckpointRecord], best: str | None,
                    selected: str | None) -> list[list[object]]:
    """One row per checkpoint name (columns `CHECKPOINT_HEADERS`, formats joined); ``*`` marks the
    lowest validation loss."""
    by_name: dict[str, list[CheckpointRecord]] = {}
    for record in checkpoints:
        by_name.setdefault(record.name, []).append(record)
    rows: list[list[object]] = []
    for name, records in sorted(by_name.items(), key=lambda item: item[1][0].epoch):
        first = records[0]
        loss = next((r.validation_loss for r in records if r.validation_loss is not None), None)
        marks = ("*" if name == best else "") + (" (selected)" if name == selected else "")
        rows.append([name, first.epoch, first.step, ",".join(r.format for r in records),
                     None if loss is None else f"{loss:.4f}", marks.strip() or None])
    return rows


def checkpoints_table(checkpoints: Sequence[CheckpointRecord], best: str | None, selected: str | None) -> str:
    """`checkpoint_rows` as text."""
    return format_table(CHECKPOINT_HEADERS, checkpoint_rows(checkpoints, best, selected))


def progress_line(status: JobStatus) -> str:
    """``Running  step 120/800 (15%)  epoch 2/10  loss 0.1234  3.10 it/s  ETA 3m39s``."""
    p = status.progress
    if p is None:
        return f"{status.phase.value}" + (f"  queue position {status.queue_position}" if status.queue_position else "")
    parts = [status.phase.value, f"step {p.step}/{p.total_steps} ({percent(p)}%)",
             f"epoch {p.epoch}/{p.total_epochs}"]
    parts.append("loss -" if p.loss is None else f"loss {p.loss:.4f}")
    parts.append("- it/s" if p.steps_per_second is None else f"{p.steps_per_second:.2f} it/s")
    parts.append(f"ETA {format_duration(p.eta_seconds)}")
    return "  ".join(parts)
