"""Pure logic behind the operator's robustness against specs the API server accepts: the
Kubernetes name and label rules of the models, the status a job gets when a check is deferred or
no node matches it, which errors are retried, and a deadline too large for a timedelta."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes.client.exceptions import ApiException

from lora_operator.api import ConditionType, JobStatus, Phase, Reason, SpecError, names, resolve_spec
from lora_operator.api.spec import Placement, Storage, Toleration
from lora_operator.crdgen.rules import name_rules
from lora_operator.k8s import Refused, describe_error, transient
from lora_operator.lifecycle import Lifecycle, seconds_past
from lora_operator.scheduling import GpuNode, QueuedJob, Taint, unmatched
from lora_operator.status_transitions import admitted, deferred, derive_phase, find_condition, queued, waiting_for_node
from lora_operator.storage import StorageError
from lora_operator.views import JobView

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BAD_SECRET_REFS = ["my-secret/", "ns/name", "..", ".", "%2e%2e", "Capital", "-lead", "trail-", "a b", "x" * 254]


@pytest.mark.parametrize("ref", BAD_SECRET_REFS)
def test_a_secret_ref_the_pod_api_refuses_is_refused_naming_the_field(ref):
    spec = {"baseModel": {"family": "sd15", "uri": "s3://m/x"}, "dataset": {"uri": "s3://d/"},
            "output": {"uri": "s3://o/"}, "storage": {"secretRef": ref}}
    with pytest.raises(SpecError, match=r"spec\.storage\.secretRef"):
        resolve_spec(spec)


@pytest.mark.parametrize("ref", ["lora-storage", "a", "team-a.creds", "0abc", "a" * 253])
def test_valid_secret_names_pass(ref):
    assert Storage(secret_ref=ref).secret_ref == ref


@pytest.mark.parametrize("key, ok", [
    ("gpu", True), ("example.com/gpu", True), ("nvidia.com/gpu.product", True), ("a_b.c-d", True),
    ("with space", False), ("/x", False), ("a/b/c", False), ("x" * 64, False), ("UPPER.com/x", False),
    ("-x", False), ("x" * 254 + "/y", False), ("x" * 63, True), ("a" * 253 + "/" + "b" * 63, True),
])
def test_label_keys_follow_the_kubernetes_rule(key, ok):
    assert names.is_label_key(key) is ok


@pytest.mark.parametrize("value, ok", [("", True), ("h100", True), ("A_b.c-1", True), ("x" * 63, True),
                                       ("x" * 64, False), ("a b", False), ("-a", False), ("a/b", False)])
def test_label_values_follow_the_kubernetes_rule(value, ok):
    assert names.is_label_value(value) is ok


@pytest.mark.parametrize("toleration", [
    {"key": "bad key", "operator": "Exists"},
    {"key": "gpu", "operator": "Exists", "value": "x"},
    {"operator": "Equal", "value": "x"},
    {"key": "gpu", "value": "not a label value"},
])
def test_tolerations_the_pod_api_refuses_are_refused(toleration):
    with pytest.raises(ValueError):
        Toleration.model_validate(toleration)


def test_node_selector_and_gpu_type_take_labels_only():
    Placement.model_validate({"nodeSelector": {"example.com/zone": "a"}, "gpuType": "h100"})
    for bad in ({"nodeSelector": {"bad key": "a"}}, {"nodeSelector": {"k": "bad value"}}, {"gpuType": "h 100"}):
        with pytest.raises(ValueError):
            Placement.model_validate(bad)


def test_the_crd_rules_use_the_models_regular_expressions():
    # The CEL rules and the models share one definition of each rule (api.names): RE2 reads them alike.
    rules = name_rules()
    text = repr(rules)
    for expression in (names.DNS1123_SUBDOMAIN, names.LABEL_KEY, names.LABEL_VALUE):
        assert expression in text.replace("\\\\", "\\")
        re.compile(expression)
    assert set(rules) == {"Storage", "Placement", "Toleration", "JobSpec"}


def test_a_deferred_check_leaves_the_job_pending_with_the_reason_until_it_passes():
    status = deferred(JobStatus(), message="403 Forbidden: secrets is forbidden", now=T0)
    assert status.phase is Phase.PENDING and status.message.startswith("403")
    resolved = find_condition(status.conditions, ConditionType.RESOLVED)
    assert (resolved.status, resolved.reason) == ("False", Reason.CHECK_DEFERRED)
    later = queued(status, position=None, now=T0 + timedelta(seconds=5))
    assert later.phase is Phase.QUEUED
    assert find_condition(later.conditions, ConditionType.RESOLVED).status == "True"
    assert later.message == "spec resolved; waiting for a free GPU node"
    assert queued(JobStatus(), position=None, now=T0).conditions[-1].type == ConditionType.ADMITTED  # no noise


def test_no_matching_node_is_said_and_unsaid():
    waiting = queued(JobStatus(), position=1, now=T0)
    told = waiting_for_node(waiting, matched=False, message="no GPU node matches", now=T0)
    admitted_ = find_condition(told.conditions, ConditionType.ADMITTED)
    assert (admitted_.reason, told.phase) == (Reason.NO_MATCHING_NODE, Phase.QUEUED)
    assert waiting_for_node(told, matched=False, message="again", now=T0) is told
    back = waiting_for_node(told, matched=True, message="a node joined", now=T0)
    assert find_condition(back.conditions, ConditionType.ADMITTED).reason == Reason.QUEUED
    running = admitted(waiting, node="n", gpus=1, pod="p", attempt=1, now=T0)
    assert waiting_for_node(running, matched=False, message="x", now=T0) is running


def test_unmatched_jobs_are_those_no_node_could_ever_take():
    nodes = [GpuNode("a", True, True, 8, {"gpu": "h100"}), GpuNode("b", True, False, 8, {"gpu": "a100"},
                                                                    (Taint("dedicated", "x", "NoSchedule"),))]
    jobs = [QueuedJob("h100", "ns", "j1", 0, T0, gpu_type="h100"),
            QueuedJob("h999", "ns", "j2", 0, T0, gpu_type="h999"),
            QueuedJob("tainted", "ns", "j3", 0, T0, gpu_type="a100"),
            QueuedJob("zone", "ns", "j4", 0, T0, node_selector={"zone": "x"})]
    assert unmatched(jobs, nodes, gpu_type_label="gpu") == {"h999", "tainted", "zone"}
    assert unmatched(jobs, [], gpu_type_label="gpu") == {"h100", "h999", "tainted", "zone"}


def test_a_cordoned_or_not_ready_node_still_matches_the_jobs_it_could_take():
    """Kubernetes' own state taints (a cordon, a node not ready) take a node out for a while; the
    jobs that fit it wait as Queued, not NoMatchingNode (a write and a Warning each, then back)."""
    held = [GpuNode("a", False, False, 8, {"gpu": "h100"},
                    (Taint("node.kubernetes.io/unschedulable", None, "NoSchedule"),
                     Taint("node.kubernetes.io/not-ready", None, "NoExecute")))]
    jobs = [QueuedJob("h100", "ns", "j1", 0, T0, gpu_type="h100"),
            QueuedJob("a100", "ns", "j2", 0, T0, gpu_type="a100")]
    assert unmatched(jobs, held, gpu_type_label="gpu") == {"a100"}
    dedicated = [GpuNode("a", True, True, 8, {"gpu": "h100"}, (Taint("dedicated", "x", "NoSchedule"),))]
    assert unmatched(jobs, dedicated, gpu_type_label="gpu") == {"h100", "a100"}  # a taint of the admin's own counts


def test_api_and_storage_errors_are_retried_other_errors_are_not():
    assert transient(ApiException(status=403, reason="Forbidden"))
    assert transient(ApiException(status=503, reason="Service Unavailable"))
    assert transient(StorageError("s3://x: timed out", uri="s3://x", transient=True))
    assert not transient(StorageError("s3://x: access denied", uri="s3://x"))
    assert transient(ConnectionResetError())
    assert not transient(ApiException(status=422, reason="Unprocessable Entity"))
    assert not transient(ValueError("invalid port"))
    assert not transient(OverflowError("date value out of range"))
    assert not transient(Refused("refused"))


def test_an_api_error_is_described_by_the_servers_message():
    err = ApiException(status=422, reason="Unprocessable Entity")
    err.body = '{"kind":"Status","message":"Pod \\"p\\" is invalid: spec.volumes[0].secret.secretName: Invalid"}'
    assert describe_error(err) == ('422 Unprocessable Entity: Pod "p" is invalid: '
                                   'spec.volumes[0].secret.secretName: Invalid')
    assert describe_error(ValueError("invalid port")) == "ValueError: invalid port"


def test_a_deadline_of_2_63_seconds_is_never_past():
    body = {"metadata": {"namespace": "ns", "name": "j", "uid": "u"}, "spec": {"activeDeadlineSeconds": 2**63 - 1},
            "status": {"admittedAt": "2026-01-01T00:00:00Z"}}
    lifecycle = Lifecycle(kube=None, config=None, metrics=None, emit=None, node_exists=bool)  # type: ignore[arg-type]
    assert not lifecycle.past_deadline(JobView.of(body), T0 + timedelta(days=3650))
    body["spec"]["activeDeadlineSeconds"] = 60
    assert lifecycle.past_deadline(JobView.of(body), T0 + timedelta(seconds=61))


def test_the_phase_follows_the_conditions_not_a_hand_edit():
    waiting = queued(JobStatus(), position=1, now=T0)
    patched = waiting.model_copy(update={"phase": Phase.SUCCEEDED})
    assert derive_phase(patched.conditions) is Phase.QUEUED


def test_a_ttl_of_2_63_seconds_is_never_reached():
    # found by the fuzzer: timedelta(seconds=2**63-1) overflowed in the TTL check of every finished job
    assert not seconds_past("2026-01-01T00:00:00Z", T0 + timedelta(days=3650), 2**63 - 1)
    assert seconds_past("2026-01-01T00:00:00Z", T0, 0) and not seconds_past(None, T0, 0)
    assert not seconds_past("2026-01-01T00:00:00Z", T0 + timedelta(seconds=5), 5, strictly=True)
