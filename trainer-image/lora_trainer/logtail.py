"""The last lines of a trainer pod's output, kept in storage as logs/attempt-N.txt under the
job's prefix. A pod's log goes when the operator deletes the pod (and with a retry, the earlier
attempt's pod is gone); `kubectl lora logs --attempt N` then reads this copy.

What the process writes through sys.stdout and sys.stderr (logging, prints, the final error
line, a traceback) is passed on unchanged and its last lines kept; the copy is uploaded every
UPLOAD_SECONDS while something new was written, and once more at exit. A pod killed outright
(OOM, eviction) keeps what the last upload had.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Mapping
from typing import IO, Any

from lora_operator.api.contract import ENV_ATTEMPT, ENV_OUTPUT_PREFIX, TrainerEnv, attempt_log_key
from lora_operator.storage import ObjectStore

from .inputs import Resolver, default_cache_dir
from .launch import is_worker

MAX_LINES = 500
"""Lines kept: the end of a run and its error, not a whole long run's log."""
UPLOAD_SECONDS = 30.0


class _Tee:
    """A text stream that writes through to `stream` and feeds `tail` with each finished line."""

    def __init__(self, stream: IO[str], tail: LogTail):
        self._stream = stream
        self._tail = tail

    def write(self, text: str) -> int:
        self._tail.add(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding... of the real stream
        return getattr(self._stream, name)


class LogTail:
    """Keeps and uploads the last `max_lines` lines written to stdout and stderr.

    Args:
        store: The store at the job's output prefix.
        key: The object to write, e.g. logs/attempt-2.txt.
    """

    def __init__(self, store: ObjectStore, key: str, max_lines: int = MAX_LINES, every: float = UPLOAD_SECONDS):
        self.store, self.key, self.every = store, key, every
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._partial = ""
        self._lock = threading.Lock()
        self._changed = False
        self._stop = threading.Event()
        self._saved: tuple[IO[str], IO[str]] | None = None
        self._thread: threading.Thread | None = None

    def add(self, text: str) -> None:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            self._lines.extend(lines)
            self._changed = True

    def text(self) -> str:
        with self._lock:
            return "\n".join([*self._lines, self._partial] if self._partial else self._lines) + "\n"

    def start(self) -> LogTail:
        """Tees sys.stdout and sys.stderr (before logging is configured, so its handler writes to the tee)."""
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        self._thread = threading.Thread(target=self._loop, name="log-tail", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            if self._changed:
                self.upload()

    def upload(self) -> None:
        """Best effort: the tail must never be why a training fails, nor log about itself."""
        self._changed = False
        try:
            self.store.put_bytes(self.key, self.text().encode())
        except Exception:  # noqa: BLE001 - storage trouble shows in the training's own errors
            self._changed = True

    def close(self) -> None:
        """Keeps a traceback in flight (Python prints it only after this), restores the streams, uploads."""
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, SystemExit):
            self.add(("\n" if self._partial else "") + "".join(traceback.format_exception(error)))
        self._stop.set()
        if self._saved:
            sys.stdout, sys.stderr = self._saved
        self.upload()


def start_for_pod(env: Mapping[str, str]) -> LogTail | None:
    """The tail of a pod's main process; None in a launched worker (one tail per attempt: the
    launcher's, which holds what it prints of its workers) or without an output prefix."""
    if not env.get(ENV_OUTPUT_PREFIX) or is_worker(env):
        return None
    try:
        # Only the two variables it needs: a bad value of another is the run's to report, with its tail kept.
        pod = TrainerEnv.from_env({name: env[name] for name in (ENV_OUTPUT_PREFIX, ENV_ATTEMPT) if name in env})
        store = Resolver(env=env, cache_dir=default_cache_dir(env)).store(pod.output_prefix)
    except Exception:  # noqa: BLE001 - the run reports a bad prefix or attempt itself
        return None
    return LogTail(store, attempt_log_key(pod.attempt)).start()
