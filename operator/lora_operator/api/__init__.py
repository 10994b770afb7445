"""The LoraTrainingJob API (group lora-operator.io, version v1alpha1).

The pydantic models here are the single source of the CRD schema, the
`kubectl explain` text, the defaults and the validation. Both the operator and
the trainer import them; this package imports nothing but pydantic. What else the two images
share (the trainer pod's environment and labels, the layout of a job's output prefix) is in
`contract`.
"""

from .conditions import FINISHED_PHASES, ConditionType, Phase, Reason
from .dataset import AutoCaption, Crop, CropMode, Dataset, MaskedLoss, Regularization, Tags
from .exitcodes import INPUT_ERRORS, ExitCode
from .noise_levels import BiasStrategy, Flow, LossWeighting, TimestepBias, TimestepSampling
from .pod import ComputeResources, PodSettings
from .presets import epoch_steps, scenario_formula, scenario_steps
from .reports import CheckpointEntry, Manifest, PreviewEntry, ProgressReport, SkippedFile
from .resolve import SpecError, deep_merge, resolve_spec, spec_hash
from .resources import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    ClusterLoraTrainingTemplate,
    ClusterTemplateSpec,
    LoraTrainingJob,
    LoraTrainingTemplate,
    TemplateSpec,
)
from .spec import (
    IMMUTABLE_AFTER_ADMISSION,
    AdapterType,
    BaseModelSpec,
    CheckpointFormat,
    Checkpoints,
    CleanPodPolicy,
    JobSettings,
    JobSpec,
    ModelFamily,
    Notify,
    Output,
    Placement,
    Previews,
    RetryPolicy,
    Sampler,
    Storage,
    Webhook,
)
from .status import Attempt, CheckpointRecord, Condition, JobOutput, JobStatus, PreviewRecord, Progress
from .training import (
    EarlyStop,
    Ema,
    Embedding,
    LrScheduler,
    MixedPrecision,
    MultiresNoise,
    Network,
    Optimizer,
    OptimizerType,
    SchedulerType,
    Training,
)

__all__ = [name for name in dir() if not name.startswith("_")]
