"""progress.json (throttled) and manifest.json, and the terminal progress line and end summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from lora_operator.api import CheckpointEntry, Manifest, PreviewEntry, ProgressReport
from lora_operator.api.contract import MANIFEST_KEY, PROGRESS_KEY

Publish = Callable[[str, bytes], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def format_eta(seconds: float | None) -> str:
    """h:mm:ss, or ? when unknown."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class ProgressReporter:
    """Writes progress.json at most every `interval` seconds (and at phase changes and epoch ends).

    Args:
        publish: Writes bytes to a key of the job prefix.
        attempt: The attempt number (LORA_ATTEMPT).
        total_steps: Optimizer steps of the run.
        total_epochs: Epochs of the run.
        interval: Seconds between throttled writes. Default: 5.
        stream: Where the progress line goes. Default: stderr.
        clock: Monotonic clock (tests pass a fake one).
        job_uid: The job's UID, recorded so the operator reads only its own job's progress.
    """

    def __init__(self, publish: Publish, attempt: int, total_steps: int, total_epochs: int, *,
                 plan: str | None = None, interval: float = 5.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, job_uid: str | None = None):
        self.publish = publish
        self.report = ProgressReport(job_uid=job_uid, attempt=attempt, total_steps=total_steps,
                                     total_epochs=total_epochs, plan=plan, phase="loading", manifest_writes=0)
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self._last_write = -float("inf")
        self._start: tuple[float, int] | None = None
        self.writes = 0

    def phase(self, phase: str) -> None:
        """Change the phase (loading, caching, training, saving, done) and write at once."""
        self.report.phase = phase
        if phase == "training" and self._start is None:
            self._start = (self.clock(), self.report.step)
        self.write()

    def step(self, step: int, epoch: int, loss: float | None) -> None:
        """Record a finished optimizer step; writes when `interval` has passed."""
        now = self.clock()
        if self._start is None:
            self._start = (now, step - 1)
        started, first = self._start
        r = self.report
        r.step, r.epoch = step, epoch
        if loss is not None:  # None until the first loss is read back from the device
            r.loss = round(float(loss), 6)
        if now > started and step > first:
            r.steps_per_second = round((step - first) / (now - started), 4)
            r.eta_seconds = round((r.total_steps - step) / r.steps_per_second, 1)
        self._print_line()
        if now - self._last_write >= self.interval:
            self.write()

    def write(self) -> None:
        """Write progress.json now."""
        self.report.updated_at = _now()
        self.publish(PROGRESS_KEY, self.report.model_dump_json(by_alias=True, indent=1).encode())
        self._last_write = self.clock()
        self.writes += 1

    def manifest_written(self) -> None:
        """manifest.json was just written: count it and write at once, so the operator, which reads
        the manifest only when this count changed (`ProgressReport.manifest_writes`), reads it now."""
        self.report.manifest_writes = (self.report.manifest_writes or 0) + 1
        self.write()

    def _print_line(self) -> None:
        r = self.report
        rate = f"{r.steps_per_second:.2f} it/s" if r.steps_per_second else "? it/s"
        loss = f"{r.loss:.4f}" if r.loss is not None else "?"
        line = (f"step {r.step}/{r.total_steps}  epoch {r.epoch}/{r.total_epochs}  loss {loss}  "
                f"{rate}  ETA {format_eta(r.eta_seconds)}")
        if self.stream.isatty():
            self.stream.write("\r" + line.ljust(80))
        elif self.clock() - self._last_write >= self.interval or r.step == r.total_steps:
            self.stream.write(line + "\n")
        self.stream.flush()

    def summary(self, manifest: Manifest, seconds: float) -> str:
        """The end-of-run summary printed by the CLI."""
        lines = [f"done: {self.report.step} steps, {self.report.total_epochs} epochs in {format_eta(seconds)}"]
        for entry in manifest.checkpoints:
            val = f"  val {entry.validation_loss:.4f}" if entry.validation_loss is not None else ""
            lines.append(f"  {entry.name} {entry.format:9} {entry.path}  {entry.size_bytes} B{val}")
        if manifest.skipped:
            lines.append(f"  skipped {len(manifest.skipped)} file(s): " +
                         ", ".join(f"{s.file} ({s.reason})" for s in manifest.skipped[:5]))
        return "\n".join(lines)


class ManifestWriter:
    """Keeps manifest.json: checkpoints, previews and skipped files, rewritten after each change.

    Args:
        publish: Writes bytes to a key of the job prefix.
        manifest: The manifest so far.
        written: Called after each write (the progress reporter counts them: `ProgressReporter.manifest_written`).
    """

    def __init__(self, publish: Publish, manifest: Manifest, written: Callable[[], None] = lambda: None):
        self.publish = publish
        self.manifest = manifest
        self.written = written

    def add_checkpoint(self, entry: CheckpointEntry) -> None:
        """Record a checkpoint file (replacing an older entry of the same name and format)."""
        self.manifest.checkpoints = [
            c for c in self.manifest.checkpoints if (c.name, c.format) != (entry.name, entry.format)
        ] + [entry]

    def add_preview(self, entry: PreviewEntry) -> None:
        """Record the previews of one prompt at one epoch."""
        self.manifest.previews = [
            p for p in self.manifest.previews
            if (p.epoch, p.step, p.prompt) != (entry.epoch, entry.step, entry.prompt)
        ] + [entry]

    def write(self, finished: bool = False) -> None:
        """Write manifest.json now."""
        self.manifest.finished = finished
        self.publish(MANIFEST_KEY, self.manifest.model_dump_json(by_alias=True, indent=1).encode())
        self.written()
