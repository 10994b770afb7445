"""Model fetching that needs no object store: file:// in place, hf:// routing and refusals.

The s3:// path (ranged parallel GETs, the ETag cache) is tested against a real MinIO in
tests/cluster/test_storage_minio.py; hf:// downloads against a local hub in test_hf_fetch.py.
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


def test_an_unreachable_hub_is_a_model_error_naming_the_uri(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:1"}  # nothing listens there: refused at once
    with pytest.raises(ModelError, match="hf://org/never-downloaded"):
        fetch.fetch_model("hf://org/never-downloaded", tmp_path / "cache", env=env)
