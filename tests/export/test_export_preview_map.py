"""Issue #20, export side: the export fits sdlite.preview's latent -> RGB map with the exported VAE
decoder, writes preview.json into OUT and records it in sdlite.json; the runtime then uses that
file as it is (no refit), and it is the map the runtime would have fitted itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import sdlite.preview as pv
from sdlite import Pipeline


@pytest.fixture
def no_fitting(monkeypatch):
    """sdlite.preview.fit fails the test: the exported map must be used as it is."""

    def refuse(*args, **kwargs):
        raise AssertionError("the runtime refitted the preview map")

    monkeypatch.setattr(pv, "fit", refuse)


@pytest.mark.parametrize("variant", ["fp32-cpu", "int8-static"])
def test_export_writes_the_preview_map(tiny_export, variant):
    folder, report = tiny_export(variant)
    meta = report if isinstance(report, dict) else json.loads((folder / "sdlite.json").read_text())
    want = {"file": pv.PREVIEW_FILE, "fitted_on": "CPUExecutionProvider", "latent_channels": 4}
    assert meta["preview"] == want
    data = json.loads((folder / pv.PREVIEW_FILE).read_text())
    assert data["format"] == pv.FORMAT and data["source"].startswith("vae_decoder/model.onnx: ")
    assert np.asarray(data["weights"]).shape == (4, 3) and np.isfinite(data["weights"]).all()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files


@pytest.mark.parametrize("variant", ["fp32-cpu", "int8-static"])
def test_runtime_uses_it_without_refitting(tiny_export, variant, no_fitting):
    folder, _ = tiny_export(variant)
    path = folder / pv.PREVIEW_FILE
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    pipe = Pipeline.from_pretrained(folder, provider="cpu", num_threads=1)
    data = json.loads(path.read_text())
    np.testing.assert_array_equal(pipe.preview_map.weights, np.asarray(data["weights"], np.float32))
    np.testing.assert_array_equal(pipe.preview_map.bias, np.asarray(data["bias"], np.float32))
    seen = []
    pipe("a cat", num_inference_steps=2, height=64, width=64, preview=lambda s, t, im: seen.append(im.size))
    assert seen == [(64, 64)] * 2
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_it_is_the_map_the_runtime_fits(tiny_export, tmp_path):
    """The same folder without preview.json: the runtime's own fit gives the exported map."""
    folder, _ = tiny_export("fp32-cpu")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(pv.PREVIEW_FILE))
    fitted = Pipeline.from_pretrained(copy, provider="cpu", num_threads=1).preview_map
    exported = json.loads((folder / pv.PREVIEW_FILE).read_text())
    np.testing.assert_allclose(fitted.weights, exported["weights"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted.bias, exported["bias"], rtol=1e-4, atol=1e-5)


def test_a_graph_this_machine_cannot_run_is_recorded(tiny_export):
    """A --target cuda export: fitted where CUDA runs it, else skipped (the runtime fits on first use)."""
    import onnxruntime as ort

    folder, _ = tiny_export("fp16-cuda")
    record = json.loads((folder / "sdlite.json").read_text())["preview"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert record["fitted_on"] == "CUDAExecutionProvider" and (folder / pv.PREVIEW_FILE).is_file()
    else:
        why = "no kernels for this graph on CPUExecutionProvider; the runtime fits it on first use"
        assert record == {"skipped": why}
        assert not (folder / pv.PREVIEW_FILE).exists()
