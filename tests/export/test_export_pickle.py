"""Issue #18 item 14: without --allow-pickle a folder SOURCE (or a --config folder) is loaded from
safetensors only. A folder whose weights are pickles is refused, naming the file and the flag, before
torch unpickles anything; with --allow-pickle it exports."""

from __future__ import annotations

import json
import shutil

import pytest
from sdlite.export import export_model
from sdlite.export.cli import main


@pytest.fixture(scope="module")
def pickled_sd1(tmp_path_factory, tiny_sd1_diffusers):
    """The tiny SD-1 model saved with safe_serialization=False: .bin weights, no .safetensors."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_sd1_diffusers, local_files_only=True)
    folder = tmp_path_factory.mktemp("pickled") / "sd1-bin"
    pipe.save_pretrained(folder, safe_serialization=False)
    assert not list(folder.rglob("*.safetensors"))
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    return folder


@pytest.fixture
def no_unpickling(monkeypatch):
    """torch.load fails the test: the refusal must come before any pickle is read."""
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError(f"torch.load called: {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


def test_pickled_folder_refused(tmp_path, pickled_sd1, no_unpickling):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="pickled weights") as err:
        export_model(pickled_sd1, out, dtype="fp32", target="cpu", progress=False)
    text = str(err.value)
    assert "--allow-pickle" in text and "arbitrary code" in text
    assert str(pickled_sd1 / "unet" / "diffusion_pytorch_model.bin") in text
    assert str(pickled_sd1 / "text_encoder" / "pytorch_model.bin") in text
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_pickled_folder_refused(tmp_path, pickled_sd1, no_unpickling, capsys):
    out = tmp_path / "out"
    assert main([str(pickled_sd1), str(out), "--target", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "diffusion_pytorch_model.bin" in err and "--allow-pickle" in err
    assert not out.exists()


def test_one_pickled_component_refused(tmp_path, tiny_sd1_diffusers, no_unpickling):
    """Only the VAE pickled: the folder is still refused, naming that file alone."""
    src = tmp_path / "src"
    shutil.copytree(tiny_sd1_diffusers, src)
    (src / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (src / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle would be here")
    with pytest.raises(ValueError, match="pickled weights") as err:
        export_model(src, tmp_path / "out", dtype="fp32", target="cpu", progress=False)
    assert "diffusion_pytorch_model.bin" in str(err.value) and "unet" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_load_takes_safetensors_only(tmp_path, tiny_sd1_diffusers, no_unpickling):
    """A U-Net folder whose only .safetensors is a variant diffusers does not pick: the folder check
    passes, and loading must still refuse the .bin beside it (use_safetensors=True) with a clear error."""
    src = tmp_path / "src"
    shutil.copytree(tiny_sd1_diffusers, src)
    unet = src / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "diffusion_pytorch_model.fp16.safetensors")
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"a pickle would be here")
    with pytest.raises(ValueError, match="could not load it as a diffusers folder") as err:
        export_model(src, tmp_path / "out", dtype="fp32", target="cpu", progress=False)
    assert "--allow-pickle" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_config_folder_with_pickles_refused(tmp_path, pickled_sd1, no_unpickling):
    """from_single_file loads components missing from the checkpoint out of --config's folder."""
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(ValueError, match="--config .*pickled weights") as err:
        export_model(ckpt, tmp_path / "out", config=pickled_sd1, dtype="fp32", target="cpu")
    assert "pytorch_model.bin" in str(err.value) and "--allow-pickle" in str(err.value)


def test_pickled_folder_exports_with_allow_pickle(tmp_path, pickled_sd1):
    out = tmp_path / "out"
    args = ["--dtype", "fp32", "--target", "cpu", "--no-optimize", "--allow-pickle", "--quiet"]
    assert main([str(pickled_sd1), str(out), *args]) == 0
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["source_kind"] == "folder" and meta["architecture"] == "StableDiffusionPipeline"
    for component in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        assert meta["components"][component]["validation"]["ok"], component
        assert (out / component / "model.onnx").is_file()
