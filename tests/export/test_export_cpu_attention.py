"""CPU exports: U-Net self-attention as MultiHeadAttention over separate Q/K/V (cpu_attention)."""

from __future__ import annotations

import sys
from collections import Counter

import onnx
import pytest


def _unet(out) -> onnx.ModelProto:
    return onnx.load(str(out / "unet" / "model.onnx"))


@pytest.mark.parametrize("variant", ["fp32-cpu", "fp16-cpu"])
def test_cpu_self_attention_is_unpacked_mha(tiny_export, variant):
    out, _ = tiny_export(variant)
    graph = _unet(out).graph
    ops = Counter(n.op_type for n in graph.node)
    # The packed-QKV Attention op materialises the whole score matrix on the CPU: none may remain.
    assert ops.get("Attention", 0) == 0, ops
    producers = {o: n for n in graph.node for o in n.output}
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    self_attn = _self_attention(graph.node, producers)
    cross_attn = [n for n in mha if n not in self_attn]
    # Every transformer block has one self- and one cross-attention.
    assert self_attn and len(self_attn) == len(cross_attn), (len(self_attn), len(cross_attn))
    for node in self_attn:
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        assert heads > 0


def _self_attention(nodes, producers) -> list:
    """MultiHeadAttention nodes whose Q, K and V are MatMuls over one and the same input."""
    return [
        n
        for n in nodes
        if n.op_type == "MultiHeadAttention"
        and len(n.input) >= 3
        and all(producers.get(i) is not None and producers[i].op_type == "MatMul" for i in n.input[:3])
        and len({producers[i].input[0] for i in n.input[:3]}) == 1
    ]


def test_cuda_export_keeps_the_optimizers_own_form(tiny_export):
    out, _ = tiny_export("fp16-cuda")
    graph = _unet(out).graph
    producers = {o: n for n in graph.node for o in n.output}
    # CUDA has packed kernels: fp16 self-attention stays the optimizer's packed-QKV form.
    assert any(n.op_type == "MultiHeadAttention" for n in graph.node)
    assert _self_attention(graph.node, producers) == []


def test_patch_is_scoped():
    from sdlite.export import cpu_attention

    cls = sys.modules["fusion_attention_unet"].FusionAttentionUnet
    before = cls.__dict__["create_attention_node"]
    with cpu_attention.self_attention_as_mha():
        inside = cls.__dict__["create_attention_node"]
        assert inside is not before and inside.sdlite_original is before
        with cpu_attention.self_attention_as_mha():  # nested: no double wrapping
            assert cls.__dict__["create_attention_node"] is inside
        assert cls.__dict__["create_attention_node"] is inside
    assert cls.__dict__["create_attention_node"] is before


def test_patch_is_restored_after_an_error():
    from sdlite.export import cpu_attention

    cls = sys.modules["fusion_attention_unet"].FusionAttentionUnet
    before = cls.__dict__["create_attention_node"]
    with pytest.raises(RuntimeError), cpu_attention.self_attention_as_mha():
        raise RuntimeError("optimizer failed")
    assert cls.__dict__["create_attention_node"] is before
