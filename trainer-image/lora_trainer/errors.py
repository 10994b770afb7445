"""User-caused errors of the trainer, each carrying the exit code it ends with.

The CLI catches `TrainerError`, prints its message as one line and exits with
its `exit_code` (see `lora_operator.api.exitcodes`); the operator then fails the
job at once (input errors) or retries it (transient errors). Messages name the
field or file at fault, never a traceback.
"""

from __future__ import annotations

from lora_operator.api import ExitCode


class TrainerError(Exception):
    """Base class: an error the user (or the environment) caused, not a bug.

    Attributes:
        exit_code: The process exit code this error ends the trainer with.
    """

    exit_code: ExitCode = ExitCode.UNEXPECTED


class ConfigError(TrainerError):
    """The job spec cannot be trained as written (names the field)."""

    exit_code = ExitCode.BAD_CONFIG


class DatasetError(TrainerError):
    """The dataset is missing, empty or has no usable image (names the files)."""

    exit_code = ExitCode.BAD_DATASET


class ModelError(TrainerError):
    """The base model cannot be found or loaded (names the URI or folder)."""

    exit_code = ExitCode.BAD_MODEL


class NanLossError(TrainerError):
    """The loss became NaN or infinite (usually: lower the learning rate)."""

    exit_code = ExitCode.NAN_LOSS


class MissingPackageError(TrainerError):
    """An optional package the spec asks for is not installed."""

    exit_code = ExitCode.MISSING_PACKAGE


class TransientError(TrainerError):
    """A passing failure (storage unreachable): the operator retries the pod."""

    exit_code = ExitCode.TRANSIENT
