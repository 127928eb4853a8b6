"""`python -m sdlite.export convert-lora|convert-embedding IN OUT.safetensors` (sdlite.export.convert).

LoRAs and embeddings are made here with random tensors for the tiny SD-1 model and saved twice:
as safetensors (the runtime's format) and with torch.save (the pickles people download).  The
converted pickle must give the runtime the same image as the safetensors original, and a pickle
holding anything but tensors and plain containers must be refused without running its code.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402
from sdlite import Pipeline  # noqa: E402
from sdlite.export.cli import main  # noqa: E402
from sdlite.lora.formats import CONVERTER  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse"
UNET_LAYERS = ("attn1_to_q", "attn1_to_k", "attn2_to_v", "attn1_to_out_0")
WIDTH = 32  # the tiny SD-1 text encoder's width
RANK = 4


def kohya_lora(tiny_sd1_diffusers) -> dict:
    """Kohya keys for the tiny U-Net's first transformer block, random up and down weights."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd1_diffusers, subfolder="unet")
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, module in unet.named_modules():
        flat = name.replace(".", "_")
        if isinstance(module, torch.nn.Linear) and name.startswith("down_blocks.0.attentions.0"):
            if flat.endswith(UNET_LAYERS):
                key = f"lora_unet_{flat}"
                out[f"{key}.lora_down.weight"] = torch.randn(RANK, module.in_features, generator=gen) * 0.5
                out[f"{key}.lora_up.weight"] = torch.randn(module.out_features, RANK, generator=gen) * 0.5
                out[f"{key}.alpha"] = torch.tensor(8.0)
    assert len(out) == 3 * len(UNET_LAYERS)
    return out


def generate(pipe, prompt=PROMPT, **kwargs) -> np.ndarray:
    latents = np.random.default_rng(3).standard_normal((1, 4, 16, 16), dtype=np.float32)
    common = dict(num_inference_steps=2, guidance_scale=5.0, height=64, width=64, output_type="np")
    return pipe(prompt, sampler="euler", latents=latents, **common, **kwargs).images


def convert(kind: str, src, out, capsys) -> None:
    assert main([f"convert-{kind}", str(src), str(out)]) == 0, capsys.readouterr().err
    assert out.is_file() and [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_the_runtime_names_this_command():
    assert CONVERTER.startswith("python -m sdlite.export convert-lora ")


def test_kohya_lora_pickle_gives_the_same_image(tmp_path, tiny_sd1_diffusers, tiny_sd1_onnx, capsys):
    tensors = kohya_lora(tiny_sd1_diffusers)
    original = tmp_path / "original.safetensors"
    safetensors_torch.save_file(tensors, str(original), metadata={"ss_network_dim": str(RANK)})
    pickled = tmp_path / "kohya.pt"
    torch.save({**tensors, "ss_network_dim": str(RANK)}, pickled)
    converted = tmp_path / "converted.safetensors"
    convert("lora", pickled, converted, capsys)

    with safe_open(str(converted), "pt") as f:
        assert f.metadata() == {"ss_network_dim": str(RANK)}
        assert set(f.keys()) == set(tensors)
        for key in tensors:
            assert torch.equal(f.get_tensor(key), tensors[key])

    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
    assert pipe.load_lora_weights(original, "original") == "original"
    assert pipe.load_lora_weights(converted, "converted") == "converted"
    plain = generate(pipe)
    want = generate(pipe, loras={"original": 1.0})
    got = generate(pipe, loras={"converted": 1.0})
    assert np.abs(want - plain).max() > 4 / 255  # the LoRA moves the image
    np.testing.assert_array_equal(got, want)


def test_lora_in_a_state_dict_wrapper_with_number_alphas(tmp_path, tiny_sd1_diffusers, capsys):
    tensors = kohya_lora(tiny_sd1_diffusers)
    numbers = {k: (8.0 if k.endswith(".alpha") else v) for k, v in tensors.items()}
    pickled = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": numbers, "__metadata__": {"ss_note": "x"}}, pickled)
    converted = tmp_path / "wrapped.safetensors"
    convert("lora", pickled, converted, capsys)
    with safe_open(str(converted), "pt") as f:
        assert f.metadata() == {"ss_note": "x"}
        for key in tensors:
            assert torch.equal(f.get_tensor(key), tensors[key].float())


def embedding_images(tiny_sd1_onnx, files: dict, tokens: dict) -> dict:
    out = {}
    for label, path in files.items():
        pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
        name = pipe.load_textual_inversion(path, tokens[label])
        out[label] = (name, generate(pipe, f"a photo of {name} on a beach"))
    return out


def test_a1111_embedding_pickle_gives_the_same_image(tmp_path, tiny_sd1_onnx, capsys):
    vectors = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(1))
    original = tmp_path / "original.safetensors"
    safetensors_torch.save_file({"emb_params": vectors}, str(original))
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors.clone().requires_grad_(True)},
        "name": "mystyle",
        "step": 500,
        "sd_checkpoint": "abc123",
    }
    pickled = tmp_path / "mystyle.pt"
    torch.save(a1111, pickled)
    converted = tmp_path / "mystyle.safetensors"
    convert("embedding", pickled, converted, capsys)
    with safe_open(str(converted), "pt") as f:
        assert list(f.keys()) == ["emb_params"] and f.metadata()["name"] == "mystyle"

    images = embedding_images(
        tiny_sd1_onnx, {"original": original, "converted": converted}, {"original": "<s>", "converted": "<s>"}
    )
    pipe = Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)
    without = generate(pipe, "a photo of <s> on a beach")
    assert np.abs(images["original"][1] - without).max() > 2 / 255  # the vectors move the image
    np.testing.assert_array_equal(images["converted"][1], images["original"][1])


