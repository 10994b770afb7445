"""Tenant isolation, field by field, on the real ground (issue 26, "beyond these cases").

Two teams share one MinIO (the fixtures of test_tenant_storage: one MinIO user per team whose policy
reaches only its own bucket, an operator without storage keys of its own). For every field a tenant
controls, a team-A job points at team B's object, bucket, Secret, template or job, and:

- the job fails (or waits) with a message that is the same whether B's object exists or not, so
  A cannot learn what B has;
- B's bucket is byte-for-byte unchanged (every key and etag, read with the root key);
- the operator only ever used A's own Secret (a namespaced secretRef is refused by the API server,
  and the denial names the Secret of A's namespace whose keys were used).

Most cases fail before admission, so no pod is made; only output.uri needs the real trainer.
spec.storage.endpoint is covered by test_tenant_storage (an endpoint the platform does not allow
fails before anything connects to it). No case leaks existence today: the operator opens storage
with the job's own keys only, and MinIO answers AccessDenied to a key whose policy does not reach a
bucket before it looks whether the bucket or the object exists; NoSuchBucket reaches a user only for
buckets its own policy names.
"""

from __future__ import annotations

import uuid

import pytest
from test_tenant_storage import Tenants, bucket

from testground.ground import KubectlError

pytestmark = pytest.mark.cluster

ENDED = ("Failed", "Queued", "Running", "Succeeded")


@pytest.fixture(scope="module")
def tenants(ground, tmp_path_factory):
    t = Tenants(ground, tmp_path_factory.mktemp("isolation"))
    yield t
    t.stop()


def failure(status: dict) -> tuple[str, str]:
    """(phase, reason of the Failed condition) and the message of that condition."""
    failed = next((c for c in status.get("conditions") or () if c["type"] == "Failed"), {})
    return (status.get("phase"), failed.get("reason")), failed.get("message", "")


def with_uri(field: str, uri: str) -> dict:
    """The spec fields that put `uri` in `field` of an otherwise ordinary team-A job."""
    own = f"s3://{bucket('a')}"
    return {
        "dataset.uri": {"dataset": {"uri": uri}},
        "baseModel.uri": {"baseModel": {"family": "sd15", "uri": uri}},
        "dataset.regularization.uri": {"dataset": {"uri": f"{own}/datasets/shapes/", "regularization": {"uri": uri}}},
        "dataset.autoCaption.model": {"dataset": {"uri": f"{own}/datasets/shapes/", "autoCaption": {"model": uri}}},
    }[field]


# For each URI field: an object B has, a prefix B does not have, and a bucket nobody has.
URI_FIELDS = {
    "dataset.uri": "datasets/shapes/",
    "baseModel.uri": "models/tiny-sd15",
    "dataset.regularization.uri": "datasets/shapes/",
    "dataset.autoCaption.model": "models/tiny-sd15",
}


@pytest.mark.parametrize("field", list(URI_FIELDS))
def test_a_uri_field_naming_team_b_fails_alike_whether_or_not_b_has_it(tenants, field):
    before = tenants.objects("b")
    absent_bucket = f"tenant-{uuid.uuid4().hex[:8]}"
    uris = {"exists": f"s3://{bucket('b')}/{URI_FIELDS[field]}",
            "absent": f"s3://{bucket('b')}/absent-{uuid.uuid4().hex[:6]}/",
            "nobucket": f"s3://{absent_bucket}/{URI_FIELDS[field]}"}
    slug = field.replace(".", "-").lower()
    for case, uri in uris.items():
        tenants.apply("a", f"{slug}-{case}", **with_uri(field, uri))
    messages = {}
    for case, uri in uris.items():
        status = tenants.wait_phase("a", f"{slug}-{case}", ENDED, timeout=60)
        outcome, message = failure(status)
        assert outcome == ("Failed", "StorageAccessDenied"), (case, status)
        assert message.startswith(f"spec.{field}: ") and not status.get("attempts"), (case, status)
        # the URI is the job's own text; with it and its bucket masked nothing else may differ
        masked = message.replace(uri.rstrip("/"), "<uri>").replace(uri.split("/")[2], "<bucket>")
        messages[case] = masked
    assert messages["exists"] == messages["absent"] == messages["nobucket"], messages
    assert tenants.objects("b") == before


def test_a_secret_ref_cannot_reach_team_b_secret(tenants):
    """secretRef is a name in the job's own namespace: B's Secret cannot be named, and B's Secret's
    name in A's job means A's own Secret, whose keys B's bucket refuses."""
    before = tenants.objects("b")
    body = {"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
            "metadata": {"name": "ns-secret", "namespace": tenants.ns["a"]},
            "spec": {"type": "lora", "baseModel": {"family": "sd15", "uri": f"s3://{bucket('a')}/models/tiny-sd15"},
                     "dataset": {"uri": f"s3://{bucket('b')}/datasets/shapes/"},
                     "output": {"uri": f"s3://{bucket('a')}/out/"},
                     "storage": {"secretRef": f"{tenants.ns['b']}/lora-storage"}}}
    with pytest.raises(KubectlError, match="secretRef"):
        tenants.ground.apply(body)
    assert tenants.job("a", "ns-secret") is None
    tenants.apply("a", "b-secret-name", storage={"secretRef": "lora-storage"},
                  dataset={"uri": f"s3://{bucket('b')}/datasets/shapes/"})
    outcome, message = failure(tenants.wait_phase("a", "b-secret-name", ENDED, timeout=60))
    assert outcome == ("Failed", "StorageAccessDenied"), message
    assert message.endswith(f"(with the keys of Secret {tenants.ns['a']}/lora-storage)"), message
    assert tenants.objects("b") == before


