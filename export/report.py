"""What an export records: the `ExportReport` it returns and the sdlite.json it writes into OUT."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .options import ExportOptions
from .targets import PROVIDERS

SDLITE_JSON = "sdlite.json"
FORMAT_VERSION = 1
# Libraries whose versions shape the graphs, recorded in sdlite.json.
VERSIONED = (
    "sdlite",
    "torch",
    "diffusers",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
)


@dataclass
class ExportReport:
    out: Path
    source: str
    architecture: str
    dtype: str
    target: str
    opset: int
    components: dict[str, dict] = field(default_factory=dict)  # per component, as in sdlite.json
    seconds: float = 0.0


def versions() -> dict[str, str]:
    found = {}
    for dist in VERSIONED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def graph_opset(path: Path) -> int:
    """The default-domain opset a graph was written with."""
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return max((o.version for o in imports if o.domain in ("", "ai.onnx")), default=0)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def write_sdlite_json(
    folder: Path,
    report: ExportReport,
    options: ExportOptions,
    *,
    source_kind: str,
    static_shape: dict | None,
    ort_shim: bool,
    validated_on: str | None,
    preview: dict | None = None,
) -> None:
    """sdlite.json in `folder`: the options, what the run found, and the versions that made it."""
    write_json(
        folder / SDLITE_JSON,
        {
            "format": FORMAT_VERSION,
            "source": report.source,
            "source_kind": source_kind,
            "architecture": report.architecture,
            "dtype": options.dtype,
            "target": options.target,
            "provider": PROVIDERS[options.target],
            "opset": report.opset,
            "optimized": options.optimize,
            "fp32_vae": options.fp32_vae,
            "separate_qkv": options.separate_qkv or options.target == "cpu",  # LoRAs reach Q, K, V
            "quantize": options.quantize,
            "static_shape": static_shape,
            "io_dtype": "graph inputs/outputs use the component's dtype (float16 for fp16 graphs)",
            "ort_shim_fusion_attention_unet": ort_shim,
            "validated_on": validated_on,
            "preview": preview,  # preview.json (sdlite.preview's map), or why it was not fitted
            "versions": versions(),
            "components": report.components,
        },
    )
