"""Bad LoRA input: a clear error naming the file or name, before any model runs, nothing changed."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file
from sdlite import Pipeline

RNG = np.random.default_rng(0)
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 x 32 in the tiny U-Net
CONV = "down_blocks.0.resnets.0.conv1"  # 32 x 32 x 3 x 3


def lora_file(path, layers):
    """layers: (prefixed module, out, in, rank) -> a diffusers/PEFT file."""
    tensors = {}
    for module, out, inp, rank in layers:
        tensors[f"{module}.lora_A.weight"] = RNG.standard_normal((rank, inp)).astype(np.float32)
        tensors[f"{module}.lora_B.weight"] = RNG.standard_normal((out, rank)).astype(np.float32)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def pipe(tiny_sd1_onnx):
    return Pipeline.from_pretrained(tiny_sd1_onnx, provider="cpu", num_threads=1)


@pytest.fixture
def good(tmp_path):
    return lora_file(tmp_path / "good.safetensors", [(f"unet.{TO_Q}", 32, 32, 2)])


def image(pipe, loras=None):
    return pipe(
        "a cat", num_inference_steps=2, height=32, width=32, seed=1, output_type="np", loras=loras
    ).images


def seconds(pipe):
    return [s.seconds for s in (pipe.unet, pipe.text_encoder, pipe.vae_decoder)]


@pytest.mark.parametrize(
    "layers,message",
    [
        (
            [("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj", 32, 32, 2)],
            "another architecture",
        ),
        ([("unet.input_blocks.1.1.proj_in", 32, 32, 2)], "matches no layer"),
        ([(f"unet.{TO_Q}", 32, 32, 2), ("unet.no.such.layer", 32, 32, 2)], "matches no layer"),
        ([(f"unet.{TO_Q}", 64, 64, 2)], r"makes a \(64, 64\) update but the model's weight is \(32, 32\)"),
    ],
    ids=["other-architecture", "no-layer", "partly-matching", "shape"],
)
def test_a_lora_that_does_not_fit_is_refused_and_changes_nothing(pipe, tmp_path, good, layers, message):
    pipe.unload_lora_weights()
    pipe.load_lora_weights(good)
    before = image(pipe, {"good": 1.0})
    bad = lora_file(tmp_path / "bad.safetensors", layers)
    with pytest.raises(ValueError, match=message) as err:
        pipe.load_lora_weights(bad)
    assert "bad.safetensors" in str(err.value)
    assert pipe.lora_names == ["good"]
    assert np.array_equal(image(pipe, {"good": 1.0}), before)


def test_nan_weights_and_non_safetensors_files_are_refused(pipe, tmp_path):
    nan = tmp_path / "nan.safetensors"
    save_file(
        {
            f"unet.{TO_Q}.lora_A.weight": np.full((2, 32), np.nan, np.float32),
            f"unet.{TO_Q}.lora_B.weight": np.ones((32, 2), np.float32),
        },
        str(nan),
    )
    with pytest.raises(ValueError, match="NaN"):
        pipe.load_lora_weights(nan)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match="junk.safetensors.*not a safetensors file"):
        pipe.load_lora_weights(junk)
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="convert-lora"):
        pipe.load_lora_weights(ckpt)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        pipe.load_lora_weights(tmp_path / "missing.safetensors")


def test_names_default_to_the_stem_and_must_be_unique(pipe, good):
    pipe.unload_lora_weights()
    assert pipe.load_lora_weights(good) == "good"
    assert pipe.load_lora_weights(good, adapter_name="again") == "again"
    with pytest.raises(ValueError, match="'good' is already loaded"):
        pipe.load_lora_weights(good)
    pipe.unload_lora_weights("again")
    assert pipe.lora_names == ["good"]
    with pytest.raises(ValueError, match="no LoRA named 'again'"):
        pipe.unload_lora_weights("again")
    pipe.unload_lora_weights()
    assert pipe.lora_names == []


@pytest.mark.parametrize(
    "loras,message",
    [
        ({"nope": 1.0}, r"no LoRA named 'nope' is loaded \(loaded: 'good'\)"),
        ({"good": float("nan")}, r"loras\['good'\] must be a finite number"),
        ({"good": "1"}, r"loras\['good'\] must be a finite number"),
        (["good"], "loras must be a dict"),
    ],
)
def test_bad_loras_argument_fails_before_any_model_runs(pipe, good, loras, message):
    pipe.unload_lora_weights()
    pipe.load_lora_weights(good)
    before = seconds(pipe)
    with pytest.raises(ValueError, match=message):
        image(pipe, loras)
    assert seconds(pipe) == before


def test_an_unloaded_lora_can_no_longer_be_used_and_the_base_returns(pipe, good):
    pipe.unload_lora_weights()
    base = image(pipe)
    pipe.load_lora_weights(good)
    assert not np.array_equal(image(pipe, {"good": 1.0}), base)
    assert np.array_equal(image(pipe, {"good": 0.0}), base)
    assert np.array_equal(image(pipe, {"good": np.float32(1.0)}), image(pipe, {"good": 1}))
    pipe.unload_lora_weights("good")
    with pytest.raises(ValueError, match="no LoRA named 'good'"):
        image(pipe, {"good": 1.0})
    assert np.array_equal(image(pipe), base)


@pytest.mark.parametrize("threshold", [0, 10_000], ids=["all-external", "mixed"])
def test_models_with_external_data_merge_the_same(pipe, tiny_sd1_onnx, tmp_path, threshold):
    """Large exports keep their weights in model.onnx_data: the merge patches that file instead
    (mixed: the 32x32 projections stay in model.onnx, the 3x3 convolutions go outside)."""
    import shutil

    onnx = pytest.importorskip("onnx")
    from sdlite.lora.weights import index_weights

    folder = tmp_path / "external"
    shutil.copytree(tiny_sd1_onnx, folder)
    for component in ("unet", "text_encoder"):
        path = folder / component / "model.onnx"
        model = onnx.load(str(path))
        onnx.save_model(
            model, str(path), save_as_external_data=True, location="model.onnx_data", size_threshold=threshold
        )
    index = index_weights(folder / "unet" / "model.onnx")
    assert index[CONV].file == "model.onnx_data"
    assert index[TO_Q].file == (None if threshold else "model.onnx_data")
    conv = tmp_path / "conv.safetensors"
    save_file(
        {
            f"unet.{CONV}.lora_A.weight": RNG.standard_normal((2, 32, 3, 3)).astype(np.float32),
            f"unet.{CONV}.lora_B.weight": RNG.standard_normal((32, 2, 1, 1)).astype(np.float32),
        },
        str(conv),
    )
    good = lora_file(tmp_path / "good.safetensors", [(f"unet.{TO_Q}", 32, 32, 2)])
    external = Pipeline.from_pretrained(folder, provider="cpu", num_threads=1)
    pipe.unload_lora_weights()
    for p in (pipe, external):
        p.load_lora_weights(good)
        p.load_lora_weights(conv)
    loras = {"good": 1.0, "conv": 0.5}
    want = image(pipe, loras)
    assert not np.array_equal(want, image(pipe))
    np.testing.assert_allclose(image(external, loras), want, atol=1e-6)
    # One file changed, the other read from the folder as it is.
    np.testing.assert_allclose(image(external, {"good": 1.0}), image(pipe, {"good": 1.0}), atol=1e-6)
    assert np.array_equal(image(external), image(pipe))
