"""Live previews: when they arrive, what they show, the fitted latent -> RGB map and its cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sdlite import Pipeline, preview
from sdlite.models import demo_path
from sdlite.rules import RuleError
from sdlite.samplers import make_scheduler
from sdlite.sessions import Session

DEMO_PROMPTS = ["a red circle", "a blue square on green", "a yellow triangle", "a purple square"]


@pytest.fixture(scope="module")
def pipe(tiny_sd1_onnx):
    return Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)


@pytest.fixture
def demo(tmp_path):
    """A copy of the demo model, so that its preview.json lands in a temporary folder."""
    folder = shutil.copytree(demo_path(), tmp_path / "demo")
    (folder / preview.PREVIEW_FILE).unlink(missing_ok=True)
    return folder


def _recorder():
    got = []
    return got, lambda step, total, image: got.append((step, total, image))


@pytest.mark.parametrize(("every", "steps"), [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (5, [5]), (9, [5])])
def test_previews_arrive_at_the_asked_steps(pipe, every, steps):
    got, record = _recorder()
    pipe("a cat", num_inference_steps=5, seed=0, height=64, width=96, preview=record, preview_every=every)
    assert [g[0] for g in got] == steps and {g[1] for g in got} == {5}
    for _, _, image in got:
        assert isinstance(image, Image.Image) and image.size == (96, 64) and image.mode == "RGB"


def test_image_to_image_previews_count_the_steps_it_runs(pipe):
    got, record = _recorder()
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    pipe("a cat", image=image, strength=0.5, num_inference_steps=6, seed=0, preview=record)
    assert [(g[0], g[1]) for g in got] == [(1, 3), (2, 3), (3, 3)]


def test_a_batch_previews_side_by_side(pipe):
    got, record = _recorder()
    pipe(["a cat", "a dog"], num_inference_steps=2, seed=0, preview=record, preview_every=2)
    assert len(got) == 1 and got[0][2].size == (2 * 64, 64)


def test_preview_shows_the_denoised_estimate(demo):
    """At the last step the preview's x0 is the final image's latents, so both previews agree."""
    pipe = Pipeline.from_pretrained(demo, provider="cpu", num_threads=1)
    got, record = _recorder()
    out = pipe(
        "a red circle", seed=3, num_inference_steps=8, sampler="euler", preview=record, output_type="np"
    )
    last = np.asarray(got[-1][2], np.float32) / 255
    final = np.asarray(pipe.preview_map.image(out.latents, 64, 64), np.float32) / 255
    first = np.asarray(got[0][2], np.float32) / 255
    # Euler's last step lands on sigma 0 at x0 itself; the first x0 is still far from it.
    assert np.abs(last - final).mean() < 0.01 < np.abs(first - final).mean()


# Measured mean absolute error in [0, 1] over the four images (a mid-grey image: 0.26): 0.120
# fitted on encoded colour blocks, 0.165 on smooth random latents (a folder without an encoder).
@pytest.mark.parametrize(("encoder", "bound"), [(True, 0.15), (False, 0.2)])
def test_fitted_map_previews_the_demo_model_within_its_error(demo, encoder, bound):
    if not encoder:
        shutil.rmtree(demo / "vae_encoder")
    pipe = Pipeline.from_pretrained(demo, provider="cpu", num_threads=1)
    out = pipe(DEMO_PROMPTS, seed=7, output_type="np")
    h, w = out.images.shape[1:3]
    errors, grey = [], []
    for latents, image in zip(out.latents, out.images, strict=True):
        shown = np.asarray(pipe.preview_map.image(latents[None], w, h), np.float32) / 255
        errors.append(np.abs(shown - image).mean())
        grey.append(np.abs(0.5 - image).mean())
    assert np.mean(errors) < bound and np.mean(errors) < 0.75 * np.mean(grey)


def test_the_map_is_cached_beside_the_model(demo, monkeypatch):
    fitted = Pipeline.from_pretrained(demo, provider="cpu").preview_map
    data = json.loads((demo / preview.PREVIEW_FILE).read_text())
    assert data["format"] == preview.FORMAT and np.asarray(data["weights"]).shape == (4, 3)
    monkeypatch.setattr(Session, "run", lambda *a, **k: pytest.fail("the decoder ran: refitted"))
    cached = Pipeline.from_pretrained(demo, provider="cpu").preview_map
    np.testing.assert_array_equal(cached.weights, fitted.weights)
    np.testing.assert_array_equal(cached.bias, fitted.bias)


@pytest.fixture(scope="module")
def demo_decoder():
    pipe = Pipeline.from_pretrained(demo_path(), provider="cpu", num_threads=1)
    return preview.Decoder(pipe.vae.decode, 4, pipe.vae_scale_factor, source="the demo decoder")


CORRUPT = {
    "not json": lambda good: "not json",
    "a list": lambda good: json.dumps([1, 2, 3]),
    "3 channels": lambda good: json.dumps({**good, "weights": good["weights"][:3]}),
    "nan": lambda good: json.dumps({**good, "weights": [[float("nan"), 0, 0]] * 4}),
    "short bias": lambda good: json.dumps({**good, "bias": [0, 0]}),
    "format": lambda good: json.dumps({**good, "format": 99}),
    "another decoder": lambda good: json.dumps({**good, "source": "vae_decoder/model.onnx: 1 bytes"}),
    "no source": lambda good: json.dumps({k: v for k, v in good.items() if k != "source"}),
}


@pytest.mark.parametrize("corrupt", CORRUPT.values(), ids=CORRUPT)
def test_a_corrupt_or_stale_cache_is_refitted(tmp_path, demo_decoder, corrupt):
    path = tmp_path / preview.PREVIEW_FILE
    fitted = preview.for_folder(tmp_path, demo_decoder)  # fits and writes the good file
    good = json.loads(path.read_text())
    assert good["source"] == "the demo decoder"
    np.testing.assert_allclose(good["bias"], fitted.bias, rtol=1e-6)
    path.write_text(json.dumps({**good, "bias": [0.25, 0.25, 0.25]}))  # valid: used as it is
    assert np.allclose(preview.for_folder(tmp_path, demo_decoder).bias, 0.25)
    path.write_text(corrupt(good))
    refitted = preview.for_folder(tmp_path, demo_decoder)
    np.testing.assert_array_equal(refitted.bias, fitted.bias)
    assert json.loads(path.read_text()) == good  # rewritten with the fitted map


def test_an_unwritable_folder_keeps_the_map_in_memory(demo):
    (demo / preview.PREVIEW_FILE).mkdir()  # neither readable as a file nor replaceable
    pipe = Pipeline.from_pretrained(demo, provider="cpu")
    assert np.isfinite(pipe.preview_map.weights).all()
    assert (demo / preview.PREVIEW_FILE).is_dir() and not list(demo.glob(".preview.json.*"))


@pytest.mark.parametrize("sampler", ["euler", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoised_recovers_x0_from_the_model_output(sampler, prediction_type):
    s = make_scheduler(sampler, prediction_type=prediction_type)
    s.set_timesteps(10)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 1, 4, 8, 8), dtype=np.float32)
    t = s.timesteps[3]
    for t_prev in s.timesteps[:3]:  # walk to call 3 so that the scheduler's index is there
        s.scale_model_input(x0, t_prev)
        s.step(np.zeros_like(x0), t_prev, x0)
    s.scale_model_input(x0, t)
    sigma = float(s.sigmas[s.step_index])
    alpha, beta = 1 / np.sqrt(sigma**2 + 1), sigma / np.sqrt(sigma**2 + 1)  # VP: sqrt(abar), sqrt(1-abar)
    x_vp = alpha * x0 + beta * eps
    x = x_vp if s.spec.space == "vp" else x0 + sigma * eps
    output = eps if prediction_type == "epsilon" else alpha * eps - beta * x0
    np.testing.assert_allclose(s.denoised(output, t, x), x0, atol=1e-4)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (dict(preview="show"), "preview"),
        (dict(preview=print, preview_every=0), "preview_every"),
        (dict(preview=print, preview_every=2.0), "preview_every"),
    ],
)
def test_bad_preview_arguments_are_refused(pipe, kw, field):
    with pytest.raises(RuleError) as err:
        pipe("a cat", **kw)
    assert err.value.field == field


def test_a_fixed_shape_export_fits_at_its_own_size(tmp_path, tiny_sd1_onnx):
    import onnx_variants

    static = onnx_variants.to_static(tiny_sd1_onnx, tmp_path / "static", batch=2)  # decoder: 2 x 16 x 16
    pipe = Pipeline.from_pretrained(static, provider="cpu", num_threads=1)
    got, record = _recorder()
    pipe(["a cat", "a dog"], num_inference_steps=2, seed=0, preview=record)
    assert [g[0] for g in got] == [1, 2] and got[0][2].size == (2 * 64, 64)
    assert (static / preview.PREVIEW_FILE).is_file()
    with pytest.raises(RuleError, match="vae_tiling must be False or None"):
        pipe(["a cat", "a dog"], vae_tiling=True)
