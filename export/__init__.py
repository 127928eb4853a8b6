"""sdlite.export: diffusers models -> fused, validated ONNX for sdlite's runtime (and optimum's).

Needs the ``[export]`` extra (torch, diffusers, optimum-onnx); the heavy imports happen inside
`export_model`, so argument errors come back before any of them load.
"""

from .errors import ExportError
from .exporter import export_model
from .report import ExportReport

__all__ = ["ExportError", "ExportReport", "export_model"]
