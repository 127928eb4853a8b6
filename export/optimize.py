"""Per-component graph optimization: ONNX Runtime's transformer fusions, then fp16.

Fusion runs first because its pattern matchers only recognise the fp32 graphs the exporter
writes; fp16 conversion afterwards follows ORT's Stable Diffusion demo (`keep_io_types=False`:
inputs and outputs become float16 too, so no Cast sits at either end on the GPU; readers must
feed the dtype the session declares).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from pathlib import Path

import onnx

from . import cpu_attention, ort_shim
from .targets import fusion_options, unsupported_fusions

# The exported component folders and the ORT optimizer model type for each.
MODEL_TYPES: dict[str, str] = {
    "text_encoder": "clip",
    "text_encoder_2": "clip",
    "unet": "unet",
    "vae_encoder": "vae",
    "vae_decoder": "vae",
}

# Op types that the ORT transformer optimizer creates by fusion (a node count of these that grew
# during optimization is a fusion that fired).
FUSED_OP_TYPES = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "LayerNormalization",
        "SkipLayerNormalization",
        "Gelu",
        "FastGelu",
        "BiasGelu",
        "QuickGelu",
        "BiasSplitGelu",
        "GroupNorm",
        "SkipGroupNorm",
        "NhwcConv",
        "BiasAdd",
    }
)

# Protobuf's hard 2 GiB limit; leave headroom for the graph itself.
_PROTOBUF_LIMIT = 2**31 - 2**24


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def fused_ops(before: Counter, after: Counter) -> dict[str, int]:
    """Fused op type -> nodes added by the optimizer."""
    return {
        op: after[op] - before.get(op, 0)
        for op in sorted(FUSED_OP_TYPES)
        if after.get(op, 0) - before.get(op, 0) > 0
    }


def float16_initializers(model: onnx.ModelProto) -> int:
    return sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)


def declare_domains(model: onnx.ModelProto) -> None:
    """Add opset imports for custom domains that nodes use (the optimizer adds com.microsoft nodes
    without declaring the domain; ORT tolerates that, onnx.checker and other tools do not)."""
    declared = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node} - declared - {"", "ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))


def external_data_path(path: Path) -> Path:
    """`model.onnx` -> `model.onnx_data` (optimum's name); `x.onnx` -> `x.onnx_data`."""
    return path.with_name(path.name + "_data")


def save(model: onnx.ModelProto, path: Path) -> None:
    """Save, with weights in `<name>_data` beside it when the graph would pass protobuf's 2 GB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = external_data_path(path)
    if data.exists():
        os.remove(data)  # onnx appends to an existing external data file
    try:
        size = model.ByteSize()
    except Exception:  # noqa: BLE001 - some protobuf builds raise past 2 GB instead of returning the size
        size = -1
    large = size <= 0 or size > _PROTOBUF_LIMIT
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )


def _fuse(
    source: Path, target: str, model_type: str, float16: bool, disabled: tuple[str, ...], separate_qkv: bool
):
    from onnxruntime.transformers.optimizer import optimize_model

    ort_shim.apply()
    # The optimizer logs every fusion at INFO and warns on benign misses; our summary is in sdlite.json.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    # CPU: self-attention as unpacked MultiHeadAttention (tiled kernel); see cpu_attention. GPUs
    # too when asked (--separate-qkv): the Q, K, V weights then stay apart for LoRAs to merge into.
    separate = target == "cpu" or separate_qkv
    unpacked = cpu_attention.self_attention_as_mha() if separate else contextlib.nullcontext()
    if separate_qkv:
        disabled = (*disabled, "enable_packed_qkv", "enable_packed_kv")
    with unpacked:
        return optimize_model(
            str(source),
            model_type=model_type,
            num_heads=0,  # deduced from the graph
            hidden_size=0,
            opt_level=0,  # fusions only: ORT's own graph optimizations run at session creation
            optimization_options=fusion_options(target, model_type, float16, disabled),
            use_gpu=target != "cpu",
        )


def optimize_component(
    source: Path,
    dest: Path,
    component: str,
    target: str,
    float16: bool,
    fuse: bool = True,
    separate_qkv: bool = False,
) -> dict:
    """Optimize `source` (an fp32 ONNX graph) into `dest`; returns what was done, for sdlite.json."""
    if component not in MODEL_TYPES:
        raise ValueError(f"component must be one of {', '.join(MODEL_TYPES)}; got {component!r}")
    model_type = MODEL_TYPES[component]
    before = op_counts(onnx.load(str(source), load_external_data=False))
    off: list[str] = []
    if fuse:
        optimized = _fuse(source, target, model_type, float16, (), separate_qkv)
        off = unsupported_fusions(optimized.model, target)
        if off:
            optimized = _fuse(source, target, model_type, float16, tuple(off), separate_qkv)
    else:
        from onnxruntime.transformers.onnx_model import OnnxModel

        optimized = OnnxModel(onnx.load(str(source)))
    if float16:
        optimized.convert_float_to_float16(keep_io_types=False)
    optimized.topological_sort()
    model = optimized.model
    declare_domains(model)
    after = op_counts(model)
    save(model, dest)
    return {
        "dtype": "fp16" if float16 else "fp32",
        "fusions": fused_ops(before, after),
        "fusions_off": off,  # switches turned off because a GPU kernel lacks the width (targets.py)
        "nodes": sum(after.values()),
        "float16_initializers": float16_initializers(model),
        "external_data": external_data_path(dest).exists(),
    }
