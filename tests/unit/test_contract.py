"""The contract between the images: what the operator writes into a trainer pod is what the trainer
reads back, and both sides name the prefix layout the same way."""

from __future__ import annotations

import json

import pytest

from lora_operator.api import contract, resolve_spec
from lora_operator.api.contract import TrainerEnv
from lora_operator.config import OperatorConfig
from lora_operator.render import build_trainer_pod
from lora_operator.storage import store_from_env
from lora_operator.views import trainer_pod

SPEC = resolve_spec({"baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"},
                     "dataset": {"uri": "s3://datasets/corgi/"}, "output": {"uri": "s3://loras/team-a/"}})
CONFIG = OperatorConfig(storage_endpoint="minio.lora:9000")


def pod(attempt: int = 2, resume: bool = True) -> dict:
    return build_trainer_pod(job_name="corgi", namespace="team-a", job_uid="uid-1", spec=SPEC, node="gpu-1", gpus=8,
                             attempt=attempt, resume=resume, config=CONFIG)


def plain_env(manifest: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in manifest["spec"]["containers"][0]["env"] if "value" in e}


@pytest.mark.parametrize(("attempt", "resume"), [(1, False), (2, True)])
def test_the_trainer_reads_back_what_the_operator_wrote(attempt, resume):
    manifest = pod(attempt, resume)
    env = plain_env(manifest)
    read = TrainerEnv.from_env(env)
    assert read == TrainerEnv(output_prefix="s3://loras/team-a/team-a/corgi/uid-1/", job_uid="uid-1", job_name="corgi",
                              job_namespace="team-a", attempt=attempt, resume=resume, cache_dir="/cache",
                              cache_budget_bytes=200 << 30)
    assert read.output_prefix == contract.output_prefix(SPEC, "team-a", "corgi", "uid-1")
    args = manifest["spec"]["containers"][0]["args"]
    assert json.loads(env[args[args.index("--spec-env") + 1]]) == SPEC.to_resource()
    store = store_from_env(read.output_prefix, env)  # the storage client finds the endpoint the operator chose
    assert store.uri == read.output_prefix and store.client._base_url.host == "minio.lora:9000"


def test_the_wire_format_of_the_job_variables():
    env = TrainerEnv(output_prefix="s3://b/p/ns/j/u/", job_uid="u", job_name="j", attempt=3, resume=True).to_env()
    assert env == {"LORA_JOB_NAME": "j", "LORA_JOB_UID": "u", "LORA_ATTEMPT": "3", "LORA_RESUME": "1",
                   "LORA_OUTPUT_PREFIX": "s3://b/p/ns/j/u/"}
    assert TrainerEnv.from_env({"LORA_RESUME": "yes"}).resume is False  # only "1" resumes, as before
    assert TrainerEnv.from_env({}) == TrainerEnv()


@pytest.mark.parametrize(("variable", "value"), [("LORA_ATTEMPT", "two"), ("LORA_ATTEMPT", "0"),
                                                 ("LORA_PROGRESS_INTERVAL", "-1")])
def test_a_bad_job_variable_is_named(variable, value):
    with pytest.raises(ValueError, match=f"^{variable}: "):
        TrainerEnv.from_env({variable: value})


def test_the_operator_finds_its_pods_by_the_labels_it_gave_them():
    manifest = pod()
    labels = manifest["metadata"]["labels"]
    selector = dict(part.split("=") for part in contract.trainer_selector("uid-1").split(","))
    assert selector.items() <= labels.items()
    assert trainer_pod(manifest).job_uid == "uid-1"
    assert labels[contract.LABEL_ATTEMPT] == "2"


def test_the_prefix_layout():
    assert contract.checkpoint_key(contract.checkpoint_name(7)) == "checkpoints/epoch-0007"
    assert contract.previews_key(7) == "previews/epoch-0007"
    assert contract.attempt_log_key(2) == "logs/attempt-2.txt"
    assert (contract.PROGRESS_KEY, contract.MANIFEST_KEY, contract.FINAL_PREFIX) == (
        "progress.json", "manifest.json", "final/")


def test_the_caption_cache_is_shared_by_the_jobs_of_a_namespace():
    from lora_operator.api.contract import caption_cache_prefix

    assert caption_cache_prefix("s3://b/p/team/job-a/0f1e/") == "s3://b/p/team/.caption-cache/"
    assert caption_cache_prefix("s3://b/p/team/job-b/9a8b/") == "s3://b/p/team/.caption-cache/"
    with pytest.raises(ValueError, match="not a job output prefix"):
        caption_cache_prefix("s3:")
