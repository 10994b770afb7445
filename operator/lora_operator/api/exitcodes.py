"""Exit codes of the trainer, shared by both images.

The operator classifies a finished trainer container by these codes; the trainer
exits with them. Keep the numbers stable: they are part of the API.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Why the trainer process ended."""

    SUCCESS = 0
    """Training finished and every output was uploaded."""
    UNEXPECTED = 1
    """An unexpected error (a bug or an unclassified crash): retried with backoff."""
    BAD_CONFIG = 64
    """The job spec is invalid for training (names the field): fails at once."""
    BAD_DATASET = 65
    """The dataset is empty or no image in it is usable (names the files): fails at once."""
    BAD_MODEL = 66
    """The base model cannot be found or loaded (names the URI): fails at once."""
    NAN_LOSS = 67
    """The loss became NaN or infinite (lower the learning rate): fails at once."""
    MISSING_PACKAGE = 68
    """An optional package the spec asks for is not installed (e.g. bitsandbytes)."""
    TRANSIENT = 75
    """A transient error (storage unreachable): retried with backoff."""


INPUT_ERRORS = frozenset(
    {ExitCode.BAD_CONFIG, ExitCode.BAD_DATASET, ExitCode.BAD_MODEL, ExitCode.NAN_LOSS, ExitCode.MISSING_PACKAGE}
)
"""Exit codes that mean a retry cannot help: the job fails at once."""


def describe(code: int) -> str:
    """A one-line, user-facing meaning of an exit code."""
    try:
        member = ExitCode(code)
    except ValueError:
        return f"exit code {code} (crash)"
    return f"{member.name} ({int(member)})"
