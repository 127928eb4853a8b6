"""Tiled VAE decode and encode: diffusers' enable_tiling algorithm, the rules around it, the pipeline.

The tiny VAE (factor 4) runs with 32-pixel tiles (8 latent cells), so a 96x128 image takes 4 x 5
overlapping tiles and the tests stay small.
"""

from __future__ import annotations

import numpy as np
import pytest
from sdlite import Pipeline, rules
from sdlite.rules import RuleError
from sdlite.vae import needs_tiles, tiled_decode, tiled_encode

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TILE = 32  # pixels: 8 latent cells of the tiny VAE
H, W = 96, 128


@pytest.fixture(scope="module")
def pipe(tiny_sd1_onnx):
    return Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)


@pytest.fixture(scope="module")
def torch_vae(tiny_sd1_diffusers):
    vae = diffusers.AutoencoderKL.from_pretrained(tiny_sd1_diffusers / "vae").eval()
    vae.enable_tiling()
    vae.tile_sample_min_size, vae.tile_latent_min_size = TILE, TILE // 4  # as the tile argument does
    return vae


def _decoder_run(pipe):
    name = next(iter(pipe.vae_decoder.inputs))
    return lambda z: pipe.vae_decoder.run({name: z})[0].astype(np.float32)


def _encoder_run(pipe):
    name = next(iter(pipe.vae_encoder.inputs))
    return lambda x: pipe.vae_encoder.run({name: x}, ["latent_parameters"])[0].astype(np.float32)


def _to_unit(pixels):
    return np.clip(pixels / 2 + 0.5, 0, 1)


