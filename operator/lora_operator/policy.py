"""What the platform lets a job choose: the trainer image it runs, the container paths its
file:// URIs read and the storage endpoint it talks to.

A tenant owns its jobs and namespaced templates, the platform owns the operator's
configuration (chart values) and ClusterLoraTrainingTemplates. A job's resolved spec (its
template's values included) may only name what the configuration allows, so no tenant runs
an arbitrary image on a whole GPU node or has the trainer list arbitrary container folders
into the job's status.

Pure: a resolved spec and the configuration in, the first refusal out.
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

from .api import JobSpec, Reason, SpecError
from .config import OperatorConfig
from .endpoints import Target, job_endpoint


def image_allowed(image: str, config: OperatorConfig) -> bool:
    """Whether `image` is the trainer image or on LORA_TRAINER_ALLOWED_IMAGES.

    An entry ending in ``*`` allows every image that starts with the rest of it; any other
    entry allows exactly that image.
    """
    if image == config.trainer_image:
        return True
    return any(image.startswith(entry[:-1]) if entry.endswith("*") else image == entry
               for entry in config.trainer_allowed_images)


def uris_of(spec: JobSpec) -> list[tuple[str, str]]:
    """Every (field, URI) the trainer reads or writes, the field in the resource's spelling."""
    found = [("baseModel.uri", spec.base_model.uri if spec.base_model else None),
             ("output.uri", spec.output.uri if spec.output else None)]
    if spec.base_model is not None:
        found += [("baseModel.config", spec.base_model.config), ("baseModel.components", spec.base_model.components)]
    dataset = spec.dataset
    if dataset is not None:
        found.append(("dataset.uri", dataset.uri))
        if dataset.regularization is not None:
            found.append(("dataset.regularization.uri", dataset.regularization.uri))
        if dataset.auto_caption is not None:
            found.append(("dataset.autoCaption.model", dataset.auto_caption.model))
    return [(field, uri) for field, uri in found if uri]


def file_uri_allowed(uri: str, root: str) -> bool:
    """Whether a file:// `uri` lies under `root` once decoded and normalized (``%2e%2e`` too)."""
    if not root:
        return False
    path = posixpath.normpath(unquote(uri[len("file://"):]))
    return path == root or path.startswith(root.rstrip("/") + "/")


def refusal(spec: JobSpec, config: OperatorConfig) -> tuple[Reason, str] | None:
    """The first value of a resolved spec the platform does not allow: (NotAllowed, message), or None.

    Args:
        spec: The resolved spec (its template's values included).
        config: The operator configuration, which holds the platform's lists.
    """
    refused = first_refused_field(spec, config)
    return (Reason.NOT_ALLOWED, str(refused)) if refused is not None else None


def first_refused_field(spec: JobSpec, config: OperatorConfig) -> SpecError | None:
    """The first field of `spec` whose value the platform does not allow, as a SpecError naming it."""
    if spec.queue_name and not config.kueue_enabled:
        return SpecError("queueName", f"{spec.queue_name!r}: this operator does not hand jobs to Kueue "
                         f"({config.env_var('kueue_enabled')}, chart value kueue.enabled); leave queueName unset "
                         "for the operator's own queue")
    image = spec.placement.image if spec.placement else None
    if image and not image_allowed(image, config):
        return SpecError("placement.image", f"{image!r} is not an allowed trainer image: the platform allows "
                         f"{config.trainer_image} and {config.env_var('trainer_allowed_images')} "
                         "(chart value trainer.allowedImages); leave placement.image unset for the default")
    for field, uri in uris_of(spec):
        if not uri.startswith("file://") or file_uri_allowed(uri, config.file_uri_root):
            continue
        if not config.file_uri_root:
            return SpecError(field, f"{uri}: file:// URIs are for local runs (lora-train); a cluster job reads "
                             f"s3:// or hf:// (the platform may allow a folder: {config.env_var('file_uri_root')}, "
                             "chart value trainer.fileUriRoot)")
        return SpecError(field, f"{uri}: a file:// URI must lie under {config.file_uri_root}, "
                         "the folder the platform allows")
    return None


def job_target(spec: JobSpec, config: OperatorConfig) -> Target:
    """The checked endpoint of a job: spec.storage.endpoint / secure over the operator's settings.

    Raises:
        EndpointError: spec.storage.endpoint is malformed or not one the platform allows.
    """
    storage = spec.storage
    secure = storage.secure if storage and storage.secure is not None else config.storage_secure
    return job_endpoint(storage.endpoint if storage else None, secure, config.storage_endpoint,
                        config.storage_allowed_endpoints)
