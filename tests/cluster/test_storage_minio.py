"""The s3:// store and model fetching against a real MinIO, including an outage."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid

import pytest

from lora_operator.storage import RetryPolicy, S3Store, StorageError, s3, store_from_env
from lora_trainer import fetch
from lora_trainer.errors import ModelError, TransientError

pytestmark = pytest.mark.cluster


@pytest.fixture
def bucket(minio_server):
    name = f"t-{uuid.uuid4().hex[:12]}"
    minio_server.client().make_bucket(name)
    return name


def test_put_get_list_copy_delete(minio_server, bucket, tmp_path):
    store = store_from_env(f"s3://{bucket}/jobs/ns/j1", minio_server.env())
    store.put_bytes("progress.json", b'{"step": 3}')
    source = tmp_path / "ck.safetensors"
    source.write_bytes(os.urandom(100_000))
    store.put_file("checkpoints/epoch-0001/kohya.safetensors", source)
    assert store.get_bytes("progress.json") == b'{"step": 3}'
    assert store.get_bytes("missing.json") is None
    assert store.exists("progress.json") and not store.exists("nope")
    listed = store.list()
    assert [o.key for o in listed] == ["checkpoints/epoch-0001/kohya.safetensors", "progress.json"]
    assert listed[0].size == 100_000 and listed[0].etag == hashlib.md5(source.read_bytes()).hexdigest()
    store.copy("checkpoints/epoch-0001/kohya.safetensors", "final/kohya.safetensors")
    store.get_file("final/kohya.safetensors", tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == source.read_bytes()
    store.delete("progress.json")
    store.delete("progress.json")
    assert [o.key for o in store.list("checkpoints/")] == ["checkpoints/epoch-0001/kohya.safetensors"]
    # The prefix is respected: another job's store sees nothing of this one.
    assert store_from_env(f"s3://{bucket}/jobs/ns/j", minio_server.env()).list() == []


def test_upload_dir_and_download_prefix(minio_server, bucket, tmp_path):
    local = tmp_path / "ds"
    (local / "sub dir").mkdir(parents=True)
    (local / "a.png").write_bytes(b"png")
    (local / "sub dir" / "é.txt").write_text("caption")
    store = store_from_env(f"s3://{bucket}/", minio_server.env())
    assert store.upload_dir(local, "datasets/x") == ["datasets/x/a.png", "datasets/x/sub dir/é.txt"]
    paths = store.download_prefix("datasets/x/", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in paths) == ["a.png", "sub dir/é.txt"]
    assert (tmp_path / "copy" / "sub dir" / "é.txt").read_text() == "caption"


@pytest.fixture
def counted_downloads(monkeypatch):
    """Small parts so a few MB take several ranged GETs; counts files and ranges fetched."""
    # Spies on the real S3 store against the real MinIO: calls pass through and are counted.
    monkeypatch.setattr(s3, "PART_SIZE", 1 << 20)
    counts = {"files": [], "ranges": 0}
    get_file, get_range = S3Store.get_file, S3Store._get_range

    def counting_get_file(self, key, path):
        counts["files"].append(key)
        return get_file(self, key, path)

    def counting_get_range(self, *args):
        counts["ranges"] += 1
        return get_range(self, *args)

    monkeypatch.setattr(S3Store, "get_file", counting_get_file)
    monkeypatch.setattr(S3Store, "_get_range", counting_get_range)
    return counts


def test_fetch_downloads_large_objects_in_ranges_and_reuses_the_cache(
        minio_server, bucket, tmp_path, counted_downloads, caplog):
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    weights = os.urandom(5 * (1 << 20) + 123)
    (model / "unet" / "weights.safetensors").write_bytes(weights)
    (model / "model_index.json").write_text("{}")
    store = store_from_env(f"s3://{bucket}/", minio_server.env())
    store.upload_dir(model, "models/tiny")
    uri = f"s3://{bucket}/models/tiny"

    local = fetch.fetch_model(uri, tmp_path / "cache", env=minio_server.env())
    assert (local / "unet" / "weights.safetensors").read_bytes() == weights
    assert (local / "model_index.json").read_text() == "{}"
    assert len(counted_downloads["files"]) == 2
    assert counted_downloads["ranges"] == 6 + 1  # 5 MB + a bit in 1 MB parts, plus the small file

    assert fetch.fetch_model(uri, tmp_path / "cache", env=minio_server.env()) == local
    assert len(counted_downloads["files"]) == 2  # same ETags: nothing downloaded

    # A changed object makes a new cache entry (keyed by the ETags); the old entry never changes
    # under a reader, and ages out of the cache.
    store.put_bytes("models/tiny/model_index.json", b'{"changed": true}')
    changed = fetch.fetch_model(uri, tmp_path / "cache", env=minio_server.env())
    assert changed != local and (changed / "model_index.json").read_text() == '{"changed": true}'
    assert (local / "model_index.json").read_text() == "{}"
    assert len(counted_downloads["files"]) == 4


def test_fetch_of_one_object_returns_that_file(minio_server, bucket, tmp_path):
    store_from_env(f"s3://{bucket}/", minio_server.env()).put_bytes("loras/x.safetensors", b"w")
    path = fetch.fetch_model(f"s3://{bucket}/loras/x.safetensors", tmp_path / "cache", env=minio_server.env())
    assert path.name == "x.safetensors" and path.read_bytes() == b"w"


def test_a_missing_model_is_a_model_error_naming_the_uri(minio_server, bucket, tmp_path):
    for uri in (f"s3://{bucket}/models/absent/", f"s3://no-such-bucket-{bucket}/m/"):
        with pytest.raises(ModelError, match=uri.split("//")[1].split("/")[0]):
            fetch.fetch_model(uri, tmp_path / "cache", env=minio_server.env())


def test_unreachable_storage_is_a_transient_error(tmp_path):
    env = {"S3_ENDPOINT": "127.0.0.1:1", "S3_SECURE": "false", "AWS_ACCESS_KEY_ID": "a",
           "AWS_SECRET_ACCESS_KEY": "b", "S3_REGION": "us-east-1"}
    with pytest.raises(TransientError, match="s3://models/m"):
        fetch.fetch_model("s3://models/m/", tmp_path / "cache", env=env, policy=RetryPolicy(total_seconds=1))


@pytest.mark.chaos
def test_an_upload_survives_a_storage_outage(minio_server, bucket, tmp_path):
    store = store_from_env(f"s3://{bucket}/out/", minio_server.env())
    source = tmp_path / "state.bin"
    payload = os.urandom(3 << 20)
    source.write_bytes(payload)
    outcome = {}

    def upload():
        try:
            store.put_file("state/model.bin", source)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    minio_server.stop()
    try:
        # With the budget spent the upload fails clearly and the local file stays.
        short = store_from_env(f"s3://{bucket}/out/", minio_server.env(), policy=RetryPolicy(total_seconds=1))
        with pytest.raises(StorageError, match=f"s3://{bucket}/out/state/model.bin") as error:
            short.put_file("state/model.bin", source)
        assert error.value.transient and source.read_bytes() == payload

        thread = threading.Thread(target=upload)
        thread.start()
        time.sleep(4)
        assert thread.is_alive() and not outcome
    finally:
        minio_server.start()
    thread.join(timeout=90)
    assert outcome == {"ok": True}
    assert store.get_bytes("state/model.bin") == payload
    assert source.exists()


def test_dataset_upload_to_minio_sends_only_what_changed(minio_server, bucket, tmp_path, capsys):
    """`lora-train upload` against the real MinIO: a second run sends nothing, an edited caption alone."""
    from lora_trainer.cli import main
    from testground.seed import mixed_dataset

    folder, uri, env = mixed_dataset(tmp_path / "corgi"), f"s3://{bucket}/datasets/corgi/", minio_server.env()
    assert main(["upload", str(folder), uri], env) == 0
    store = store_from_env(uri, env)
    assert [o.key for o in store.list()] == ["a.png", "a.txt", "b.jpg", "repeats.json", "sub dir/c.TXT",
                                             "sub dir/c.webp"]
    assert main(["upload", str(folder), uri], env) == 0
    assert "; 6 already there with the same content" in capsys.readouterr().out.splitlines()[-2]
    (folder / "a.txt").write_text("corgi, sitting, studio light")
    assert main(["upload", str(folder), uri], env) == 0
    out = capsys.readouterr().out
    assert "uploaded 1 file(s)" in out and "; 5 already there with the same content" in out
    assert store.get_bytes("a.txt") == b"corgi, sitting, studio light"


def test_dataset_upload_to_a_missing_bucket_names_it(minio_server, tmp_path, capsys):
    from lora_trainer.cli import main
    from testground.seed import mixed_dataset

    folder = mixed_dataset(tmp_path / "corgi")
    code = main(["upload", str(folder), "s3://no-such-bucket-here/corgi/"], minio_server.env())
    err = capsys.readouterr().err
    assert code == 64, err
    assert "s3://no-such-bucket-here/ (bucket) does not exist" in err, err


def test_a_single_file_base_model_passes_the_operator_s_input_check_and_a_missing_one_fails_it(minio_server, bucket):
    from lora_operator.api import Reason, resolve_spec
    from lora_operator.confirmed import Confirmed
    from lora_operator.input_checks import missing_input
    from lora_operator.storage import open_store

    minio_server.client().put_object(bucket, "models/anime-xl.safetensors", io.BytesIO(b"weights"), 7)
    access = minio_server.env()

    def opener(uri):
        return open_store(uri, endpoint=access["S3_ENDPOINT"], access_key=access["AWS_ACCESS_KEY_ID"],
                          secret_key=access["AWS_SECRET_ACCESS_KEY"], secure=False)

    def check(uri):
        spec = resolve_spec({"baseModel": {"family": "sdxl", "uri": uri}, "dataset": {"uri": "s3://d/x/"},
                             "output": {"uri": "s3://o/"}})
        return missing_input(spec, opener, "minio", Confirmed(), secret="ns/lora-storage")

    assert check(f"s3://{bucket}/models/anime-xl.safetensors") is None
    reason, message = check(f"s3://{bucket}/models/absent.safetensors")
    assert reason == Reason.MODEL_NOT_FOUND and "spec.baseModel.uri" in message and "absent.safetensors" in message


def test_the_dataset_check_answers_empty_denied_and_cannot_answer_apart(minio_server, bucket):
    """The operator's dataset check (resolve's, and a Kueue attempt's gate's): an empty prefix and keys
    that may not read it fail the job, naming the field, the URI and the Secret; storage that cannot
    answer gives the error's text, on which resolve goes on and the gate stays closed."""
    from lora_operator.api import Reason
    from lora_operator.confirmed import Confirmed
    from lora_operator.input_checks import DATASET, check_input
    from lora_operator.storage import open_store

    env = minio_server.env()
    minio_server.client().put_object(bucket, "dogs/a.png", io.BytesIO(b"png"), 3)

    def check(uri, endpoint=env["S3_ENDPOINT"], secret_key=env["AWS_SECRET_ACCESS_KEY"]):
        def opener(u):
            return open_store(u, endpoint=endpoint, access_key=env["AWS_ACCESS_KEY_ID"], secret_key=secret_key,
                              secure=False, policy=RetryPolicy(total_seconds=1))

        return check_input(DATASET, uri, opener, (endpoint, secret_key), Confirmed(), "ns/lora-storage")

    assert check(f"s3://{bucket}/dogs/") is None
    assert check(f"s3://{bucket}/cats/") == (Reason.DATASET_EMPTY, f"spec.dataset.uri: nothing under s3://{bucket}/cats/")
    reason, message = check(f"s3://{bucket}/dogs/", secret_key="not-the-key")
    assert reason == Reason.STORAGE_ACCESS_DENIED and message.startswith("spec.dataset.uri: ")
    assert message.endswith("(with the keys of Secret ns/lora-storage)") and bucket in message
    unreachable = check(f"s3://{bucket}/dogs/", endpoint="127.0.0.1:1")
    assert isinstance(unreachable, str) and f"s3://{bucket}/dogs/" in unreachable
