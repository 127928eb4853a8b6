"""ONNX Runtime sessions: provider choice, session options, input introspection, IO binding.

Every session is wrapped in ``Session``, which reads the graph's input names, element types and
ranks (so fp16 graphs, int32 ``input_ids`` or a [B] int64 timestep need no special cases in the
pipeline) and adds up the seconds spent inside ``run`` (what the benchmarks report as time
inside the sessions).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# Best first; CPU is always appended as the fallback for operators a GPU provider lacks.
PREFERRED = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)
ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# Providers whose memory is not the host's: constant inputs are bound there once.
_DEVICE = {
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "cuda",
    "ROCMExecutionProvider": "cuda",  # ORT's ROCm build names its device "cuda" in OrtValue
    "DmlExecutionProvider": "dml",
}
_NP = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}

ORT_WHEELS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-rocm",
)

ProviderArg = str | Sequence[str | tuple[str, dict[str, Any]]] | None
# What session_options sets, so that a session with other weights can get the same options.
_SPINNING = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
_COPIED = (
    "graph_optimization_level",
    "enable_cpu_mem_arena",
    "enable_mem_pattern",
    "execution_mode",
    "intra_op_num_threads",
    "inter_op_num_threads",
    "log_severity_level",
)


def installed_ort_wheels() -> list[str]:
    """The ONNX Runtime distributions installed; more than one means they overwrite each other."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for dist in ORT_WHEELS:
        try:
            found.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return found


def resolve_providers(provider: ProviderArg) -> list[str | tuple[str, dict[str, Any]]]:
    """ORT provider list for ``provider`` (None: best available; an alias; or an explicit list)."""
    available = ort.get_available_providers()
    if provider is None:
        best = next(p for p in PREFERRED if p in available or p == "CPUExecutionProvider")
        return [best] if best == "CPUExecutionProvider" else [best, "CPUExecutionProvider"]
    requested = [provider] if isinstance(provider, str) else list(provider)
    if not requested:
        raise ValueError("provider must not be an empty list; use None for the best available")
    out: list[str | tuple[str, dict[str, Any]]] = []
    for item in requested:
        name, options = (item, None) if isinstance(item, str) else (item[0], item[1])
        if not isinstance(name, str):
            raise ValueError(f"provider entries must be names or (name, options) pairs, got {item!r}")
        full = ALIASES.get(name.lower(), name)
        if full not in available:
            wheels = installed_ort_wheels()
            clash = (
                f" Several ONNX Runtime wheels are installed ({', '.join(wheels)}): keep one."
                if len(wheels) > 1
                else ""
            )
            raise ValueError(
                f"provider {name!r} ({full}) is not available in this onnxruntime build; available: "
                f"{', '.join(available)} (aliases: {', '.join(sorted(ALIASES))}). For CUDA install "
                "'onnxruntime-gpu' alone (SDLITE_ONNXRUNTIME=gpu pip install sdlite), for DirectML "
                f"'onnxruntime-directml'.{clash}"
            )
        out.append(full if options is None else (full, dict(options)))
    names = [p if isinstance(p, str) else p[0] for p in out]
    if "CPUExecutionProvider" not in names:
        out.append("CPUExecutionProvider")
    return out


