"""kubectl lora: a kubectl plugin for LoraTrainingJobs (list, describe, watch, previews, pull, select, retrain).

Installed as the ``kubectl-lora`` console script, so ``kubectl lora ...`` finds it on PATH.
"""

from .cli import main
from .errors import CliError

__all__ = ["CliError", "main"]
