"""The file:// object store: the same interface as S3, on a local folder."""

from __future__ import annotations

import pytest

from lora_operator.storage import LocalStore, ObjectNotFound, StorageError, open_store, store_from_env


@pytest.fixture
def store(tmp_path):
    return open_store((tmp_path / "bucket").as_uri())


def test_put_and_get_bytes_and_files(store, tmp_path):
    store.put_bytes("a/b.json", b'{"x": 1}')
    assert store.get_bytes("a/b.json") == b'{"x": 1}'
    source = tmp_path / "src.bin"
    source.write_bytes(b"\x00" * 1000)
    store.put_file("models/m.bin", source)
    assert source.exists()
    store.get_file("models/m.bin", tmp_path / "out" / "m.bin")
    assert (tmp_path / "out" / "m.bin").read_bytes() == b"\x00" * 1000


def test_missing_objects_read_as_none_or_not_found(store, tmp_path):
    assert store.get_bytes("nope") is None
    assert not store.exists("nope") and store.stat("nope") is None
    with pytest.raises(ObjectNotFound, match="nope"):
        store.get_file("nope", tmp_path / "x")
    store.delete("nope")  # deleting a missing object is fine


def test_list_is_recursive_sorted_and_relative_to_the_prefix(store):
    for key in ["b/2.png", "a.txt", "b/1.png", "b/c/3.png", "bb.txt"]:
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list()] == ["a.txt", "b/1.png", "b/2.png", "b/c/3.png", "bb.txt"]
    assert [o.key for o in store.list("b/")] == ["b/1.png", "b/2.png", "b/c/3.png"]
    assert [o.key for o in store.list("b")] == ["b/1.png", "b/2.png", "b/c/3.png", "bb.txt"]
    assert store.list("missing/") == []
    info = store.list("a.txt")[0]
    assert info.size == 5 and info.etag


def test_etag_changes_when_content_changes(store):
    store.put_bytes("k", b"one")
    first = store.stat("k").etag
    store.put_bytes("k", b"three")
    assert store.stat("k").etag != first


def test_copy_and_delete(store):
    store.put_bytes("src", b"data")
    store.copy("src", "dst/copy")
    assert store.get_bytes("dst/copy") == b"data"
    store.delete("src")
    assert not store.exists("src") and store.exists("dst/copy")
    with pytest.raises(ObjectNotFound):
        store.copy("src", "again")


def test_upload_dir_and_download_prefix_round_trip_with_unicode_names(store, tmp_path):
    local = tmp_path / "local"
    (local / "sub dir").mkdir(parents=True)
    (local / "a.png").write_bytes(b"a")
    (local / "sub dir" / "é 猫.txt").write_text("cat")
    keys = store.upload_dir(local, "ds")
    assert keys == ["ds/a.png", "ds/sub dir/é 猫.txt"]
    paths = store.download_prefix("ds", tmp_path / "copy")
    assert [p.relative_to(tmp_path / "copy").as_posix() for p in paths] == ["a.png", "sub dir/é 猫.txt"]
    assert (tmp_path / "copy" / "sub dir" / "é 猫.txt").read_text() == "cat"


def test_keys_cannot_escape_the_root(store):
    with pytest.raises(StorageError, match=r"\.\."):
        store.put_bytes("../outside", b"x")


def test_store_from_env_opens_file_uris_without_credentials(tmp_path):
    store = store_from_env(f"file://{tmp_path}/x/", env={})
    assert isinstance(store, LocalStore)
    store.put_bytes("k", b"v")
    assert (tmp_path / "x" / "k").read_bytes() == b"v"
    assert store.uri_of("k") == f"file://{tmp_path}/x/k"


def test_no_temporary_files_are_left_or_listed(store):
    store.put_bytes("k", b"v" * 10)
    assert [o.key for o in store.list()] == ["k"]
    assert [p.name for p in store.root.iterdir()] == ["k"]
