"""Model fetching that needs no object store: file:// in place, hf:// routing and refusals.

The s3:// path (ranged parallel GETs, the ETag cache) is tested against a real MinIO in
tests/cluster/test_storage_minio.py.
"""

from __future__ import annotations

import pytest

from lora_trainer import fetch
from lora_trainer.errors import ModelError

pytestmark = pytest.mark.trainer


def test_file_uris_are_used_in_place(tmp_path):
    (tmp_path / "model").mkdir()
    assert fetch.fetch_model(f"file://{tmp_path}/model", tmp_path / "cache") == tmp_path / "model"
    assert not (tmp_path / "cache").exists()


def test_a_missing_file_model_is_a_model_error_naming_the_uri(tmp_path):
    with pytest.raises(ModelError, match=f"file://{tmp_path}/absent"):
        fetch.fetch_model(f"file://{tmp_path}/absent", tmp_path / "cache")


def test_a_malformed_uri_is_a_model_error():
    with pytest.raises(ModelError, match="gs://x"):
        fetch.fetch_model("gs://x/y", None)


def test_hf_uris_go_to_snapshot_download_with_the_token(tmp_path, monkeypatch):
    import huggingface_hub

    # A stand-in for the hub, which this machine cannot reach; the test checks the routing and token.

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    path = fetch.fetch_model("hf://org/tiny-sd@main", tmp_path / "cache", env={"HF_TOKEN": "hf_secret"})
    assert path == tmp_path / "snapshot"
    assert calls[0]["repo_id"] == "org/tiny-sd" and calls[0]["revision"] == "main"
    assert calls[0]["token"] == "hf_secret" and calls[0]["cache_dir"] == tmp_path / "cache" / "hf"


def test_an_unreachable_hub_is_a_model_error_naming_the_uri(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:1"}  # nothing listens there: refused at once
    with pytest.raises(ModelError, match="hf://org/never-downloaded"):
        fetch.fetch_model("hf://org/never-downloaded", tmp_path / "cache", env=env)
