"""``sdlite generate --out``: which files it names, checked before the model loads, and written.

``--out``: only the exact ``{seed}`` and ``{i}`` are replaced; everything else, ``%`` and other
braces included, is taken literally.  An existing folder (or a path ending in ``/``) gets the
default name inside it.  With ``-n`` > 1 and neither field, ``-{i}`` goes before the extension
(``out.png`` -> ``out-1.png``, ``out-2.png``).  Only regular files are written (temp name, then
rename); an existing device, FIFO or socket is refused before the model loads.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UsageError

DEFAULT_OUT = "sdlite-{seed}.png"
OUT_FIELDS = re.compile(r"\{(seed|i)\}")


def out_paths(out: str, seeds: Sequence[int]) -> list[Path]:
    """The files ``--out`` names for these seeds (the rules are in the module docstring)."""
    if not out:
        raise UsageError("--out must name a file or a folder, got ''")
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        out = os.path.join(out, DEFAULT_OUT)
    if len(seeds) > 1 and OUT_FIELDS.search(out) is None:
        stem, ext = os.path.splitext(out)
        out = f"{stem}-{{i}}{ext or '.png'}"
    # One pass of re.sub, not str.format: "%", "{}" and "{{" stay as typed.
    return [Path(OUT_FIELDS.sub(_fields(seed, i), out)) for i, seed in enumerate(seeds, 1)]


def _fields(seed: int, i: int) -> Callable[[re.Match], str]:
    return lambda m: str(seed if m[1] == "seed" else i)


def check_out(paths: Sequence[Path]) -> None:
    # Checked before loading anything, so that a bad --out costs no generation.
    from . import images

    for path in paths:
        parent = path.parent
        if not parent.is_dir():
            raise UsageError(f"--out: folder {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"--out: folder {str(parent)!r} is not writable")
        images.check_target(path, "--out")


def save_all(paths: Sequence[Path], pictures: Sequence[Any], parameters: Sequence[str]) -> int:
    """Write each image, printing its path; the first that cannot be written ends with status 1."""
    from . import images

    for path, picture, params in zip(paths, pictures, parameters, strict=True):
        try:
            images.save_png(picture, path, params)
        except OSError as err:  # a full disk, a quota, a folder gone: the run was fine, the write not
            reason = (err.strerror or str(err)).lower()
            print(f"sdlite: error: {reason} writing {str(path)!r}", file=sys.stderr)
            return 1
        except ValueError as err:  # the target became a folder or a device while generating
            print(f"sdlite: error: {err}", file=sys.stderr)
            return 1
        print(path)
    return 0
