"""training.earlyStop: end training when the validation loss stops improving."""

from __future__ import annotations

from lora_operator.api import EarlyStop

from .errors import ConfigError


class EarlyStopper:
    """Counts evaluations since the best validation loss; says when patience has run out."""

    def __init__(self, settings: EarlyStop, has_validation: bool):
        """
        Raises:
            ConfigError: patience set but the run holds no validation images.
        """
        if settings.patience and not has_validation:
            raise ConfigError("training.earlyStop.patience: needs validation images; set dataset.validationSplit "
                              "(or leave earlyStop out)")
        self.settings = settings
        self.best: tuple[float, str] | None = None
        self.since_best = 0

    @property
    def enabled(self) -> bool:
        """Whether early stopping is on (patience above 0)."""
        return self.settings.patience > 0

    def update(self, loss: float | None, checkpoint: str) -> str | None:
        """Record the validation loss at `checkpoint`; the reason to stop now, or None to go on."""
        if not self.enabled or loss is None:
            return None
        if self.best is None or loss < self.best[0] - self.settings.min_delta:
            self.best, self.since_best = (loss, checkpoint), 0
            return None
        self.since_best += 1
        if self.since_best < self.settings.patience:
            return None
        return (f"stopped early: no better validation loss in {self.since_best} evaluations "
                f"(best {self.best[0]:.4f} at {self.best[1]}, training.earlyStop.patience "
                f"{self.settings.patience})")
