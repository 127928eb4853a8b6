"""The LoRA file readers (sdlite.lora.formats) and the graph weight index (sdlite.lora.weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from sdlite.lora.formats import CONVERTER, parse, read_safetensors
from sdlite.lora.weights import index_weights, read_weight, write_weight

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def write(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_read_safetensors_matches_the_reference_reader(tmp_path):
    from safetensors.numpy import load_file

    tensors = {"a": rand(3, 4), "b": rand(2).astype(np.float16), "c": rand(2, 1, 3, 3).astype(np.float64)}
    path = write(tmp_path / "x.safetensors", tensors, {"k": "v"})
    got, meta = read_safetensors(path)
    want = load_file(str(path))
    assert meta == {"k": "v"}
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key])


def test_bf16_is_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    value = torch.randn(4, 5).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_torch({"a": value}, str(path))
    got, _ = read_safetensors(path)
    assert got["a"].dtype == np.float32 and np.array_equal(got["a"], value.float().numpy())


def test_peft_keys_and_alpha_from_diffusers_metadata(tmp_path):
    down, up = rand(4, 32), rand(64, 4)
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 8})}
    path = write(
        tmp_path / "p.safetensors",
        {"unet.mid_block.attn1.to_q.lora_A.weight": down, "unet.mid_block.attn1.to_q.lora_B.weight": up},
        meta,
    )
    (layer,) = parse(path)
    assert (layer.component, layer.module, layer.scale) == ("unet", "mid_block.attn1.to_q", 2.0)
    np.testing.assert_allclose(layer.delta(), 2.0 * up @ down, rtol=1e-6)


def test_peft_without_metadata_scales_by_one_as_diffusers(tmp_path):
    path = write(
        tmp_path / "p.safetensors",
        {"text_encoder_2.a.b.lora_A.weight": rand(2, 8), "text_encoder_2.a.b.lora_B.weight": rand(8, 2)},
    )
    (layer,) = parse(path)
    assert (layer.component, layer.module, layer.scale) == ("text_encoder_2", "a.b", 1.0)


@pytest.mark.parametrize(
    "prefix,component",
    [("lora_unet_", "unet"), ("lora_te_", "text_encoder"), ("lora_te2_", "text_encoder_2")],
)
def test_kohya_keys_with_alpha(tmp_path, prefix, component):
    name = f"{prefix}down_blocks_0_attentions_0_proj_in"
    path = write(
        tmp_path / "k.safetensors",
        {
            f"{name}.lora_down.weight": rand(4, 16),
            f"{name}.lora_up.weight": rand(16, 4),
            f"{name}.alpha": np.array(2.0, np.float32),
        },
    )
    (layer,) = parse(path)
    assert (layer.component, layer.module, layer.scale) == (component, name[len(prefix) :], 0.5)


def test_locon_delta_is_the_two_convolutions_composed(tmp_path):
    torch = pytest.importorskip("torch")
    down, up = rand(3, 8, 3, 3), rand(6, 3, 1, 1)
    path = write(
        tmp_path / "l.safetensors",
        {"lora_unet_x_conv1.lora_down.weight": down, "lora_unet_x_conv1.lora_up.weight": up},
    )
    (layer,) = parse(path)
    x = torch.from_numpy(rand(1, 8, 7, 7))
    composed = torch.nn.functional.conv2d(
        torch.nn.functional.conv2d(x, torch.from_numpy(down)), torch.from_numpy(up)
    )
    merged = torch.nn.functional.conv2d(x, torch.from_numpy(layer.delta()))
    np.testing.assert_allclose(merged.numpy(), composed.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "tensors,message",
    [
        ({"unet.a.lora_A.weight": rand(2, 4)}, "has only the down half"),
        ({"unet.a.lora_A.weight": rand(2, 4), "unet.a.lora_B.weight": rand(4, 3)}, "rank mismatch"),
        (
            {"unet.a.lora_A.weight": np.full((2, 4), np.nan, np.float32), "unet.a.lora_B.weight": rand(4, 2)},
            "NaN",
        ),
        ({"model.layer.weight": rand(2, 2)}, "not LoRA weights sdlite knows"),
        (
            {
                "lora_unet_a.lora_down.weight": rand(2, 4),
                "lora_unet_a.lora_up.weight": rand(4, 2),
                "x": rand(1),
            },
            "'x'",
        ),
    ],
    ids=["half", "rank", "nan", "unknown-keys", "stray-key"],
)
def test_bad_files_are_refused_naming_the_file(tmp_path, tensors, message):
    path = write(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(ValueError, match=message) as err:
        parse(path)
    assert "bad.safetensors" in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_pickles_are_refused_naming_the_converter(tmp_path, suffix):
    path = tmp_path / f"lora{suffix}"
    path.write_bytes(b"\x80\x04not read")
    with pytest.raises(ValueError) as err:
        parse(path)
    assert CONVERTER in str(err.value) and f"lora{suffix}" in str(err.value)


def test_a_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "text.safetensors"
    path.write_text("hello, not a tensor file")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        parse(path)


def test_weight_index_reads_every_initializer_as_onnx_does(tiny_sd1_onnx):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    for component in ("unet", "text_encoder"):
        path = tiny_sd1_onnx / component / "model.onnx"
        index = index_weights(path)
        model = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        data = path.read_bytes()
        assert index, component
        for module, weight in index.items():
            want = inits[weight.name].T if weight.transposed else inits[weight.name]
            assert np.array_equal(read_weight(data, weight), want), module
    unet = index_weights(tiny_sd1_onnx / "unet" / "model.onnx")
    # MatMul weights are anonymous (onnx::MatMul_N) and found by their node's scope; convs by name.
    assert unet["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"].transposed
    assert unet["down_blocks.0.resnets.0.conv1"].name == "down_blocks.0.resnets.0.conv1.weight"


def test_write_weight_round_trips(tiny_sd1_onnx):
    path = tiny_sd1_onnx / "unet" / "model.onnx"
    weight = index_weights(path)["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    data = bytearray(path.read_bytes())
    value = rand(*weight.torch_shape)
    write_weight(data, weight, value)
    assert np.array_equal(read_weight(data, weight), value)
    assert len(data) == path.stat().st_size


@pytest.mark.parametrize(
    "sgm,diffusers_name",
    [
        (
            "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
        ),
        ("input_blocks_1_0_in_layers_2", "down_blocks_0_resnets_0_conv1"),
        ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
        ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
        ("middle_block_2_emb_layers_1", "mid_block_resnets_1_time_emb_proj"),
        ("output_blocks_5_0_skip_connection", "up_blocks_1_resnets_2_conv_shortcut"),
        ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
        ("time_embed_0", "time_embedding_linear_1"),
        ("down_blocks_0_resnets_0_conv1", None),
    ],
)
def test_stability_block_names_map_as_diffusers_maps_them(sgm, diffusers_name):
    from sdlite.lora.formats import sgm_to_diffusers

    assert sgm_to_diffusers(sgm, 2) == diffusers_name


@pytest.mark.parametrize(
    "key,module",
    [
        (
            "unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora",
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
        ),
        (
            "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora",
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        ),
        (
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer",
            "text_model.encoder.layers.0.self_attn.q_proj",
        ),
    ],
)
def test_older_diffusers_keys(tmp_path, key, module):
    path = write(
        tmp_path / "old.safetensors", {f"{key}.down.weight": rand(2, 8), f"{key}.up.weight": rand(8, 2)}
    )
    (layer,) = parse(path)
    assert layer.module == module
