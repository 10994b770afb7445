"""kubectl lora against the real control plane and MinIO, with a finished status written by hand."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from PIL import Image

from lora_operator.kubectl_lora import main
from lora_operator.kubectl_lora.sheet import LABEL_WIDTH, PAD
from testground.operator import KWOK_DATASET, install_crds, run_kubectl_json
from testground.tenant import tenant

pytestmark = pytest.mark.cluster

SPEC = {
    "baseModel": {"family": "sd15", "uri": "s3://models/tiny-sd15"},
    "dataset": {"uri": KWOK_DATASET},
    "output": {"uri": "s3://loras/"},
    "training": {"epochs": 2, "unetLearningRate": 1e-4},
}
KOHYA = b"kohya-weights-%d"
COLOURS = [(255, 0, 0), (0, 255, 0)]


def png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def finished_status(bucket: str, ns: str, name: str, phase: str = "Succeeded") -> dict:
    prefix = f"s3://{bucket}/{ns}/{name}/"
    checkpoints, previews = [], []
    for epoch, loss in ((1, 0.2), (2, 0.1)):
        ck = f"epoch-{epoch:04d}"
        checkpoints += [
            {"name": ck, "epoch": epoch, "step": 4 * epoch, "format": "kohya", "validationLoss": loss,
             "uri": f"{prefix}checkpoints/{ck}/kohya.safetensors"},
            {"name": ck, "epoch": epoch, "step": 4 * epoch, "format": "diffusers", "validationLoss": loss,
             "uri": f"{prefix}checkpoints/{ck}/diffusers"},
        ]
        previews.append({"epoch": epoch, "prompt": "a photo",
                         "uris": [f"{prefix}previews/{ck}/p0-i{i}.png" for i in range(2)]})
    return {"phase": phase, "resolvedSpec": SPEC, "checkpoints": checkpoints, "previews": previews,
            "progress": {"step": 8, "totalSteps": 8, "epoch": 2, "totalEpochs": 2, "percent": 100, "loss": 0.1},
            "attempts": [{"number": 1, "pod": f"{name}-1", "node": "gpu-0", "reason": "TrainingComplete",
                          "exitCode": 0}]}


def upload_outputs(minio, bucket: str, ns: str, name: str) -> None:
    client = minio.client()
    for epoch in (1, 2):
        base = f"{ns}/{name}/checkpoints/epoch-{epoch:04d}/"
        for key, data in ((base + "kohya.safetensors", KOHYA % epoch),
                          (base + "diffusers/pytorch_lora_weights.safetensors", b"diffusers")):
            client.put_object(bucket, key, io.BytesIO(data), len(data))
        for i, colour in enumerate(COLOURS):
            data = png(colour)
            key = f"{ns}/{name}/previews/epoch-{epoch:04d}/p0-i{i}.png"
            client.put_object(bucket, key, io.BytesIO(data), len(data))


@pytest.fixture(scope="module")
def setup(ground):
    install_crds(ground)
    ns, bucket = f"t-{uuid.uuid4().hex[:8]}", f"k-{uuid.uuid4().hex[:8]}"
    with tenant(ground, ns, bucket=bucket):
        yield ns, bucket


def make_finished_job(ground, setup, name: str, phase: str = "Succeeded") -> str:
    ns, bucket = setup
    ground.apply({"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                  "metadata": {"name": name, "namespace": ns}, "spec": SPEC})
    ground.kubectl("patch", "ltj", name, "-n", ns, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": finished_status(bucket, ns, name, phase)}))
    upload_outputs(ground.minio, bucket, ns, name)
    return name


@pytest.fixture(scope="module")
def done(ground, setup):
    return make_finished_job(ground, setup, "done")


def lora(ground, setup, *args: str, storage: bool = True) -> list[str]:
    ns, _ = setup
    flags = ["--kubeconfig", str(ground.kubeconfig), "-n", ns]
    if storage:
        m = ground.minio
        flags += ["--s3-endpoint", m.endpoint, "--access-key", m.access_key, "--secret-key", m.secret_key,
                  "--no-s3-secure"]
    return [*flags, *args]


def test_list_shows_the_finished_job(ground, setup, done, capsys):
    assert main(lora(ground, setup, "list")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "EPOCH", "QUEUE", "STARTS", "AGE"]
    row = next(line.split() for line in lines if line.startswith("done "))
    assert row[:5] == ["done", "Succeeded", "100%", "2/2", "-"]


def test_describe_shows_spec_attempts_and_marks_the_best_checkpoint(ground, setup, done, capsys):
    assert main(lora(ground, setup, "describe", done)) == 0
    out = capsys.readouterr().out
    assert "unetLearningRate: 0.0001" in out and "done-1" in out and "TrainingComplete" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("epoch-")}
    assert rows["epoch-0002"].rstrip().endswith("*") and "0.1000" in rows["epoch-0002"]
    assert not rows["epoch-0001"].rstrip().endswith("*")


def test_previews_composes_epochs_as_rows_and_images_as_columns(ground, setup, done, tmp_path):
    out = tmp_path / "grid.png"
    assert main(lora(ground, setup, "previews", done, "-o", str(out))) == 0
    grid = Image.open(out)
    assert grid.size == (LABEL_WIDTH + 2 * (16 + PAD) + PAD, 2 * (16 + PAD) + PAD)
    assert grid.getpixel((LABEL_WIDTH + PAD + 8, PAD + 8)) == COLOURS[0]
    assert grid.getpixel((LABEL_WIDTH + 2 * PAD + 16 + 8, 2 * PAD + 16 + 8)) == COLOURS[1]
    one = tmp_path / "one.png"
    assert main(lora(ground, setup, "previews", done, "--epoch", "2", "-o", str(one))) == 0
    assert Image.open(one).height == 16 + 2 * PAD


def test_pull_downloads_the_last_kohya_file_or_a_diffusers_folder(ground, setup, done, tmp_path):
    assert main(lora(ground, setup, "pull", done, "-o", str(tmp_path / "a"))) == 0
    assert (tmp_path / "a" / "kohya.safetensors").read_bytes() == KOHYA % 2
    args = ["pull", done, "--checkpoint", "epoch-0001", "--format", "diffusers", "-o", str(tmp_path / "b")]
    assert main(lora(ground, setup, *args)) == 0
    assert (tmp_path / "b" / "diffusers" / "pytorch_lora_weights.safetensors").read_bytes() == b"diffusers"


def test_select_patches_the_spec_and_pull_follows_it(ground, setup, tmp_path, capsys):
    name = make_finished_job(ground, setup, "sel")
    assert main(lora(ground, setup, "select", name, "epoch-0009")) == 1
    assert "has no checkpoint 'epoch-0009' (checkpoints: epoch-0001, epoch-0002)" in capsys.readouterr().err
    assert main(lora(ground, setup, "select", name, "epoch-0001")) == 0
    assert run_kubectl_json(ground, "get", "ltj", name, "-n", setup[0])["spec"]["selectedCheckpoint"] == "epoch-0001"
    assert main(lora(ground, setup, "pull", name, "-o", str(tmp_path))) == 0
    assert (tmp_path / "kohya.safetensors").read_bytes() == KOHYA % 1


def test_retrain_creates_a_job_with_overrides_and_watch_reports_its_end(ground, setup, done, capsys):
    args = ["retrain", done, "--set", "training.unetLearningRate=5e-5", "--set", "network.dim=8", "--name", "again"]
    assert main(lora(ground, setup, *args)) == 0
    new = run_kubectl_json(ground, "get", "ltj", "again", "-n", setup[0])
    assert new["spec"]["training"] == {"epochs": 2, "unetLearningRate": 5e-5}
    assert new["spec"]["network"]["dim"] == 8
    assert new["metadata"]["annotations"]["lora-operator.io/retrained-from"] == done
    assert main(lora(ground, setup, *args)) == 1
    assert "ltj/again already exists" in capsys.readouterr().err
    assert main(lora(ground, setup, "retrain", "again")) == 1
    assert "retrain a finished job" in capsys.readouterr().err
    assert main(lora(ground, setup, "watch", done)) == 0
    failed = make_finished_job(ground, setup, "failed", phase="Failed")
    assert main(lora(ground, setup, "watch", failed)) == 1


def test_unknown_job_and_unreachable_storage_are_one_line_errors(ground, setup, done, capsys, tmp_path):
    ns, _ = setup
    assert main(lora(ground, setup, "describe", "nope", storage=False)) == 1
    err = capsys.readouterr().err
    assert err == f"error: ltj/nope not found in namespace {ns}\n"
    flags = ["--kubeconfig", str(ground.kubeconfig), "-n", ns, "--s3-endpoint", "127.0.0.1:1", "--no-s3-secure"]
    assert main([*flags, "pull", done, "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read s3://") and "storage at 127.0.0.1:1" in err and err.count("\n") == 1


def test_suspend_and_resume_set_spec_suspend_of_an_unfinished_job(ground, setup, done, capsys):
    ns, _ = setup
    ground.apply({"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                  "metadata": {"name": "pausable", "namespace": ns}, "spec": SPEC})

    def suspended() -> bool | None:
        return run_kubectl_json(ground, "get", "ltj", "pausable", "-n", ns)["spec"].get("suspend")

    assert main(lora(ground, setup, "suspend", "pausable", storage=False)) == 0
    assert suspended() is True and "ltj/pausable suspended" in capsys.readouterr().out
    assert main(lora(ground, setup, "suspend", "pausable", storage=False)) == 0
    assert "already suspended" in capsys.readouterr().out
    assert main(lora(ground, setup, "resume", "pausable", storage=False)) == 0
    assert suspended() is False and "ltj/pausable resumed" in capsys.readouterr().out
    assert main(lora(ground, setup, "suspend", done, storage=False)) == 1
    assert f"ltj/{done} is Succeeded; only an unfinished job can be suspended" in capsys.readouterr().err


def test_list_takes_namespace_after_the_subcommand_all_namespaces_labels_and_tags(ground, setup, capsys):
    ns, _ = setup
    other = f"{ns}-b"
    ground.kubectl("create", "namespace", other)
    try:
        for where, name, labels in ((ns, "tagged", {"team": "a", "tag.lora-operator.io/portrait": ""}),
                                    (other, "elsewhere", {"team": "b", "tag.lora-operator.io/portrait": ""})):
            ground.apply({"apiVersion": "lora-operator.io/v1alpha1", "kind": "LoraTrainingJob",
                          "metadata": {"name": name, "namespace": where, "labels": labels}, "spec": SPEC})
        base = ["--kubeconfig", str(ground.kubeconfig)]

        def names(*args: str) -> list[list[str]]:
            assert main([*base, "list", *args]) == 0
            return [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]

        assert ["elsewhere", "Pending"] in names("-n", other)
        assert not any(row[0] == "tagged" for row in names("-n", other))
        assert names("-n", ns, "-l", "team=a") == [["tagged", "Pending"]]
        assert names("-A", "--tag", "portrait") == [[ns, "tagged"], [other, "elsewhere"]]
        assert names("-A", "-l", "team=b", "--tag", "portrait") == [[other, "elsewhere"]]
        assert main([*base, "list", "-n", ns, "--tag", "nothing-has-it"]) == 0
        assert (capsys.readouterr().out ==
                f"No LoraTrainingJobs in namespace {ns} match 'tag.lora-operator.io/nothing-has-it'.\n")
    finally:
        ground.kubectl("delete", "namespace", other, "--wait=false")


def test_logs_of_a_gone_pod_are_the_lines_its_trainer_kept_per_attempt(ground, setup, capsys):
    ns, bucket = setup
    name = make_finished_job(ground, setup, "logged", phase="Failed")
    prefix = f"s3://{bucket}/{ns}/{name}/"
    status = {"output": {"prefix": prefix},
              "attempts": [{"number": 1, "pod": f"{name}-1", "reason": "Crashed", "exitCode": 1},
                           {"number": 2, "pod": f"{name}-2", "reason": "Crashed", "exitCode": 1}]}
    ground.kubectl("patch", "ltj", name, "-n", ns, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": status}))
    client = ground.minio.client()
    client.put_object(bucket, f"{ns}/{name}/logs/attempt-1.txt", io.BytesIO(b"first try\nerror: out of memory\n"), 31)

    assert main(lora(ground, setup, "logs", name, "--attempt", "1")) == 0
    out = capsys.readouterr()
    assert out.out == "first try\nerror: out of memory\n"
    assert f"pod {name}-1 is gone: the last lines of attempt 1, kept at {prefix}logs/attempt-1.txt" in out.err
    assert main(lora(ground, setup, "logs", name)) == 1  # the last attempt kept nothing: said, with the URI
    err = capsys.readouterr().err
    assert f"no kept log of attempt 2 either: {prefix}logs/attempt-2.txt does not exist" in err and err.count("\n") == 1
    assert main(lora(ground, setup, "logs", name, "--attempt", "5")) == 1
    assert f"ltj/{name} has no attempt 5 (attempts: 1, 2)" in capsys.readouterr().err
