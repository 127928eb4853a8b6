"""The model an entry point runs when none is named: the embedded demo model."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError


def default_model() -> Path:
    """The demo model's folder; UsageError (asking for ``--model``) when this install lacks it."""
    try:
        from .models import demo_path  # type: ignore[attr-defined]
    except ImportError:
        raise UsageError(
            "no --model given and the embedded demo model is not part of this install; pass --model DIR"
        ) from None
    path = Path(demo_path())
    if not (path / "unet" / "model.onnx").is_file():
        raise UsageError(f"no --model given and the embedded demo model at {str(path)!r} is incomplete")
    return path


def model_path(model: str | None) -> Path:
    """``--model DIR`` as a path, else the demo model's."""
    return Path(model) if model else default_model()
