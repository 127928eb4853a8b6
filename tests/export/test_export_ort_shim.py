"""The numpy-2 workaround for ORT's U-Net attention fusion: applied only when needed, and effective.

The end-to-end guard (attention really fused in an exported U-Net) is in test_export_pipeline.py.
"""

from __future__ import annotations

import sys

import numpy as np
from sdlite.export import ort_shim


def _numpy_rejects_size1_int() -> bool:
    try:
        int(np.array([3]))
    except TypeError:
        return True
    return False


def test_detection_is_behavioural(monkeypatch):
    """With the installed method put back, the probe reports the bug exactly when numpy has it."""
    ort_shim.apply()
    cls = sys.modules["fusion_attention_unet"].FusionAttentionUnet
    if ort_shim.original_get_num_heads is not None:
        monkeypatch.setattr(cls, "get_num_heads", ort_shim.original_get_num_heads)
    assert ort_shim.is_affected() == _numpy_rejects_size1_int()


def test_patch_reaches_the_bare_module_the_optimizer_uses():
    active = ort_shim.apply()
    assert ort_shim.apply() == active  # idempotent
    import onnx_model_unet  # the optimizer's own module, imported by bare name

    assert onnx_model_unet.FusionAttentionUnet is sys.modules["fusion_attention_unet"].FusionAttentionUnet
    assert not ort_shim.is_affected()
    for heads in (1, 5, 8):
        assert ort_shim.num_heads_detected(heads) == heads
    if _numpy_rejects_size1_int():
        assert active and onnx_model_unet.FusionAttentionUnet.get_num_heads is ort_shim.fixed_get_num_heads
