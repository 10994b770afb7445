"""``lora-train upload``: the trainer's own check of a dataset folder, then the upload of what it will use.

Local mode (`--storage`, a folder standing in for s3:// buckets); the same command against the
real MinIO, with unchanged objects left alone, is in tests/cluster/test_storage_minio.py.
"""

from __future__ import annotations

from pathlib import Path

from lora_operator.api import ExitCode
from lora_trainer.cli import main
from testground.seed import mixed_dataset


def uploaded(storage: Path, bucket_prefix: str) -> list[str]:
    base = storage / bucket_prefix
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def test_upload_sends_what_the_trainer_will_use_and_names_what_it_skips(tmp_path, capsys):
    folder, storage = mixed_dataset(tmp_path / "corgi"), tmp_path / "buckets"
    code = main(["upload", str(folder), "s3://data/corgi/", "--storage", str(storage)])
    out, err = capsys.readouterr()
    assert code == ExitCode.SUCCESS, out
    assert "6/6 files" in err  # the progress line at the end
    assert uploaded(storage, "data/corgi") == ["a.png", "a.txt", "b.jpg", "repeats.json",
                                               "sub dir/c.TXT", "sub dir/c.webp"]
    assert (storage / "data/corgi/a.txt").read_text() == "corgi, sitting"
    assert "3 usable image(s) for a sdxl job, 2 file(s) skipped" in out
    assert "skipped broken.png: not a readable image" in out
    assert "skipped notes.pdf: not a png, jpg, jpeg or webp image" in out
    assert "uploaded 6 file(s)" in out and "dataset.uri: s3://data/corgi/" in out


def test_a_folder_the_trainer_would_refuse_is_not_uploaded(tmp_path, capsys):
    folder, storage = tmp_path / "bad", tmp_path / "buckets"
    folder.mkdir()
    (folder / "one.png").write_bytes(b"not an image")
    (folder / "two.jpg").write_bytes(b"")
    code = main(["upload", str(folder), "s3://data/bad/", "--storage", str(storage)])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_DATASET
    assert "no usable image" in err and "one.png" in err and "two.jpg" in err
    assert not (storage / "data").exists()


def test_dry_run_checks_and_counts_but_uploads_nothing(tmp_path, capsys):
    folder, storage = mixed_dataset(tmp_path / "corgi"), tmp_path / "buckets"
    assert main(["upload", str(folder), "s3://data/corgi/", "--storage", str(storage), "--dry-run"]) == 0
    assert "dry run: would upload 6 file(s) to s3://data/corgi/" in capsys.readouterr().out
    assert not storage.exists()


def job_yaml(path: Path, dataset: str) -> Path:
    path.write_text(
        "apiVersion: lora-operator.io/v1alpha1\nkind: LoraTrainingJob\nmetadata: {name: corgi}\n"
        "spec:\n  type: lora\n  baseModel: {family: sd15, uri: 's3://models/sd15/'}\n"
        f"  dataset: {dataset}\n  output: {{uri: 's3://out/'}}\n"
    )
    return path


def test_the_job_yaml_sets_the_family_and_the_dataset_settings_checked(tmp_path, capsys):
    folder, storage = mixed_dataset(tmp_path / "corgi"), tmp_path / "buckets"
    job = job_yaml(tmp_path / "job.yaml", "{uri: 's3://data/elsewhere/'}")
    assert main(["upload", str(folder), "s3://data/corgi/", "--storage", str(storage), "--job", str(job)]) == 0
    out = capsys.readouterr().out
    assert "reads its dataset from s3://data/elsewhere/, not s3://data/corgi/" in out
    assert "3 usable image(s) for a sd15 job" in out

    no_bucket = job_yaml(tmp_path / "no-bucket.yaml", "{uri: 's3://data/x/', crop: {buckets: true, "
                                                      "bucketMinSide: 2048, bucketMaxSide: 4096}}")
    code = main(["upload", str(folder), "s3://data/x/", "--storage", str(storage), "--job", str(no_bucket)])
    assert code == ExitCode.BAD_CONFIG
    assert "dataset.crop: no bucket" in capsys.readouterr().err
    assert not (storage / "data/x").exists()


def test_upload_runs_without_loading_torch(tmp_path):
    """A user preparing a dataset on a laptop waits for no deep-learning import."""
    import subprocess
    import sys

    folder = mixed_dataset(tmp_path / "corgi")
    script = ("import sys; from lora_trainer.cli import main; "
              f"code = main(['upload', {str(folder)!r}, 's3://data/corgi/', '--dry-run']); "
              "sys.exit(code if 'torch' not in sys.modules else 99)")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 0


def test_progress_is_reported_after_each_file(tmp_path):
    from lora_operator.storage import open_store
    from lora_trainer.upload import upload

    folder = mixed_dataset(tmp_path / "corgi")
    calls = []
    done = upload(open_store((tmp_path / "out").as_uri()), folder, ["a.png", "a.txt", "b.jpg"],
                  progress=lambda n, total: calls.append((n, total)))
    assert done.sent == ["a.png", "a.txt", "b.jpg"] and calls == [(1, 3), (2, 3), (3, 3)]


def test_a_caption_shared_by_two_images_is_sent_once(tmp_path):
    from PIL import Image

    from lora_operator.api import Dataset, ModelFamily
    from lora_trainer.upload import plan_upload

    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG")):
        Image.new("RGB", (64, 64)).save(tmp_path / name, fmt)
    (tmp_path / "a.txt").write_text("corgi")
    assert plan_upload(tmp_path, Dataset(), ModelFamily.SD15).files == ["a.jpg", "a.txt", "a.png"]
    (tmp_path / "a.b.png").write_bytes(b"corrupt")  # skipped: its caption stays behind, a.png's glob too
    (tmp_path / "a.b.txt").write_text("not uploaded")
    assert plan_upload(tmp_path, Dataset(), ModelFamily.SD15).files == ["a.jpg", "a.txt", "a.png"]


def test_dry_run_prints_the_training_plan_images_x_repeats_x_epochs_over_batch(tmp_path, capsys):
    from conftest import write_dataset

    folder = write_dataset(tmp_path / "six", n=6)
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: lora-operator.io/v1alpha1\nkind: LoraTrainingJob\nmetadata: {name: six}\n"
        "spec:\n  type: lora\n  baseModel: {family: sd15, uri: 's3://models/sd15/'}\n"
        "  dataset: {uri: 's3://data/six/', repeats: 10, validationSplit: 0}\n  output: {uri: 's3://out/'}\n"
        "  training: {stepsPreset: tensorart, epochs: 2, batchSize: 4}\n")
    assert main(["upload", str(folder), "s3://data/six/", "--dry-run", "--job", str(job)]) == 0
    out = capsys.readouterr().out
    assert "6 images x 10 repeats x 2 epochs / batch 4 = 30 steps; 2 epochs of 15 steps" in out
    assert main(["upload", str(folder), "s3://data/six/", "--dry-run", "--family", "sd15"]) == 0
    out = capsys.readouterr().out
    assert "scenario preset (sd15): 175 x 6 images = 1050 steps" in out
    assert "repeats and epochs do not change the length" in out and "10 epochs of 105 steps" in out
