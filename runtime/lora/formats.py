"""LoRA files: safetensors read with numpy, and the two key layouts turned into one ``LayerLora`` each.

* diffusers / PEFT: ``unet.<module>.lora_A.weight`` (down) and ``.lora_B.weight`` (up), also the
  older ``.lora.down.weight`` / ``.lora_linear_layer.down.weight`` / ``.processor.to_q_lora.down.weight``
  (and ``up``); prefixes ``unet.``, ``text_encoder.``,
  ``text_encoder_2.``.  The scale is ``lora_alpha / r`` from the ``lora_adapter_metadata`` that
  diffusers writes into the safetensors header (``unet.lora_alpha``), else 1, as diffusers does.
* kohya / A1111: ``lora_unet_<module with _>.lora_down.weight``, ``.lora_up.weight`` and an
  optional ``.alpha`` (scale ``alpha / rank``); ``lora_te_`` (``lora_te1_``) is the first text
  encoder, ``lora_te2_`` SDXL's second.  Kohya names replace a module path's dots with
  underscores, so they are matched against the graph's own module paths (``sdlite.lora``); LoCon's
  convolution layers are the same keys with 4-d tensors.  SDXL files name U-Net layers in
  Stability's block layout (``lora_unet_input_blocks_4_1_…``): ``sgm_to_diffusers`` maps them.

Everything is checked here, before a pipeline changes: every key must belong to a layer, every
layer must have both halves with matching ranks, and no value may be NaN or infinite.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import tensor_files as tf

CONVERTER = "python -m sdlite.export convert-lora IN OUT.safetensors"
PEFT_PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "text_encoder_2.": "text_encoder_2"}
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
_PEFT_HALVES = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    "_lora.down.weight": "down",  # diffusers' attention processors: attn1.processor.to_q_lora
    "_lora.up.weight": "up",
}
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")
_KOHYA_HALVES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}


@dataclass(frozen=True)
class LayerLora:
    """One layer's low-rank update: ``scale * up @ down`` added to its weight (torch layout)."""

    component: str  # unet, text_encoder, text_encoder_2
    module: str  # the module path (kohya: underscores, resolved against the graph later)
    up: np.ndarray  # [out, r(, 1, 1)]
    down: np.ndarray  # [r, in(, kh, kw)]
    scale: float

    def delta(self) -> np.ndarray:
        """The full update in torch's layout, float32."""
        up = self.up.reshape(self.up.shape[0], -1).astype(np.float32)
        down = self.down.reshape(self.down.shape[0], -1).astype(np.float32)
        full = (up @ down) * np.float32(self.scale)
        return full.reshape((self.up.shape[0], *self.down.shape[1:]))


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (numpy, bf16 widened to float32) and the header's ``__metadata__``."""
    if path.suffix.lower() in tf.PICKLE_SUFFIXES:
        raise ValueError(
            f"LoRA file {str(path)!r} is a pickle ({path.suffix}), which sdlite does not open at run "
            f"time (it can run code); convert it once with `{CONVERTER}`"
        )
    return tf.read_safetensors(path, "LoRA file")


def _split(key: str, prefixes: dict[str, str], halves: dict[str, str]) -> tuple[str, str, str] | None:
    for prefix, component in prefixes.items():
        if key.startswith(prefix):
            for suffix, half in halves.items():
                if key.endswith(suffix):
                    return component, key[len(prefix) : -len(suffix)], half
    return None


def _peft_alpha(meta: dict[str, str], component: str, rank: int) -> float:
    config = json.loads(meta.get("lora_adapter_metadata", "{}") or "{}")
    alpha = config.get(f"{component}.lora_alpha")
    return 1.0 if alpha is None else float(alpha) / rank


