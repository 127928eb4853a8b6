"""Helpers every measurement shares: whole-or-nothing writes and the optional chart library."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write to a temporary name, then rename: a reader never sees half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    tmp.replace(path)
    return path


def _jsonable(o):
    # numpy scalars and arrays from the studies, paths from the settings
    return o.tolist() if hasattr(o, "tolist") else str(o)


def write_json(path: Path, data, indent: int = 1) -> Path:
    return atomic_write(path, json.dumps(data, indent=indent, default=_jsonable) + "\n")


def pyplot() -> ModuleType | None:
    """matplotlib's pyplot on the file-only backend, or None where the `bench` extra is missing:
    the tables are still written, and the caller says the chart was skipped."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt: ModuleType, fig, path: Path, **savefig) -> Path:
    """A chart written whole or not at all, as a 128-colour PNG: a chart's flat colours lose
    nothing visible and the file is a quarter of matplotlib's RGBA one (the tree travels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, **savefig)
    plt.close(fig)
    if tmp.suffix == ".png":
        shrink_png(tmp)
    tmp.replace(path)
    return path


def shrink_png(path: Path, colours: int = 128) -> None:
    """Rewrite a PNG in place with a ``colours``-entry palette (no dithering)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(
            colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        )
    small.save(path, optimize=True)


CHARTS_SKIPPED = "charts skipped: matplotlib is not installed (pip install '.[bench]')"


def write_study(out: Path, name: str, doc: dict, markdown: str) -> dict[str, Path]:
    """``out/NAME.json`` and ``out/NAME.md``, each written whole or not at all."""
    return {"json": write_json(out / f"{name}.json", doc), "md": atomic_write(out / f"{name}.md", markdown)}


def rounds_main(
    argv: list[str] | None,
    module: str,
    description: str,
    run: Callable[[int], dict],
    markdown: Callable[[dict], str],
    write: Callable[[dict, Path], dict[str, Path]],
    results: Path,
    rounds: int = 31,
) -> int:
    """``python -m benchmarks.MODULE [--rounds N] [--out DIR]`` for a study timed in rounds."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"alternating rounds (default {rounds})")
    parser.add_argument(
        "--out", type=Path, default=results, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 1000:
        parser.error("--rounds must be in [1, 1000]")
    doc = run(args.rounds)
    paths = write(doc, args.out)
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
