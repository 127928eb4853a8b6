"""sdlite.rules: each validator returns the cleaned value or a RuleError naming the field and the rule."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sdlite import rules
from sdlite.rules import RuleError


def _refused(fn, *args, **kwargs) -> RuleError:
    with pytest.raises(RuleError) as err:
        fn(*args, **kwargs)
    assert isinstance(err.value, ValueError)  # the API raises it as it is
    return err.value


def test_rule_error_reads_field_allowed_value():
    err = RuleError("steps", "an integer in [1, 1000]", 0)
    assert str(err) == "steps must be an integer in [1, 1000], got 0"
    assert (err.field, err.allowed, err.value) == ("steps", "an integer in [1, 1000]", 0)


def test_rule_error_survives_pickling():
    # Batch workers (Ray) hand errors between processes.
    back = pickle.loads(pickle.dumps(RuleError("seed", "an integer in [0, 9]", -1)))
    assert isinstance(back, RuleError) and str(back) == "seed must be an integer in [0, 9], got -1"
    assert (back.field, back.allowed, back.value) == ("seed", "an integer in [0, 9]", -1)


def test_limits_are_the_unified_ones():
    assert rules.MAX_SEED == 2**64 - 1
    assert rules.MAX_STEPS == 1000
    assert rules.max_pixels("sd") < rules.max_pixels("sdxl") == rules.MAX_PIXELS
    assert rules.max_pixels("sdxl-turbo") == rules.max_pixels("SDXL")
    assert rules.max_pixels("lcm-lora") == rules.max_pixels("sd")


@pytest.mark.parametrize("value", [1, 5, 1000, np.int64(7)])
def test_check_int_accepts(value):
    got = rules.check_int("steps", value, 1, 1000)
    assert got == value and type(got) is int


@pytest.mark.parametrize("value", [0, 1001, -3, 2.5, 3.0, "3", True, None, np.float32(2)])
def test_check_int_refuses(value):
    err = _refused(rules.check_int, "steps", value, 1, 1000)
    assert err.field == "steps" and str(err).startswith("steps must be an integer in [1, 1000], got ")


def test_check_int_without_upper_bound():
    assert rules.check_int("num_threads", 10**9, 0) == 10**9
    assert "an integer >= 0" in str(_refused(rules.check_int, "num_threads", -1, 0))


@pytest.mark.parametrize("value", [0, 7.5, 100, np.float32(3.25), 2])
def test_check_float_accepts(value):
    got = rules.check_float("guidance_scale", value, *rules.GUIDANCE_RANGE)
    assert got == float(value) and type(got) is float


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, 100.5, "7", True, None])
def test_check_float_refuses(value):
    err = _refused(rules.check_float, "guidance_scale", value, *rules.GUIDANCE_RANGE)
    assert err.field == "guidance_scale" and "a finite number in [0, 100]" in str(err)


def test_check_float_bounds():
    assert rules.check_float("x", -1e300) == -1e300  # no bounds: any finite number
    assert "a finite number, got nan" in str(_refused(rules.check_float, "x", math.nan))
    assert "(0, 1]" in str(_refused(rules.check_float, "strength", 0.0, 0, 1, lo_open=True))
    assert rules.check_float("strength", 1, 0, 1, lo_open=True) == 1.0
    assert "[2, inf]" in str(_refused(rules.check_float, "x", 1, 2))


@pytest.mark.parametrize("text", ["", "a cat", "tab\tnew\nline\r\n", "ΟΔΟΣ 日本 \u200b \ufffd"])
def test_check_text_accepts(text):
    assert rules.check_text("prompt", text) == text


@pytest.mark.parametrize(
    "text,max_chars,word",
    [
        ("bell\x07", 100, "control characters"),
        ("nul\x00", 100, "control characters"),
        ("del\x7f", 100, "control characters"),
        ("c1\x85", 100, "control characters"),
        ("esc\x1b[0m", 100, "control characters"),
        ("\ud800", 100, "lone surrogates"),
        ("half \ud83d pair", 100, "lone surrogates"),
        (b"bytes", 100, "a string"),
        (None, 100, "a string"),
        ("x" * 11, 10, "at most 10 characters"),
    ],
)
def test_check_text_refuses(text, max_chars, word):
    err = _refused(rules.check_text, "prompt", text, max_chars)
    assert err.field == "prompt" and word in str(err), str(err)


def test_check_prompts():
    assert rules.check_prompts("prompt", "a") == ["a"]
    assert rules.check_prompts("prompt", ("a", "b")) == ["a", "b"]
    for bad in ([], None, ["a", 3], 5):
        assert "a string or a non-empty list of strings" in str(_refused(rules.check_prompts, "prompt", bad))
    assert _refused(rules.check_prompts, "negative_prompt", ["ok", "\x00"]).field == "negative_prompt"


def test_check_seeds():
    assert rules.check_seeds(5, 3) == [5, 6, 7]
    assert rules.check_seeds([9, 0], 2) == [9, 0]
    assert rules.check_seeds(rules.MAX_SEED - 1, 2) == [rules.MAX_SEED - 1, rules.MAX_SEED]
    random = rules.check_seeds(None, 4)
    assert len(random) == 4 and all(0 <= s < 2**32 for s in random)
    assert "one seed per image (3)" in str(_refused(rules.check_seeds, [1, 2], 3))
    assert "integer in [0, " in str(_refused(rules.check_seeds, [1, -2], 2))
    assert "integer in [0, " in str(_refused(rules.check_seeds, rules.MAX_SEED + 1, 1))
    for bad in (-1, 1.5, "3", True):
        assert _refused(rules.check_seeds, bad, 1).field == "seed"
    err = _refused(rules.check_seeds, rules.MAX_SEED, 2)
    assert f"[0, {rules.MAX_SEED - 1}] for 2 images" in str(err)


def test_check_size():
    assert rules.check_size("height", 64, 8) == 64
    assert rules.check_size("height", np.int32(64), 8, static=64) == 64
    for bad in (66, 0, -64, 64.0, "64", None):
        err = _refused(rules.check_size, "height", bad, 8)
        assert "a positive multiple of 8" in str(err)
    err = _refused(rules.check_size, "width", 36, 8, vae_factor=4)
    assert "the VAE's factor 4 x the U-Net's downsampling 2" in str(err)
    err = _refused(rules.check_size, "height", 128, 8, static=64)
    assert str(err).startswith("height must be 64 (this model was exported with a fixed size)")
    assert rules.size_multiple(4, 2) == 8 and rules.size_multiple(rules.VAE_FACTOR) == rules.SIZE_MULTIPLE


def test_check_pixels():
    rules.check_pixels(1536, 1536, 1, rules.max_pixels("sd"))
    rules.check_pixels(2048, 2048, 1, rules.max_pixels("sdxl"))
    err = _refused(rules.check_pixels, 1536, 1544, 1, rules.max_pixels("sd"))
    assert err.field == "height x width" and "too large" in str(err) and "1544x1536" in str(err)
    rules.check_pixels(1024, 1024, rules.MAX_IMAGES, rules.MAX_PIXELS)
    err = _refused(rules.check_pixels, 1024, 1032, rules.MAX_IMAGES, rules.MAX_PIXELS)
    assert err.field == "height x width x images"


def test_check_images():
    assert rules.check_images(4, 16) == 4
    assert "integer in [1, 64]" in str(_refused(rules.check_images, 0, 1))
    err = _refused(rules.check_images, 4, 17)
    assert err.field == "prompts x num_images_per_prompt" and "at most 64" in str(err)


def test_check_strength():
    assert rules.check_strength(0.5, 10) == 5
    assert rules.check_strength(1, 3) == 3
    for bad in (0, 1.5, math.nan, "0.5", None):
        assert "(0, 1]" in str(_refused(rules.check_strength, bad, 10))
    err = _refused(rules.check_strength, 0.1, 5)
    assert err.field == "strength" and "no step" in str(err)
    err = _refused(rules.check_strength, 0.1, 5, "denoising_strength", "steps")
    assert err.field == "denoising_strength" and "steps=5" in str(err)


def test_check_choice():
    assert rules.check_choice("output_type", "np", rules.OUTPUT_TYPES) == "np"
    assert "one of pil, np, latent" in str(
        _refused(rules.check_choice, "output_type", "jpeg", rules.OUTPUT_TYPES)
    )


def test_check_sampler():
    assert rules.check_sampler("DPM++ 2M Karras") == "DPM++ 2M Karras"
    assert rules.check_sampler("euler_a", {"timestep_spacing": "trailing"}) == "euler_a"
    assert rules.scheduler_for("ddim", None, {"num_train_timesteps": 1000}).order == 1
    err = _refused(rules.check_sampler, "no_such_sampler")
    assert err.field == "sampler" and "unknown sampler" in str(err) and "euler_a" in str(err)
    assert _refused(rules.check_sampler, 3).field == "sampler"
    err = _refused(rules.check_sampler, "ddim", {"bogus": 1})
    assert err.field == "sampler_options" and "bogus" in str(err)
    assert _refused(rules.check_sampler, "ddim", [1]).field == "sampler_options"


def test_presets_table():
    assert set(rules.PRESETS) == {"sd", "sdxl", "sd-turbo", "sdxl-turbo", "lcm", "lcm-lora"}
    for preset in rules.PRESETS.values():
        rules.check_sampler(preset.sampler, preset.sampler_options)
        assert rules.check_int("steps", preset.steps, 1, rules.MAX_STEPS) == preset.steps
        assert rules.check_float("guidance", preset.guidance, *rules.GUIDANCE_RANGE) == preset.guidance
