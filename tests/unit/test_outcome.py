"""Classifying ended trainer pods and deciding the next step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lora_operator.api import Attempt, ExitCode, JobStatus, Reason, RetryPolicy
from lora_operator.outcome import (
    ActionKind,
    Outcome,
    OutcomeKind,
    PodSnapshot,
    backoff_delay,
    classify,
    next_action,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_retries=3, backoff_seconds=30, max_backoff_seconds=600)


def kind_of(**snapshot) -> OutcomeKind:
    return classify(PodSnapshot(**snapshot), NOW, unschedulable_timeout=300).kind


def test_exit_zero_succeeds():
    outcome = classify(
        PodSnapshot("Succeeded", exit_code=0, terminated_reason="Completed"), NOW, unschedulable_timeout=1
    )
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.reason is Reason.TRAINING_COMPLETE


@pytest.mark.parametrize("reason", ["Evicted", "Preempting", "NodeLost", "UnexpectedAdmissionError", "Shutdown"])
def test_cluster_caused_failures_are_disruptions(reason):
    assert kind_of(phase="Failed", status_reason=reason, exit_code=137) is OutcomeKind.DISRUPTED


def test_disruption_target_condition_is_a_disruption():
    assert kind_of(phase="Failed", exit_code=143, disruption_target=True) is OutcomeKind.DISRUPTED


def test_lost_container_status_is_a_disruption():
    assert kind_of(phase="Failed", exit_code=137, terminated_reason="ContainerStatusUnknown") is OutcomeKind.DISRUPTED


def test_deleted_node_or_vanished_pod_is_a_disruption_even_while_running():
    assert kind_of(phase="Running", node_deleted=True) is OutcomeKind.DISRUPTED
    assert kind_of(phase="Pending", missing=True) is OutcomeKind.DISRUPTED


def test_disrupted_pod_still_terminating_is_waited_for():
    assert kind_of(phase="Running", disruption_target=True) is OutcomeKind.STILL_RUNNING


def test_oom_kill_is_a_counted_crash_even_with_a_disruption_target():
    outcome = classify(
        PodSnapshot("Failed", exit_code=137, terminated_reason="OOMKilled", disruption_target=True),
        NOW,
        unschedulable_timeout=1,
    )
    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.counted
    assert "OOMKilled" in outcome.message


@pytest.mark.parametrize("code", [ExitCode.BAD_CONFIG, ExitCode.BAD_DATASET, ExitCode.BAD_MODEL, ExitCode.NAN_LOSS])
def test_input_errors_name_the_exit_code_and_carry_the_trainers_words(code):
    snapshot = PodSnapshot("Failed", exit_code=int(code), termination_message="dataset.uri: no images\n")
    outcome = classify(snapshot, NOW, unschedulable_timeout=1)
    assert outcome.kind is OutcomeKind.INPUT_ERROR
    assert outcome.reason is Reason.INPUT_ERROR
    assert code.name in outcome.message
    assert outcome.message.endswith("dataset.uri: no images")


def test_transient_exit_is_counted_and_other_codes_are_crashes():
    assert kind_of(phase="Failed", exit_code=75) is OutcomeKind.TRANSIENT
    assert classify(PodSnapshot("Failed", exit_code=75), NOW, unschedulable_timeout=1).counted
    assert kind_of(phase="Failed", exit_code=1, terminated_reason="Error") is OutcomeKind.CRASHED
    assert kind_of(phase="Failed", exit_code=139) is OutcomeKind.CRASHED
    assert kind_of(phase="Failed") is OutcomeKind.CRASHED


def test_running_and_young_pending_pods_are_still_running():
    assert kind_of(phase="Running") is OutcomeKind.STILL_RUNNING
    assert kind_of(phase="Unknown") is OutcomeKind.STILL_RUNNING
    recent = NOW - timedelta(seconds=60)
    assert kind_of(phase="Pending", unschedulable_since=recent) is OutcomeKind.STILL_RUNNING
    assert (
        kind_of(phase="Pending", waiting_reason="ImagePullBackOff", waiting_since=recent) is OutcomeKind.STILL_RUNNING
    )


def test_unschedulable_or_unpullable_past_the_timeout_is_stuck():
    old = NOW - timedelta(seconds=301)
    assert kind_of(phase="Pending", unschedulable_since=old) is OutcomeKind.STUCK
    outcome = classify(
        PodSnapshot("Pending", waiting_reason="ErrImagePull", waiting_message="no such image", waiting_since=old),
        NOW,
        unschedulable_timeout=300,
    )
    assert outcome.kind is OutcomeKind.STUCK
    assert outcome.reason is Reason.UNSCHEDULABLE
    assert "ErrImagePull: no such image" in outcome.message
    assert kind_of(phase="Pending", waiting_reason="ContainerCreating", waiting_since=old) is OutcomeKind.STILL_RUNNING


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(n, POLICY) for n in range(0, 8)] == [0, 30, 60, 120, 240, 480, 600, 600]
    assert backoff_delay(10_000, POLICY) == 600


def status(retries=0, attempt=1, attempts=()) -> JobStatus:
    return JobStatus(retries=retries, attempt=attempt, attempts=list(attempts))


def crash(message="UNEXPECTED (1)") -> Outcome:
    return Outcome(OutcomeKind.CRASHED, Reason.CRASHED, message, 1)


def test_crash_requeues_with_backoff():
    action = next_action(crash(), status(retries=1), POLICY, NOW)
    assert action.kind is ActionKind.REQUEUE
    assert action.reason is Reason.BACKOFF
    assert action.not_before == NOW + timedelta(seconds=60)
    assert "retry 2/3" in action.message


def test_crash_past_max_retries_fails():
    action = next_action(crash(), status(retries=3), POLICY, NOW)
    assert action.kind is ActionKind.FAIL
    assert action.reason is Reason.RETRIES_EXHAUSTED
    assert "maxRetries is 3" in action.message


def test_zero_max_retries_fails_on_the_first_crash():
    assert next_action(crash(), status(), RetryPolicy(max_retries=0), NOW).kind is ActionKind.FAIL


def test_disruption_requeues_at_once_whatever_the_retries():
    outcome = Outcome(OutcomeKind.DISRUPTED, Reason.DISRUPTED, "pod disrupted: Evicted")
    action = next_action(outcome, status(retries=3), POLICY, NOW)
    assert action.kind is ActionKind.REQUEUE
    assert action.not_before is None
    assert action.reason is Reason.DISRUPTED


def test_input_error_fails_at_once():
    outcome = Outcome(OutcomeKind.INPUT_ERROR, Reason.INPUT_ERROR, "BAD_DATASET (65): no images", 65)
    action = next_action(outcome, status(), POLICY, NOW)
    assert (action.kind, action.reason) == (ActionKind.FAIL, Reason.INPUT_ERROR)
    assert "BAD_DATASET" in action.message


def test_stuck_requeues_once_then_fails():
    outcome = Outcome(OutcomeKind.STUCK, Reason.UNSCHEDULABLE, "unschedulable for 300s")
    current = Attempt(number=1, pod="j-a1")
    first = next_action(outcome, status(attempts=[current]), POLICY, NOW)
    assert (first.kind, first.not_before) == (ActionKind.REQUEUE, None)
    earlier = Attempt(number=1, pod="j-a1", reason=Reason.UNSCHEDULABLE, end_time="t", counted=False)
    second = next_action(outcome, status(attempt=2, attempts=[earlier, Attempt(number=2, pod="j-a2")]), POLICY, NOW)
    assert (second.kind, second.reason) == (ActionKind.FAIL, Reason.UNSCHEDULABLE)


def test_success_and_still_running():
    assert next_action(Outcome(OutcomeKind.SUCCEEDED, Reason.TRAINING_COMPLETE), status(), POLICY, NOW).kind is (
        ActionKind.SUCCEED
    )
    assert next_action(Outcome(OutcomeKind.STILL_RUNNING), status(), POLICY, NOW).kind is ActionKind.NONE


LOG_TAIL = ("ocessing 3 images\nINFO lora_trainer.loop: model loaded in 2.1s\n"
            "WARNING lora_trainer.data: gray.png converted to RGB\n")


@pytest.mark.parametrize(("tail", "error"), [
    (LOG_TAIL + "error: dataset.uri: no usable image: broken0.png (not an image)\n",
     "dataset.uri: no usable image: broken0.png (not an image)"),
    (LOG_TAIL + "error: dataset.uri: no usable image:\n  broken0.png: truncated\n  broken1.jpg: truncated\n",
     "dataset.uri: no usable image:\n  broken0.png: truncated\n  broken1.jpg: truncated"),
    ("error: first\n" + LOG_TAIL + "error: storage: s3://loras/ns/j/: AccessDenied\n",
     "storage: s3://loras/ns/j/: AccessDenied"),
])
def test_the_message_starts_with_the_trainers_error_not_its_log_lines(tail, error):
    """The kubelet's termination message is the log's tail; `kubectl get -o wide` shows the start."""
    outcome = classify(PodSnapshot("Failed", exit_code=int(ExitCode.BAD_DATASET), termination_message=tail),
                       NOW, unschedulable_timeout=1)
    assert outcome.message == f"BAD_DATASET (65): {error}"


def test_a_crash_without_an_error_line_shows_the_last_line_the_exception():
    tail = LOG_TAIL + 'Traceback (most recent call last):\n  File "loop.py", line 3\nRuntimeError: CUDA error\n'
    outcome = classify(PodSnapshot("Failed", exit_code=1, termination_message=tail), NOW, unschedulable_timeout=1)
    assert outcome.message == "UNEXPECTED (1): RuntimeError: CUDA error"


def test_a_long_error_keeps_its_start():
    tail = LOG_TAIL + "error: dataset.uri: " + "x" * 2000 + "\n"
    message = classify(PodSnapshot("Failed", exit_code=65, termination_message=tail), NOW,
                       unschedulable_timeout=1).message
    assert message.startswith("BAD_DATASET (65): dataset.uri: xxx") and len(message) < 600
