"""Which Secrets the operator reads for a job: the platform's list decides before any read, and a
403 on a listed name (RBAC still being set up) is an error that clears up, not the job's fault."""

from __future__ import annotations

import pytest

from lora_operator.api import resolve_spec
from lora_operator.config import OperatorConfig
from lora_operator.job_storage import JobStorage, SecretUnusable
from lora_operator.k8s import Forbidden, transient


class Secrets:
    def __init__(self, forbidden: bool = False):
        self.reads: list[tuple[str, str]] = []
        self.forbidden = forbidden

    def get_secret_data(self, namespace: str, name: str):
        self.reads.append((namespace, name))
        if self.forbidden:
            raise Forbidden(f"Secret {namespace}/{name}: 403 Forbidden")
        return {"accessKey": "YQ==", "secretKey": "cw=="}


def spec(secret_ref: str | None = None):
    body = {"baseModel": {"family": "sd15", "uri": "s3://models/m"}, "dataset": {"uri": "s3://datasets/d/"},
            "output": {"uri": "s3://loras/"}}
    if secret_ref:
        body["storage"] = {"secretRef": secret_ref}
    return resolve_spec(body)


def test_allowed_secret_names_come_from_a_comma_separated_variable():
    assert OperatorConfig.from_env({}).storage_allowed_secret_names is None
    only_default = OperatorConfig.from_env({"LORA_STORAGE_ALLOWED_SECRET_NAMES": "lora-storage"})
    assert only_default.storage_allowed_secret_names == ("lora-storage",)
    config = OperatorConfig.from_env({"LORA_STORAGE_ALLOWED_SECRET_NAMES": "team-keys, other-keys"})
    assert config.storage_allowed_secret_names == ("team-keys", "other-keys")


def test_a_secret_off_the_platforms_list_fails_without_a_read():
    kube = Secrets()
    storage = JobStorage(kube, OperatorConfig.from_env({"LORA_STORAGE_ALLOWED_SECRET_NAMES": "team-keys"}))
    with pytest.raises(SecretUnusable, match=r"spec.storage.secretRef: .*team-b/stolen.*lora-storage, team-keys"):
        storage.access("team-b", spec("stolen"))
    assert kube.reads == []
    assert storage.access("team-b", spec("team-keys")).access_key == "a"
    assert storage.access("team-b", spec()).access_key == "a"  # the default Secret is always allowed
    assert kube.reads == [("team-b", "team-keys"), ("team-b", "lora-storage")]


def test_the_refusal_names_each_allowed_secret_once_as_the_chart_sets_them():
    """The chart's list holds storage.existingSecret too; the message names it once."""
    config = OperatorConfig.from_env({"LORA_STORAGE_ALLOWED_SECRET_NAMES": "lora-storage,team-keys"})
    with pytest.raises(SecretUnusable, match=r"allows \(lora-storage, team-keys; chart values"):
        JobStorage(Secrets(), config).access("team-b", spec("stolen"))


def test_without_a_list_any_name_is_read_and_rbac_decides():
    kube = Secrets()
    JobStorage(kube, OperatorConfig.from_env({})).access("team-b", spec("anything"))
    assert kube.reads == [("team-b", "anything")]


def test_a_403_on_an_allowed_name_is_transient():
    storage = JobStorage(Secrets(forbidden=True), OperatorConfig.from_env({}))
    with pytest.raises(Forbidden, match="403") as err:
        storage.access("team-a", spec())
    assert transient(err.value)