def test_diffusers_learned_embeds_keep_their_token(tmp_path, tiny_sd1_onnx, capsys):
    vector = torch.randn(WIDTH, generator=torch.Generator().manual_seed(2))
    original = tmp_path / "original.safetensors"
    safetensors_torch.save_file({"<cat-toy>": vector}, str(original))
    pickled = tmp_path / "learned_embeds.bin"
    torch.save({"<cat-toy>": vector}, pickled)
    converted = tmp_path / "learned_embeds.safetensors"
    convert("embedding", pickled, converted, capsys)
    images = embedding_images(
        tiny_sd1_onnx, {"original": original, "converted": converted}, {"original": None, "converted": None}
    )
    assert images["converted"][0] == images["original"][0] == "<cat-toy>"
    np.testing.assert_array_equal(images["converted"][1], images["original"][1])


class Payload:
    """Unpickling this would call os.system: weights_only must refuse it before anything runs."""

    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("kind", ["lora", "embedding"])
def test_a_pickle_with_other_objects_is_refused(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.chdir(tmp_path)
    pickled = tmp_path / "bad.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "payload": Payload()}, pickled)
    (tmp_path / "pwned").unlink(missing_ok=True)  # torch.save itself does not run the payload
    out = tmp_path / "bad.safetensors"
    assert main([f"convert-{kind}", str(pickled), str(out)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "bad.pt" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "pwned").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_bad_arguments_are_named(tmp_path, capsys):
    pickled = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, pickled)
    cases = [
        ([str(tmp_path / "missing.pt"), str(tmp_path / "o.safetensors")], "is not a file"),
        ([str(pickled), str(tmp_path / "o.bin")], "must end in .safetensors"),
        ([str(pickled), str(tmp_path / "no" / "o.safetensors")], "does not exist"),
    ]
    for args, message in cases:
        assert main(["convert-lora", *args]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "o.safetensors").write_bytes(b"keep")
    assert main(["convert-embedding", str(pickled), str(tmp_path / "o.safetensors")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "o.safetensors").read_bytes() == b"keep"
    assert main(["convert-embedding", str(pickled), str(tmp_path / "o.safetensors"), "--overwrite"]) == 0


def test_a_source_named_like_a_command_still_exports_by_path(tmp_path, capsys):
    """Only the first argument is a command: `./convert-lora` is an export SOURCE (here: missing)."""
    assert main(["./convert-lora", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "convert-lora" in err and "sdlite export: error" in err
