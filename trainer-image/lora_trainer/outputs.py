"""The job's output prefix: files are written locally first, then uploaded under the same path.

Storage failures that outlast the store's own retries become `TransientError`, so the
operator retries the pod (which resumes from the last saved state). A refusal (AccessDenied,
a missing bucket) is the job's input error: retrying on a GPU node cannot help, so it ends the
run at once as a `ConfigError` naming spec.output.uri.
"""

from __future__ import annotations

from pathlib import Path

from lora_operator.storage import ObjectStore, StorageError

from .errors import ConfigError, TrainerError, TransientError

LOCAL_UID = "local"
"""The job UID of a local run (`lora-train run job.yaml` without metadata.uid)."""


class Outputs:
    """A local work folder mirrored to ``<output.uri>/<namespace>/<job>/<job UID>/``.

    Args:
        store: The object store opened at the job prefix.
        workdir: Local folder files are written to before upload.
        job_uid: The job's UID, recorded in progress.json, manifest.json and the resume state.
        job_name: The job's name: the title the adapter files carry (kohya ss_output_name,
            modelspec.title), which UIs show in their LoRA lists.
    """

    def __init__(self, store: ObjectStore, workdir: Path, job_uid: str = LOCAL_UID, job_name: str | None = None):
        self.store = store
        self.job_uid = job_uid
        self.job_name = job_name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def local(self, rel: str) -> Path:
        """The local path of `rel` (parent folders created)."""
        path = self.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, rel: str) -> str:
        """Upload the local file `rel` to the same key; returns `rel`."""
        try:
            self.store.put_file(rel, self.local(rel))
        except StorageError as err:
            raise _failure(err) from err
        return rel

    def publish_bytes(self, rel: str, data: bytes) -> None:
        """Write `data` to key `rel` (and to the local copy)."""
        self.local(rel).write_bytes(data)
        try:
            self.store.put_bytes(rel, data)
        except StorageError as err:
            raise _failure(err) from err

    def fetch_prefix(self, prefix: str, dest: Path) -> list[Path]:
        """Download every object under `prefix` to `dest` (resume state)."""
        try:
            return self.store.download_prefix(prefix, dest)
        except StorageError as err:
            raise _failure(err) from err

    def uri(self, rel: str) -> str:
        """The full URI of key `rel`."""
        return self.store.uri_of(rel)


def _failure(err: StorageError) -> TrainerError:
    if err.transient:
        return TransientError(f"storage: {err}")
    return ConfigError(f"spec.output.uri: {err}")
