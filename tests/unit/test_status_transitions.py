"""Pure status transitions: conditions with Kubernetes semantics, phase derived from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_operator.api import FINISHED_PHASES, ConditionType, JobStatus, Phase, Reason
from lora_operator.outcome import Action, ActionKind, Outcome, OutcomeKind
from lora_operator.status_transitions import (
    admitted,
    attempt_ended,
    cancelled,
    derive_phase,
    failed,
    find_condition,
    pod_running,
    queued,
    resumed,
    rfc3339,
    set_condition,
    succeeded,
    suspended,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cond(status: JobStatus, type_: ConditionType):
    return find_condition(status.conditions, type_)


def running_job() -> JobStatus:
    s = queued(JobStatus(), position=1, now=at(0), generation=1)
    s = admitted(s, node="n1", gpus=8, pod="j-a1", attempt=1, now=at(10))
    return pod_running(s, now=at(20))


def test_new_status_is_pending_and_queued_sets_admitted_false():
    assert derive_phase([]) is Phase.PENDING
    s = queued(JobStatus(), position=3, now=at(0), generation=1)
    assert s.phase is Phase.QUEUED
    assert s.queue_position == 3
    assert s.observed_generation == 1
    admitted_ = cond(s, ConditionType.ADMITTED)
    assert (admitted_.status, admitted_.reason, admitted_.observed_generation) == ("False", "Queued", 1)


def test_queue_position_updates_do_not_touch_conditions():
    s1 = queued(JobStatus(), position=3, now=at(0))
    s2 = queued(s1, position=1, now=at(50))
    assert s2.conditions == s1.conditions
    assert s2.queue_position == 1


def test_set_condition_moves_transition_time_only_on_a_flip():
    conditions = set_condition([], "Admitted", False, "Queued", "waiting", at(0), 1)
    same = set_condition(conditions, "Admitted", False, "Backoff", "retry", at(10), 2)
    assert same[0].last_transition_time == rfc3339(at(0))
    assert (same[0].reason, same[0].message, same[0].observed_generation) == ("Backoff", "retry", 2)
    flipped = set_condition(same, "Admitted", True, "NodeAssigned", "n1", at(20))
    assert flipped[0].last_transition_time == rfc3339(at(20))
    assert flipped[0].observed_generation == 2, "kept when no generation is given"


def test_admission_records_the_attempt_and_clears_the_queue_fields():
    s = admitted(queued(JobStatus(), position=1, now=at(0)), node="n1", gpus=8, pod="j-a1", attempt=1, now=at(10))
    assert s.phase is Phase.RUNNING
    assert (s.node, s.gpus, s.attempt, s.queue_position) == ("n1", 8, 1, None)
    assert s.admitted_at == rfc3339(at(10))
    assert [(a.number, a.pod, a.node, a.start_time) for a in s.attempts] == [(1, "j-a1", "n1", rfc3339(at(10)))]
    assert cond(s, ConditionType.ADMITTED).status == "True"
    assert cond(s, ConditionType.RUNNING).status == "False"


def test_pod_running_sets_running_and_start_time_once():
    s = running_job()
    assert cond(s, ConditionType.RUNNING).status == "True"
    assert s.start_time == rfc3339(at(20))
    assert pod_running(s, now=at(99)).start_time == rfc3339(at(20))


def test_crash_requeues_with_backoff_and_counts_once():
    outcome = Outcome(OutcomeKind.CRASHED, Reason.CRASHED, "UNEXPECTED (1)", 1)
    action = Action(ActionKind.REQUEUE, Reason.BACKOFF, "retry 1/3 in 30s", at(130))
    s = attempt_ended(running_job(), outcome=outcome, action=action, now=at(100))
    assert s.phase is Phase.QUEUED
    assert s.retries == 1
    assert s.not_before == rfc3339(at(130))
    assert (s.node, s.gpus) == (None, None)
    assert cond(s, ConditionType.ADMITTED).reason == "Backoff"
    assert cond(s, ConditionType.RUNNING).reason == "Crashed"
    (attempt,) = s.attempts
    assert (attempt.end_time, attempt.reason, attempt.exit_code, attempt.counted) == (
        rfc3339(at(100)),
        "Crashed",
        1,
        True,
    )
    again = attempt_ended(s, outcome=outcome, action=action, now=at(101))
    assert again.retries == 1, "the same attempt is never counted twice"


def test_disruption_is_not_counted_and_the_next_attempt_is_appended():
    outcome = Outcome(OutcomeKind.DISRUPTED, Reason.DISRUPTED, "pod disrupted: Evicted")
    s = attempt_ended(running_job(), outcome=outcome, action=Action(ActionKind.REQUEUE, Reason.DISRUPTED), now=at(50))
    assert s.retries == 0
    assert s.attempts[0].counted is False
    s = admitted(s, node="n2", gpus=4, pod="j-a2", attempt=2, now=at(60))
    assert [a.number for a in s.attempts] == [1, 2]
    assert s.admitted_at == rfc3339(at(10)), "first admission time is kept for activeDeadlineSeconds"


def test_success_ends_the_job():
    outcome = Outcome(OutcomeKind.SUCCEEDED, Reason.TRAINING_COMPLETE, "the trainer finished", 0)
    action = Action(ActionKind.SUCCEED, Reason.TRAINING_COMPLETE, "training complete")
    s = attempt_ended(running_job(), outcome=outcome, action=action, now=at(500))
    assert s.phase is Phase.SUCCEEDED
    assert cond(s, ConditionType.SUCCEEDED).status == "True"
    assert cond(s, ConditionType.RUNNING).status == "False"
    assert cond(s, ConditionType.ADMITTED).status == "False"
    assert s.completion_time == rfc3339(at(500))
    assert s.attempts[0].exit_code == 0


def test_input_error_fails_with_its_reason():
    outcome = Outcome(OutcomeKind.INPUT_ERROR, Reason.INPUT_ERROR, "BAD_DATASET (65): no images", 65)
    action = Action(ActionKind.FAIL, Reason.INPUT_ERROR, "BAD_DATASET (65): no images")
    s = attempt_ended(running_job(), outcome=outcome, action=action, now=at(40))
    assert s.phase is Phase.FAILED
    failed_ = cond(s, ConditionType.FAILED)
    assert (failed_.status, failed_.reason, failed_.message) == ("True", "InputError", "BAD_DATASET (65): no images")
    assert s.attempts[0].exit_code == 65
    assert s.retries == 0


def test_finished_jobs_stay_finished():
    s = failed(running_job(), reason=Reason.DEADLINE_EXCEEDED, message="ran longer than 3600s", now=at(30))
    assert s.phase is Phase.FAILED
    assert s.attempts[0].reason == "DeadlineExceeded"
    assert queued(s, position=1, now=at(40)) == s
    assert admitted(s, node="n", gpus=1, pod="p", attempt=2, now=at(40)) == s
    assert succeeded(s, now=at(40)) == s
    assert suspended(s, now=at(40)) == s


def test_failed_before_admission_only_sets_failed():
    s = failed(JobStatus(), reason=Reason.INVALID_SPEC, message="spec.baseModel: required", now=at(0), generation=2)
    assert s.phase is Phase.FAILED
    assert [c.type for c in s.conditions] == ["Failed"]
    assert s.observed_generation == 2


def test_cancelled_is_failed_with_reason_cancelled():
    s = cancelled(running_job(), now=at(30))
    assert s.phase is Phase.CANCELLED
    assert cond(s, ConditionType.FAILED).reason == "Cancelled"


def test_suspend_releases_the_node_and_resume_queues_again():
    s = suspended(running_job(), now=at(30), generation=2)
    assert s.phase is Phase.SUSPENDED
    assert (s.node, s.queue_position) == (None, None)
    assert s.attempts[0].reason == "Suspended"
    assert s.attempts[0].counted is False
    assert queued(s, position=1, now=at(35)) == s, "a suspended job does not take a queue position"
    r = resumed(s, now=at(40), generation=3)
    assert r.phase is Phase.QUEUED
    assert cond(r, ConditionType.SUSPENDED).status == "False"
    assert cond(r, ConditionType.SUSPENDED).reason == "Resumed"
    assert cond(r, ConditionType.ADMITTED).reason == "Queued"
    assert r.observed_generation == 3


def test_an_early_stop_succeeds_with_its_own_reason():
    outcome = Outcome(OutcomeKind.SUCCEEDED, Reason.TRAINING_COMPLETE, "the trainer finished", 0)
    why = "stopped early: no better validation loss in 2 evaluations (best 0.1000 at epoch-0001)"
    action = Action(ActionKind.SUCCEED, Reason.STOPPED_EARLY, why)
    s = attempt_ended(running_job(), outcome=outcome, action=action, now=at(500))
    assert s.phase is Phase.SUCCEEDED
    assert cond(s, ConditionType.SUCCEEDED).reason == "StoppedEarly"
    assert cond(s, ConditionType.SUCCEEDED).message == why and s.message == why


def test_derive_phase_precedence():
    s = running_job()
    assert derive_phase(s.conditions) is Phase.RUNNING
    both = set_condition(s.conditions, "Succeeded", True, "TrainingComplete", "", at(1))
    assert derive_phase(both) is Phase.SUCCEEDED


def test_inputs_are_not_mutated():
    s = running_job()
    before = s.model_dump()
    suspended(s, now=at(30))
    attempt_ended(
        s,
        outcome=Outcome(OutcomeKind.CRASHED, Reason.CRASHED, "x", 1),
        action=Action(ActionKind.REQUEUE, Reason.BACKOFF, "", at(60)),
        now=at(30),
    )
    assert s.model_dump() == before


def test_a_transition_shares_the_resolved_spec_and_copies_the_rest():
    """The resolved spec is never changed in place, so a transition carries the same dict on (a deep copy
    of it was most of a claim's CPU, bench/RESULTS.md); everything else of the status is its own copy."""
    s = running_job().model_copy(update={"resolved_spec": {"placement": {"gpuType": "h100"}, "steps": 10}})
    before = s.model_dump()
    new = attempt_ended(s, outcome=Outcome(OutcomeKind.CRASHED, Reason.CRASHED, "x", 1),
                        action=Action(ActionKind.REQUEUE, Reason.BACKOFF, "", at(60)), now=at(30))
    assert new.resolved_spec is s.resolved_spec
    assert new.attempts[0] is not s.attempts[0] and new.attempts[0].pod == s.attempts[0].pod
    assert s.model_dump() == before
    assert suspended(s, now=at(30)).resolved_spec is s.resolved_spec
    assert queued(JobStatus(), position=1, now=at(0)).resolved_spec is None


def test_rfc3339_is_utc_with_z():
    assert rfc3339(datetime(2025, 1, 1, 13, 0, tzinfo=UTC) + timedelta(microseconds=5)) == "2025-01-01T13:00:00Z"
    assert rfc3339(datetime(2025, 1, 1, 13, 0)) == "2025-01-01T13:00:00Z"


EVENTS = ["queued", "admitted", "running", "crash", "disrupt", "succeed", "input_error", "suspend", "resume", "cancel"]


def _step(s: JobStatus, event: str, t: datetime) -> JobStatus:
    crash = Outcome(OutcomeKind.CRASHED, Reason.CRASHED, "crash", 1)
    if event == "queued":
        return queued(s, position=2, now=t)
    if event == "admitted":
        return admitted(s, node="n", gpus=8, pod=f"p{s.attempt + 1}", attempt=s.attempt + 1, now=t)
    if event == "running":
        return pod_running(s, now=t)
    if event == "crash":
        return attempt_ended(s, outcome=crash, action=Action(ActionKind.REQUEUE, Reason.BACKOFF, "", t), now=t)
    if event == "disrupt":
        outcome = Outcome(OutcomeKind.DISRUPTED, Reason.DISRUPTED, "evicted")
        return attempt_ended(s, outcome=outcome, action=Action(ActionKind.REQUEUE, Reason.DISRUPTED), now=t)
    if event == "succeed":
        return succeeded(s, now=t)
    if event == "input_error":
        return failed(s, reason=Reason.INPUT_ERROR, message="bad", now=t)
    if event == "suspend":
        return suspended(s, now=t)
    if event == "resume":
        return resumed(s, now=t)
    return cancelled(s, now=t)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=25))
def test_any_event_sequence_keeps_the_status_consistent(events):
    s = JobStatus()
    for i, event in enumerate(events):
        before = s
        s = _step(s, event, at(i))
        assert s.phase is derive_phase(s.conditions)
        assert len({c.type for c in s.conditions}) == len(s.conditions)
        assert sum(1 for a in s.attempts if a.end_time is None) <= 1
        assert s.retries == sum(1 for a in s.attempts if a.counted and a.end_time is not None)
        if before.phase in FINISHED_PHASES:
            assert s == before
        for old in before.conditions:
            new = find_condition(s.conditions, old.type)
            if new.status == old.status:
                assert new.last_transition_time == old.last_transition_time
