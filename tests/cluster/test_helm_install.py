"""`helm install` of the chart onto the real local control plane, then a job reconciled under its RBAC.

No container runtime runs here, so the operator Deployment's pods are only played by kwok. The
operator itself runs as a local process authenticated as the chart's ServiceAccount (a
TokenRequest token, no admin certificate), with peering through the chart's ClusterKopfPeering
exactly as the Deployment runs it: whatever the chart's ClusterRole lacks shows up as a 403.
"""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
import yaml

from testground.operator import OperatorProcess, kwok_job, run_kubectl_json, seed_kwok_dataset, storage_secret
from testground.podstatus import report, terminated
from testground.serviceaccount import service_account_kubeconfig

pytestmark = pytest.mark.cluster

CHART = "helm/lora-operator"
RELEASE = "lora-operator"
RELEASE_NS = "lora-system"
OPERATOR_SA = RELEASE  # the chart's fullname: the release name already contains the chart name
TRAINER_SA = "lora-trainer"
GPU_TYPE = "helm-install"


def helm(ground, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(ground.bin_dir / "helm"), f"--kubeconfig={ground.kubeconfig}", *args],
                          capture_output=True, text=True, timeout=120)
    if check and done.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def namespaces(ground):
    """Two job namespaces: `listed` gets the trainer ServiceAccount from the chart, `unlisted` from
    the operator at admission (a job may come from any namespace). Each has its storage Secret, which
    the operator reads for that namespace's jobs (it has no key of its own)."""
    names = {"listed": f"helm-{uuid.uuid4().hex[:6]}", "unlisted": f"helm-{uuid.uuid4().hex[:6]}"}
    ground.kubectl("create", "namespace", RELEASE_NS)
    for ns in names.values():
        ground.kubectl("create", "namespace", ns)
        ground.apply(storage_secret(ground, ns))
    yield names
    for ns in names.values():
        ground.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.fixture(scope="module")
def release(ground, namespaces):
    ground.add_gpu_nodes(2, gpus=4, gpu_type=GPU_TYPE, prefix="helm")
    seed_kwok_dataset(ground)
    helm(ground, "install", RELEASE, CHART, "-n", RELEASE_NS, "--create-namespace",
         "--set", f"storage.endpoint={ground.minio.endpoint}", "--set", "storage.existingSecret=lora-storage",
         "--set", "trainer.image.repository=lora-trainer", "--set", "trainer.image.tag=test",
         "--set", f"trainer.serviceAccount.namespaces={{{namespaces['listed']}}}")
    yield RELEASE
    helm(ground, "uninstall", RELEASE, "-n", RELEASE_NS, "--ignore-not-found", "--wait")


@pytest.fixture(scope="module")
def operator(ground, release, tmp_path_factory):
    """`lora-operator run` as the Deployment runs it (peering, no --standalone), as the chart's SA."""
    folder = tmp_path_factory.mktemp("helm-operator")
    kubeconfig = service_account_kubeconfig(ground, RELEASE_NS, OPERATOR_SA, folder / "kubeconfig")
    deployment = run_kubectl_json(ground, "get", "deployment", "-n", RELEASE_NS, RELEASE)
    chart_env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                 if e["name"] in CHART_ENV}
    op = OperatorProcess(ground, folder / "operator.log", args=(),
                         extra_env={"KUBECONFIG": str(kubeconfig), "LORA_TRAINER_SERVICE_ACCOUNT": TRAINER_SA,
                                    **chart_env})
    yield op.start()
    op.stop()


CHART_ENV = ("LORA_STORAGE_SECRET", "LORA_STORAGE_ALLOWED_SECRET_NAMES")
"""The chart's settings the operator process takes from the installed Deployment: the Secret names
its RBAC lets the operator read."""


def job(name: str, namespace: str) -> dict:
    return kwok_job(name, GPU_TYPE, namespace=namespace, retryPolicy={"maxRetries": 0})

def phase(ground, ns: str, name: str) -> str | None:
    return run_kubectl_json(ground, "get", "ltj", "-n", ns, name).get("status", {}).get("phase")


def wait_phase(ground, operator, ns: str, name: str, wanted: str) -> None:
    try:
        ground.wait_for(lambda: phase(ground, ns, name) == wanted, timeout=45, what=f"{ns}/{name} {wanted}")
    except TimeoutError:
        raise AssertionError(f"{ns}/{name}: phase {phase(ground, ns, name)}, wanted {wanted}\n"
                             f"--- operator log ---\n{operator.tail()}") from None


