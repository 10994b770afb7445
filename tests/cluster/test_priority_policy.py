"""The chart's priority ceiling (priority.maxByNamespace) on the real apiserver: a
ValidatingAdmissionPolicy, so `kubectl apply` of a job above its namespace's ceiling is refused
with the field and the ceiling named, at create and at every edit of the priority, while an
update that leaves a priority as it was still passes after a ceiling was lowered."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from testground.operator import install_crds, kwok_job

pytestmark = pytest.mark.cluster

CHART = "helm/lora-operator"
GRANTED, OTHER = f"prio-{uuid.uuid4().hex[:6]}", f"prio-{uuid.uuid4().hex[:6]}"
POLICY = "lora-operator-priority-ceiling"  # release "lora-operator": the chart's fullname


def install_policy(ground, granted: int) -> None:
    """The chart's policy as `helm install` renders it, with `granted` for GRANTED and the default "*": 0."""
    rendered = subprocess.run(
        [str(ground.bin_dir / "helm"), "template", "lora-operator", CHART, "--kube-version", "1.34.0",
         "--show-only", "templates/priority-policy.yaml", "--set", f"priority.maxByNamespace.{GRANTED}={granted}"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    ground.kubectl("apply", "-f", "-", input=rendered)


def apply(ground, ns: str, name: str, *extra: str, **spec) -> subprocess.CompletedProcess:
    manifest = kwok_job(name, "prio", namespace=ns, **spec)
    return ground.kubectl("apply", *extra, "-f", "-", input=json.dumps(manifest), check=False)


@pytest.fixture(scope="module")
def ceilings(ground):
    install_crds(ground)
    for ns in (GRANTED, OTHER):
        ground.kubectl("create", "namespace", ns)
    install_policy(ground, 5)
    # The apiserver loads a new policy within a second or so: probe with a server-side dry run.
    ground.wait_for(lambda: apply(ground, OTHER, "probe", "--dry-run=server", priority=1).returncode != 0,
                    timeout=60, what="the priority policy enforced")
    yield
    ground.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", POLICY,
                   "--ignore-not-found")
    ground.kubectl("delete", "namespace", GRANTED, OTHER, "--wait=false")


def test_a_job_above_its_namespaces_ceiling_is_refused_naming_field_and_ceiling(ground, ceilings):
    refused = apply(ground, GRANTED, "too-high", priority=6)
    assert refused.returncode != 0
    assert f"spec.priority: 6 is above 5, the highest priority the platform allows in namespace {GRANTED}" \
        in refused.stderr, refused.stderr
    assert "priority.maxByNamespace" in refused.stderr
    assert apply(ground, GRANTED, "at-ceiling", priority=5).returncode == 0


def test_namespaces_not_listed_get_the_default_ceiling_of_zero(ground, ceilings):
    refused = apply(ground, OTHER, "raised", priority=1)
    assert refused.returncode != 0 and "spec.priority: 1 is above 0" in refused.stderr, refused.stderr
    assert apply(ground, OTHER, "default-priority").returncode == 0
    assert apply(ground, OTHER, "lowered", priority=-10).returncode == 0


def test_an_edit_of_the_priority_above_the_ceiling_is_refused(ground, ceilings):
    assert apply(ground, GRANTED, "edited", priority=3).returncode == 0
    patched = ground.kubectl("patch", "ltj", "edited", "-n", GRANTED, "--type=merge",
                             "-p", '{"spec":{"priority":9}}', check=False)
    assert patched.returncode != 0 and "spec.priority: 9 is above 5" in patched.stderr, patched.stderr


def test_a_lowered_ceiling_still_lets_other_updates_of_older_jobs_through(ground, ceilings):
    assert apply(ground, GRANTED, "older", priority=5).returncode == 0
    install_policy(ground, 2)
    ground.wait_for(lambda: apply(ground, GRANTED, "probe", "--dry-run=server", priority=3).returncode != 0,
                    timeout=60, what="the lowered ceiling enforced")
    labelled = ground.kubectl("label", "ltj", "older", "-n", GRANTED, "team=a", check=False)
    assert labelled.returncode == 0, labelled.stderr  # the operator's own annotation writes are such updates
    raised = ground.kubectl("patch", "ltj", "older", "-n", GRANTED, "--type=merge",
                            "-p", '{"spec":{"priority":4}}', check=False)
    assert raised.returncode != 0 and "spec.priority: 4 is above 2" in raised.stderr, raised.stderr
