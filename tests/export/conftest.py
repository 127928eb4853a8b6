"""Exports of the tiny SD-1 model, made once per test session and shared by the export tests.

Each export takes ~30 s of CPU (most of it the U-Net fusion pass), so every variant a test needs
is built here exactly once, lazily, under pytest's session temp dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("optimum.exporters.onnx", reason="the export tests need the [export] extra")

VARIANTS = {
    "fp32-cpu": dict(dtype="fp32", target="cpu"),
    "fp16-cpu": dict(dtype="fp16", target="cpu"),
    "fp16-cuda": dict(dtype="fp16", target="cuda"),
    "fp16-cuda-separate-qkv": dict(dtype="fp16", target="cuda", separate_qkv=True),
}
# One export, through the command line, covers int8 and static shapes (64x64: the tiny model's size).
CLI_VARIANTS = {
    "int8-static": [
        "--dtype",
        "fp32",
        "--target",
        "cpu",
        "--quantize",
        "int8",
        "--static-shape",
        "64x64",
        "--batch",
        "1",
        "--quiet",
    ],
}


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_sd1_diffusers):
    """tiny_export(variant) -> (folder, ExportReport; sdlite.json for a CLI variant), built on first use."""
    import torch
    from sdlite.export import export_model
    from sdlite.export.cli import main

    torch.set_num_threads(1)
    done: dict[str, tuple[Path, object]] = {}

    def get(variant: str):
        if variant not in done:
            out = tmp_path_factory.mktemp("export") / variant
            if variant in CLI_VARIANTS:
                assert main([str(tiny_sd1_diffusers), str(out), *CLI_VARIANTS[variant]]) == 0
                done[variant] = (out, json.loads((out / "sdlite.json").read_text()))
            else:
                done[variant] = (
                    out,
                    export_model(tiny_sd1_diffusers, out, progress=False, **VARIANTS[variant]),
                )
        return done[variant]

    return get