def running_trainer_pod(ground, operator, ns: str) -> dict:
    def find() -> dict | None:
        pods = run_kubectl_json(ground, "get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=trainer")
        return next((p for p in pods["items"] if p["status"].get("phase") == "Running"), None)
    try:
        ground.wait_for(lambda: find() is not None, timeout=45, what=f"a running trainer pod in {ns}")
    except TimeoutError:
        jobs = ground.kubectl("get", "ltj", "-A", "-o", "wide", check=False).stdout
        pods = ground.kubectl("get", "pods", "-A", "-o", "wide", "-l", "app.kubernetes.io/component=trainer",
                              check=False).stdout
        raise AssertionError(f"no running trainer pod in {ns}\n--- jobs ---\n{jobs}\n--- trainer pods ---\n{pods}"
                             f"\n--- operator log ---\n{operator.tail()}") from None
    return find()


def end_pod_succeeded(ground, ns: str, pod: str) -> None:
    """Ends the trainer as its kubelet would: container terminated with exit code 0, pod Succeeded."""
    report(ground, ns, pod, terminated(0))


def test_helm_install_creates_the_operator_its_least_privilege_rbac_and_the_peering(ground, release, namespaces):
    deployment = run_kubectl_json(ground, "get", "deployment", "-n", RELEASE_NS, RELEASE)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR_SA
    assert "--standalone" not in pod["containers"][0]["args"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LORA_STORAGE_ENDPOINT"] == ground.minio.endpoint
    assert env["LORA_TRAINER_IMAGE"] == "lora-trainer:test"
    # kwok plays the two replicas' kubelet, so the rollout completes without a container runtime.
    ground.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", RELEASE_NS, "--timeout=40s", timeout=50)

    run_kubectl_json(ground, "get", "serviceaccount", "-n", RELEASE_NS, OPERATOR_SA)
    binding = run_kubectl_json(ground, "get", "clusterrolebinding", RELEASE)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": RELEASE_NS}]
    rules = run_kubectl_json(ground, "get", "clusterrole", binding["roleRef"]["name"])["rules"]
    assert all("*" not in r[f] for r in rules for f in ("apiGroups", "resources", "verbs"))
    run_kubectl_json(ground, "get", "clusterkopfpeering", "lora-operator")
    run_kubectl_json(ground, "get", "poddisruptionbudget", "-n", RELEASE_NS, RELEASE)
    for ns in (RELEASE_NS, namespaces["listed"]):
        trainer_sa = run_kubectl_json(ground, "get", "serviceaccount", "-n", ns, TRAINER_SA)
        assert trainer_sa["automountServiceAccountToken"] is False
        assert trainer_sa["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # The operator's ServiceAccount may do what it needs and nothing wider.
    can_i = [f"--as=system:serviceaccount:{RELEASE_NS}:{OPERATOR_SA}"]
    assert ground.kubectl("auth", "can-i", "create", "pods", "-n", namespaces["listed"], *can_i).stdout.strip() == "yes"
    for verb, *what in (("list", "secrets"), ("delete", "nodes"), ("create", "rolebindings"),
                        ("create", "serviceaccounts", "--subresource=token"), ("patch", "serviceaccounts")):
        answer = ground.kubectl("auth", "can-i", verb, *what, "-A", *can_i, check=False).stdout.strip()
        assert answer == "no", f"the operator may {verb} {' '.join(what)}"
    # Secrets: only of the storage Secret names the chart allows (storage.existingSecret).
    ns = namespaces["listed"]
    assert ground.kubectl("auth", "can-i", "get", "secret/lora-storage", "-n", ns, *can_i).stdout.strip() == "yes"
    answer = ground.kubectl("auth", "can-i", "get", "secret/db-password", "-n", ns, *can_i, check=False).stdout
    assert answer.strip() == "no", "the operator may read any Secret of a namespace"


def test_operator_as_the_charts_service_account_runs_jobs_to_success_without_a_403(ground, operator, namespaces):
    for ns in namespaces.values():
        ground.apply(job("charted", ns))
    pods = {}
    for ns in namespaces.values():
        pods[ns] = running_trainer_pod(ground, operator, ns)
        wait_phase(ground, operator, ns, "charted", "Running")
    for ns, pod in pods.items():
        assert pod["spec"]["serviceAccountName"] == TRAINER_SA
        assert pod["spec"]["automountServiceAccountToken"] is False
        node = run_kubectl_json(ground, "get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["lora-operator.io/gpu-type"] == GPU_TYPE
        # The chart made the ServiceAccount in the listed namespace; the operator in the other one.
        trainer_sa = run_kubectl_json(ground, "get", "serviceaccount", "-n", ns, TRAINER_SA)
        assert trainer_sa["automountServiceAccountToken"] is False
    assert len({p["spec"]["nodeName"] for p in pods.values()}) == 2  # one job per GPU node
    for ns, pod in pods.items():
        end_pod_succeeded(ground, ns, pod["metadata"]["name"])
    for ns in namespaces.values():
        wait_phase(ground, operator, ns, "charted", "Succeeded")

    def reasons(ns: str) -> set[str]:
        events = run_kubectl_json(ground, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=charted")
        return {e["reason"] for e in events["items"]}
    for ns in namespaces.values():  # Events, posted as the chart's ServiceAccount
        try:
            ground.wait_for(lambda ns=ns: {"NodeAssigned", "TrainingComplete"} <= reasons(ns), timeout=30,
                            what=f"the operator's Events in {ns}")
        except TimeoutError:
            raise AssertionError(f"{ns}: Events {reasons(ns)}\n--- operator log ---\n{operator.tail()}") from None

    peering = run_kubectl_json(ground, "get", "clusterkopfpeering", "lora-operator")
    assert peering.get("status"), "the operator never announced itself in the chart's ClusterKopfPeering"
    assert operator.proc.alive(), operator.tail()
    log = operator.log.read_text(errors="replace")
    # An Event into a namespace another test is deleting is refused for that, not by RBAC (its
    # traceback's frame lines, indented, repeat "Forbidden" without the reason).
    forbidden = [line for line in log.splitlines()
                 if re.search(r"forbidden", line, re.IGNORECASE) and "is being terminated" not in line
                 and not line.startswith(" ")]
    assert not forbidden, "the chart's RBAC refused the operator:\n" + "\n".join(forbidden[:10])


def test_a_job_naming_a_secret_the_chart_does_not_allow_fails_without_the_operator_reading_it(
        ground, operator, namespaces):
    """A tenant cannot make the operator use another Secret of the namespace (one the tenant may not
    read itself, say): the chart's role gets only the allowed names, and the job fails with a reason."""
    ns = namespaces["listed"]
    other = storage_secret(ground, ns, name="db-password")
    ground.apply(other)
    ground.apply(job("other-secret", ns) | {"spec": {**job("other-secret", ns)["spec"],
                                                     "storage": {"secretRef": "db-password"}}})
    wait_phase(ground, operator, ns, "other-secret", "Failed")
    failed = next(c for c in run_kubectl_json(ground, "get", "ltj", "-n", ns, "other-secret")["status"]["conditions"]
                  if c["type"] == "Failed")
    assert failed["reason"] == "SecretNotFound", failed
    # refused by name, before any read: the chart's allowed names are all the operator may ask for
    assert failed["message"].startswith(f"spec.storage.secretRef: the operator may not read Secret {ns}/db-password: "
                                        "name a storage Secret the platform allows (lora-storage; "), failed
    assert "storage.allowedSecretNames" in failed["message"], failed


SCOPED_SA = "scoped-lora-operator"
"""The operator ServiceAccount of a release named `scoped` (the chart's fullname)."""


def scoped(ground, watched: str, *templates: str) -> list[dict]:
    """The objects of `templates` of a release `scoped` with operator.watchNamespace=`watched`."""
    shown = [arg for template in templates for arg in ("--show-only", template)]
    rendered = helm(ground, "template", "scoped", CHART, "-n", RELEASE_NS, "--kube-version", "1.31.0",
                    "--set", f"operator.watchNamespace={watched}", *shown).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def delete(ground, docs: list[dict]) -> None:
    for doc in docs:
        ns = ["-n", doc["metadata"]["namespace"]] if doc["metadata"].get("namespace") else []
        ground.kubectl("delete", doc["kind"].lower(), doc["metadata"]["name"], *ns, "--ignore-not-found")


def test_a_watch_namespace_install_may_make_pods_and_read_secrets_in_that_namespace_only(ground, namespaces):
    """The chart's RBAC of `operator.watchNamespace`, applied to the real apiserver and asked with
    `kubectl auth can-i` as its ServiceAccount: pods, the trainer ServiceAccount and the storage
    Secrets in the watched namespace only; jobs, nodes and the CRD watch stay cluster-wide."""
    watched, other = namespaces["listed"], namespaces["unlisted"]
    docs = scoped(ground, watched, "templates/rbac.yaml")
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    ground.apply(docs)
    try:
        as_sa = f"--as=system:serviceaccount:{RELEASE_NS}:{SCOPED_SA}"  # can-i needs no real SA

        def can(verb: str, *what: str) -> bool:
            answer = ground.kubectl("auth", "can-i", verb, *what, as_sa, check=False).stdout.strip()
            return answer == "yes"
        for verb, what in (("create", "pods"), ("delete", "pods"), ("get", "secret/lora-storage"),
                           ("create", "serviceaccounts")):
            assert can(verb, what, "-n", watched), f"{verb} {what} in the watched namespace"
            assert not can(verb, what, "-n", other), f"{verb} {what} in a namespace it does not watch"
            assert not can(verb, what, "-n", RELEASE_NS), f"{verb} {what} in the release namespace"
        assert not can("get", "secret/db-password", "-n", watched)
        assert not can("create", "pods", "-A") and not can("list", "secrets", "-A")
        for verb, what in (("watch", "loratrainingjobs.lora-operator.io"), ("list", "nodes"),
                           ("watch", "customresourcedefinitions.apiextensions.k8s.io")):
            assert can(verb, what, "-A"), f"{verb} {what} cluster-wide"
    finally:
        delete(ground, docs)


def test_helm_uninstall_removes_the_release(ground, release, namespaces, operator):
    operator.stop()  # as the Deployment's pods go with the release
    helm(ground, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout=60s")
    assert RELEASE not in helm(ground, "list", "-n", RELEASE_NS, "-q").stdout.split()
    for args in (("deployment", "-n", RELEASE_NS, RELEASE), ("serviceaccount", "-n", RELEASE_NS, OPERATOR_SA),
                 ("serviceaccount", "-n", namespaces["listed"], TRAINER_SA), ("clusterrole", RELEASE),
                 ("clusterrolebinding", RELEASE), ("clusterkopfpeering", "lora-operator")):
        assert ground.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout.strip() == "", args
    # CRDs outlive the release (helm never deletes crds/), so the jobs and their results stay.
    run_kubectl_json(ground, "get", "crd", "loratrainingjobs.lora-operator.io")


def test_an_operator_under_the_watch_namespace_rbac_runs_a_job_without_a_403(ground, release, namespaces, operator,
                                                                            tmp_path):
    """The operator as the `scoped` ServiceAccount, watching one namespace, runs a job there to
    success (the release's GPU nodes and dataset); whatever the Role or ClusterRole lacks is a 403."""
    operator.stop()  # one operator at a time: the cluster-wide one would take the job too
    watched, other = namespaces["listed"], namespaces["unlisted"]
    docs = scoped(ground, watched, "templates/rbac.yaml", "templates/peering.yaml")
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SCOPED_SA, "namespace": RELEASE_NS}}
    ground.apply([account, *docs])
    op = None
    try:
        kubeconfig = service_account_kubeconfig(ground, RELEASE_NS, SCOPED_SA, tmp_path / "kubeconfig")
        op = OperatorProcess(ground, tmp_path / "operator.log", args=(), extra_env={
            "KUBECONFIG": str(kubeconfig), "LORA_TRAINER_SERVICE_ACCOUNT": TRAINER_SA,
            "LORA_WATCH_NAMESPACE": watched, "LORA_STORAGE_ALLOWED_SECRET_NAMES": "lora-storage"}).start()
        for ns in (watched, other):
            ground.apply(job("scoped", ns))
        pod = running_trainer_pod(ground, op, watched)
        end_pod_succeeded(ground, watched, pod["metadata"]["name"])
        wait_phase(ground, op, watched, "scoped", "Succeeded")
        assert phase(ground, other, "scoped") is None  # not watched: not touched
        log = op.log.read_text(errors="replace")
        forbidden = [line for line in log.splitlines() if re.search(r"forbidden", line, re.IGNORECASE)]
        assert not forbidden, "the watchNamespace RBAC refused the operator:\n" + "\n".join(forbidden[:10])
    finally:
        if op is not None:
            op.stop()
        delete(ground, [account, *docs])
