"""deploy/argocd/health.lua, run by real Lua interpreters against a job of every phase.

Argo CD runs health checks with gopher-lua (Lua 5.1), so every sample runs under lupa's
Lua 5.1; it also runs under Debian's `lua5.4` binary when installed (else lupa's Lua 5.4).
The samples are built from the API models, so a renamed status field breaks this test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lora_operator.api import (
    CheckpointRecord,
    Condition,
    ConditionType,
    JobStatus,
    Phase,
    Progress,
    Reason,
)

HEALTH_LUA = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "health.lua"
LUA_BINARY = shutil.which("lua5.4")


def _job(status: JobStatus | None, suspend: bool = False) -> dict:
    job: dict = {
        "apiVersion": "lora-operator.io/v1alpha1",
        "kind": "LoraTrainingJob",
        "metadata": {"name": "corgi", "namespace": "team-a", "generation": 1},
        "spec": {"suspend": suspend, "priority": 0},
    }
    if status is not None:
        job["status"] = status.to_resource()
    return job


def _failed_condition(message: str) -> Condition:
    return Condition(type=ConditionType.FAILED, status="True", reason=Reason.INPUT_ERROR, message=message)


CASES = {
    "new job without status": (_job(None), "Progressing", "Waiting for the operator"),
    "pending": (_job(JobStatus(phase=Phase.PENDING)), "Progressing", "Pending"),
    "queued with position": (_job(JobStatus(phase=Phase.QUEUED, queue_position=3)), "Progressing",
                             "Queued (position 3)"),
    "queued in backoff": (
        _job(JobStatus(phase=Phase.QUEUED, queue_position=1, not_before="2026-01-01T00:00:00Z")),
        "Progressing", "retrying after 2026-01-01T00:00:00Z",
    ),
    "running with progress": (
        _job(JobStatus(
            phase=Phase.RUNNING, node="gpu-7", attempt=2,
            progress=Progress(step=1234, total_steps=2900, epoch=4, total_epochs=10, percent=42, loss=0.08),
        )),
        "Progressing", "Running 42%, epoch 4/10, step 1234/2900, on gpu-7, attempt 2",
    ),
    "running before the first report": (_job(JobStatus(phase=Phase.RUNNING, attempt=1)), "Progressing",
                                        "Running"),
    "succeeded": (
        _job(JobStatus(phase=Phase.SUCCEEDED, checkpoints=[
            CheckpointRecord(name="epoch-0001", epoch=1, step=10, uri="s3://b/k", format="kohya"),
            CheckpointRecord(name="epoch-0002", epoch=2, step=20, uri="s3://b/k2", format="kohya"),
        ])),
        "Healthy", "Training complete: 2 checkpoint(s)",
    ),
    "failed with status message": (
        _job(JobStatus(phase=Phase.FAILED, message="dataset.uri: no images under s3://d/x/",
                       conditions=[_failed_condition("condition text")])),
        "Degraded", "dataset.uri: no images under s3://d/x/",
    ),
    "failed with condition message only": (
        _job(JobStatus(phase=Phase.FAILED, conditions=[
            Condition(type=ConditionType.RUNNING, status="False", reason=Reason.CRASHED, message="not this"),
            _failed_condition("baseModel.uri: no model_index.json"),
        ])),
        "Degraded", "baseModel.uri: no model_index.json",
    ),
    "cancelled": (_job(JobStatus(phase=Phase.CANCELLED)), "Degraded", "Cancelled"),
    "suspended phase": (_job(JobStatus(phase=Phase.SUSPENDED), suspend=True), "Suspended", "Suspended"),
    "suspend set while running": (_job(JobStatus(phase=Phase.RUNNING), suspend=True), "Suspended",
                                  "Suspended"),
    "suspend set before the operator saw it": (_job(None, suspend=True), "Suspended", "Suspended"),
    "suspend on a finished job changes nothing": (
        _job(JobStatus(phase=Phase.SUCCEEDED), suspend=True), "Healthy", "Training complete",
    ),
}


def _lua_literal(value: object) -> str:
    """A Lua table constructor for JSON-like data; None is left out, as Argo CD drops JSON nulls."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for this data
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value if v is not None) + "}"
    if isinstance(value, dict):
        items = (f"[{json.dumps(k)}] = {_lua_literal(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(type(value))


def _run_binary(obj: dict) -> tuple[str, str]:
    driver = (
        f"obj = {_lua_literal(obj)}\n"
        f"local hs = dofile({json.dumps(str(HEALTH_LUA))})\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    out = subprocess.run(
        [LUA_BINARY, "-"], input=driver, capture_output=True, text=True, timeout=10, check=True
    )
    status, _, message = out.stdout.partition("\n")
    return status, message


def _run_lupa(module: str, obj: dict) -> tuple[str, str]:
    lupa = pytest.importorskip(f"lupa.{module}")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(HEALTH_LUA.read_text())
    return hs["status"], hs["message"]


def _interpreters() -> list:
    runs = [pytest.param(lambda obj: _run_lupa("lua51", obj), id="lua5.1-lupa-like-argocd")]
    if LUA_BINARY:
        runs.append(pytest.param(_run_binary, id="lua5.4-binary"))
    else:
        runs.append(pytest.param(lambda obj: _run_lupa("lua54", obj), id="lua5.4-lupa"))
    return runs


@pytest.mark.parametrize("run", _interpreters())
@pytest.mark.parametrize("case", list(CASES))
def test_health_of_every_phase(run, case: str) -> None:
    obj, want_status, want_message = CASES[case]
    status, message = run(json.loads(json.dumps(obj)))
    assert status == want_status
    assert want_message in message


def test_every_phase_is_covered_by_a_case() -> None:
    covered = {obj.get("status", {}).get("phase") for obj, _, _ in CASES.values()}
    assert {p.value for p in Phase} <= covered


def test_unknown_phase_is_unknown_not_healthy() -> None:
    obj = _job(None)
    obj["status"] = {"phase": "Exploded"}
    status, message = _run_lupa("lua51", obj)
    assert (status, message) == ("Unknown", "Unknown phase Exploded")


def test_readme_names_the_argocd_cm_key() -> None:
    readme = (HEALTH_LUA.parent / "README.md").read_text()
    assert "resource.customizations.health.lora-operator.io_LoraTrainingJob" in readme
