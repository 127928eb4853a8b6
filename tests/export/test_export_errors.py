"""Bad input gets a clear error before any model loads, and a failed export leaves nothing behind."""

from __future__ import annotations

import json
import shutil

import pytest
from sdlite.export import ExportError, export_model
from sdlite.export.cli import main


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_refused_and_out_not_created(tmp_path, suffix):
    ckpt = tmp_path / f"model{suffix}"
    ckpt.write_bytes(b"not really a pickle")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="pickle") as err:
        export_model(ckpt, out, dtype="fp32", target="cpu")
    assert "arbitrary code" in str(err.value) and "--allow-pickle" in str(err.value)
    assert not out.exists()


def test_cli_pickle_refused(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    out = tmp_path / "sub" / "out"
    assert main([str(ckpt), str(out), "--target", "cpu"]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not out.exists() and not out.parent.exists()


def test_missing_folder_and_bad_hub_id(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export_model(tmp_path / "nope", tmp_path / "out", target="cpu")
    with pytest.raises(ValueError, match="hub id"):
        export_model("not a model id!", tmp_path / "out", target="cpu")
    assert _leftovers(tmp_path) == []


def test_folder_without_model_index(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        export_model(tmp_path / "src", tmp_path / "out", target="cpu")


def test_unsupported_architecture(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="unsupported architecture 'FluxPipeline'.*StableDiffusionPipeline"):
        export_model(src, tmp_path / "out", target="cpu")
    assert not (tmp_path / "out").exists()


def test_single_file_needs_config(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="--config"):
        export_model(f, tmp_path / "out", target="cpu")


def test_existing_out_refused_without_overwrite(tmp_path, tiny_sd1_diffusers):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists.*--overwrite"):
        export_model(tiny_sd1_diffusers, out, target="cpu")
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dtype="bf16"), "dtype must be one of fp16, fp32"),
        (dict(target="tpu"), "target must be one of cpu, cuda, rocm, dml"),
        (dict(target="cpu", opset=9), "opset must be between 14"),
        (dict(target="cpu", static_shape="512"), "HEIGHTxWIDTH"),
        (dict(target="cpu", batch=2), "--batch only applies with --static-shape"),
        (dict(target="cuda", dtype="fp32", quantize="int8"), "--target cpu"),
        (dict(target="cpu", dtype="fp16", quantize="int8"), "--dtype fp32"),
        (dict(target="cpu", dtype="fp32", quantize="int4"), "quantize must be one of int8"),
    ],
)
def test_bad_arguments(tmp_path, tiny_sd1_diffusers, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_model(tiny_sd1_diffusers, tmp_path / "out", **kwargs)
    assert _leftovers(tmp_path) == []


def test_not_enough_disk(tmp_path, tiny_sd1_diffusers, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    out = tmp_path / "a" / "out"
    with pytest.raises(ValueError, match="not enough disk space"):
        export_model(tiny_sd1_diffusers, out, dtype="fp32", target="cpu", progress=False)
    assert _leftovers(tmp_path) == []  # neither OUT, its new parent, nor the temp folder


def test_failed_validation_leaves_nothing(tmp_path, tiny_sd1_diffusers, monkeypatch):
    """A zero tolerance fails the first component: ExportError, and OUT/temp dirs are gone."""
    from sdlite.export import validate

    monkeypatch.setitem(validate.TOLERANCE, "fp32", 0.0)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="text_encoder.*beyond tolerance"):
        export_model(tiny_sd1_diffusers, out, dtype="fp32", target="cpu", optimize=False, progress=False)
    assert _leftovers(tmp_path) == []


def test_sdlite_cli_forwards_export(tmp_path, capsys):
    from sdlite.cli import main as sdlite_main

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    assert sdlite_main(["export", str(ckpt), str(tmp_path / "out")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_hub_id_offline(tmp_path):
    """`python -m sdlite.export` with an id the (offline) hub cannot resolve: a clear error, no OUT."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sdlite.export", "nobody/no-such-model", str(out), "--target", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "could not load it as a Hugging Face hub model" in proc.stderr
    assert not out.exists() and _leftovers(tmp_path) == []
