"""A catalogue of bad inputs on the real control plane, operator and (for data and training cases)
the real tiny trainer run by the kubelet shim.

Every case ends where a user can see it, with the field or file named: refused by the API server
(kubectl's stderr), or the job Failed with a reason and message; cases that are odd but fine
(unicode paths, CMYK or 16-bit images, a 100 KB caption) end Succeeded with the file used. The
operator never crash-loops: a good job applied before the bad ones and one applied after them both
succeed with a single attempt. The cases are in bad_inputs.py, whose `table()` renders them for
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field

import pytest
import yaml
from bad_inputs import (
    ADMISSION,
    ALLOWED_IMAGES,
    API,
    BASE,
    MIXED_FILES,
    MIXED_PREFIX,
    OTHER,
    REAL,
    REFUSED,
    REPO,
    TRAINED,
    merged,
    write_datasets,
)
from test_operator import end_pod, get_job, running_pod, trainer_pods, wait_phase

from lora_operator.k8s import Kube
from testground.kubelet_shim import KubeletShim
from testground.operator import OperatorProcess, install_crds, storage_secret
from testground.seed import upload
from tinymodels import build_tiny_model

REPEATED_PHRASE = re.compile(r"\b(\w+(?: \w+){1,3}) \1\b")
"""A phrase of two to four words said twice in a row: two layers each adding the same ending."""

pytestmark = pytest.mark.cluster
@dataclass
class Catalogue:
    ground: object
    operator: OperatorProcess
    ns: str
    """Namespace of the kwok-run jobs (the test ends their pods)."""
    real_ns: str
    """Namespace whose trainer pods the kubelet shim runs for real."""
    shim: KubeletShim
    refused: dict[str, str] = field(default_factory=dict)


class NamespaceShim(KubeletShim):
    """The kubelet shim for one namespace only (other tests' pods stay kwok's)."""

    namespace: str = ""

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            listing = self.ground.kubectl("get", "pods", "-n", self.namespace, "-l",
                                          "app.kubernetes.io/component=trainer", "-o", "json", check=False)
            if listing.returncode:
                continue
            for pod in json.loads(listing.stdout)["items"]:
                key = f"{self.namespace}/{pod['metadata']['name']}"
                if pod["status"].get("phase") == "Running" and key not in self.started:
                    self.started.add(key)
                    threading.Thread(target=self.run_pod, args=(pod,), daemon=True).start()


@pytest.fixture(scope="module")
def cat(ground, tmp_path_factory):
    install_crds(ground)
    ground.kubectl("apply", "-f", str(REPO / "examples" / "templates"))
    work = tmp_path_factory.mktemp("bad-inputs")
    upload(ground, "s3://models/tiny-sd15/", build_tiny_model("sd15", work / "tiny-sd15"))
    write_datasets(work / "data")
    upload(ground, "s3://datasets/good/", work / "data" / "good")
    upload(ground, "s3://datasets/corrupt/", work / "data" / "corrupt")
    upload(ground, MIXED_PREFIX, work / "data" / "mixed")
    if not ground.minio.client().bucket_exists("loras"):
        ground.minio.client().make_bucket("loras")
    ns, real_ns = f"bad-{uuid.uuid4().hex[:6]}", f"badreal-{uuid.uuid4().hex[:6]}"
    for n in (ns, real_ns):
        ground.kubectl("create", "namespace", n)
        ground.apply(storage_secret(ground, n))
    half = storage_secret(ground, ns, "half-secret")
    half["stringData"].pop("secretKey")
    ground.apply(half)
    ground.add_gpu_nodes(2, gpus=1, gpu_type="badkw", prefix="badkw")
    ground.add_gpu_nodes(3, gpus=1, gpu_type="badreal", prefix="badreal")
    operator = OperatorProcess(ground, work / "operator.log",
                               extra_env={"LORA_TRAINER_ALLOWED_IMAGES": ALLOWED_IMAGES}).start()
    shim = NamespaceShim(ground, work / "pods")
    shim.namespace = real_ns
    shim.start()
    catalogue = Catalogue(ground, operator, ns, real_ns, shim)
    # a good job before any bad one: it must not be affected by what follows
    ground.apply(job(ns, "before", BASE))
    end_pod(ground, ns, running_pod(ground, ns, "before")["metadata"]["name"], 0)
    yield catalogue
    shim.stop()
    operator.stop()
    ground.kubectl("delete", "namespace", ns, real_ns, "--wait=false", check=False)


def job(ns: str, name: str, spec: dict) -> dict:
    return {"apiVersion": API, "kind": "LoraTrainingJob", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def failed_condition(ground, ns: str, name: str) -> dict:
    status = get_job(ground, ns, name)["status"]
    return next(c for c in status["conditions"] if c["type"] == "Failed")


# --------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("c", REFUSED, ids=[c.case for c in REFUSED])
def test_refused_by_the_apiserver_with_the_field_named(cat, tmp_path, c):
    name = c.name or f"refused-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(cat.ns, name, merged(BASE, c.spec)), allow_unicode=True))
    result = cat.ground.kubectl("apply", "-f", str(path), check=False)
    assert result.returncode != 0, f"{c.case}: accepted"
    for text in c.shows:
        assert text in result.stderr, result.stderr


def test_malformed_yaml_is_refused_by_kubectl_naming_the_line(cat, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(f"apiVersion: {API}\nkind: LoraTrainingJob\nmetadata:\n  name: broken\nspec:\n"
                    "  training:\n    epochs: 2\n   batchSize: 1\n")
    result = cat.ground.kubectl("apply", "-n", cat.ns, "-f", str(path), check=False)
    assert result.returncode != 0 and "line 7" in result.stderr, result.stderr


@pytest.mark.parametrize("c", ADMISSION, ids=[c.case for c in ADMISSION])
def test_fails_at_admission_with_a_reason_naming_the_field(cat, c):
    name = f"adm-{uuid.uuid4().hex[:8]}"
    cat.ground.apply(job(cat.ns, name, merged(BASE, c.spec)))
    wait_phase(cat.ground, cat.operator, cat.ns, name, "Failed")
    failed = failed_condition(cat.ground, cat.ns, name)
    assert failed["reason"] == c.reason, failed
    for text in c.shows:
        assert text in failed["message"], failed
    assert not REPEATED_PHRASE.search(failed["message"]), failed  # "x does not exist does not exist"
    assert not [p for p in trainer_pods(cat.ground, cat.ns) if p["metadata"]["labels"]["lora-operator.io/job"] == name]


@pytest.fixture(scope="module")
def trained(cat):
    """Applies every trainer-side case at once (one job per distinct spec) and waits for them all."""
    names: dict[str, str] = {}
    for c in TRAINED:
        key = json.dumps(c.spec, sort_keys=True)
        if key not in names:
            names[key] = f"real-{len(names)}"
            cat.ground.apply(job(cat.real_ns, names[key], merged(REAL, c.spec)))
    finished = {"Succeeded", "Failed"}
    for name in names.values():
        cat.ground.wait_for(lambda n=name: get_job(cat.ground, cat.real_ns, n).get("status", {}).get("phase")
                            in finished, timeout=420, interval=1, what=f"{name} finished")
    return {key: get_job(cat.ground, cat.real_ns, name) for key, name in names.items()}


@pytest.mark.parametrize("c", TRAINED, ids=[c.case for c in TRAINED])
def test_trainer_side_case_ends_with_the_file_or_field_named(cat, trained, c):
    result = trained[json.dumps(c.spec, sort_keys=True)]
    status = result["status"]
    if c.reason:
        assert status["phase"] == "Failed", status
        failed = next(x for x in status["conditions"] if x["type"] == "Failed")
        assert failed["reason"] == c.reason and len(status["attempts"]) == 1, status["attempts"]
        for text in c.shows:
            assert text in failed["message"], failed["message"]
        # the trainer's error itself, not the log lines before it (kubectl get -o wide shows the start)
        assert failed["message"].startswith(c.shows[0] + ": ") and "INFO" not in failed["message"], failed
        return
    assert status["phase"] == "Succeeded", json.dumps(status)[:2000]
    client = cat.ground.minio.client()
    meta = result["metadata"]
    resp = client.get_object("loras", f"{cat.real_ns}/{meta['name']}/{meta['uid']}/manifest.json")
    manifest = json.loads(resp.read())
    resp.close()
    skipped = {s["file"]: s["reason"] for s in manifest["skipped"]}
    usable = len(MIXED_FILES) + 1  # + img0.png
    assert manifest["images"] + manifest["validationImages"] == usable, manifest
    if c.file == "huge.png":
        assert list(skipped) == ["huge.png"] and "400 MP" in skipped["huge.png"], skipped
        on_resource = {s["file"]: s["reason"] for s in status.get("skippedFiles", [])}
        assert on_resource == skipped, status.get("skippedFiles")  # kubectl shows it, not only the manifest
    elif c.file != "*":
        assert c.file not in skipped, skipped


def test_an_image_on_the_platforms_list_runs(cat):
    image = "registry.example.com/lora/t:2"  # under the catalogue's ALLOWED_IMAGES
    assert "registry.example.com/lora/*" in ALLOWED_IMAGES
    cat.ground.apply(job(cat.ns, "allowed-image", merged(BASE, {"placement": {"image": image}})))
    pod = running_pod(cat.ground, cat.ns, "allowed-image")
    assert pod["spec"]["containers"][0]["image"] == image
    end_pod(cat.ground, cat.ns, pod["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, "allowed-image", "Succeeded")


@pytest.mark.parametrize("name", ["..", ".", "sd15-character/..", "%2e%2e", "a" * 254])
def test_a_template_name_that_is_no_object_name_finds_no_template(cat, name):
    """Operator side of the CRD's pattern on spec.template (a job stored under an older CRD)."""
    kube = Kube(cat.ground.api_client())
    assert kube.get_template(cat.ns, "sd15-character") is not None
    assert kube.get_template(cat.ns, name) is None


