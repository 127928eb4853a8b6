"""`sdlite export ... --preview-decoder DIR` (issue #20, export side): a diffusers AutoencoderTiny
(TAESD) decoder exported as preview_decoder/model.onnx, validated against PyTorch.  The TAESD here
is diffusers' own class with small random weights, built in the test."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
ort = pytest.importorskip("onnxruntime")
from sdlite import Pipeline  # noqa: E402
from sdlite.export import export_model  # noqa: E402
from sdlite.export.cli import main  # noqa: E402


def build_tiny_taesd(path, latent_channels: int = 4, seed: int = 0):
    """A small AutoencoderTiny (TAESD's layout: 3 upsamplings, 8x) with random weights."""
    torch.manual_seed(seed)
    tiny = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=latent_channels,
    )
    with torch.no_grad():  # larger than the default init, so the decoder's output is far from flat
        for p in tiny.decoder.parameters():
            p.mul_(2.0)
    tiny.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_sd1_diffusers):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("taesd")
    taesd = build_tiny_taesd(root / "taesd")
    out = root / "out"
    export_model(tiny_sd1_diffusers, out, dtype="fp32", target="cpu", progress=False, preview_decoder=taesd)
    return taesd, out


def test_preview_decoder_matches_pytorch(exported):
    taesd, out = exported
    graph = out / "preview_decoder" / "model.onnx"
    assert graph.is_file() and (out / "preview_decoder" / "config.json").is_file()
    record = json.loads((out / "sdlite.json").read_text())["components"]["preview_decoder"]
    assert record["dtype"] == "fp32" and record["validation"]["ok"] and record["source"] == str(taesd)

    reference = diffusers.AutoencoderTiny.from_pretrained(taesd).eval()
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    latents = np.random.default_rng(5).standard_normal((2, 4, 10, 6), dtype=np.float32)
    (got,) = session.run(["sample"], {"latent_sample": latents})
    with torch.no_grad():
        want = reference.decode(torch.from_numpy(latents)).sample.numpy()
    assert got.shape == (2, 3, 80, 48) and want.std() > 0.05
    assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1.0)


def test_the_runtime_still_loads_the_folder(exported):
    _, out = exported
    pipe = Pipeline.from_pretrained(out, provider="cpu", num_threads=1)
    image = pipe("a cat", num_inference_steps=1, height=64, width=64).images[0]
    assert image.size == (64, 64)


@pytest.mark.parametrize(
    "config,message",
    [
        (None, "must be a diffusers AutoencoderTiny folder"),
        ('{"_class_name": "AutoencoderKL"}', "only AutoencoderTiny"),
        ('{"_class_name": "AutoencoderTiny"', "not readable JSON"),
        ('{"_class_name": "AutoencoderTiny"}', "diffusion_pytorch_model.safetensors is missing"),
    ],
)
def test_a_bad_folder_is_refused_before_loading(tmp_path, tiny_sd1_diffusers, capsys, config, message):
    folder = tmp_path / "taesd"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    out = tmp_path / "out"
    argv = [str(tiny_sd1_diffusers), str(out), "--target", "cpu", "--quiet", "--preview-decoder", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "--preview-decoder" in err and "Traceback" not in err
    assert not out.exists()


def test_other_latent_channels_are_refused(tmp_path, tiny_sd1_diffusers, capsys):
    taesd = build_tiny_taesd(tmp_path / "taesd3", latent_channels=16)
    out = tmp_path / "out"
    argv = [str(tiny_sd1_diffusers), str(out), "--target", "cpu", "--dtype", "fp32", "--quiet"]
    assert main([*argv, "--no-validate", "--preview-decoder", str(taesd)]) == 2
    err = capsys.readouterr().err
    assert "decodes 16 latent channels; the model has 4" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["taesd3"]
