"""``sdlite generate``'s LoRAs, embeddings, prompt length, progress, previews and VAE tiles.

Everything that can be checked without the model is checked by ``prepare`` before it loads:
the LoRA files and folder, the prompts' ``<lora:NAME:WEIGHT>`` tags (resolved in ``--lora-dir``),
the embedding files and folder, the preview's target.  ``apply`` then loads what the model needs
and returns the call's extra arguments.  The PNG's parameters keep the prompts as written, tags
and all, as AUTOMATIC1111's do.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rules
from .arg_types import lora_spec, positive_int
from .embeddings import PICKLE_SUFFIXES
from .errors import UsageError
from .networks import EmbeddingLibrary, LoraLibrary, embedding_shape, written_parameters

VAE_TILING = {"auto": None, "on": True, "off": False}


def add_flags(g: argparse.ArgumentParser) -> None:
    g.add_argument(
        "--lora",
        action="append",
        type=lora_spec,
        default=[],
        metavar="PATH[:WEIGHT]",
        help="apply a LoRA (.safetensors; a name in --lora-dir also works); weight default 1.0; repeatable",
    )
    g.add_argument("--lora-dir", metavar="DIR", help="folder of LoRAs for <lora:NAME:WEIGHT> tags in prompts")
    g.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="PATH",
        help="load a textual inversion; repeatable",
    )
    g.add_argument("--embeddings-dir", metavar="DIR", help="load every textual inversion of this folder")
    g.add_argument(
        "--max-prompt-chunks",
        type=positive_int,
        metavar="N",
        help=f"longest prompt, in chunks of {rules.CHUNK_TOKENS} tokens (default {rules.MAX_PROMPT_CHUNKS})",
    )
    g.add_argument("--preview", metavar="PATH", help="PNG rewritten with a preview as sampling goes")
    g.add_argument(
        "--preview-every",
        type=positive_int,
        default=1,
        metavar="N",
        help="steps between previews (default 1)",
    )
    g.add_argument(
        "--vae-tiling",
        choices=tuple(VAE_TILING),
        default="auto",
        help="decode in tiles: auto (above 1024x1024), on, off (default auto)",
    )
    g.add_argument("--vae-tile-size", type=positive_int, metavar="PX", help="VAE tile side in pixels")


@dataclass
class Extras:
    """What ``prepare`` found: the prompts without tags, the LoRAs and embeddings to load."""

    prompt: str
    negative: str | None
    loras: dict[str, float] = field(default_factory=dict)
    library: LoraLibrary = field(default_factory=LoraLibrary)
    files: dict[str, Path] = field(default_factory=dict)
    embeddings: list[Path] = field(default_factory=list)
    embedding_library: EmbeddingLibrary | None = None


def _folder(flag: str, path: str) -> Path:
    if not Path(path).is_dir():
        raise UsageError(f"{flag}: folder {path!r} does not exist")
    return Path(path)


def _loras(args: argparse.Namespace) -> Extras:
    library = LoraLibrary(_folder("--lora-dir", args.lora_dir) if args.lora_dir else None)
    explicit: dict[str, float] = {}
    for key, weight in args.lora:
        explicit[key] = explicit.get(key, 0.0) + weight
    try:
        prompt, loras, files = library.plan(args.prompt, "prompt", explicit)
        negative, more, more_files = library.plan(args.negative_prompt or "", "negative_prompt")
    except rules.RuleError as err:
        if not err.field.startswith("loras["):
            raise
        raise rules.RuleError("--lora", err.allowed, err.value) from None
    for name, weight in more.items():
        loras[name] = loras.get(name, 0.0) + weight
    for name in files.keys() & more_files.keys():
        if files[name].resolve() != more_files[name].resolve():
            raise UsageError(f"the LoRA name {name!r} stands for {files[name]} and {more_files[name]}")
    extras = Extras(prompt, None if args.negative_prompt is None else negative, loras, library)
    extras.files = {**more_files, **files}
    return extras


def prepare(args: argparse.Namespace) -> Extras:
    """Every check that needs no model (a bad flag costs no model load)."""
    extras = _loras(args)
    rules.check_preview(None, args.preview_every)
    for path in args.embedding:
        if Path(path).suffix.lower() in PICKLE_SUFFIXES:
            raise UsageError(
                f"--embedding {path!r}: pickle files can run code when loaded, so sdlite does not read them; "
                "convert it to .safetensors with the export extra (pip install 'sdlite[export]')"
            )
        if not Path(path).is_file():
            raise UsageError(f"--embedding: file {path!r} does not exist")
        embedding_shape(path)  # a pickle or a file that is not safetensors: refused here
    extras.embeddings = [Path(p) for p in args.embedding]
    if args.embeddings_dir:
        extras.embedding_library = EmbeddingLibrary(_folder("--embeddings-dir", args.embeddings_dir))
    if args.preview is not None:
        from . import images

        parent = Path(args.preview).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"--preview: folder {str(parent)!r} does not exist or is not writable")
        images.check_target(args.preview, "--preview")
    return extras


def check_vae(args: argparse.Namespace, vae_factor: int | None, sides: list[Any]) -> None:
    """--vae-tile-size and --vae-tiling against the model folder's VAE factor and the image size."""
    if args.vae_tile_size is not None and vae_factor:
        rules.check_vae_tile_size(args.vae_tile_size, vae_factor, "--vae-tile-size")
    if args.vae_tiling == "off" and None not in sides and sides[0] * sides[1] > rules.VAE_WHOLE_MAX_PIXELS:
        allowed = (
            f"on or auto for images over {rules.VAE_WHOLE_MAX_PIXELS} pixels (a whole decode would not fit)"
        )
        raise rules.RuleError("--vae-tiling", allowed, "off")


def apply(extras: Extras, pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Load the LoRAs and embeddings into ``pipe``; the call's extra arguments."""
    extras.library.load(pipe, extras.files)
    for path in extras.embeddings:
        pipe.load_textual_inversion(path)
    if extras.embedding_library is not None:
        lib = extras.embedding_library
        lib.load_all(pipe)
        for name in lib.skipped:
            print(f"sdlite: warning: embedding {name!r} skipped: made for another model", file=sys.stderr)
        for name, error in lib.errors.items():
            print(f"sdlite: warning: embedding {name!r} not loaded: {error}", file=sys.stderr)
    if args.max_prompt_chunks is not None:
        pipe.prompt_encoder.max_chunks = args.max_prompt_chunks
    return {
        "prompt": extras.prompt,
        "negative_prompt": extras.negative,
        "loras": extras.loras or None,
        "vae_tiling": VAE_TILING[args.vae_tiling],
        "vae_tile_size": args.vae_tile_size,
        "preview": _preview(args.preview),
        "preview_every": args.preview_every,
    }


def _preview(path: str | None) -> Any:
    if path is None:
        return None
    from . import images

    return lambda step, total, image: images.save_png(image, path)


def parameters(extras: Extras, args: argparse.Namespace, texts: list[str]) -> list[str]:
    """The PNGs' parameters with the prompts as the user wrote them."""
    sent, written = (extras.prompt, extras.negative), (args.prompt, args.negative_prompt)
    return [written_parameters(t, sent, written) for t in texts]


def progress(args: argparse.Namespace) -> tuple[Any, Any]:
    """A tqdm bar on stderr opened by the first step (it learns the total then), and its closer."""
    bar: Any = None

    def step(step: int, total: int, latents: Any) -> None:
        nonlocal bar
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, file=sys.stderr, unit="step", leave=True, desc="sampling")
        bar.update(1)

    def close() -> None:
        if bar is not None:
            bar.close()

    return (None if args.quiet else step), close
