"""`python -m sdlite.export convert-lora|convert-embedding IN OUT.safetensors`: pickles to safetensors.

The runtime never unpickles (a pickle can run code when loaded); it names these commands instead.
Here IN is read with ``torch.load(weights_only=True)``, whose unpickler builds only tensors and
plain containers and refuses any other object, so converting a hostile file runs none of its code.
The tensors are flattened to the keys the runtime reads (kohya/diffusers LoRA keys as they are;
A1111's ``string_to_param`` becomes ``emb_params``, as A1111's own safetensors embeddings) and
saved with safetensors under a temporary name, then renamed.  Strings (and numbers) in the file
become the safetensors ``__metadata__``, so kohya's ``ss_*`` training notes and an embedding's
``name`` survive.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("convert-lora", "convert-embedding")
SCALARS = (str, int, float, bool)


def load_pickle(path: Path) -> Any:
    """The file's content, read by torch's tensors-only unpickler; ValueError for anything else."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path}: refused: the pickle holds objects other than tensors and plain containers, "
            f"which could run code when loaded ({first[:200]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable torch file (.pt/.ckpt/.bin): {exc}") from exc


def _flatten(obj: dict, prefix: str, tensors: dict, metadata: dict) -> None:
    import torch

    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, dict):
            _flatten(value, f"{name}.", tensors, metadata)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name.endswith(".alpha"):
            tensors[name] = torch.tensor(float(value), dtype=torch.float32)  # kohya alpha as a number
        elif isinstance(value, SCALARS):
            metadata[name] = str(value)
        elif value is not None:
            raise ValueError(f"key {name!r} holds a {type(value).__name__}; only tensors and strings convert")


def lora_tensors(obj: Any, path: Path) -> tuple[dict, dict]:
    """Kohya / diffusers LoRA dicts (a ``state_dict`` wrapper unwrapped): flat keys -> tensors."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a LoRA dict of tensors")
    metadata = {str(k): str(v) for k, v in (obj.get("__metadata__") or {}).items()}
    body = {k: v for k, v in obj.items() if k != "__metadata__"}
    if isinstance(body.get("state_dict"), dict):
        body = body["state_dict"]
    tensors: dict = {}
    _flatten(body, "", tensors, metadata)
    if not tensors:
        raise ValueError(f"{path}: no tensors found (keys: {', '.join(map(str, list(obj)[:10]))})")
    return tensors, metadata


def embedding_tensors(obj: Any, path: Path) -> tuple[dict, dict]:
    """A1111 (``string_to_param``), diffusers (``{token: vector}``) or SDXL (``clip_l``/``clip_g``)."""
    import torch

    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not an embedding dict")
    if "string_to_param" in obj:
        params = obj["string_to_param"]
        found = list(params.values()) if isinstance(params, dict) else []
        if len(found) != 1 or not isinstance(found[0], torch.Tensor):
            raise ValueError(f"{path}: string_to_param must hold exactly one tensor, found {len(found)}")
        metadata = {k: str(v) for k, v in obj.items() if isinstance(v, SCALARS)}
        return {"emb_params": found[0]}, metadata
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"{path}: no embedding found: expected string_to_param (A1111), {{token: tensor}} "
            f"(diffusers) or clip_l/clip_g (SDXL); keys: {', '.join(map(str, list(obj)[:10]))}"
        )
    metadata = {str(k): str(v) for k, v in obj.items() if isinstance(v, SCALARS)}
    return tensors, metadata


def save(tensors: dict, metadata: dict, out: Path) -> None:
    """safetensors under a temporary name beside OUT, then renamed (own, contiguous copies)."""
    from safetensors.torch import save_file

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    owned = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    try:
        save_file(owned, str(tmp), metadata=metadata or None)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def check_paths(src: Path, out: Path, overwrite: bool) -> None:
    if not src.is_file():
        raise ValueError(f"IN {str(src)!r} is not a file")
    if src.suffix.lower() == ".safetensors":
        raise ValueError(f"IN {str(src)!r} is already safetensors; the runtime reads it as it is")
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"OUT {str(out)!r} must end in .safetensors")
    if out.exists() and not overwrite:
        raise ValueError(f"OUT {str(out)!r} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ValueError(f"OUT's folder {str(out.parent)!r} does not exist")


def convert(kind: str, src: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Convert a pickled LoRA (``kind`` "lora") or embedding ("embedding") to safetensors at ``out``."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    check_paths(src, out, overwrite)
    obj = load_pickle(src)
    flatten = lora_tensors if kind == "lora" else embedding_tensors
    try:
        tensors, metadata = flatten(obj, src)
    except ValueError as exc:
        raise ValueError(str(exc) if str(src) in str(exc) else f"{src}: {exc}") from exc
    save(tensors, metadata, out)
    return out


def main(argv: list[str]) -> int:
    """``argv[0]`` is the command (one of COMMANDS)."""
    command, rest = argv[0], argv[1:]
    kind = command.removeprefix("convert-")
    p = argparse.ArgumentParser(
        prog=f"python -m sdlite.export {command}",
        description=f"Convert a pickled {kind} (.pt/.ckpt/.bin) to .safetensors without running its code.",
    )
    p.add_argument("src", metavar="IN", help=f"the pickled {kind} file")
    p.add_argument("out", metavar="OUT", help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    args = p.parse_args(rest)
    try:
        out = convert(kind, args.src, args.out, args.overwrite)
    except ValueError as exc:
        print(f"sdlite export {command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
