"""The demo model shipped inside the package: a tiny Stable Diffusion trained on coloured shapes.

Its recipe (data, tokenizer, training, export) lives in ``models/recipe/`` of the source tree
and is not installed; only the exported ONNX folder ``demo/`` is package data.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_path"]


def demo_path() -> Path:
    """The folder of the shipped demo model (works for regular and editable installs)."""
    # The folder is plain files next to this module in both install modes, so __file__ is
    # enough; importlib.resources would add nothing for a non-zipped package.
    path = Path(__file__).resolve().parent / "demo"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the demo model is missing from {path} (an incomplete install or checkout?); "
            "reinstall sdlite or pass a model folder explicitly"
        )
    return path
