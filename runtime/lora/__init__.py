"""LoRAs chosen per call: registered once, merged into the weights of the sessions that need them.

``Loras`` is the pipeline's registry (``Pipeline.load_lora_weights`` / ``unload_lora_weights``)
and, per call, the application: the call's set (name -> weight) is merged in numpy into a copy
of each touched model file, W' = W + sum_i weight_i * scale_i * up_i @ down_i (float32, LoRAs
in name order, always from the file's own W), and that component's session runs the merged
copy.  The file's own session is kept, so ``loras=None`` runs it again, bit-identical; the last
merged set is kept too (one per component), so repeating a set costs nothing.  Why merging and
re-creating the session rather than ONNX Runtime's adapters or ``add_initializer``: see
docs/architecture.md (LoRA).

A load is checked in full (``formats.parse`` and every layer against the graph) before it is
registered, so a failed load leaves the pipeline as it was.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..sessions import Session
from .formats import LayerLora, parse, sgm_to_diffusers
from .weights import Weight, index_weights, read_weight, write_weight

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class Bound:
    """A LoRA layer matched to the weight it changes."""

    component: str
    weight: Weight
    layer: LayerLora


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    # A 1x1 convolution and a Linear layer hold the same matrix (SD 1.x vs 2.x proj_in).
    return shape[:2] + tuple(d for d in shape[2:] if d != 1)


def _layers_per_block(weights: dict[str, Weight]) -> int:
    # Stability's block numbers count the resnets of a down block (+1 for its downsampler).
    found = [int(m.split(".")[3]) for m in weights if m.startswith("down_blocks.0.resnets.")]
    return max(found, default=1) + 1


# GPU exports pack attention's Q, K, V (and cross-attention's K, V) into one weight.
_QKV = ("to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj")
_FUSED_HINT = (
    " (GPU exports pack attention's Q, K and V into one weight: re-export with "
    "`sdlite export SOURCE OUT --target cuda --separate-qkv` for LoRAs)"
)


class Loras:
    """The LoRAs registered on one pipeline (name -> matched layers) and the set in use."""

    def __init__(self, onnx_paths: Mapping[str, Path], sessions: list[Session]) -> None:
        by_path = {s.path: s for s in sessions}
        self.sessions = {c: by_path[p] for c, p in onnx_paths.items() if c in COMPONENTS and p in by_path}
        self._index: dict[str, dict[str, Weight]] = {}
        self.registered: dict[str, tuple[int, list[Bound]]] = {}  # name -> (load number, layers)
        self._loads = 0

    @property
    def names(self) -> list[str]:
        return list(self.registered)

    def _weights(self, component: str) -> dict[str, Weight]:
        if component not in self._index:
            self._index[component] = index_weights(self.sessions[component].path)
        return self._index[component]

    def load(self, path: str | Path, name: str | None = None) -> str:
        """Check and register the LoRA at ``path`` under ``name`` (default: the file's stem)."""
        path = Path(path)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"adapter_name must be a non-empty string or None, got {name!r}")
        name = name if name is not None else path.stem
        if name in self.registered:
            raise ValueError(
                f"a LoRA named {name!r} is already loaded; pass another adapter_name or "
                "unload_lora_weights({name!r}) first"
            )
        if not path.is_file():
            raise FileNotFoundError(f"LoRA file {str(path)!r} does not exist")
        bound = [self._bind(path, layer) for layer in parse(path)]
        self._loads += 1
        self.registered[name] = (self._loads, bound)
        return name

    def _bind(self, path: Path, layer: LayerLora) -> Bound:
        where = f"LoRA file {str(path)!r}"
        if layer.component not in self.sessions:
            raise ValueError(
                f"{where} has layers for {layer.component}, which this model does not have "
                f"(it has {', '.join(self.sessions)}): a LoRA for another architecture?"
            )
        weights = self._weights(layer.component)
        weight = weights.get(layer.module) or self._kohya_match(weights, layer.module)
        if weight is None and layer.component == "unet":
            sgm = sgm_to_diffusers(layer.module, _layers_per_block(weights))
            weight = self._kohya_match(weights, sgm) if sgm else None
        if weight is None:
            raise ValueError(
                f"{where}: layer {layer.component}.{layer.module} matches no layer of this model's "
                f"{layer.component}: a LoRA for another architecture, or an export whose layers are "
                f"fused{_FUSED_HINT if layer.module.endswith(_QKV) else ''}; nothing was loaded"
            )
        shape = (layer.up.shape[0], *layer.down.shape[1:])
        if _matrix_shape(shape) != _matrix_shape(weight.torch_shape):
            raise ValueError(
                f"{where}: layer {layer.component}.{layer.module} makes a {shape} update but the "
                f"model's weight is {weight.torch_shape} (a LoRA for another model size?)"
            )
        if weight.offset is None:
            raise ValueError(
                f"{where}: the model's {layer.component} stores {weight.name!r} in a way sdlite cannot "
                "merge into (not raw bytes); re-export the model"
            )
        return Bound(layer.component, weight, layer)

    @staticmethod
    def _kohya_match(weights: dict[str, Weight], module: str) -> Weight | None:
        if "." in module:
            return None
        return next((w for m, w in weights.items() if m.replace(".", "_") == module), None)

    def unload(self, name: str | None = None) -> None:
        """Forget one LoRA (or all); the next call merges without it."""
        if name is None:
            self.registered.clear()
            return
        self._known(name)
        del self.registered[name]

    def _known(self, name: Any) -> None:
        if name not in self.registered:
            loaded = ", ".join(repr(n) for n in self.registered) or "none"
            raise ValueError(f"loras: no LoRA named {name!r} is loaded (loaded: {loaded})")

    def check(self, loras: Any) -> list[tuple[str, float]]:
        """The call's ``loras`` as (name, weight) in name order, zero weights dropped."""
        if loras is None:
            return []
        if not isinstance(loras, Mapping):
            raise ValueError(
                f"loras must be a dict of LoRA name -> weight, or None; got {type(loras).__name__}"
            )
        out = []
        for name, weight in loras.items():
            self._known(name)
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"loras[{name!r}] must be a finite number, got {weight!r}")
            if weight != 0:
                out.append((name, float(weight)))
        return sorted(out)

    def activate(self, loras: Any) -> None:
        """Run the next calls with ``loras`` merged (None or {}: the model's own weights)."""
        chosen = self.check(loras)
        component = ""
        try:
            for component, session in self.sessions.items():
                used = [(n, w) for n, w in chosen if self._touches(n, component)]
                key = tuple((n, self.registered[n][0], w) for n, w in used) or None
                session.use_weights(key, lambda c=component, u=used: self._merge(c, u))
        except Exception as err:  # out of memory, ORT refusing the merged model: back to the base
            for session in self.sessions.values():
                session.use_weights(None, lambda: (None, {}))
            raise RuntimeError(
                f"loras {dict(chosen)}: the merged {component} could not be loaded: {err}"
            ) from err

    def _touches(self, name: str, component: str) -> bool:
        return any(b.component == component for b in self.registered[name][1])

    def _merge(
        self, component: str, used: list[tuple[str, float]]
    ) -> tuple[bytes | None, dict[str, bytearray]]:
        """``component``'s files with ``used`` merged in: model.onnx's new bytes (None: unchanged)
        and the new contents of the external data files that hold changed weights."""
        deltas: dict[str, tuple[Weight, np.ndarray]] = {}
        for name, scale in used:
            for b in self.registered[name][1]:
                if b.component != component:
                    continue
                w, acc = deltas.get(b.weight.name, (b.weight, None))
                d = b.layer.delta().reshape(w.torch_shape) * np.float32(scale)
                deltas[w.name] = (w, d if acc is None else acc + d)
        folder = self.sessions[component].path.parent
        files: dict[str | None, bytearray] = {}
        for w, delta in deltas.values():  # each weight once: read before it is overwritten
            if w.file not in files:
                files[w.file] = bytearray(
                    (folder / (w.file or self.sessions[component].path.name)).read_bytes()
                )
            write_weight(files[w.file], w, read_weight(files[w.file], w).astype(np.float32) + delta)
        model = files.pop(None, None)
        return (None if model is None else bytes(model)), {k: v for k, v in files.items() if k}
