"""Which graph fusions each ONNX Runtime execution provider can run.

A fused operator is only a win where the provider has a kernel for it; on a provider without one,
ONNX Runtime falls back or refuses the graph. The choices follow ONNX Runtime's own Stable Diffusion
tooling: `onnxruntime/transformers/models/stable_diffusion/optimize_pipeline.py` for CUDA/ROCm
(all U-Net fusions; packed QKV/KV only for fp16, as there) and Olive's DirectML SD recipe
(`examples/directml/stable_diffusion/config_unet.json`) for DML. On the CPU only the contrib ops
with CPU kernels are kept: (MultiHead)Attention, LayerNormalization, SkipLayerNormalization, Gelu.
"""

from __future__ import annotations

TARGETS: tuple[str, ...] = ("cpu", "cuda", "rocm", "dml")

# ORT provider name passed to the optimizer, per target.
PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
}

# FusionOptions switches that only exist for model_type unet/vae/clip (the SD-specific fusions).
_SD_FUSIONS = (
    "enable_nhwc_conv",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_packed_qkv",
    "enable_packed_kv",
    "enable_bias_add",
)

# Per target, the SD-specific switches turned off (everything else keeps FusionOptions' defaults).
_DISABLED: dict[str, tuple[str, ...]] = {
    # No CPU kernels for GroupNorm, SkipGroupNorm, NhwcConv, BiasSplitGelu, BiasAdd; the CPU
    # MultiHeadAttention kernel does not take packed QKV/KV.
    "cpu": _SD_FUSIONS,
    "cuda": (),
    "rocm": (),
    # Olive's DirectML recipe: no NhwcConv/BiasSplitGelu/BiasAdd, and SkipLayerNorm left unfused.
    "dml": ("enable_nhwc_conv", "enable_skip_group_norm", "enable_bias_splitgelu", "enable_bias_add"),
}


# Fused ops whose GPU kernels accept only some sizes of the last input dimension (ONNX Runtime's
# contrib_ops/cuda/diffusion/bias_split_gelu.cc): the real SD/SDXL U-Nets fit, a model with other
# widths (the tests' tiny ones, custom architectures) fails at run time on CUDA/ROCm -- found on
# the first H200 run. Such a graph is fused again without that op.
KERNEL_WIDTHS: dict[str, tuple[str, frozenset[int]]] = {
    "BiasSplitGelu": ("enable_bias_splitgelu", frozenset({2560, 5120, 6144, 10240, 12288})),
}


def unsupported_fusions(model, target: str) -> list[str]:
    """The FusionOptions switches to turn off because a fused node's width has no GPU kernel."""
    if target == "cpu":
        return []
    widths = {i.name: list(i.dims) for i in model.graph.initializer}
    switches = []
    for node_op, (switch, allowed) in KERNEL_WIDTHS.items():
        for node in model.graph.node:
            bias = widths.get(node.input[1]) if node.op_type == node_op and len(node.input) > 1 else None
            if bias and bias[-1] not in allowed:
                switches.append(switch)
                break
    return switches


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    return target


def fusion_options(target: str, model_type: str, float16: bool, disabled: tuple[str, ...] = ()):
    """FusionOptions for one component ("unet", "vae" or "clip") on one target, less `disabled`."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    check_target(target)
    if model_type not in ("unet", "vae", "clip"):
        raise ValueError(f"model_type must be unet, vae or clip; got {model_type!r}")
    options = FusionOptions(model_type)
    for name in _DISABLED[target] + tuple(disabled):
        setattr(options, name, False)
    if target == "dml":
        options.enable_skip_layer_norm = False
        options.enable_bias_skip_layer_norm = False
        options.enable_qordered_matmul = False
    if model_type == "unet" and not float16:
        # As ORT's optimize_pipeline: packed layouts pay only with the fp16 fused-attention kernels.
        options.enable_packed_qkv = False
        options.enable_packed_kv = False
    return options
