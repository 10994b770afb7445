"""A ClusterLoraTrainingTemplate sizes its jobs' trainer pods, on the real API server: the pod the
operator creates carries the template's resources, /dev/shm, pull secrets, priority class and
annotations, and the apiserver gives it the QoS class they imply (it computes status.qosClass when
the pod is created)."""

from __future__ import annotations

import uuid

import pytest
import test_operator

from testground.operator import kwok_job, run_kubectl_json

pytestmark = pytest.mark.cluster
operator, ns = test_operator.operator, test_operator.ns  # the operator process and a namespace, as there


@pytest.fixture
def platform(ground):
    """A PriorityClass and two cluster templates: one limits only (Guaranteed), one requests less
    CPU than it limits (Burstable)."""
    suffix = uuid.uuid4().hex[:6]
    names = {"priority": f"lora-training-{suffix}", "guaranteed": f"sized-{suffix}", "burstable": f"burst-{suffix}"}
    pod = {"limits": {"cpu": "6", "memory": "48Gi", "ephemeralStorage": "20Gi"}, "shmSize": "12Gi",
           "imagePullSecrets": ["registry-keys"], "priorityClassName": names["priority"],
           "annotations": {"example.com/cost-center": "ml-platform"}}
    ground.apply([
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": names["priority"]},
         "value": 1000},
        template(names["guaranteed"], pod),
        template(names["burstable"], {"limits": {"cpu": "6", "memory": "48Gi"}, "requests": {"cpu": "2"}}),
    ])
    yield names
    ground.kubectl("delete", "clusterloratrainingtemplate", names["guaranteed"], names["burstable"], "--wait=false")
    ground.kubectl("delete", "priorityclass", names["priority"], "--wait=false")


def template(name: str, pod: dict) -> dict:
    return {"apiVersion": "lora-operator.io/v1alpha1", "kind": "ClusterLoraTrainingTemplate",
            "metadata": {"name": name}, "spec": {"description": "a sized trainer pod", "pod": pod}}


def created_pod(ground, operator, ns: str, job: str) -> dict:
    def find():
        pods = run_kubectl_json(ground, "get", "pods", "-n", ns, "-l", f"lora-operator.io/job={job}")["items"]
        return pods[0] if pods else None
    try:
        ground.wait_for(lambda: find() is not None, timeout=60, what=f"the trainer pod of {job}")
    except TimeoutError:
        status = run_kubectl_json(ground, "get", "ltj", "-n", ns, job).get("status")
        raise AssertionError(f"no pod for {job}: {status}\n{operator.tail()}") from None
    return find()


def test_the_cluster_template_sizes_the_pod_and_its_qos_class(ground, operator, ns, platform):
    ground.add_gpu_nodes(2, gpus=2, gpu_type="sized", prefix="sized")
    for job, name in (("guaranteed", platform["guaranteed"]), ("burstable", platform["burstable"])):
        ground.apply({**kwok_job(job, "sized", template=name), "metadata": {"name": job, "namespace": ns}})
    pod = created_pod(ground, operator, ns, "guaranteed")
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "6", "memory": "48Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == resources["limits"]
    assert pod["status"]["qosClass"] == "Guaranteed"
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "12Gi"}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-keys"}]
    assert pod["spec"]["priorityClassName"] == platform["priority"]
    assert pod["spec"]["priority"] == 1000  # the apiserver resolved the class
    assert pod["metadata"]["annotations"]["example.com/cost-center"] == "ml-platform"
    assert not [v for v in pod["spec"]["volumes"] if "hostPath" in v]

    burst = created_pod(ground, operator, ns, "burstable")
    assert burst["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2"
    assert burst["status"]["qosClass"] == "Burstable"


def test_a_job_cannot_carry_pod_settings(ground, operator, ns):
    job = {**kwok_job("sneaky", "sized"), "metadata": {"name": "sneaky", "namespace": ns}}
    job["spec"]["pod"] = {"annotations": {"x.io/y": "z"}}
    result = ground.kubectl("apply", "--validate=strict", "-f", "-", check=False,
                            input=__import__("json").dumps(job))
    assert result.returncode != 0 and 'unknown field "spec.pod"' in result.stderr
