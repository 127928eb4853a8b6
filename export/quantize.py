"""Dynamic int8 weight quantization (CPU targets) with onnxruntime.quantization.

Only the text encoder and U-Net: they hold almost all the MatMul weights, and the VAE's
convolutions are where quantization error becomes visible in pixels. Weights are stored
int8 per tensor; activations are quantized on the fly at run time, so no calibration data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .optimize import external_data_path, float16_initializers, save

QUANTIZED_COMPONENTS = ("text_encoder", "text_encoder_2", "unet")
METHODS = ("int8",)


def check_quantize(method: str | None, target: str, dtype: str) -> None:
    if method is None:
        return
    if method not in METHODS:
        raise ValueError(f"quantize must be one of {', '.join(METHODS)}; got {method!r}")
    if target != "cpu":
        raise ValueError(
            f"--quantize int8 is for --target cpu only (ONNX Runtime's int8 kernels); got {target!r}"
        )
    if dtype != "fp32":
        raise ValueError("--quantize int8 starts from fp32 weights: use --dtype fp32 with it")


def quantize_component(path: Path) -> dict:
    """Quantize the graph at `path` in place (written beside it, then renamed over it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path), load_external_data=False)
    if float16_initializers(model):
        raise ValueError(f"{path}: int8 quantization needs an fp32 graph")
    large = external_data_path(path).exists()
    fd, tmp_name = tempfile.mkstemp(prefix=".quant-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        quantize_dynamic(
            path,
            tmp,
            weight_type=QuantType.QInt8,
            use_external_data_format=large,
            extra_options={
                "MatMulConstBOnly": True,  # only weights: activation x activation products stay float
                # onnx shape inference cannot type the outputs of ORT's fused contrib ops (QuickGelu,
                # SkipLayerNormalization); the graph is fp32 throughout (checked above).
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )
        quantized = onnx.load(str(tmp), load_external_data=False)
        if large:
            # quantize_dynamic names its data file after tmp; re-save under the layout's name.
            quantized = onnx.load(str(tmp))
            save(quantized, path)
            for leftover in path.parent.glob(f"{tmp.name}*"):
                leftover.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    int8 = sum(1 for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    return {"method": "int8-dynamic", "int8_initializers": int8}
