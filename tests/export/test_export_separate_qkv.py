"""`--separate-qkv`: a GPU export whose attention Q, K, V weights stay apart, so LoRAs reach them."""

from __future__ import annotations

import json

import onnx
from sdlite.lora.weights import index_weights

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0"
QKV = [
    f"{ATTN}.attn1.to_q",
    f"{ATTN}.attn1.to_k",
    f"{ATTN}.attn1.to_v",
    f"{ATTN}.attn2.to_k",
    f"{ATTN}.attn2.to_v",
]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_gpu_exports_pack_qkv_unless_asked_not_to(tiny_export):
    packed, _ = tiny_export("fp16-cuda")
    separate, report = tiny_export("fp16-cuda-separate-qkv")
    assert not set(QKV) & set(index_weights(packed / "unet" / "model.onnx"))  # what LoRAs cannot reach
    found = index_weights(separate / "unet" / "model.onnx")
    assert set(QKV) <= set(found), sorted(k for k in found if ATTN in k)
    # Still the GPU's fused attention and the other GPU fusions, only with separate inputs.
    ops = _ops(separate / "unet" / "model.onnx")
    assert {"MultiHeadAttention", "GroupNorm", "NhwcConv"} <= ops, ops
    assert report.components["unet"]["fusions"].get("MultiHeadAttention", 0) > 0
    meta = json.loads((separate / "sdlite.json").read_text())
    assert meta["separate_qkv"] is True
    assert json.loads((packed / "sdlite.json").read_text())["separate_qkv"] is False


def test_the_cli_takes_the_flag():
    from sdlite.export.cli import build_parser

    assert build_parser().parse_args(["src", "out", "--separate-qkv"]).separate_qkv is True
    assert build_parser().parse_args(["src", "out"]).separate_qkv is False