def test_a_template_of_team_b_is_not_found_like_one_that_does_not_exist(tenants):
    tenants.ground.apply({"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingTemplate",
                          "metadata": {"name": "b-private", "namespace": tenants.ns["b"]},
                          "spec": {"output": {"uri": f"s3://{bucket('b')}/out/"}}})
    missing = f"nothing-{uuid.uuid4().hex[:6]}"
    tenants.apply("a", "b-template", template="b-private")
    tenants.apply("a", "no-template", template=missing)
    found = {}
    for name, template in (("b-template", "b-private"), ("no-template", missing)):
        status = tenants.wait_phase("a", name, ENDED, timeout=60)
        outcome, message = failure(status)
        assert outcome == ("Failed", "TemplateNotFound"), status
        found[name] = message.replace(repr(template), "<name>")
    assert found["b-template"] == found["no-template"], found


def test_a_job_named_like_team_b_job_has_its_own_prefix_and_leaves_b_job_alone(tenants):
    """Same name, same output bucket layout: the prefix is <ns>/<name>/<uid>, so A's never is B's."""
    tenants.apply("b", "twin", placement={"gpuType": "none-such"})
    b_before = tenants.wait_phase("b", "twin", ENDED, timeout=60)
    b_job = tenants.job("b", "twin")
    tenants.apply("a", "twin", placement={"gpuType": "none-such"})
    a_status = tenants.wait_phase("a", "twin", ENDED, timeout=60)
    a_uid = tenants.job("a", "twin")["metadata"]["uid"]
    assert a_status["phase"] == "Queued", a_status
    assert a_status["output"]["prefix"] == f"s3://{bucket('a')}/out/{tenants.ns['a']}/twin/{a_uid}/"
    assert tenants.ns["b"] not in str(a_status) and b_job["metadata"]["uid"] not in str(a_status)
    after = tenants.job("b", "twin")  # B's job: its own spec, UID and prefix; nothing of A's in it
    assert (after["metadata"]["uid"], after["spec"]) == (b_job["metadata"]["uid"], b_job["spec"])
    assert after["status"]["output"] == b_before["output"] and tenants.ns["a"] not in str(after["status"])


def test_output_in_team_b_fails_alike_and_b_is_untouched(tenants):
    """output.uri is written by the trainer: the one case that takes a (kwok) node."""
    before = tenants.objects("b")
    uris = {"b-out-exists": f"s3://{bucket('b')}/datasets/",
            "b-out-nobucket": f"s3://tenant-{uuid.uuid4().hex[:8]}/out/"}
    for name, uri in uris.items():
        tenants.apply("a", name, output={"uri": uri}, training={"steps": 2, "epochs": 1})
    messages = {}
    for name in uris:
        status = tenants.wait_phase("a", name, ("Succeeded", "Failed"))
        outcome, message = failure(status)
        assert outcome == ("Failed", "InputError"), (status, tenants.operator.tail())
        assert "spec.output.uri" in message and len(status["attempts"]) == 1, status
        # the job's own prefix (<uri>/<ns>/<name>/<uid>/) masked: nothing else may differ
        messages[name] = message.replace(status["output"]["prefix"], "<prefix>/")
    assert messages["b-out-exists"] == messages["b-out-nobucket"], messages
    assert tenants.objects("b") == before


def test_selection_and_deletion_of_a_job_with_output_in_team_b_leave_b_untouched(tenants):
    """A cancelled job may select a checkpoint and delete the others: it acts on its own
    checkpoints only, so aimed at B's bucket it answers alike for B's prefix and no bucket."""
    before = tenants.objects("b")
    uris = {"sel-b-exists": f"s3://{bucket('b')}/datasets/",
            "sel-b-nobucket": f"s3://tenant-{uuid.uuid4().hex[:8]}/out/"}
    messages = {}
    for name, uri in uris.items():
        tenants.apply("a", name, output={"uri": uri}, placement={"gpuType": "none-such"})
        tenants.wait_phase("a", name, ENDED, timeout=60)
        tenants.ground.kubectl("patch", "ltj", name, "-n", tenants.ns["a"], "--type=merge", "-p",
                               '{"spec":{"cancel":true,"selectedCheckpoint":"epoch-0001","deleteUnselected":true}}')
        tenants.ground.wait_for(lambda name=name: "selectedCheckpoint" in str(tenants.status("a", name).get("message")),
                                timeout=30, what=f"{name}: the selection answered")
        status = tenants.status("a", name)
        assert status["phase"] == "Cancelled" and not (status.get("output") or {}).get("checkpoint"), status
        assert "AccessDenied" in status["message"], status
        messages[name] = status["message"].replace(status["output"]["prefix"], "<prefix>/")
    assert messages["sel-b-exists"] == messages["sel-b-nobucket"], messages
    assert tenants.objects("b") == before
