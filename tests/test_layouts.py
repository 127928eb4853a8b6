"""Other folder shapes: diffusers' older ONNX layout, fp16 graphs, and the fp32 decoder fallback."""

from __future__ import annotations

import numpy as np
import onnx_variants
import pytest
from sdlite import Pipeline

KW = dict(num_inference_steps=3, seed=[4, 5], guidance_scale=7.5, output_type="np", height=64, width=64)


@pytest.fixture(scope="module")
def reference(tiny_sd1_onnx):
    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
    return pipe, pipe(["a cat", "a dog"], **KW).images


def test_legacy_diffusers_layout(tmp_path, tiny_sd1_onnx, reference):
    legacy = onnx_variants.to_legacy_layout(tiny_sd1_onnx, tmp_path / "legacy")
    assert (legacy / "unet" / "weights.pb").is_file() and not (legacy / "unet" / "config.json").exists()
    pipe = Pipeline.from_pretrained(legacy, provider="cpu", num_threads=1)
    assert pipe.text_encoder.inputs["input_ids"].dtype == np.int32
    t = pipe.unet.inputs["timestep"]
    assert t.dtype == np.int64 and t.rank == 1
    assert pipe.vae_scale_factor == 4  # read from the decoder's output shape, no config here
    assert pipe.folder.scaling_factor == pytest.approx(0.18215)
    out = pipe(["a cat", "a dog"], **KW).images
    # int64 timesteps equal the float ones for UniPC's integer schedule: same images.
    np.testing.assert_allclose(out, reference[1], atol=2 / 255)
    img2img = pipe(
        "a cat", image=(out[0] * 255).astype(np.uint8), strength=0.5, num_inference_steps=2, seed=1
    )
    assert img2img.images[0].size == (64, 64)


def test_fp16_graphs(tmp_path, tiny_sd1_onnx, reference):
    half = onnx_variants.to_fp16(tiny_sd1_onnx, tmp_path / "fp16")
    pipe = Pipeline.from_pretrained(half, provider="cpu", num_threads=1)
    assert pipe.unet.inputs["sample"].dtype == np.float16
    assert pipe.unet.inputs["timestep"].dtype == np.float16
    out = pipe(["a cat", "a dog"], **KW).images
    assert out.dtype == np.float32 and np.isfinite(out).all()
    # fp16 rounding only: far closer to the fp32 images than images of other seeds are.
    assert np.abs(out - reference[1]).mean() < 0.02
    img2img = pipe(
        "a cat", image=(out[0] * 255).astype(np.uint8), strength=0.5, num_inference_steps=2, seed=1
    )
    assert img2img.images[0].size == (64, 64)


def test_nan_decode_falls_back_to_fp32_decoder(tmp_path, tiny_sd1_onnx, reference):
    broken = onnx_variants.break_decoder(tiny_sd1_onnx, tmp_path / "broken")
    pipe = Pipeline.from_pretrained(broken, provider="cpu", num_threads=1)
    out = pipe(["a cat", "a dog"], **KW)
    np.testing.assert_allclose(out.images, reference[1], atol=1e-6)
    assert out.timings["vae"] > 0


def test_nan_decode_without_fp32_decoder_raises(tmp_path, tiny_sd1_onnx):
    broken = onnx_variants.break_decoder(tiny_sd1_onnx, tmp_path / "broken", keep_fp32=False)
    pipe = Pipeline.from_pretrained(broken, provider="cpu", num_threads=1)
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        pipe("a cat", num_inference_steps=2, seed=0)


def test_static_shapes(tmp_path, tiny_sd1_onnx, reference, monkeypatch):
    static = onnx_variants.to_static(tiny_sd1_onnx, tmp_path / "static", batch=2)
    pipe = Pipeline.from_pretrained(static, provider="cpu", num_threads=1)
    # What the server needs to refuse other sizes up front: the fixed size in pixels, public.
    assert pipe.graph.static_size == (64, 64) and pipe.graph.unet_batch == 4
    out = pipe(["a cat", "a dog"], **KW).images
    np.testing.assert_allclose(out, reference[1], atol=2 / 255)
    img = (out[0] * 255).astype(np.uint8)
    assert len(pipe(["a", "b"], image=img, strength=0.5, num_inference_steps=2, seed=[1, 2]).images) == 2

    from sdlite.sessions import Session

    monkeypatch.setattr(Session, "run", lambda *a, **k: pytest.fail("a model ran"))
    with pytest.raises(ValueError, match="fixed batch of 4"):
        pipe("a cat", **{**KW, "seed": 1})
    with pytest.raises(ValueError, match="height must be 64"):
        pipe(["a cat", "a dog"], **{**KW, "height": 128})
