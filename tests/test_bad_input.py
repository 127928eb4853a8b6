"""Bad input fails before any model runs, with a message naming the argument; nothing is written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sdlite import Pipeline, rules
from sdlite.cli import main
from sdlite.rules import RuleError
from sdlite.sessions import Session


@pytest.fixture(scope="module")
def pipe(tiny_sd1_onnx):
    return Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)


@pytest.fixture
def no_model_runs(monkeypatch):
    calls = []

    def run(self, *args, **kwargs):
        calls.append(self.path)
        raise AssertionError(f"a model ran: {self.path}")

    monkeypatch.setattr(Session, "run", run)
    return calls


BAD_CALLS = [
    (dict(height=66), "height", "multiple of 8"),
    (dict(width=30), "width", "multiple of 8"),
    (dict(width=36), "width", "multiple of 8"),  # a multiple of the VAE's 4, not of the U-Net's 2 x 4
    (dict(height=0), "height", "positive"),
    (dict(width=-64), "width", "positive"),
    (dict(height=64.0), "height", "multiple"),
    (dict(height=8192, width=8192), "height x width", "too large"),
    (dict(num_inference_steps=0), "num_inference_steps", "integer in [1,"),
    (dict(num_inference_steps=-3), "num_inference_steps", "integer in [1,"),
    (dict(num_inference_steps=2.5), "num_inference_steps", "integer"),
    (dict(guidance_scale=float("nan")), "guidance_scale", "finite"),
    (dict(guidance_scale=float("inf")), "guidance_scale", "finite"),
    (dict(guidance_scale="7"), "guidance_scale", "number"),
    (dict(seed=-1), "seed", "integer in [0,"),
    (dict(seed=1.5), "seed", "integer"),
    (dict(seed="3"), "seed", "integer"),
    (dict(seed=True), "seed", "integer"),
    (dict(seed=[1, 2], num_images_per_prompt=3), "seed", "one seed per image"),
    (dict(seed=[1, -2], num_images_per_prompt=2), "seed", "integer in [0,"),
    (
        dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]),
        "negative_prompt",
        "one negative prompt per prompt",
    ),
    (dict(prompt=[]), "prompt", "non-empty list"),
    (dict(prompt=None), "prompt", "string"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt", "integer in [1,"),
    (dict(sampler="no_such_sampler"), "sampler", "unknown sampler"),
    (dict(sampler_options={"bogus": 1}), "sampler_options", "bogus"),
    (dict(output_type="jpeg"), "output_type", "pil, np, latent"),
    (dict(image=5), "image", "PIL image"),
    (dict(image="/nonexistent/picture.png"), "image", "not a readable image"),
    (dict(image=np.zeros((4, 4, 7), np.uint8)), "image", "shape"),
    (dict(image=np.full((64, 64, 3), 2.0)), "image", "[0, 1]"),
    (dict(image=np.zeros((64, 64, 3), np.uint8), strength=0.0), "strength", "(0, 1]"),
    (dict(image=np.zeros((64, 64, 3), np.uint8), strength=1.5), "strength", "(0, 1]"),
    (dict(image=np.zeros((64, 64, 3), np.uint8), strength=0.1, num_inference_steps=5), "strength", "no step"),
    (dict(latents=np.zeros((1, 4, 8, 8), np.float32)), "latents", "shape"),
    (dict(callback=3), "callback", "callable"),
    # One rule for every entry point (sdlite.rules):
    (dict(num_inference_steps=1001), "num_inference_steps", "integer in [1, 1000]"),
    (dict(guidance_scale=-1.0), "guidance_scale", "[0, 100]"),
    (dict(guidance_scale=101), "guidance_scale", "[0, 100]"),
    (dict(seed=2**64), "seed", "integer in [0,"),
    (dict(seed=2**64 - 1, num_images_per_prompt=2), "seed", "for 2 images"),
    (dict(num_images_per_prompt=65), "num_images_per_prompt", "integer in [1, 64]"),
    (dict(prompt=["a"] * 33, num_images_per_prompt=2), "prompts x num_images_per_prompt", "at most 64"),
    (dict(prompt="a\x00cat"), "prompt", "control characters"),
    (dict(negative_prompt="bad \ud800"), "negative_prompt", "lone surrogates"),
    (dict(prompt="x" * 8001), "prompt", "at most 8000 characters"),
    (dict(height=1536, width=1544), "height x width", "too large"),  # SD: at most 1536x1536's area
    (dict(sampler_options=[1]), "sampler_options", "dict"),
]


@pytest.mark.parametrize(
    "kwargs,argument,allowed", BAD_CALLS, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_CALLS)]
)
def test_bad_call_names_argument(pipe, no_model_runs, kwargs, argument, allowed):
    kwargs = {"prompt": "a cat", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError) as err:
        pipe(**kwargs)
    assert argument in str(err.value) and allowed in str(err.value), str(err.value)
    assert not no_model_runs


def test_rule_errors_name_their_field(pipe, no_model_runs):
    # The server answers 422 naming err.field; batch and the CLI print str(err).
    with pytest.raises(RuleError) as err:
        pipe("a cat", guidance_scale=float("nan"))
    assert err.value.field == "guidance_scale" and err.value.allowed == "a finite number in [0, 100]"


def test_max_pixels_is_per_pipeline(pipe, no_model_runs):
    assert pipe.max_pixels == rules.max_pixels("sd") < rules.max_pixels("sdxl")
    pipe.max_pixels = 64 * 64
    try:
        with pytest.raises(RuleError, match="at most 4096 pixels"):
            pipe("a cat", height=64, width=72)
    finally:
        pipe.max_pixels = rules.max_pixels("sd")


def test_missing_model_file_is_named(tmp_path, tiny_sd1_onnx):
    bad = tmp_path / "model"
    shutil.copytree(tiny_sd1_onnx, bad)
    (bad / "unet" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet/model\.onnx"):
        Pipeline.from_pretrained(bad)


def test_truncated_model_file_is_named(tmp_path, tiny_sd1_onnx):
    bad = tmp_path / "model"
    shutil.copytree(tiny_sd1_onnx, bad)
    path = bad / "vae_decoder" / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"vae_decoder/model\.onnx"):
        Pipeline.from_pretrained(bad)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"vae_decoder/model\.onnx.*empty"):
        Pipeline.from_pretrained(bad)


def test_missing_folder_and_scheduler_config(tmp_path, tiny_sd1_onnx):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Pipeline.from_pretrained(tmp_path / "nope")
    bad = tmp_path / "model"
    shutil.copytree(tiny_sd1_onnx, bad)
    (bad / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        Pipeline.from_pretrained(bad)


def test_unknown_provider_names_provider_and_available(tiny_sd1_onnx):
    with pytest.raises(ValueError, match=r"provider 'nosuch'.*available: .*CPUExecutionProvider"):
        Pipeline.from_pretrained(tiny_sd1_onnx, provider="nosuch")
    with pytest.raises(ValueError, match=r"provider 'coreml'"):
        Pipeline.from_pretrained(tiny_sd1_onnx, provider="coreml")


CLI_BAD = [
    (["--steps", "0"], "num_inference_steps"),
    (["--steps", "x"], "--steps"),
    (["--width", "66"], "width"),
    (["--guidance", "nan"], "guidance_scale"),
    (["--seed", "-5"], "seed"),
    (["--sampler", "nope"], "sampler"),
    (["--image", "missing.png"], "--image"),
    (["--strength", "0", "--image", "IMG"], "strength"),
    (["--out", "no/such/dir/x.png"], "--out"),
    (["--provider", "nosuch"], "provider"),
]


@pytest.mark.parametrize("extra,argument", CLI_BAD, ids=[c[1] for c in CLI_BAD])
def test_cli_bad_input_writes_nothing(tmp_path, monkeypatch, capsys, tiny_sd1_onnx, extra, argument):
    from PIL import Image

    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (64, 64), "red").save(tmp_path / "in.png")
    extra = [str(tmp_path / "in.png") if a == "IMG" else a for a in extra]
    monkeypatch.chdir(work)
    if "--out" not in extra:
        extra += ["--out", "x.png"]
    try:
        code = main(["generate", "a cat", "--model", str(tiny_sd1_onnx), "--quiet", *extra])
    except SystemExit as exit_:  # argparse's own type errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and argument in err, err
    assert list(work.iterdir()) == []
