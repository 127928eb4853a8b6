"""Workaround for onnxruntime.transformers' U-Net attention fusion under numpy >= 2.

`FusionAttentionUnet.get_num_heads` calls ``int()`` on a shape-[1] array. numpy 2 turned that
deprecation into ``TypeError: only 0-dimensional arrays can be converted to Python scalars``,
which aborts the whole U-Net optimization, so no attention gets fused.

The class object is patched under every module name it is reachable by (see fusion_unet).

Applied only when the installed code shows the bug (checked by calling `get_num_heads` on a
two-node graph that reproduces the exported pattern), so a fixed onnxruntime is left untouched.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .fusion_unet import fusion_class, fusion_classes

_patched = False
# The installed get_num_heads once patched, so tests can check the detection against it.
original_get_num_heads = None


def _probe_graph(num_heads: int) -> tuple[object, onnx.NodeProto]:
    """The PyTorch-2 attention pattern's head count: Concat(batch, seq, [heads], [head_dim]) -> Reshape."""
    from onnx_model import OnnxModel  # bare name: the same module object the optimizer uses

    consts = [
        helper.make_tensor(f"c{i}", TensorProto.INT64, [1], [v]) for i, v in enumerate([0, 0, num_heads, 4])
    ]
    concat = helper.make_node("Concat", [c.name for c in consts], ["shape"], axis=0)
    reshape = helper.make_node("Reshape", ["x", "shape"], ["y"])
    graph = helper.make_graph(
        [concat, reshape],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, num_heads * 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=consts,
    )
    return OnnxModel(helper.make_model(graph)), reshape


def num_heads_detected(num_heads: int = 3) -> int:
    """What the installed fusion reads as the head count of a probe graph (raises if it is broken)."""
    model, reshape = _probe_graph(num_heads)
    fusion = fusion_class()(
        model, 0, 0, is_cross_attention=False, enable_packed_qkv=False, enable_packed_kv=False
    )
    return fusion.get_num_heads(reshape, is_torch2=True)


def is_affected() -> bool:
    """True when the installed `get_num_heads` fails on a shape-[1] head count."""
    try:
        return num_heads_detected(3) != 3
    except TypeError:
        return True


def fixed_get_num_heads(self, reshape_q: onnx.NodeProto, is_torch2: bool = False) -> int:
    """`FusionAttentionUnet.get_num_heads` with the scalar conversion numpy 2 accepts (``.item()``)."""
    if is_torch2:
        parent = self.model.get_parent(reshape_q, 1)
        if parent is None or parent.op_type != "Concat" or len(parent.input) != 4:
            return 0
        value = self.model.get_constant_value(parent.input[2])
        if not (isinstance(value, np.ndarray) and value.size == 1):
            return 0
    else:
        shape = self.model.get_constant_value(reshape_q.input[1])
        if not (isinstance(shape, np.ndarray) and list(shape.shape) == [4]):
            return 0
        value = shape[2]
    num_heads = int(np.asarray(value).item())
    return num_heads if num_heads > 0 else 0


def apply() -> bool:
    """Patch the fusion if the installed version needs it. Idempotent; returns whether a patch is active."""
    global _patched, original_get_num_heads
    if _patched:
        return True
    if not is_affected():
        return False
    original_get_num_heads = fusion_class().get_num_heads
    for cls in fusion_classes():
        cls.get_num_heads = fixed_get_num_heads
    _patched = True
    if is_affected():  # our own replacement must pass the same probe
        raise RuntimeError("sdlite.export.ort_shim: patched get_num_heads still fails its probe")
    return True
