"""Model-family presets: detection, overrides, their use as defaults by the API and the CLI, and
an SD-Turbo-style run (1 step, euler_a trailing, guidance 0) against diffusers."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sdlite import Pipeline, cli, presets

SD_INPUTS = ("sample", "timestep", "encoder_hidden_states")
XL_INPUTS = (*SD_INPUTS, "text_embeds", "time_ids")


def _folder(tmp_path, name, sdlite_json=None):
    d = tmp_path / name
    d.mkdir()
    if sdlite_json is not None:
        (d / "sdlite.json").write_text(json.dumps(sdlite_json))
    return d


@pytest.mark.parametrize(
    "name,inputs,sched,index,sdlite_json,want",
    [
        ("sd15", SD_INPUTS, "PNDMScheduler", {}, None, "sd"),
        ("base", XL_INPUTS, "EulerDiscreteScheduler", {}, None, "sdxl"),
        ("sd-turbo", SD_INPUTS, "EulerDiscreteScheduler", {}, None, "sd-turbo"),
        ("SDXL-Turbo-fp16", XL_INPUTS, "EulerAncestralDiscreteScheduler", {}, None, "sdxl-turbo"),
        ("x", SD_INPUTS, "EulerDiscreteScheduler", {}, {"source": "stabilityai/sd-turbo"}, "sd-turbo"),
        ("x", SD_INPUTS, "PNDMScheduler", {"_name_or_path": "hub/some-lcm-merge"}, None, "lcm-lora"),
        ("dreamshaper", (*SD_INPUTS, "timestep_cond"), "LCMScheduler", {}, None, "lcm"),
        ("merged", SD_INPUTS, "LCMScheduler", {}, None, "lcm-lora"),
        ("sd15", SD_INPUTS, "PNDMScheduler", {}, {"source": "/home/alcm/turbo/sd15"}, "sd"),  # names only
        ("sdturbo", SD_INPUTS, "PNDMScheduler", {"_name_or_path": "a/b-lcm"}, None, "lcm-lora"),
        ("sd-turbo", SD_INPUTS, "EulerDiscreteScheduler", {}, {"preset": "sd"}, "sd"),
    ],
)
def test_detection(tmp_path, name, inputs, sched, index, sdlite_json, want):
    folder = _folder(tmp_path, name, sdlite_json)
    got = presets.detect(folder, inputs, {"_class_name": sched}, index)
    assert got.name == want
    assert {k: v for k, v in vars(got).items() if k != "source"} == {
        k: v for k, v in vars(presets.PRESETS[want]).items() if k != "source"
    }
    assert got.source  # says why, for `sdlite info`


def test_turbo_and_lcm_values():
    turbo = presets.PRESETS["sd-turbo"]
    assert (turbo.sampler, turbo.steps, turbo.guidance) == ("euler_a", 1, 0.0)
    assert turbo.sampler_options == {"timestep_spacing": "trailing"}
    assert presets.PRESETS["sdxl-turbo"].sampler_options == {"timestep_spacing": "trailing"}
    lcm = presets.PRESETS["lcm"]
    assert (lcm.sampler, lcm.steps) == ("lcm", 4) and presets.PRESETS["lcm-lora"].guidance == 1.0


def test_preset_file_overrides_and_errors(tmp_path):
    spec = {"preset": {"base": "sd-turbo", "steps": 2, "guidance": 0.5}}
    got = presets.detect(_folder(tmp_path, "a", spec), SD_INPUTS, {}, {})
    assert (got.name, got.sampler, got.steps, got.guidance) == ("sd-turbo", "euler_a", 2, 0.5)
    assert got.sampler_options == {"timestep_spacing": "trailing"} and "sdlite.json" in got.source
    # A different sampler drops the base's sampler options (they belong to its sampler).
    got = presets.detect(
        _folder(tmp_path, "b", {"preset": {"base": "sd-turbo", "sampler": "ddim"}}), SD_INPUTS, {}
    )
    assert got.sampler == "ddim" and got.sampler_options == {}
    for bad, word in [
        ("nope", "preset must be one of"),
        ({"steps": 0}, "steps"),
        ({"guidance": "high"}, "guidance"),
        ({"sampler_options": 3}, "sampler_options"),
        ({"color": "red"}, "unknown preset key"),
        (7, "family name"),
    ]:
        with pytest.raises(ValueError, match=word) as err:
            presets.detect(
                _folder(tmp_path, f"bad{len(list(tmp_path.iterdir()))}", {"preset": bad}), SD_INPUTS, {}
            )
        assert "sdlite.json" in str(err.value)


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory, tiny_sd1_onnx):
    # The tiny SD-1 export under a name that says "turbo" (how a user's sd-turbo folder is found).
    out = tmp_path_factory.mktemp("presets") / "tiny-sd-turbo"
    shutil.copytree(tiny_sd1_onnx, out)
    return out


def _count_unet_batches(pipe, monkeypatch):
    calls = []
    orig = pipe.unet.run

    def run(feeds, outputs=None):
        calls.append(feeds["sample"].shape[0])
        return orig(feeds, outputs)

    monkeypatch.setattr(pipe.unet, "run", run)
    return calls


def test_pipeline_defaults_come_from_the_preset(turbo_dir, monkeypatch):
    pipe = Pipeline.from_pretrained(turbo_dir, provider="cpu", num_threads=1)
    assert pipe.preset.name == "sd-turbo"
    calls = _count_unet_batches(pipe, monkeypatch)
    out = pipe("a cat", seed=3, output_type="np")
    assert calls == [1]  # one step, guidance 0: no unconditional half
    assert "Steps: 1, Sampler: Euler a, CFG scale: 0," in out.parameters[0]
    same = pipe(
        "a cat",
        num_inference_steps=1,
        guidance_scale=0.0,
        sampler="euler_a",
        sampler_options={"timestep_spacing": "trailing"},
        seed=3,
        output_type="np",
    )
    np.testing.assert_array_equal(out.images, same.images)
    leading = pipe(
        "a cat", num_inference_steps=1, guidance_scale=0.0, sampler="euler_a", seed=3, output_type="np"
    )
    assert np.abs(leading.images - out.images).max() > 1e-3  # the trailing spacing did matter
    calls.clear()
    pipe("a cat", num_inference_steps=2, guidance_scale=3.0, seed=3, output_type="latent")  # explicit wins
    assert calls == [2, 2]


def test_from_pretrained_preset_override(turbo_dir, tiny_sd1_onnx):
    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1, preset="sd-turbo")
    assert pipe.preset.name == "sd-turbo" and pipe.preset.source == "preset"
    pipe = Pipeline.from_pretrained(turbo_dir, provider="cpu", num_threads=1, preset={"steps": 3})
    assert (pipe.preset.name, pipe.preset.steps, pipe.preset.sampler) == ("sd-turbo", 3, "euler_a")
    with pytest.raises(ValueError, match="preset"):
        Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", preset="fast")


def test_cli_generate_uses_the_preset_unless_overridden(turbo_dir, tmp_path, capsys):
    base = ["generate", "a cat", "--model", str(turbo_dir), "--seed", "1", "--quiet"]
    assert cli.main([*base, "--out", str(tmp_path / "a.png")]) == 0
    assert cli.main([*base, "--steps", "2", "--guidance", "2", "--out", str(tmp_path / "b.png")]) == 0
    assert cli.main([*base, "--preset", "sd", "--steps", "1", "--out", str(tmp_path / "c.png")]) == 0
    texts = []
    for name in "abc":
        with Image.open(tmp_path / f"{name}.png") as im:
            texts.append(im.text["parameters"])
    assert "Steps: 1, Sampler: Euler a, CFG scale: 0," in texts[0]
    assert "Steps: 2, Sampler: Euler a, CFG scale: 2," in texts[1]
    assert "Steps: 1, Sampler: UniPC, CFG scale: 7.5," in texts[2]
    capsys.readouterr()
    assert cli.main([*base, "--preset", "fast", "--out", str(tmp_path / "d.png")]) == 2
    assert "preset" in capsys.readouterr().err and not (tmp_path / "d.png").exists()
    assert cli.main(["info", str(turbo_dir)]) == 0
    assert (
        "preset: sd-turbo: euler_a, timestep_spacing=trailing, 1 step, guidance 0" in capsys.readouterr().out
    )


@pytest.mark.parametrize("steps", [1, 2])
def test_turbo_style_parity_with_diffusers(turbo_dir, tiny_sd1_diffusers, monkeypatch, steps):
    """The preset's run (euler_a, trailing, guidance 0) equals diffusers' within 2/255."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from test_pipeline import FeedRandn, per_image_draws

    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained(turbo_dir, provider="cpu", num_threads=1)
    got = pipe(["a cat", "a dog"], num_inference_steps=steps, seed=[4, 5], output_type="np").images
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd1_diffusers, torch_dtype=torch.float32)
    ref.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(
        ref.scheduler.config, timestep_spacing="trailing"
    )
    ref.set_progress_bar_config(disable=True)
    draws = per_image_draws([4, 5], (4, 16, 16), 1 + steps)
    latents = draws.pop(0)
    feed = FeedRandn(draws)
    module = importlib.import_module("diffusers.schedulers.scheduling_euler_ancestral_discrete")
    monkeypatch.setattr(module, "randn_tensor", feed)
    with torch.no_grad():
        want = ref(
            ["a cat", "a dog"],
            num_inference_steps=steps,
            guidance_scale=0.0,
            latents=torch.from_numpy(latents),
            output_type="np",
        ).images
    assert not feed.draws
    assert np.abs(got - want).max() <= 2 / 255 and want.std() > 0.01
