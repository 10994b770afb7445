"""The node-local model cache: content keys, atomic fills, LRU eviction within a budget, and the
file lock that keeps two processes on one node from filling or evicting the same entry at once."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pytest

from lora_operator.storage import store_from_env
from lora_trainer import fetch, model_cache
from lora_trainer.errors import TransientError
from lora_trainer.model_cache import FILL_PREFIX, ModelCache, content_key


def writer(payload: bytes, name: str = "weights.bin"):
    calls = []

    def fill(folder: Path) -> None:
        calls.append(folder)
        (folder / name).write_bytes(payload)
    return fill, calls


def test_a_key_changes_with_any_pin_and_only_then():
    base = content_key("s3://m/sd", {"unet.bin": ["etag-1", 10]})
    assert base == content_key("s3://m/sd", {"unet.bin": ["etag-1", 10]})
    assert len({base, content_key("s3://m/sd", {"unet.bin": ["etag-2", 10]}),
                content_key("s3://m/sd", {"unet.bin": ["etag-1", 11]}),
                content_key("s3://m/other", {"unet.bin": ["etag-1", 10]})}) == 4


def test_a_miss_fills_once_and_a_hit_transfers_nothing(tmp_path):
    cache = ModelCache(tmp_path)
    fill, calls = writer(b"x" * 1000)
    folder, first = cache.get("s3://m/sd", "k1", fill)
    assert (first.hit, first.bytes) == (False, 1000) and (folder / "weights.bin").read_bytes() == b"x" * 1000
    again, second = cache.get("s3://m/sd", "k1", fill)
    assert again == folder and (second.hit, second.bytes) == (True, 0) and len(calls) == 1
    assert calls[0] != folder  # filled under another name, then renamed into place


def test_a_failed_or_unverified_fill_leaves_no_entry(tmp_path):
    cache = ModelCache(tmp_path)

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"half")
        raise ConnectionError("connection reset")

    with pytest.raises(ConnectionError):
        cache.get("s3://m/sd", "k1", broken)
    assert not cache.entry("k1").exists() and cache.entries() == []
    assert not list(cache.models.glob(f"{FILL_PREFIX}*"))

    def short(folder: Path) -> None:
        raise TransientError("model s3://m/sd: weights.bin was not downloaded whole")
    fill, _ = writer(b"abc")
    with pytest.raises(TransientError):
        cache.get("s3://m/sd", "k1", fill, verify=lambda folder: short(folder))
    assert not cache.entry("k1").exists()


def test_a_fill_left_by_a_dead_process_is_no_entry_and_is_cleared(tmp_path):
    cache = ModelCache(tmp_path)
    stale = cache.models / f"{FILL_PREFIX}k1-deadbeef"
    stale.mkdir(parents=True)
    (stale / "weights.bin").write_bytes(b"half")
    assert cache.entries() == []
    fill, calls = writer(b"whole")
    folder, record = cache.get("s3://m/sd", "k1", fill)
    assert not record.hit and (folder / "weights.bin").read_bytes() == b"whole" and not stale.exists()


def test_least_recently_used_entries_go_past_the_budget(tmp_path):
    cache = ModelCache(tmp_path, budget_bytes=250)
    for key in ("a", "b"):
        cache.get(f"s3://m/{key}", key, writer(b"1" * 100)[0])
        time.sleep(0.02)  # distinct use times on coarse clocks
    cache.get("s3://m/a", "a", writer(b"")[0])  # a used again: b is now the least recent
    time.sleep(0.02)
    cache.get("s3://m/c", "c", writer(b"1" * 100)[0])
    assert sorted(key for _, key, _ in cache.entries()) == ["a", "c"]
    # the entry just fetched stays even when it alone is over the budget
    cache.get("s3://m/big", "big", writer(b"1" * 400)[0])
    assert [key for _, key, _ in cache.entries()] == ["big"]


def test_eviction_skips_an_entry_another_process_holds(tmp_path):
    cache = ModelCache(tmp_path, budget_bytes=0)
    cache.get("s3://m/a", "a", writer(b"1" * 10)[0])
    from filelock import FileLock
    with FileLock(cache.models / "a.lock"):
        assert cache.evict() == []
    assert cache.evict() == ["a"]


def _fill_slowly(root: str, started: float, results) -> None:
    def fill(folder: Path) -> None:
        time.sleep(0.5)
        (folder / "weights.bin").write_bytes(b"w" * 64)
    _, record = ModelCache(Path(root)).get("s3://m/sd", "shared", fill)
    results.put(record.hit)


def test_two_processes_fetching_one_model_download_it_once(tmp_path):
    """The lock's reason: two trainer processes on one node (a retry beside a terminating attempt)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=_fill_slowly, args=(str(tmp_path), time.time(), results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(results.get(timeout=5) for _ in procs) == [False, True]


def test_an_s3_model_fetched_again_transfers_nothing(minio_server, tmp_path, monkeypatch):
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    minio_server.client().make_bucket(bucket)
    store = store_from_env(f"s3://{bucket}/", minio_server.env())
    store.put_bytes("models/tiny/unet/w.safetensors", os.urandom(4096))
    store.put_bytes("models/tiny/model_index.json", b"{}")
    uri = f"s3://{bucket}/models/tiny"
    model_cache.FETCHED.clear()
    env = {**minio_server.env(), "LORA_CACHE_BUDGET_BYTES": "100000"}
    first = fetch.fetch_model(uri, tmp_path, env=env)
    second = fetch.fetch_model(uri, tmp_path, env=env)
    assert first == second and first.parent == tmp_path / "models"
    assert [(r.hit, r.bytes) for r in model_cache.FETCHED] == [(False, 4098), (True, 0)]
    # the budget from the environment takes effect: a second model evicts the first
    store.put_bytes("models/other/w.safetensors", os.urandom(99000))
    fetch.fetch_model(f"s3://{bucket}/models/other", tmp_path, env=env)
    assert not first.exists()