def test_tiled_decode_is_diffusers_tiled_decode(pipe, torch_vae):
    z = np.random.default_rng(0).standard_normal((2, 4, H // 4, W // 4), dtype=np.float32)
    assert needs_tiles(z, TILE // 4)
    ours = tiled_decode(_decoder_run(pipe), z, TILE, 4)
    with torch.no_grad():
        ref = torch_vae.decode(torch.from_numpy(z)).sample.numpy()
    assert ours.shape == ref.shape == (2, 3, H, W)
    assert np.abs(_to_unit(ours) - _to_unit(ref)).max() <= 2 / 255
    # Tiles are not a whole decode: each sees only its own context.
    whole = _decoder_run(pipe)(z)
    assert np.abs(_to_unit(ours) - _to_unit(whole)).max() > 2 / 255


def test_tiled_encode_is_diffusers_tiled_encode(pipe, torch_vae):
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, H, W)).astype(np.float32)
    ours = tiled_encode(_encoder_run(pipe), x, TILE, 4)
    with torch.no_grad():
        ref = torch_vae.encode(torch.from_numpy(x)).latent_dist
    ref_params = torch.cat([ref.mean, ref.logvar], dim=1).numpy()
    assert ours.shape == ref_params.shape == (1, 8, H // 4, W // 4)
    np.testing.assert_allclose(ours[:, :4], ref_params[:, :4], atol=1e-4)  # measured: 1.1e-6
    whole = _encoder_run(pipe)(x)
    assert np.abs(ours[:, :4] - whole[:, :4]).max() > 1e-2


def test_small_inputs_are_not_tiled(pipe):
    z = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    calls = []

    def run(t):
        calls.append(t.shape)
        return _decoder_run(pipe)(t)

    np.testing.assert_array_equal(tiled_decode(run, z, TILE, 4), _decoder_run(pipe)(z))
    assert calls == [(1, 4, 8, 8)]


def test_pipeline_decodes_in_tiles_when_asked(pipe):
    kw = dict(num_inference_steps=2, seed=3, height=H, width=W, output_type="np", vae_tile_size=TILE)
    tiled = pipe("a red circle", vae_tiling=True, **kw)
    whole = pipe("a red circle", vae_tiling=False, **kw)
    np.testing.assert_array_equal(tiled.latents, whole.latents)
    scaled = tiled.latents / np.float32(pipe.folder.scaling_factor)
    expected = _to_unit(tiled_decode(_decoder_run(pipe), scaled, TILE, 4)).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(tiled.images, expected, atol=1e-6)
    diff = np.abs(tiled.images - whole.images)
    # Measured on this tiny random-weight VAE with 8-cell tiles: mean 0.030, max 0.33 (in [0, 1]).
    assert 0 < diff.mean() < 0.06 and diff.max() < 0.6


def test_automatic_tiling_above_the_vae_budget(pipe, monkeypatch):
    kw = dict(num_inference_steps=1, seed=4, height=H, width=W, output_type="np", vae_tile_size=TILE)
    tiled = pipe("a cat", vae_tiling=True, **kw).images
    whole = pipe("a cat", vae_tiling=None, **kw).images  # 96 x 128 is within the budget
    monkeypatch.setattr(rules, "VAE_WHOLE_MAX_PIXELS", H * W - 1)
    auto = pipe("a cat", vae_tiling=None, **kw).images
    np.testing.assert_array_equal(auto, tiled)
    assert np.abs(auto - whole).max() > 0
    with pytest.raises(RuleError, match="vae_tiling must be True or None") as err:
        pipe("a cat", vae_tiling=False, **kw)
    assert err.value.field == "vae_tiling"


def test_image_to_image_encodes_in_tiles(pipe):
    rng = np.random.default_rng(5)
    from PIL import Image

    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    kw = dict(image=image, strength=0.5, num_inference_steps=2, seed=6, output_type="latent")
    tiled = pipe("a cat", vae_tiling=True, vae_tile_size=TILE, **kw).images
    whole = pipe("a cat", vae_tiling=False, **kw).images
    assert tiled.shape == whole.shape == (1, 4, H // 4, W // 4)
    assert 0 < np.abs(tiled - whole).mean() < 0.5


def test_default_tile_is_the_vae_sample_size(pipe):
    assert pipe.vae_tile_size == 64  # the tiny VAE's config sample_size, as diffusers' tile
    assert rules.default_vae_tile_size(512, 8) == 512
    assert rules.default_vae_tile_size([768, 768], 8) == 768
    assert rules.default_vae_tile_size(None, 8) == rules.VAE_TILE_DEFAULT
    assert rules.default_vae_tile_size(100, 8) == rules.VAE_TILE_DEFAULT  # not a valid tile


@pytest.mark.parametrize("size", [30, 40, 16, 0, -32, 32.0, "64", True])
def test_bad_tile_size_is_refused_before_any_model_runs(pipe, size, monkeypatch):
    from sdlite.sessions import Session

    monkeypatch.setattr(Session, "run", lambda *a, **k: pytest.fail("a model ran"))
    with pytest.raises(RuleError, match="vae_tile_size must be a multiple of 16 pixels") as err:
        pipe("a cat", vae_tile_size=size, vae_tiling=True)
    assert err.value.field == "vae_tile_size"


@pytest.mark.parametrize("value", ["yes", 1, 0])
def test_bad_vae_tiling_is_refused(pipe, value):
    with pytest.raises(RuleError, match="vae_tiling must be True, False or None"):
        pipe("a cat", vae_tiling=value)


def test_tiles_lift_the_vae_budget_but_not_the_unets():
    rules.check_pixels(1536, 1536, 1, rules.max_pixels("sd"))  # the U-Net's limit
    assert rules.check_vae_tiling(None, 1536, 1536) is True
    assert rules.check_vae_tiling(None, 1024, 1024) is False
    assert rules.check_vae_tiling(True, 64, 64) is True
    with pytest.raises(RuleError, match="vae_tiling"):
        rules.check_vae_tiling(False, 1536, 1536)
    with pytest.raises(RuleError, match="U-Net"):
        rules.check_pixels(1536, 1544, 1, rules.max_pixels("sd"))
