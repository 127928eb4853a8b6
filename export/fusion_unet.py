"""ONNX Runtime's U-Net attention fusion class, under every module name it is reachable by.

The optimizer imports its fusion modules by bare name (``from fusion_attention_unet import ...``,
with the package folder on sys.path), so the class that runs is the one in
``sys.modules["fusion_attention_unet"]``, not ``onnxruntime.transformers.fusion_attention_unet``;
that package-qualified module, when something imported it, holds a separate class. A patch
(ort_shim, cpu_attention) applies to both, so either import sees the same behaviour.
"""

from __future__ import annotations

import importlib
import sys

# Importing the package puts its folder on sys.path, which the bare-name imports rely on.
import onnxruntime.transformers  # noqa: F401

MODULE = "fusion_attention_unet"


def fusion_class() -> type:
    """The class the optimizer runs."""
    return importlib.import_module(MODULE).FusionAttentionUnet


def fusion_classes() -> list[type]:
    """The class under the bare name, then the package-qualified one if it is a different object."""
    found = [fusion_class()]
    qualified = sys.modules.get(f"onnxruntime.transformers.{MODULE}")
    if qualified is not None and qualified.FusionAttentionUnet not in found:
        found.append(qualified.FusionAttentionUnet)
    return found
