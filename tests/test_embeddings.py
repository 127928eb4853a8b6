"""Textual inversion against diffusers' load_textual_inversion, on tiny random-weight models.

Embeddings are made in the test (random vectors of the text encoders' widths) and saved in
AUTOMATIC1111's format (``emb_params``), diffusers' (``{token: vector}``) and SDXL's
(``clip_l`` / ``clip_g``); the images of prompts that use them must equal diffusers' within 2/255.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from sdlite import Pipeline  # noqa: E402
from sdlite.embeddings import token_table  # noqa: E402

TOL = 2 / 255
STEPS = 3
NEGATIVE = "blurry"


def vectors(n: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, (n, width)).astype(np.float32)


def run_both(ours, ref, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    latents = np.random.default_rng(9).standard_normal((1, 4, 16, 16), dtype=np.float32)
    common = dict(num_inference_steps=STEPS, guidance_scale=6.0, height=64, width=64, output_type="np")
    got = ours(prompt, negative_prompt=NEGATIVE, sampler="euler", latents=latents, **common)
    scheduler = diffusers.EulerDiscreteScheduler.from_config(ref.scheduler.config)
    ref.scheduler = scheduler
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = ref(prompt, negative_prompt=NEGATIVE, latents=torch.from_numpy(latents), **common).images
    return got.images, want


def check(got: np.ndarray, want: np.ndarray) -> None:
    diff = np.abs(got - want).max()
    assert diff <= TOL, f"max |ours - diffusers| = {diff * 255:.2f}/255"
    assert want.std() > 0.01


def fresh(folder, src, cls):
    ours = Pipeline.from_pretrained(folder, provider="cpu", num_threads=1)
    ref = cls.from_pretrained(src, torch_dtype=torch.float32)
    return ours, ref


def test_token_table_read_without_onnx(tiny_sd1_onnx, tiny_sd1_diffusers):
    name, table = token_table(tiny_sd1_onnx / "text_encoder" / "model.onnx", 49408)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd1_diffusers, torch_dtype=torch.float32)
    want = ref.text_encoder.get_input_embeddings().weight.detach().numpy()
    assert table.shape == (49408, 32)
    np.testing.assert_array_equal(table, want)
    assert "token_embedding" in name


@pytest.mark.parametrize("fmt", ["diffusers", "a1111"])
def test_sd1_embedding_matches_diffusers(tiny_sd1_onnx, tiny_sd1_diffusers, tmp_path, fmt):
    torch.set_num_threads(1)
    ours, ref = fresh(tiny_sd1_onnx, tiny_sd1_diffusers, diffusers.StableDiffusionPipeline)
    if fmt == "diffusers":  # one vector under its token, loaded under the token in the file
        path, token, n = tmp_path / "learned_embeds.safetensors", "<cat-toy>", 1
        safetensors_numpy.save_file({token: vectors(1, 32, 1)[0]}, str(path))
        assert ours.load_textual_inversion(path) == token
        ref.load_textual_inversion(str(path))
    else:  # A1111: three vectors, named after the file
        path, token, n = tmp_path / "zqxstyle.safetensors", "zqxstyle", 3
        safetensors_numpy.save_file({"emb_params": vectors(3, 32, 2)}, str(path))
        assert ours.load_textual_inversion(path) == token
        ref.load_textual_inversion(str(path), token=token)
    assert len(ours.tokenizer.tokens([f"a {token}"])[0]) == 2  # "a" + the embedding's first token
    prompt = f"a photo of {token} on a table"
    got, want = run_both(ours, ref, prompt)
    check(got, want)
    # The embedding is what the prompt reads: other vectors give another image.
    other = fresh(tiny_sd1_onnx, tiny_sd1_diffusers, diffusers.StableDiffusionPipeline)[0]
    alt = tmp_path / "alt" / path.name
    alt.parent.mkdir()
    key = token if fmt == "diffusers" else "emb_params"
    safetensors_numpy.save_file({key: vectors(n, 32, 5)[0] if n == 1 else vectors(n, 32, 5)}, str(alt))
    other.load_textual_inversion(alt)
    assert np.abs(run_both(other, ref, prompt)[0] - got).max() > 0.01


def test_sdxl_embedding_matches_diffusers(tiny_sdxl_onnx, tiny_sdxl_diffusers, tmp_path):
    torch.set_num_threads(1)
    ours, ref = fresh(tiny_sdxl_onnx, tiny_sdxl_diffusers, diffusers.StableDiffusionXLPipeline)
    path = tmp_path / "xlstylezq.safetensors"
    clip_l, clip_g = vectors(2, 32, 3), vectors(2, 48, 4)
    safetensors_numpy.save_file({"clip_l": clip_l, "clip_g": clip_g}, str(path))
    assert ours.load_textual_inversion(path) == "xlstylezq"
    ref.load_textual_inversion(
        torch.from_numpy(clip_l), token="xlstylezq", text_encoder=ref.text_encoder, tokenizer=ref.tokenizer
    )
    ref.load_textual_inversion(
        torch.from_numpy(clip_g),
        token="xlstylezq",
        text_encoder=ref.text_encoder_2,
        tokenizer=ref.tokenizer_2,
    )
    got, want = run_both(ours, ref, "an oil painting, xlstylezq style")
    check(got, want)


def test_bad_embeddings_refused_and_pipeline_unchanged(tiny_sd1_onnx, tmp_path):
    ours = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
    session = ours.text_encoder
    pickle = tmp_path / "style.pt"
    pickle.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"style\.pt: pickle .* convert-embedding IN OUT\.safetensors"):
        ours.load_textual_inversion(pickle)
    wide = tmp_path / "wide.safetensors"
    safetensors_numpy.save_file({"emb_params": vectors(2, 768, 0)}, str(wide))
    with pytest.raises(ValueError, match=r"width \(768, from emb_params\) fits no text encoder .*widths: 32"):
        ours.load_textual_inversion(wide)
    word = tmp_path / "cat.safetensors"
    safetensors_numpy.save_file({"emb_params": vectors(1, 32, 0)}, str(word))
    with pytest.raises(ValueError, match=r"embedding name 'cat' is already a word"):
        ours.load_textual_inversion(word)
    with pytest.raises(ValueError, match=r"not a textual-inversion embedding"):
        safetensors_numpy.save_file(
            {"a": vectors(1, 32, 0), "b": vectors(1, 32, 0)}, str(tmp_path / "x.safetensors")
        )
        ours.load_textual_inversion(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ours.load_textual_inversion(tmp_path / "missing.safetensors")
    assert ours.text_encoder is session and ours.tokenizer.vocab_size == 49408
    # Loaded once, the name is taken: a second load under it is refused too.
    assert ours.load_textual_inversion(word, token="zqcat") == "zqcat"
    with pytest.raises(ValueError, match=r"'zqcat' is already a word"):
        ours.load_textual_inversion(word, token="zqcat")