def parse(path: Path) -> list[LayerLora]:
    """The layers of the LoRA file at ``path`` (ValueError naming the file and what is wrong)."""
    tensors, meta = read_safetensors(path)
    kohya = any(_split(k, KOHYA_PREFIXES, _KOHYA_HALVES) for k in tensors)
    prefixes, halves = (KOHYA_PREFIXES, _KOHYA_HALVES) if kohya else (PEFT_PREFIXES, _PEFT_HALVES)
    parts: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    unknown = []
    for key, value in tensors.items():
        split = _split(key, prefixes, halves)
        if split is None:
            unknown.append(key)
            continue
        component, module, half = split
        module = _PROCESSOR.sub(lambda m: "." + ("to_out.0" if m[1] == "to_out" else m[1]), module)
        parts.setdefault((component, module), {})[half] = value
    if unknown or not parts:
        shown = ", ".join(repr(k) for k in unknown[:3]) or "no tensors"
        raise ValueError(
            f"LoRA file {str(path)!r}: {len(unknown)} key(s) are not LoRA weights sdlite knows "
            f"({shown}); expected diffusers/PEFT keys (unet.<module>.lora_A.weight) or kohya keys "
            "(lora_unet_<module>.lora_down.weight, lora_te_/lora_te1_/lora_te2_)"
        )
    return [_layer(path, comp, module, p, meta, kohya) for (comp, module), p in parts.items()]


def _layer(path: Path, component: str, module: str, p: dict[str, np.ndarray], meta: dict, kohya: bool):
    where = f"LoRA file {str(path)!r}, layer {component}.{module}"
    if "up" not in p or "down" not in p:
        raise ValueError(f"{where}: has only the {'up' if 'up' in p else 'down'} half")
    up, down = p["up"], p["down"]
    if up.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
        raise ValueError(f"{where}: up {up.shape} and down {down.shape} do not multiply (rank mismatch)")
    if up.ndim == 4 and up.shape[2:] != (1, 1):
        raise ValueError(f"{where}: up {up.shape} is not a 1x1 convolution (LoCon's layout)")
    rank = down.shape[0]
    if kohya:
        scale = float(np.asarray(p["alpha"]).reshape(-1)[0]) / rank if "alpha" in p else 1.0
    else:
        scale = _peft_alpha(meta, component, rank)
    for half, value in (("up", up), ("down", down)):
        if not np.isfinite(value).all():
            raise ValueError(f"{where}: the {half} weight holds NaN or infinite values")
    if not np.isfinite(scale):
        raise ValueError(f"{where}: alpha is NaN or infinite")
    return LayerLora(component, module, up, down, scale)


_SGM_BLOCK = re.compile(r"^(input_blocks|output_blocks|middle_block)_(\d+)_(?:(\d+)_)?(.+)$")
_SGM_TOP = {
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
    "time_embed_0": "time_embedding_linear_1",
    "time_embed_2": "time_embedding_linear_2",
    "label_emb_0_0": "add_embedding_linear_1",
    "label_emb_0_2": "add_embedding_linear_2",
}
_SGM_RESNET = {
    "in_layers_2": "conv1",
    "out_layers_3": "conv2",
    "emb_layers_1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}


def _sgm_resnet(rest: str) -> str:
    return _SGM_RESNET.get(rest, rest)


def sgm_to_diffusers(module: str, layers_per_block: int) -> str | None:
    """A kohya U-Net name in Stability's block layout (SDXL's ``input_blocks_4_1_…``) as the
    diffusers module path with underscores (``down_blocks_1_attentions_0_…``), the way diffusers'
    ``_maybe_map_sgm_blocks_to_diffusers`` maps it; None when it is not in that layout."""
    if module in _SGM_TOP:
        return _SGM_TOP[module]
    m = _SGM_BLOCK.match(module)
    if m is None:
        return None
    kind, block, inner, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    per = layers_per_block + 1
    if kind == "middle_block":  # middle_block_1_proj_in: no inner index
        rest = f"{inner}_{rest}" if inner is not None else rest
        where = {0: "resnets_0", 1: "attentions_0", 2: "resnets_1"}.get(block)
        return None if where is None else f"mid_block_{where}_{_sgm_resnet(rest)}"
    if inner is None:
        return None
    if kind == "input_blocks":
        b, j = (block - 1) // per, (block - 1) % per
        if rest == "op":
            return f"down_blocks_{b}_downsamplers_0_conv"
        where = "resnets" if inner == "0" else "attentions"
        return f"down_blocks_{b}_{where}_{j}_{_sgm_resnet(rest)}"
    b, j = block // per, block % per
    where = {"0": f"resnets_{j}", "1": f"attentions_{j}", "2": "upsamplers_0"}.get(inner)
    return None if where is None else f"up_blocks_{b}_{where}_{_sgm_resnet(rest)}"