def test_immutable_edit_after_admission_is_refused(cat):
    cat.ground.apply(job(cat.ns, "frozen", BASE))
    running_pod(cat.ground, cat.ns, "frozen")
    result = cat.ground.kubectl("patch", "ltj", "frozen", "-n", cat.ns, "--type=merge",
                                "-p", '{"spec":{"training":{"epochs":5}}}', check=False)
    assert result.returncode != 0
    assert "spec.training is immutable once the job was admitted; create a new job" in result.stderr, result.stderr
    end_pod(cat.ground, cat.ns, running_pod(cat.ground, cat.ns, "frozen")["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, "frozen", "Succeeded")


def test_job_name_at_the_253_character_limit_runs(cat):
    name = ("a" * 60 + ".") * 4 + "b" * 9
    assert len(name) == 253
    cat.ground.apply(job(cat.ns, name, BASE))
    pods = []

    def pod_of_job():
        pods[:] = [p for p in trainer_pods(cat.ground, cat.ns) if p["metadata"]["labels"]["lora-operator.io/job-uid"]
                   == get_job(cat.ground, cat.ns, name)["metadata"]["uid"] and p["status"].get("phase") == "Running"]
        return bool(pods)
    cat.ground.wait_for(pod_of_job, timeout=60, what="the long-named job's pod running")
    pod = pods[0]
    assert len(pod["metadata"]["name"]) <= 63 and pod["metadata"]["name"].endswith("-a1")
    assert len(pod["metadata"]["labels"]["lora-operator.io/job"]) <= 63
    end_pod(cat.ground, cat.ns, pod["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, name, "Succeeded")


def test_zz_operator_kept_serving_and_no_other_job_was_affected(cat):
    """Runs last (name order): the job applied before every bad case and one applied after them."""
    assert cat.operator.proc.alive(), cat.operator.tail()
    before = get_job(cat.ground, cat.ns, "before")["status"]
    assert before["phase"] == "Succeeded" and len(before["attempts"]) == 1
    cat.ground.apply(job(cat.ns, "after", BASE))
    end_pod(cat.ground, cat.ns, running_pod(cat.ground, cat.ns, "after")["metadata"]["name"], 0)
    wait_phase(cat.ground, cat.operator, cat.ns, "after", "Succeeded")
    assert len(get_job(cat.ground, cat.ns, "after")["status"]["attempts"]) == 1
    log = cat.operator.proc.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_the_catalogue_has_at_least_30_cases():
    assert len(REFUSED) + len(ADMISSION) + len(TRAINED) + len(OTHER) >= 30
