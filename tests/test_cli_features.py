"""`sdlite generate`: --lora, --lora-dir tags, embeddings, --max-prompt-chunks, --preview, VAE tiles."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file
from sdlite import Pipeline, cli
from sdlite.arg_types import lora_spec

TO_Q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 x 32 in the tiny U-Net


def lora_file(path, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    a, b = rng.standard_normal((2, 32)), rng.standard_normal((32, 2))
    save_file(
        {f"{TO_Q}.lora_A.weight": a.astype(np.float32), f"{TO_Q}.lora_B.weight": b.astype(np.float32)},
        str(path),
    )
    return path


def embedding_file(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.random.default_rng(seed).normal(0.0, 0.5, (2, 32)).astype(np.float32)
    save_file({"emb_params": vectors}, str(path))
    return path


def generate(model, out, prompt, *flags):
    argv = ["generate", prompt, "--model", str(model), "--steps", "2", "--seed", "3"]
    argv += ["--width", "32", "--height", "32", "--quiet", "--out", str(out), *flags]
    return cli.main(argv)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")), im.text["parameters"]


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(Pipeline, "from_pretrained", refuse)


# --- --lora PATH[:WEIGHT] --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,want",
    [
        ("style.safetensors", ("style.safetensors", 1.0)),
        ("style.safetensors:0.5", ("style.safetensors", 0.5)),
        ("loras/style:-1", ("loras/style", -1.0)),
        (r"C:\loras\style.safetensors", (r"C:\loras\style.safetensors", 1.0)),
        (r"C:\loras\style.safetensors:0.25", (r"C:\loras\style.safetensors", 0.25)),
        ("a:b.safetensors", ("a:b.safetensors", 1.0)),
    ],
)
def test_lora_spec_splits_on_the_last_colon_before_a_number(text, want):
    assert lora_spec(text) == want


@pytest.mark.parametrize("text", ["style.safetensors:nan", "style.safetensors:inf", "x:-inf"])
def test_lora_spec_refuses_bad_weights(text):
    with pytest.raises(argparse.ArgumentTypeError):
        lora_spec(text)


def test_lora_flag_and_prompt_tag_give_the_api_image(tmp_path, tiny_sd1_onnx, capsys):
    path = lora_file(tmp_path / "loras" / "sub" / "style.safetensors", seed=5)
    assert generate(tiny_sd1_onnx, tmp_path / "flag.png", "a cat", "--lora", f"{path}:0.8") == 0
    prompt = "a cat <lora:style:0.5>"
    flags = ("--lora-dir", str(tmp_path / "loras"), "--lora", "style:0.3")
    assert generate(tiny_sd1_onnx, tmp_path / "tag.png", prompt, *flags) == 0
    assert generate(tiny_sd1_onnx, tmp_path / "plain.png", "a cat") == 0
    flag, _ = pixels(tmp_path / "flag.png")
    tag, text = pixels(tmp_path / "tag.png")
    plain, _ = pixels(tmp_path / "plain.png")
    # The tag is removed from the prompt the model reads ("a cat " vs "a cat": the same tokens).
    assert np.array_equal(flag, tag) and not np.array_equal(flag, plain)
    assert text.startswith("a cat <lora:style:0.5>\nSteps: 2")  # as written, as A1111 keeps it

    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu")
    pipe.load_lora_weights(path)
    api = pipe("a cat", num_inference_steps=2, seed=3, height=32, width=32, loras={"style": 0.8}).images[0]
    assert np.array_equal(np.asarray(api), flag)


def test_negative_prompt_tags_are_applied_and_kept(tmp_path, tiny_sd1_onnx):
    lora_file(tmp_path / "loras" / "style.safetensors", seed=5)
    neg = ("--negative-prompt", "ugly <lora:style:0.8>", "--lora-dir", str(tmp_path / "loras"))
    assert generate(tiny_sd1_onnx, tmp_path / "neg.png", "a cat", *neg) == 0
    pos = ("--negative-prompt", "ugly", "--lora-dir", str(tmp_path / "loras"))
    assert generate(tiny_sd1_onnx, tmp_path / "pos.png", "a cat <lora:style:0.8>", *pos) == 0
    neg_px, text = pixels(tmp_path / "neg.png")
    assert np.array_equal(neg_px, pixels(tmp_path / "pos.png")[0])
    assert text.startswith("a cat\nNegative prompt: ugly <lora:style:0.8>\nSteps")


@pytest.mark.parametrize(
    "prompt,flags,message",
    [
        ("a <lora:nothere:1>", ("--lora-dir", "{tmp}"), "prompt must be .* under {tmp}.*got 'nothere'"),
        ("a <lora:style:1>", (), "no LoRA folder is set"),
        ("a", ("--lora", "{tmp}/missing.safetensors"), "--lora must be .*existing .safetensors file"),
        ("a", ("--lora-dir", "{tmp}/nowhere"), "--lora-dir: folder .* does not exist"),
        ("a <hypernet:h:1>", ("--lora-dir", "{tmp}"), "hypernetworks are not supported"),
        ("a <lora:style:x>", ("--lora-dir", "{tmp}"), "not a finite number"),
        ("a", ("--embedding", "{tmp}/e.pt"), "pickle files can run code"),
        ("a", ("--embedding", "{tmp}/none.safetensors"), "--embedding: file .* does not exist"),
        ("a", ("--embeddings-dir", "{tmp}/nowhere"), "--embeddings-dir: folder .* does not exist"),
        ("a", ("--preview", "{tmp}/no/dir/p.png"), "--preview: folder"),
        ("a", ("--preview", "{tmp}"), "--preview: .* is a folder"),
        ("a", ("--preview-every", "1001"), "--preview-every must be an integer in"),
        ("a", ("--vae-tile-size", "20"), "--vae-tile-size must be a multiple of"),
        (
            "a",
            ("--vae-tiling", "off", "--width", "1152", "--height", "1152"),
            "--vae-tiling must be on or auto",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_flags_are_refused_before_the_model_loads(
    tmp_path, tiny_sd1_onnx, capsys, no_model_load, prompt, flags, message
):
    lora_file(tmp_path / "style.safetensors")
    (tmp_path / "e.pt").write_bytes(b"x")
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert generate(tiny_sd1_onnx, tmp_path / "out.png", prompt, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdlite: error: ") and "Traceback" not in err
    import re

    assert re.search(message.replace("{tmp}", re.escape(str(tmp_path))), err), err
    assert not (tmp_path / "out.png").exists()


# --- embeddings, prompt length ---------------------------------------------------------------


def test_embedding_flags_give_the_api_image(tmp_path, tiny_sd1_onnx, capsys):
    path = embedding_file(tmp_path / "emb" / "zqstyle.safetensors", seed=2)
    embedding_file(tmp_path / "emb" / "zqother.safetensors", seed=3)
    (tmp_path / "emb" / "zqbroken.safetensors").write_bytes(b"garbage!")
    assert generate(tiny_sd1_onnx, tmp_path / "one.png", "a zqstyle", "--embedding", str(path)) == 0
    assert (
        generate(tiny_sd1_onnx, tmp_path / "dir.png", "a zqstyle", "--embeddings-dir", str(tmp_path / "emb"))
        == 0
    )
    assert "embedding 'zqbroken' not loaded" in capsys.readouterr().err
    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu")
    pipe.load_textual_inversion(path)
    api = np.asarray(pipe("a zqstyle", num_inference_steps=2, seed=3, height=32, width=32).images[0])
    assert np.array_equal(pixels(tmp_path / "one.png")[0], api)
    assert np.array_equal(pixels(tmp_path / "dir.png")[0], api)


def test_max_prompt_chunks(tmp_path, tiny_sd1_onnx, capsys):
    long = ", ".join(["a red cat"] * 25)  # 99 tokens: two chunks
    assert generate(tiny_sd1_onnx, tmp_path / "one.png", long, "--max-prompt-chunks", "1") == 2
    err = capsys.readouterr().err
    assert "prompt must be at most 1 chunks" in err and "Traceback" not in err
    assert generate(tiny_sd1_onnx, tmp_path / "two.png", long, "--max-prompt-chunks", "2") == 0


# --- previews and VAE tiles ------------------------------------------------------------------


def test_preview_file_is_rewritten_as_sampling_goes(tmp_path, tiny_sd1_onnx, monkeypatch):
    from sdlite import images

    saved = []
    save_png = images.save_png

    def spy(image, path, parameters=None):
        saved.append((path, image.size))
        return save_png(image, path, parameters)

    monkeypatch.setattr(images, "save_png", spy)
    preview = tmp_path / "preview.png"
    flags = ("--steps", "4", "--preview", str(preview), "--preview-every", "2")
    assert generate(tiny_sd1_onnx, tmp_path / "out.png", "a cat", *flags) == 0
    assert [p for p, _ in saved].count(str(preview)) == 2  # steps 2 and 4
    with Image.open(preview) as im:
        assert im.size == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "preview.png"]  # no temp files


def test_vae_tiling_flags_give_the_api_image(tmp_path, tiny_sd1_onnx):
    flags = ("--width", "64", "--height", "64", "--vae-tiling", "on", "--vae-tile-size", "32")
    assert generate(tiny_sd1_onnx, tmp_path / "tiled.png", "a cat", *flags) == 0
    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu")
    common = dict(num_inference_steps=2, seed=3, height=64, width=64)
    api = np.asarray(pipe("a cat", vae_tiling=True, vae_tile_size=32, **common).images[0])
    whole = np.asarray(pipe("a cat", vae_tiling=False, **common).images[0])
    tiled = pixels(tmp_path / "tiled.png")[0]
    assert np.array_equal(tiled, api) and not np.array_equal(tiled, whole)
