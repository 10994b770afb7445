"""hf:// base models: only the files the job loads, at the revision it names, bytes and time reported.

The Hugging Face Hub is unreachable from the test machines; `hub_server` stands in for it on
localhost, speaking the routes and error codes ``huggingface_hub`` uses (revision lookup, tree listing,
resolve/<revision>/<path>), so the real client code runs end to end.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from hub_server import serve_hub
from singlefile_convert import write_sd_checkpoint

from conftest import base_spec
from lora_trainer import fetch
from lora_trainer.errors import ModelError
from lora_trainer.fetch import HfSelection

pytestmark = pytest.mark.trainer

TOKEN = "hf_secret"


@pytest.fixture(scope="module")
def sd_repo(tmp_path_factory, tiny_models) -> tuple[Path, list[str]]:
    """The tiny SD1.5 folder as a hub repository with what real ones carry beside it: fp16 and EMA
    variants, pickled weights, a safety checker, a single-file copy and a README. Returns the folder and
    the files a training job needs."""
    repo = tmp_path_factory.mktemp("hub") / "tiny-sd"
    shutil.copytree(tiny_models("sd15"), repo)
    needed = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    for variant in ("unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.ema.safetensors",
                    "text_encoder/model.fp16.safetensors", "vae/diffusion_pytorch_model.bin",
                    "safety_checker/model.safetensors", "safety_checker/config.json", "README.md"):
        (repo / variant).parent.mkdir(exist_ok=True)
        (repo / variant).write_bytes(b"not needed " * 100)
    index = json.loads((repo / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (repo / "model_index.json").write_text(json.dumps(index))
    write_sd_checkpoint(tiny_models("sd15"), repo / "tiny-sd-pruned.safetensors")
    return repo, needed


@pytest.fixture
def hub():
    with serve_hub() as server:
        yield server


def env(hub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}


def test_a_diffusers_repository_downloads_only_the_components_and_weights_the_job_loads(hub, sd_repo, tmp_path):
    repo, needed = sd_repo
    hub.add("org/tiny-sd", repo)
    path = fetch.fetch_model("hf://org/tiny-sd", tmp_path / "cache", env=env(hub))
    assert sorted(hub.downloads()) == needed  # no fp16 / EMA / .bin, no safety checker, no single file, no README
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == needed
    assert path.is_relative_to(tmp_path / "cache" / "hf")
    assert {r.authorization for r in hub.requests} == {f"Bearer {TOKEN}"}  # a gated repository gets the token


def test_each_fetch_reports_files_bytes_and_seconds_and_a_cached_model_transfers_nothing(hub, sd_repo, tmp_path,
                                                                                       caplog):
    repo, needed = sd_repo
    hub.add("org/tiny-sd", repo)
    size = sum((repo / f).stat().st_size for f in needed)
    with caplog.at_level(logging.INFO, logger="lora_trainer.fetch"):
        fetch.fetch_model("hf://org/tiny-sd", tmp_path / "cache", env=env(hub))
        hub.requests.clear()
        fetch.fetch_model("hf://org/tiny-sd", tmp_path / "cache", env=env(hub))
    first, second = [r.getMessage() for r in caplog.records if "transferred" in r.getMessage()]
    assert f"{len(needed)} files, {size} bytes, {size} bytes transferred in" in first
    assert f"{len(needed)} files, {size} bytes, 0 bytes transferred in" in second
    assert hub.downloads() == []


def test_an_hf_fetch_is_in_the_manifest_s_model_report_hit_or_miss(hub, sd_repo, tmp_path, monkeypatch):
    from lora_trainer import model_cache

    monkeypatch.setattr(model_cache, "FETCHED", [])
    repo, needed = sd_repo
    hub.add("org/tiny-sd", repo)
    size = sum((repo / f).stat().st_size for f in needed)
    for _ in range(2):
        fetch.fetch_model("hf://org/tiny-sd", tmp_path / "cache", env=env(hub))
    miss, hit = model_cache.reported()
    assert (miss.uri, miss.hit, miss.bytes) == ("hf://org/tiny-sd", False, size)
    assert (hit.hit, hit.bytes, hit.key) == (True, 0, miss.key)  # the same revision's files: the same key


def test_a_single_file_uri_downloads_that_file_alone(hub, sd_repo, tmp_path):
    hub.add("org/tiny-sd", sd_repo[0])
    path = fetch.fetch_model("hf://org/tiny-sd/tiny-sd-pruned.safetensors", tmp_path / "cache", env=env(hub))
    assert hub.downloads() == ["tiny-sd-pruned.safetensors"]
    assert path.read_bytes() == (sd_repo[0] / "tiny-sd-pruned.safetensors").read_bytes()


def test_the_revision_in_the_uri_or_the_field_picks_the_files_of_that_revision(hub, tmp_path):
    for revision in ("main", "v1.0"):
        (tmp_path / revision).mkdir()
        (tmp_path / revision / "model.safetensors").write_text(f"weights of {revision}")
        hub.add("org/ckpt", tmp_path / revision, revision)
    cache = tmp_path / "cache"
    assert fetch.fetch_model("hf://org/ckpt/model.safetensors@v1.0", cache, env=env(hub)).read_text() == \
        "weights of v1.0"
    assert fetch.fetch_model("hf://org/ckpt/model.safetensors", cache, env=env(hub), revision="v1.0").read_text() == \
        "weights of v1.0"
    assert fetch.fetch_model("hf://org/ckpt/model.safetensors", cache, env=env(hub)).read_text() == "weights of main"
    with pytest.raises(ModelError, match="hf://org/ckpt/model.safetensors@v9: revision 'v9' not found in org/ckpt"):
        fetch.fetch_model("hf://org/ckpt/model.safetensors@v9", cache, env=env(hub))


def test_a_missing_file_or_repository_is_a_model_error_naming_it(hub, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "model.safetensors").write_text("x")
    hub.add("org/ckpt", tmp_path / "repo")
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="absent.safetensors not found in org/ckpt at revision main"):
        fetch.fetch_model("hf://org/ckpt/absent.safetensors", cache, env=env(hub))
    with pytest.raises(ModelError, match="hf://org/ckpt: model_index.json .not a diffusers folder"):
        fetch.fetch_model("hf://org/ckpt", cache, env=env(hub))
    with pytest.raises(ModelError, match="hf://org/nothing not found or not accessible"):
        fetch.fetch_model("hf://org/nothing", cache, env=env(hub))


def test_a_config_folder_downloads_no_weights_and_a_components_folder_skips_the_file_s_parts(hub, tiny_models,
                                                                                            tmp_path):
    flux = tiny_models("flux")
    hub.add("org/tiny-flux", flux)
    fetch.fetch_model("hf://org/tiny-flux", tmp_path / "a", env=env(hub), selection=HfSelection(weights=False))
    assert hub.downloads() and not [f for f in hub.downloads() if f.endswith(".safetensors")]
    hub.requests.clear()
    skip = fetch.UNUSED_COMPONENTS | {"transformer"}
    fetch.fetch_model("hf://org/tiny-flux", tmp_path / "b", env=env(hub), selection=HfSelection(skip=skip))
    assert not [f for f in hub.downloads() if f.startswith("transformer/")]
    assert "vae/diffusion_pytorch_model.safetensors" in hub.downloads()


def test_a_job_s_hf_single_file_base_model_loads_with_its_hf_config_folder(hub, sd_repo, tiny_models, tmp_path,
                                                                           dataset_dir):
    from lora_operator.api import resolve_spec
    from lora_trainer.families import get_family
    from lora_trainer.inputs import Resolver
    from lora_trainer.singlefile import SingleFileModel

    hub.add("org/tiny-sd", sd_repo[0])
    spec = resolve_spec(base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out", baseModel={
        "uri": "hf://org/tiny-sd/tiny-sd-pruned.safetensors", "config": "hf://org/tiny-sd", "revision": "main"}))
    model = Resolver(env=env(hub), cache_dir=tmp_path / "cache").base_model(spec.base_model, tmp_path)
    assert isinstance(model, SingleFileModel)
    weights = [f for f in hub.downloads() if f.endswith(".safetensors")]
    assert weights == ["tiny-sd-pruned.safetensors"]  # the config folder's own weights stay on the hub
    parts = get_family("sd15").load(model, torch.float32)
    assert list(parts.denoiser.config.block_out_channels) == [32, 64]  # the tiny UNet, from the file


def test_a_revision_in_the_uri_and_a_different_revision_field_are_refused(tmp_path, tiny_models, dataset_dir):
    from lora_operator.api import resolve_spec
    from lora_trainer.inputs import Resolver

    spec = resolve_spec(base_spec("sd15", tiny_models("sd15"), dataset_dir, tmp_path / "out", baseModel={
        "uri": "hf://org/tiny-sd@v1", "revision": "v2"}))
    with pytest.raises(ModelError, match="baseModel.revision: v2 differs from @v1 in baseModel.uri"):
        Resolver(env={}).base_model(spec.base_model, tmp_path)
