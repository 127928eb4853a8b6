"""U-Net self-attention as ``MultiHeadAttention`` with separate Q, K, V for the CPU target.

ORT's U-Net attention fusion (`FusionAttentionUnet`) offers two forms of self-attention: the
``Attention`` op with one packed QKV weight, or ``MultiHeadAttention`` over a packed [B,S,N,3,H]
QKV tensor. The CPU provider has no kernel for the packed MultiHeadAttention input, and its
``Attention`` kernel materialises the whole [B,N,S,S] score matrix (1 GiB at SD 1.5's 4096
tokens, batch 2), where its ``MultiHeadAttention`` kernel with separate Q, K, V runs a tiled
(flash) attention. Measured here, one 320-channel 8-head self-attention, batch 2, 2 threads:
4096 tokens 601 ms (Attention) vs 517 ms (MultiHeadAttention) vs 641 ms unfused; in the SD 1.5
U-Net at 512² the five 4096-token Attention nodes took 0.5-2.1 s each (first-touch of the score
buffer), 5.3 s of a 15.7 s call.

The fusion has no switch for that form, so while the CPU U-Net is optimized its node factory
emits, for self-attention, what it already emits for unpacked cross-attention: the Q/K/V
MatMuls kept as they are, feeding one MultiHeadAttention node. Pattern matching, head-count
detection and pruning stay the optimizer's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from onnx import NodeProto, helper

from .fusion_unet import fusion_classes

COUNTER = "MultiHeadAttention (self attention, separate Q/K/V)"


def _wrap(original):
    def create_attention_node(
        self,
        q_matmul: NodeProto,
        k_matmul: NodeProto,
        v_matmul: NodeProto,
        num_heads: int,
        hidden_size: int,
        input: str,  # noqa: A002 - the optimizer's own keyword
        output: str,
    ) -> NodeProto | None:
        if self.is_cross_attention or self.enable_packed_qkv:
            return original(self, q_matmul, k_matmul, v_matmul, num_heads, hidden_size, input, output)
        # The same preconditions the optimizer checks for self-attention.
        if any(m.input[0] != input for m in (q_matmul, k_matmul, v_matmul)):
            return None
        if num_heads <= 0 or (hidden_size > 0 and hidden_size % num_heads):
            return None
        node = helper.make_node(
            "MultiHeadAttention",
            inputs=[q_matmul.output[0], k_matmul.output[0], v_matmul.output[0]],
            outputs=[output],
            name=self.model.create_node_name("MultiHeadAttention"),
            domain="com.microsoft",
            num_heads=num_heads,
        )
        self.increase_counter(COUNTER)
        return node

    create_attention_node.sdlite_original = original
    return create_attention_node


@contextlib.contextmanager
def self_attention_as_mha() -> Iterator[None]:
    """While active, the U-Net fusion emits unpacked self-attention as MultiHeadAttention."""
    saved = []
    for cls in fusion_classes():
        current = cls.__dict__["create_attention_node"]
        saved.append((cls, current))
        if not hasattr(current, "sdlite_original"):  # nested use: already wrapped
            cls.create_attention_node = _wrap(current)
    try:
        yield
    finally:
        for cls, current in saved:
            cls.create_attention_node = current
