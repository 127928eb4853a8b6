"""Rewrites of an optimum export into the other shapes a model folder can take (test-only).

- ``to_legacy_layout``: diffusers' older ONNX export: ``weights.pb`` external data, no
  per-component ``config.json``, int32 ``input_ids``, a [B] int64 ``timestep`` and a VAE
  encoder that outputs ``latent_sample`` (here the posterior mean).
- ``to_fp16``: every graph in float16 with float16 inputs and outputs.
- ``break_decoder``: a VAE decoder whose output is inf/NaN (as an fp16 overflow gives), with
  the working decoder kept as ``vae_decoder/model_fp32.onnx``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def _copy_common(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in ("tokenizer", "scheduler"):
        shutil.copytree(src / name, dst / name)
    shutil.copy(src / "model_index.json", dst / "model_index.json")


def _retype_input(graph: onnx.GraphProto, name: str, elem: int, shape: list, convert) -> None:
    """Replace graph input ``name`` by one of type ``elem``; ``convert`` builds the nodes back."""
    old = next(i for i in graph.input if i.name == name)
    inner = f"{name}__orig"
    for node in graph.node:
        node.input[:] = [inner if x == name else x for x in node.input]
    graph.input.remove(old)
    graph.input.append(helper.make_tensor_value_info(name, elem, shape))
    for k, node in enumerate(convert(name, inner)):
        graph.node.insert(k, node)


def _save(model: onnx.ModelProto, path: Path, location: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if location:
        onnx.save_model(model, str(path), save_as_external_data=True, location=location)
    else:
        onnx.save_model(model, str(path))


def to_legacy_layout(src: Path, dst: Path) -> Path:
    _copy_common(src, dst)
    te = onnx.load(str(src / "text_encoder" / "model.onnx"))
    _retype_input(
        te.graph,
        "input_ids",
        TensorProto.INT32,
        ["batch", "sequence"],
        lambda new, inner: [helper.make_node("Cast", [new], [inner], to=TensorProto.INT64)],
    )
    _save(te, dst / "text_encoder" / "model.onnx", "weights.pb")

    unet = onnx.load(str(src / "unet" / "model.onnx"))
    unet.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "ts_index"))
    _retype_input(
        unet.graph,
        "timestep",
        TensorProto.INT64,
        ["batch"],
        lambda new, inner: [
            helper.make_node("Cast", [new], ["ts_float"], to=TensorProto.FLOAT),
            helper.make_node("Gather", ["ts_float", "ts_index"], [inner], axis=0),
        ],
    )
    _save(unet, dst / "unet" / "model.onnx", "weights.pb")

    _save(
        onnx.load(str(src / "vae_decoder" / "model.onnx")), dst / "vae_decoder" / "model.onnx", "weights.pb"
    )

    enc = onnx.load(str(src / "vae_encoder" / "model.onnx"))
    params = enc.graph.output[0].name
    enc.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), "mean_start"),
            numpy_helper.from_array(np.array([4], np.int64), "mean_end"),
            numpy_helper.from_array(np.array([1], np.int64), "mean_axis"),
        ]
    )
    enc.graph.node.append(
        helper.make_node("Slice", [params, "mean_start", "mean_end", "mean_axis"], ["latent_sample"])
    )
    del enc.graph.output[:]
    enc.graph.output.append(helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, None))
    _save(enc, dst / "vae_encoder" / "model.onnx", "weights.pb")
    return dst


def to_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    shutil.copytree(src, dst)
    for comp in COMPONENTS:
        path = dst / comp / "model.onnx"
        model = onnx.load(str(path))
        # Resize's scales must stay float32: keep Resize and the Constant nodes feeding it in fp32.
        feeds_resize = {x for n in model.graph.node if n.op_type == "Resize" for x in n.input[1:]}
        keep = [n.name for n in model.graph.node if n.op_type == "Constant" and set(n.output) & feeds_resize]
        model = convert_float_to_float16(
            model,
            node_block_list=keep,
            keep_io_types=False,
            disable_shape_infer=True,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize"],
        )
        _save(model, path, None)
    return dst


def break_decoder(src: Path, dst: Path, keep_fp32: bool = True) -> Path:
    shutil.copytree(src, dst)
    dec_path = dst / "vae_decoder" / "model.onnx"
    if keep_fp32:
        shutil.copy(dec_path, dst / "vae_decoder" / "model_fp32.onnx")
    dec = onnx.load(str(dec_path))
    out = dec.graph.output[0].name
    for node in dec.graph.node:
        node.output[:] = [f"{out}__pre" if x == out else x for x in node.output]
    dec.graph.initializer.append(numpy_helper.from_array(np.array(np.inf, np.float32), "overflow"))
    dec.graph.node.append(helper.make_node("Mul", [f"{out}__pre", "overflow"], [out]))
    _save(dec, dec_path, None)
    return dst


def to_static(src: Path, dst: Path, batch: int, factor: int = 4, size: int = 64) -> Path:
    """Fix batch and spatial dims, as ``sdlite export --static-shape`` does (U-Net batch 2 x B)."""
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    shutil.copytree(src, dst)
    lat = size // factor
    dims = {
        "unet": {"batch_size": 2 * batch, "height": lat, "width": lat},
        "vae_encoder": {"batch_size": batch, "sample_height": size, "sample_width": size},
        "vae_decoder": {"batch_size": batch, "latent_height": lat, "latent_width": lat},
    }
    for comp, fixed in dims.items():
        path = dst / comp / "model.onnx"
        model = onnx.load(str(path))
        for name, value in fixed.items():
            make_dim_param_fixed(model.graph, name, value)
        _save(model, path, None)
    return dst
