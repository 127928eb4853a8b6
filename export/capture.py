"""Graph capture: optimum's ONNX exporter on an already-loaded diffusers pipeline.

We call `onnx_export_from_model` (what `optimum-cli export onnx` and `main_export` call after
loading) so the graphs, names and folder layout are exactly optimum's, while loading stays ours
(local folders offline, single files, the pickle policy). Optimum's own validation is skipped:
ours runs later, on the optimized graphs that actually ship.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path


def capture(pipe, out: Path, opset: int | None = None) -> None:
    """Write fp32 ONNX graphs + configs/tokenizer/scheduler/model_index.json into `out`."""
    import torch
    from optimum.exporters.onnx.convert import onnx_export_from_model

    logging.getLogger("optimum").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python branch on tensor shapes; expected for these models.
        warnings.simplefilter("ignore")
        onnx_export_from_model(
            model=pipe,
            output=str(out),
            opset=opset,
            do_validation=False,
            device="cpu",
        )
