"""Dockerfile.operator and Dockerfile.trainer keep the promises the pods and pyproject make.

No Docker engine runs here, so the Dockerfiles are parsed: their entrypoints must be the
commands the operator renders and the console scripts pyproject installs, and every pip
install must come from a pinned extra.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = ("Dockerfile.operator", "Dockerfile.trainer")
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+$")


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must use the exec (JSON) form: {self.args}"
        return value


def parse(name: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, continuation lines joined."""
    logical, current = [], ""
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{name}: dangling line continuation"
    return [Instruction(*(part.strip() for part in (line.split(None, 1) + [""])[:2])) for line in logical]


def final_stage(name: str) -> list[Instruction]:
    instructions = parse(name)
    starts = [i for i, ins in enumerate(instructions) if ins.keyword.upper() == "FROM"]
    assert starts, f"{name} has no FROM"
    return instructions[starts[-1]:]


def last(instructions: list[Instruction], keyword: str) -> Instruction | None:
    found = [ins for ins in instructions if ins.keyword.upper() == keyword]
    return found[-1] if found else None


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword.upper() == "ENV":
            for token in shlex.split(ins.args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def pip_install_targets(name: str) -> list[str]:
    """The requirement arguments of every `pip install` in the Dockerfile."""
    targets = []
    for ins in parse(name):
        if ins.keyword.upper() != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", ins.args):
            words = shlex.split(command)
            if "pip" not in {Path(w).name for w in words[:3]} or "install" not in words:
                continue
            args = words[words.index("install") + 1:]
            assert not {"-r", "--requirement", "-e", "--editable", "-U", "--upgrade"} & set(args), command
            targets += [a for a in args if not a.startswith("-")]
    return targets


def pyproject_pin(package: str) -> str:
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        for requirement in extra:
            name, _, version = requirement.partition("==")
            if name.lower() == package:
                return version
    raise AssertionError(f"{package} is pinned in no extra of pyproject.toml")


def test_trainer_entrypoint_is_the_command_of_the_rendered_pod() -> None:
    from lora_operator.api import JobSpec
    from lora_operator.config import OperatorConfig
    from lora_operator.render import build_trainer_pod

    spec = JobSpec.model_validate({
        "baseModel": {"family": "sdxl", "uri": "s3://models/sdxl"},
        "dataset": {"uri": "s3://datasets/corgi/"},
        "output": {"uri": "s3://loras/team-a/"},
    })
    pod = build_trainer_pod(
        job_name="corgi", namespace="team-a", job_uid="uid-1", spec=spec, node="gpu-1", gpus=8,
        attempt=1, resume=False, config=OperatorConfig(storage_endpoint="minio:9000"),
    )
    container = pod["spec"]["containers"][0]
    stage = final_stage("Dockerfile.trainer")
    assert last(stage, "ENTRYPOINT").exec_form() == container["command"] == ["lora-train"]
    assert container["args"] == ["run", "--spec-env", "LORA_JOB_SPEC"]
    # The pod passes its own args; a CMD in the image would only mislead a reader.
    assert last(stage, "CMD") is None


def test_trainer_runs_as_the_uid_and_cache_the_pod_expects() -> None:
    from lora_operator import render

    stage = final_stage("Dockerfile.trainer")
    assert last(stage, "USER").args.split(":")[0] == str(render.TRAINER_UID)
    env = env_of(stage)
    assert env["HOME"] == env["LORA_CACHE_DIR"] == render.CACHE_DIR == "/cache"
    for cache in ("HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR"):
        assert env[cache].startswith("/cache/"), cache


def test_operator_entrypoint_is_the_console_script_of_pyproject() -> None:
    stage = final_stage("Dockerfile.operator")
    entrypoint = last(stage, "ENTRYPOINT").exec_form()
    assert entrypoint == ["lora-operator"]
    assert entrypoint[0] in PYPROJECT["project"]["scripts"]
    assert last(stage, "CMD").exec_form() == ["run"]
    assert PYPROJECT["project"]["scripts"]["lora-train"] == "lora_trainer.cli:main"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_stage_runs_as_non_root_uid_1000(dockerfile: str) -> None:
    user = last(final_stage(dockerfile), "USER")
    assert user is not None, f"{dockerfile} has no USER"
    uid = user.args.split(":")[0]
    # Numeric, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
    assert uid == "1000"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_pip_installs_only_the_project_with_pinned_extras(dockerfile: str) -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    targets = pip_install_targets(dockerfile)
    assert targets, f"{dockerfile} installs nothing"
    for target in targets:
        match = re.fullmatch(r"\.\[([a-z0-9,_-]+)\]", target)
        assert match, f"{dockerfile}: `pip install {target}` is not the project with an extra"
        for extra in match.group(1).split(","):
            assert extra in extras, f"{dockerfile}: extra {extra!r} is not in pyproject.toml"
            for requirement in extras[extra]:
                assert PIN.match(requirement), f"extra {extra}: {requirement!r} is not pinned with =="
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert PIN.match(requirement), f"dependency {requirement!r} is not pinned with =="


def test_each_image_installs_its_own_extra_only() -> None:
    assert pip_install_targets("Dockerfile.operator") == [".[operator]"]
    trainer = pip_install_targets("Dockerfile.trainer")
    assert len(trainer) == 1 and "trainer" in trainer[0] and "operator" not in trainer[0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_base_images_carry_a_pinned_tag(dockerfile: str) -> None:
    for ins in parse(dockerfile):
        if ins.keyword.upper() != "FROM":
            continue
        image = ins.args.split()[0]
        if "@sha256:" in image:
            continue
        _, _, tag = image.rpartition(":")
        assert tag and "/" not in tag, f"{dockerfile}: {image} has no tag"
        assert tag != "latest", f"{dockerfile}: {image} floats on :latest"


def test_operator_base_is_python_311_slim() -> None:
    assert last(final_stage("Dockerfile.operator"), "FROM").args.startswith("python:3.11-slim")


def test_trainer_base_torch_equals_the_torch_pin() -> None:
    image = last(final_stage("Dockerfile.trainer"), "FROM").args.split()[0]
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda\d+\.\d+-cudnn\d+-runtime", image)
    assert match, f"trainer base {image} is not a pinned CUDA runtime tag of pytorch/pytorch"
    assert match.group(1) == pyproject_pin("torch")


def test_dockerignore_lets_in_exactly_what_the_dockerfiles_copy() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for dockerfile in DOCKERFILES:
        for ins in parse(dockerfile):
            if ins.keyword.upper() != "COPY" or "--from" in ins.args:
                continue
            *sources, _ = ins.args.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"{dockerfile} copies {source}, .dockerignore drops it"
