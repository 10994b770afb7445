"""The custom resources: LoraTrainingJob and the two template kinds."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .base import ApiModel
from .pod import PodSettings
from .spec import JobSettings, JobSpec
from .status import JobStatus

GROUP = "lora-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class ObjectMeta(ApiModel):
    """The parts of metadata the models read; the apiserver owns the rest."""

    model_config = ApiModel.model_config | {"extra": "allow"}
    name: str | None = None
    """Name of the object."""
    namespace: str | None = None
    """Namespace of the object (none for cluster-scoped kinds)."""


class TemplateSpec(JobSettings):
    """Defaults for the jobs that name this template in spec.template."""

    description: str | None = Field(default=None, max_length=2000)
    """What the template is for (shown by kubectl lora)."""


class ClusterTemplateSpec(TemplateSpec):
    """Defaults for the jobs that name this template, and the size of their trainer pods."""

    pod: PodSettings | None = None
    """CPU, memory and disk, /dev/shm, pull secrets, priority class and annotations of the trainer
    pods of this template's jobs, over the chart's trainer.pod values. Only a cluster template (the
    platform's) has this field: a job or a namespaced template cannot size or annotate its pod."""


class Resource(ApiModel):
    """Common envelope of the kinds."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SCOPE: ClassVar[str] = "Namespaced"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()

    api_version: str = API_VERSION
    kind: str
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


class LoraTrainingJob(Resource):
    """A request to train one LoRA, LoCon or textual-inversion embedding on one GPU node."""

    KIND = "LoraTrainingJob"
    PLURAL = "loratrainingjobs"
    SHORT_NAMES = ("ltj", "lora")
    kind: str = KIND
    spec: JobSpec
    """Desired state."""
    status: JobStatus | None = None
    """Observed state, written by the operator."""


class LoraTrainingTemplate(Resource):
    """Defaults for LoraTrainingJobs in this namespace that name it in spec.template."""

    KIND = "LoraTrainingTemplate"
    PLURAL = "loratrainingtemplates"
    SHORT_NAMES = ("ltt",)
    kind: str = KIND
    spec: TemplateSpec
    """Values for the jobs that name this template; a job's own fields win."""


class ClusterLoraTrainingTemplate(Resource):
    """A platform preset (base model, image, placement, hyperparameters) for jobs in any namespace."""

    KIND = "ClusterLoraTrainingTemplate"
    PLURAL = "cluster" + "loratrainingtemplates"
    SCOPE = "Cluster"
    SHORT_NAMES = ("cltt",)
    kind: str = KIND
    spec: ClusterTemplateSpec
    """Values for the jobs that name this template; a job's own fields win."""


KINDS: tuple[type[Resource], ...] = (LoraTrainingJob, LoraTrainingTemplate, ClusterLoraTrainingTemplate)
