"""sdlite: Stable Diffusion on ONNX Runtime with numpy samplers, no PyTorch.

from sdlite import Pipeline
pipe = Pipeline.from_pretrained("path/to/exported-model")
out = pipe("a red circle on a white background", seed=1)
out.images[0].save("x.png")
"""

from __future__ import annotations

from .pipeline import Pipeline, PipelineOutput
from .tokenizer import CLIPTokenizer

__all__ = ["CLIPTokenizer", "Pipeline", "PipelineOutput"]