def session_options(providers: Sequence[Any], num_threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = "DmlExecutionProvider" not in [
        p if isinstance(p, str) else p[0] for p in providers
    ]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = num_threads if num_threads is not None else int(os.environ.get("SDLITE_NUM_THREADS", "0"))
    so.intra_op_num_threads = threads  # 0: ORT's default, one thread per physical core
    # No busy-waiting between kernels: a spinning worker takes the core that the other workers
    # (and everything else on a shared machine) need.  Measured on a loaded 2-core machine, tiny
    # U-Net, 2 threads: 0.32 s per call spinning, 0.19 s not.  SDLITE_ORT_SPINNING=1 restores it.
    spinning = os.environ.get("SDLITE_ORT_SPINNING", "0") == "1"
    for key in _SPINNING:
        so.add_session_config_entry(key, "1" if spinning else "0")
    so.log_severity_level = 3
    return so


def _copy_options(options: ort.SessionOptions) -> ort.SessionOptions:
    # SessionOptions cannot be copied, and external files given in memory stay in the object.
    so = ort.SessionOptions()
    for name in _COPIED:
        setattr(so, name, getattr(options, name))
    for key in _SPINNING:
        so.add_session_config_entry(key, options.get_session_config_entry(key))
    return so


@dataclass(frozen=True)
class InputInfo:
    name: str
    dtype: type
    rank: int
    shape: tuple


class Session:
    """One ONNX model: ``run(feeds)`` with dtype casting, timing and optional IO binding."""

    def __init__(self, path: Path, providers: list, options: ort.SessionOptions) -> None:
        self.path = path
        self._options, self._providers = options, providers
        try:
            self._own = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
            raise ValueError(
                f"model file {str(path)!r} could not be loaded (missing or truncated?): {err}"
            ) from err
        self._sess = self._own
        self.inputs = {
            i.name: InputInfo(i.name, _NP.get(i.type, np.float32), len(i.shape), tuple(i.shape))
            for i in self._sess.get_inputs()
        }
        self.outputs = [o.name for o in self._sess.get_outputs()]
        self.output_types = {o.name: o.type for o in self._sess.get_outputs()}
        # Symbolic dims stay strings: old diffusers exports spell the VAE's factor in them ("h * 8").
        self.output_shapes = {o.name: tuple(o.shape) for o in self._sess.get_outputs()}
        self.providers = self._sess.get_providers()
        self.device = _DEVICE.get(self.providers[0])
        self.seconds = 0.0
        self._constants: dict[str, Any] = {}
        self._variant: tuple[Hashable, ort.InferenceSession] | None = None

    def use_weights(self, key: Hashable | None, build: Callable[[], tuple[bytes | None, dict]]) -> None:
        """Run the file's own weights (``key`` None) or other weights, built once per ``key``.

        Same graph, other weights (sdlite.lora): ``build()`` gives model.onnx's new bytes (None:
        the file as it is) and new contents for external data files ({file name: bytes}).  One
        variant is kept: the same key again reuses it, another key replaces it (the old one is
        freed before the new one is built).
        """
        if key is None:
            self._sess = self._own
            return
        if self._variant is None or self._variant[0] != key:
            self._sess, self._variant = self._own, None
            self._variant = (key, self._variant_session(*build()))
        self._sess = self._variant[1]

    def _variant_session(self, model: bytes | None, files: dict[str, bytearray]) -> ort.InferenceSession:
        options = self._options
        if files or model is not None:
            options = _copy_options(self._options)
        if files:
            names = list(files)
            options.add_external_initializers_from_files_in_memory(
                names, [files[n] for n in names], [len(files[n]) for n in names]
            )
        if model is not None:  # external files not given above are still read from the folder
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(self.path.parent)
            )
        source = model if model is not None else str(self.path)
        return ort.InferenceSession(source, sess_options=options, providers=self._providers)

    def cast(self, name: str, value: np.ndarray) -> np.ndarray:
        # Not np.ascontiguousarray: it turns a 0-d timestep into shape (1,).
        arr = np.asarray(value, dtype=self.inputs[name].dtype)
        return arr if arr.flags.c_contiguous else arr.copy(order="C")

    def bind_constant(self, name: str, value: np.ndarray) -> None:
        """Keep ``value`` for input ``name`` across runs (on the device for GPU providers)."""
        value = self.cast(name, value)
        if self.device is not None:
            value = ort.OrtValue.ortvalue_from_numpy(value, self.device, 0)
        self._constants[name] = value

    def clear_constants(self) -> None:
        self._constants.clear()

    def run(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        feeds = {k: self.cast(k, v) for k, v in feeds.items()}
        names = list(outputs) if outputs is not None else self.outputs
        t0 = time.perf_counter()
        if self.device is not None and self._constants:
            binding = self._sess.io_binding()
            for k, v in self._constants.items():
                binding.bind_ortvalue_input(k, v)
            for k, v in feeds.items():
                binding.bind_cpu_input(k, v)
            for k in names:
                binding.bind_output(k, "cpu")
            self._sess.run_with_iobinding(binding)
            result = binding.copy_outputs_to_cpu()
        else:
            result = self._sess.run(names, {**self._constants, **feeds})
        self.seconds += time.perf_counter() - t0
        return result
