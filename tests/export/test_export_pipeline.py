"""Acceptance 1 and 2: tiny SD-1 exports for the CPU (fp32, fp16) and for CUDA (checked structurally).

Pixel parity: the same initial latents through diffusers' PyTorch pipeline and through our
export (sdlite's runtime, and optimum's ORTStableDiffusionPipeline), Euler, 3 steps, CFG 7.5.
Bounds: fp32 2/255 (the project's parity bound). fp16 4/255: measured 0.37/255 on this model
(fp16 U-Net/VAE relative error ~3e-3 per call), the bound leaves 10x headroom for other CPUs.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
SIZE, STEPS, GUIDANCE = 64, 3, 7.5
PROMPT, NEGATIVE = "a red circle on a white background", "blurry"
FP32_TOL, FP16_TOL = 2 / 255, 4 / 255


def _ops(path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _initializer_types(path) -> set[int]:
    return {t.data_type for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("variant", ["fp32-cpu", "fp16-cpu"])
def test_layout_and_fusions(tiny_export, variant):
    out, report = tiny_export(variant)
    for component in COMPONENTS:
        assert (out / component / "model.onnx").is_file(), component
        assert (out / component / "config.json").is_file(), component
    for extra in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json"):
        assert (out / extra).is_file(), extra
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["dtype"] == variant[:4] and meta["target"] == "cpu"
    assert meta["opset"] >= 14 and meta["versions"]["onnxruntime"]

    # The regression guard for the numpy-2 trap: attention must be fused in the U-Net.
    unet_ops = _ops(out / "unet" / "model.onnx")
    assert unet_ops.get("MultiHeadAttention", 0) + unet_ops.get("Attention", 0) > 0, unet_ops
    assert unet_ops.get("SkipLayerNormalization", 0) + unet_ops.get("LayerNormalization", 0) > 0, unet_ops
    # No CUDA-only fused ops on a CPU export: the CPU EP has no kernels for them.
    assert not {"GroupNorm", "NhwcConv", "BiasSplitGelu", "BiasAdd"} & set(unet_ops)
    # sdlite.json reports what fired, and the graph agrees with it.
    for op, count in meta["components"]["unet"]["fusions"].items():
        assert unet_ops.get(op, 0) >= count
    for component in COMPONENTS:
        assert meta["components"][component]["validation"]["ok"], component

    types = _initializer_types(out / "unet" / "model.onnx")
    if variant.startswith("fp16"):
        assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types
        assert (out / "vae_decoder" / "model_fp32.onnx").is_file()
        assert onnx.TensorProto.FLOAT16 not in _initializer_types(out / "vae_decoder" / "model_fp32.onnx")
    else:
        assert onnx.TensorProto.FLOAT16 not in types
        assert not (out / "vae_decoder" / "model_fp32.onnx").exists()


@pytest.fixture(scope="module")
def reference(tiny_sd1_diffusers):
    """diffusers' fp32 PyTorch image for fixed latents (Euler, as our runtime's `euler`)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd1_diffusers, torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(7).standard_normal((1, 4, SIZE // 4, SIZE // 4), dtype=np.float32)
    with torch.no_grad():
        image = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            height=SIZE,
            width=SIZE,
            latents=torch.from_numpy(latents),
            output_type="np",
        ).images
    assert image.std() > 0.01  # a comparison against a flat image would prove nothing
    return latents, image


@pytest.mark.parametrize("variant,tol", [("fp32-cpu", FP32_TOL), ("fp16-cpu", FP16_TOL)])
def test_sdlite_runtime_matches_diffusers(tiny_export, reference, variant, tol):
    from sdlite import Pipeline

    out, _ = tiny_export(variant)
    latents, want = reference
    pipe = Pipeline.from_pretrained(out, "cpu", num_threads=1)
    got = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        sampler="euler",
        latents=latents.copy(),
        output_type="np",
    ).images
    diff = np.abs(np.asarray(got, dtype=np.float64) - want).max()
    assert diff <= tol, f"max |sdlite - diffusers| = {diff * 255:.2f}/255 ({variant})"


@pytest.mark.parametrize("variant,tol", [("fp32-cpu", FP32_TOL), ("fp16-cpu", FP16_TOL)])
def test_optimum_loads_and_generates(tiny_export, reference, variant, tol):
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    out, _ = tiny_export(variant)
    latents, want = reference
    pipe = ORTStableDiffusionPipeline.from_pretrained(out)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    got = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        latents=torch.from_numpy(latents.copy()),
        output_type="np",
    ).images
    diff = np.abs(np.asarray(got, dtype=np.float64) - want).max()
    assert diff <= tol, f"max |optimum on our export - diffusers| = {diff * 255:.2f}/255 ({variant})"


def test_cuda_export_structure(tiny_export):
    out, report = tiny_export("fp16-cuda")
    unet_ops = _ops(out / "unet" / "model.onnx")
    for op in ("GroupNorm", "NhwcConv", "MultiHeadAttention", "SkipLayerNormalization"):
        assert unet_ops.get(op, 0) > 0, (op, unet_ops)
    # The tiny U-Net's GEGLU widths have no CUDA BiasSplitGelu kernel (the first H200 run failed
    # in it): that fusion is left out, and sdlite.json says so.
    assert unet_ops.get("BiasSplitGelu", 0) == 0, unet_ops
    assert report.components["unet"]["fusions_off"] == ["enable_bias_splitgelu"], report.components["unet"]
    assert _ops(out / "vae_decoder" / "model.onnx").get("GroupNorm", 0) > 0
    for component in COMPONENTS:
        path = out / component / "model.onnx"
        onnx.checker.check_model(str(path))
        assert onnx.TensorProto.FLOAT16 in _initializer_types(path), component
    meta = json.loads((out / "sdlite.json").read_text())
    assert meta["target"] == "cuda" and meta["provider"] == "CUDAExecutionProvider"
    # Without a CUDA device the fused U-Net cannot run here; the report must say so, not claim a pass.
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "skipped" in meta["components"]["unet"]["validation"]


def _bias_split_gelu_graph(widths: list[int]) -> onnx.ModelProto:
    from onnx import helper

    nodes, inits = [], []
    for i, w in enumerate(widths):
        inits.append(helper.make_tensor(f"b{i}", onnx.TensorProto.FLOAT, [w], [0.0] * w))
        nodes.append(helper.make_node("BiasSplitGelu", ["x", f"b{i}"], [f"y{i}"], domain="com.microsoft"))
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, None])
    ys = [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, None) for i in range(len(widths))]
    return helper.make_model(helper.make_graph(nodes, "g", [x], ys, initializer=inits))


@pytest.mark.parametrize(
    "widths, target, off",
    [
        ([2560, 5120, 10240], "cuda", []),  # SD 1.x/2.x U-Net widths: the kernel exists
        ([2560, 256], "cuda", ["enable_bias_splitgelu"]),  # one unsupported width is enough
        ([256], "rocm", ["enable_bias_splitgelu"]),
        ([256], "cpu", []),  # never fused on the CPU in the first place
    ],
)
def test_gpu_fusions_without_a_kernel_for_the_width_are_turned_off(widths, target, off):
    from sdlite.export.targets import unsupported_fusions

    assert unsupported_fusions(_bias_split_gelu_graph(widths), target) == off
