"""argparse ``type=`` converters shared by the ``sdlite`` subcommands (argparse reports their errors)."""

from __future__ import annotations

import argparse
import math


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def finite_number(text: str) -> float:
    value = number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nonneg_number(text: str) -> float:
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def pixel_budget(text: str) -> int:
    """``--max-pixels``: one image's largest area, from one 8x8 image to the per-call budget."""
    from . import rules

    value = integer(text)
    lo, hi = rules.SIZE_MULTIPLE**2, rules.MAX_BATCH_PIXELS
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(
            f"must be an integer in [{lo}, {hi}] (one image's pixels: 1048576 is 1024x1024), got {value}"
        )
    return value


def pixel_budget_help(what: str) -> str:
    """``--max-pixels``' help, with the family defaults read from the rules."""
    from . import rules

    sides = {family.upper(): math.isqrt(n) for family, n in rules.MAX_PIXELS_BY_FAMILY.items()}
    defaults = ", ".join(f"{side}x{side} for {family}" for family, side in sides.items())
    return f"largest image area {what}, in pixels (default: the model family's: {defaults})"


def lora_spec(text: str) -> tuple[str, float]:
    """``--lora PATH[:WEIGHT]``: split at the last colon only when a number follows it, so that
    ``C:\\loras\\x.safetensors`` stays one path; the weight is 1.0 when not given."""
    path, colon, tail = text.rpartition(":")
    try:
        weight = float(tail) if colon and path else None
    except ValueError:
        weight = None
    if weight is None:
        path, weight = text, 1.0
    if not math.isfinite(weight):
        raise argparse.ArgumentTypeError(f"the weight must be a finite number, got {tail!r}")
    if not path:
        raise argparse.ArgumentTypeError("expected PATH[:WEIGHT], got an empty path")
    return path, weight
