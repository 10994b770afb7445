"""The New job page's folder upload, at the HTTP level: files streamed per request into a session
(a retry skips what arrived), checked and sent by `lora-train upload` with the user's storage keys
to a real MinIO; a bad folder gets the CLI's message and nothing is uploaded."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from io import BytesIO
from pathlib import Path

import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette

from lora_operator.kubectl_lora.objects import StorageOptions
from lora_operator.kubectl_lora.ui.upload import Uploads
from testground.procs import free_port

pytestmark = pytest.mark.cluster


def call(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def png(color: tuple[int, int, int]) -> bytes:
    out = BytesIO()
    Image.new("RGB", (64, 64), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def server(minio_server, tmp_path):
    options = StorageOptions(minio_server.endpoint, minio_server.access_key, minio_server.secret_key, False)
    port = free_port()
    app = Starlette(routes=Uploads(tmp_path / "sessions", options).routes())
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path / "sessions"
    srv.should_exit = True
    thread.join(timeout=10)


def test_a_folder_is_streamed_checked_and_uploaded_and_a_retry_resumes(server, minio_server):
    base, sessions = server
    bucket = f"up-{uuid.uuid4().hex[:10]}"
    minio_server.client().make_bucket(bucket)
    session = uuid.uuid4().hex
    files = {"a.png": png((200, 10, 10)), "a.txt": b"tkxw, a red square", "sub/b.png": png((10, 10, 200)),
             "sub/b.txt": b"tkxw, a blue square"}
    for path, data in list(files.items())[:2]:
        assert call(f"{base}/upload/{session}/files/{path}", "PUT", data)[0] == 200
    assert call(f"{base}/upload/{session}")[1]["files"] == {"a.png": len(files["a.png"]), "a.txt": len(files["a.txt"])}
    for path, data in list(files.items())[2:]:  # the page sends only what the session lacks
        assert call(f"{base}/upload/{session}/files/{path}", "PUT", data)[0] == 200
    uri = f"s3://{bucket}/sets/squares/"
    status, checked = call(f"{base}/upload/{session}/check", "POST", json.dumps({"uri": uri}).encode())
    assert status == 200 and "2 usable image(s)" in checked["report"] and "dry run" in checked["report"]
    assert not list(minio_server.client().list_objects(bucket, recursive=True))  # a check uploads nothing
    status, sent = call(f"{base}/upload/{session}/send", "POST", json.dumps({"uri": uri}).encode())
    assert status == 200, sent
    keys = {o.object_name for o in minio_server.client().list_objects(bucket, recursive=True)}
    assert keys == {f"sets/squares/{p}" for p in files}
    assert not (sessions / session).exists()


@pytest.mark.parametrize(("files", "message"), [
    ({"notes.png": b"not an image"}, "no usable image in dataset folder the folder: notes.png (not a readable image"),
    ({}, "dataset folder the folder holds no jpeg/jpg/png/webp images"),
])
def test_a_bad_folder_gets_the_cli_message_and_nothing_is_uploaded(server, minio_server, files, message):
    base, _ = server
    bucket = f"up-{uuid.uuid4().hex[:10]}"
    minio_server.client().make_bucket(bucket)
    session = uuid.uuid4().hex
    for path, data in files.items():
        call(f"{base}/upload/{session}/files/{path}", "PUT", data)
    for step in ("check", "send"):
        status, answer = call(f"{base}/upload/{session}/{step}", "POST",
                              json.dumps({"uri": f"s3://{bucket}/x/"}).encode())
        assert status == 400 and message in answer["error"], answer
    assert not list(minio_server.client().list_objects(bucket, recursive=True))


def test_paths_outside_the_session_are_refused(server):
    base, sessions = server
    status, answer = call(f"{base}/upload/{uuid.uuid4().hex}/files/..%2F..%2Fescape.png", "PUT", b"x")
    assert status in (400, 404)
    assert not (sessions.parent / "escape.png").exists() and not Path("escape.png").exists()
