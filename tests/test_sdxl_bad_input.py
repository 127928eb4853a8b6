"""SDXL arguments a model cannot use, and broken SDXL folders: a ValueError naming the argument
(or the missing part) before any model runs, never an ONNX Runtime error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sdlite import Pipeline
from sdlite.cli import main

SDXL_ONLY = [
    ("prompt_2", "a dog"),
    ("negative_prompt_2", "blurry"),
    ("original_size", (64, 64)),
    ("crops_coords_top_left", (0, 0)),
    ("target_size", (64, 64)),
    ("aesthetic_score", 6.0),
    ("negative_aesthetic_score", 2.5),
]


class NoRun:
    """Wraps a session; fails the test if the pipeline runs it."""

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run(self, *args, **kwargs):
        raise AssertionError(f"{self._session.path} ran before the arguments were checked")


def _guard(pipe: Pipeline) -> Pipeline:
    for enc in pipe.prompt_encoder.encoders:
        enc.session = NoRun(enc.session)
    pipe.unet = NoRun(pipe.unet)
    return pipe


@pytest.fixture(scope="module")
def sd1(tiny_sd1_onnx):
    return _guard(Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1))


@pytest.fixture(scope="module")
def base(tiny_sdxl_onnx):
    return _guard(Pipeline.from_pretrained(tiny_sdxl_onnx, provider="cpu", num_threads=1))


@pytest.fixture(scope="module")
def refiner(tiny_sdxl_refiner_onnx):
    return _guard(Pipeline.from_pretrained(tiny_sdxl_refiner_onnx, provider="cpu", num_threads=1))


@pytest.mark.parametrize("name,value", SDXL_ONLY, ids=[n for n, _ in SDXL_ONLY])
def test_sdxl_argument_for_sd1_model(sd1, name, value):
    with pytest.raises(ValueError, match=rf"^{name} is an SDXL argument"):
        sd1("a cat", num_inference_steps=2, **{name: value})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt_2="a dog"), r"^prompt_2 needs a second text encoder.*refiner"),
        (dict(negative_prompt_2="x"), r"^negative_prompt_2 needs a second text encoder"),
        (dict(target_size=(64, 64)), r"^target_size: a refiner"),
        (dict(aesthetic_score="high"), r"^aesthetic_score must be a finite number"),
        (dict(negative_aesthetic_score=float("nan")), r"^negative_aesthetic_score must be a finite"),
    ],
)
def test_refiner_rejects(refiner, kwargs, match):
    image = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(ValueError, match=match):
        refiner("a cat", image=image, num_inference_steps=2, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(aesthetic_score=6.0), r"^aesthetic_score only applies to SDXL refiners"),
        (dict(original_size=(0, 64)), r"^original_size must be a pair of integers"),
        (dict(original_size=64), r"^original_size must be a pair"),
        (
            dict(crops_coords_top_left=(-1, 0)),
            r"^crops_coords_top_left must be a pair of integers \(height, width\) >= 0",
        ),
        (dict(target_size=(64.5, 64)), r"^target_size must be a pair"),
        (dict(prompt_2=["a", "b"]), r"^prompt_2 must be a string or a list of 1 strings"),
        (dict(negative_prompt_2=3), r"^negative_prompt_2 must be a string"),
    ],
)
def test_base_rejects(base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        base("a cat", num_inference_steps=2, **kwargs)


def test_sdxl_unet_without_second_encoder(tmp_path, tiny_sdxl_onnx):
    broken = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl_onnx, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ValueError, match=r"text_embeds and time_ids.*no text_encoder_2/"):
        Pipeline.from_pretrained(broken, provider="cpu")


def test_sdxl_encoder_without_tokenizer_2(tmp_path, tiny_sdxl_onnx):
    broken = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl_onnx, broken)
    shutil.rmtree(broken / "tokenizer_2")
    with pytest.raises(FileNotFoundError, match=r"tokenizer_2.*text_encoder_2 needs it"):
        Pipeline.from_pretrained(broken, provider="cpu")


def test_cli_prompt_2_on_sd1_model(tmp_path, capsys, tiny_sd1_onnx):
    out = tmp_path / "x.png"
    code = main(
        ["generate", "a cat", "--model", str(tiny_sd1_onnx), "--prompt-2", "a dog", "--out", str(out), "-q"]
    )
    assert code == 2
    assert "prompt_2 is an SDXL argument" in capsys.readouterr().err
    assert not out.exists()


def test_cli_prompt_2_on_sdxl_model(tmp_path, tiny_sdxl_onnx):
    from PIL import Image

    out = tmp_path / "x.png"
    args = ["generate", "a cat", "--model", str(tiny_sdxl_onnx), "--steps", "2", "--sampler", "euler"]
    args += ["--prompt-2", "a dog", "--negative-prompt-2", "blurry", "--seed", "3", "--out", str(out), "-q"]
    assert main(args) == 0
    assert Image.open(out).size == (64, 64)
