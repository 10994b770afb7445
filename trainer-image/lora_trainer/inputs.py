"""Getting a job's inputs to local folders: base model, dataset, regularization images, tagger.

``file://`` folders are used in place. ``s3://`` prefixes are downloaded; models go through
`fetch.fetch_model` into the node cache (``LORA_CACHE_DIR``), where later jobs reuse them, and
may also be ``hf://org/name``. In local mode ``--storage DIR`` stands in for the object store:
``s3://bucket/key`` means ``DIR/bucket/key``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lora_operator.api import BaseModelSpec
from lora_operator.api.contract import ENV_CACHE_DIR
from lora_operator.storage import InvalidUri, ObjectStore, StorageError, parse_uri, store_from_env

from .errors import ModelError, TransientError
from .fetch import UNUSED_COMPONENTS, HfSelection, fetch_model, split_hf
from .singlefile import PARTS_IN_FILE, SingleFileModel, open_single_file

READY_MARKER = ".lora-operator-complete"


@dataclass
class Resolver:
    """Turns URIs into stores and local folders.

    Attributes:
        env: Environment with the storage endpoint and credentials.
        storage_root: Local mode: the folder that stands in for s3:// buckets.
        cache_dir: Where downloaded models are kept between jobs.
    """

    env: Mapping[str, str]
    storage_root: Path | None = None
    cache_dir: Path | None = None

    def local_uri(self, uri: str) -> str:
        """`uri` as the store to open: s3:// mapped under `storage_root` in local mode."""
        if self.storage_root is not None and uri.startswith("s3://"):
            return (self.storage_root / uri[len("s3://"):]).resolve().as_uri() + ("/" if uri.endswith("/") else "")
        return uri

    def store(self, uri: str) -> ObjectStore:
        """The object store at a prefix URI."""
        return store_from_env(self.local_uri(uri), self.env)

    def folder(self, uri: str, dest: Path, field: str, error: type[Exception]) -> Path:
        """A local folder holding what is under `uri` (downloaded into `dest` when remote).

        Args:
            uri: file://, s3:// (or hf:// for models).
            dest: Download destination.
            field: The spec field, for messages.
            error: DatasetError or ModelError, raised when nothing is there.
        """
        uri = self.local_uri(uri)
        try:
            scheme, _, key = parse_uri(uri)
        except InvalidUri as err:
            raise error(f"{field}: {err}") from err
        if scheme == "hf":
            raise error(f"{field}: hf:// is for models; put the images in s3:// or file:// storage")
        if scheme == "file":
            path = Path(key)
            if not path.is_dir():
                raise error(f"{field}: {uri} is not a folder")
            return path
        if (dest / READY_MARKER).is_file():
            return dest
        try:
            files = store_from_env(uri if uri.endswith("/") else uri + "/", self.env).download_prefix("", dest)
        except StorageError as err:
            if err.transient:
                raise TransientError(f"{field}: {err}") from err
            raise error(f"{field}: {err}") from err
        if not files:
            raise error(f"{field}: nothing under {uri}")
        (dest / READY_MARKER).touch()
        return dest

    def model_path(self, uri: str, workdir: Path, field: str, *, revision: str | None = None,
                   selection: HfSelection | None = None) -> Path:
        """A model (folder or single file) on local disk, through the node cache (`fetch.fetch_model`)."""
        try:
            return fetch_model(self.local_uri(uri), self.cache_dir or workdir / "cache", env=self.env,
                               revision=revision, selection=selection)
        except ModelError as err:
            raise ModelError(f"{field}: {err}") from err

    def model_folder(self, uri: str, workdir: Path, field: str = "baseModel.uri", *,
                     selection: HfSelection | None = None) -> Path:
        """A model (base model, tagger) as a local folder, through the node cache (`fetch.fetch_model`)."""
        path = self.model_path(uri, workdir, field, selection=selection)
        if not path.is_dir():
            raise ModelError(f"{field}: {uri} is not a model folder")
        return path

    def base_model(self, base: BaseModelSpec, workdir: Path) -> Path | SingleFileModel:
        """The job's base model: a diffusers folder, or a checkpoint file checked against its family with
        the folders its parts' configs (baseModel.config) and missing parts (baseModel.components) come from.

        Raises:
            ModelError: naming the field or file at fault.
        """
        _, _, in_uri = split_hf(base.uri) if base.uri.startswith("hf://") else ("", "", "")
        if in_uri and base.revision and in_uri != base.revision:
            raise ModelError(f"baseModel.revision: {base.revision} differs from @{in_uri} in baseModel.uri")
        path = self.model_path(base.uri, workdir, "baseModel.uri", revision=base.revision)
        if path.is_dir():
            for name, value in (("config", base.config), ("components", base.components)):
                if value:  # a folder has its own parts: the field would be silently unused
                    raise ModelError(f"baseModel.{name} is for a single-file baseModel.uri; {base.uri} is a folder")
            return path
        config = components = None
        if base.config:
            config = self.model_folder(base.config, workdir, "baseModel.config", selection=HfSelection(weights=False))
        if base.components:
            skip = UNUSED_COMPONENTS | set(PARTS_IN_FILE.get(str(base.family), ()))  # the file holds those
            components = self.model_folder(base.components, workdir, "baseModel.components",
                                           selection=HfSelection(skip=frozenset(skip)))
        return open_single_file(path, str(base.family), config, components)


def default_cache_dir(env: Mapping[str, str]) -> Path | None:
    """LORA_CACHE_DIR when set."""
    value = env.get(ENV_CACHE_DIR) or os.environ.get(ENV_CACHE_DIR)
    return Path(value) if value else None
