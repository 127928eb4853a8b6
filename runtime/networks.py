"""AUTOMATIC1111's "extra networks" for every entry point: folders of LoRAs and of embeddings.

``LoraLibrary(folder)`` indexes ``*.safetensors`` under a folder (recursively); a prompt's
``<lora:NAME:WEIGHT>`` (or ``<lyco:...>``) tag names a file by its stem, as AUTOMATIC1111 does, or
by the ``ss_output_name`` in its metadata (A1111's alias).  ``resolve`` takes the tags out of the
prompt, loads each named file into the pipeline on first use and returns the ``loras`` argument
for ``pipe(...)``.  Weights add up: a name tagged twice counts twice (A1111 applies it twice), and
a tag's weight adds to the same name's explicit weight (``--lora``, a batch item's ``loras``).

``EmbeddingLibrary(folder)`` loads every textual inversion of a folder, each under its file's
stem, and reports them in the shape of A1111's GET /sdapi/v1/embeddings.

Both read a file's safetensors header only (8-byte size, JSON) to list it; tensors are read when
a file is loaded.  A library belongs to one pipeline: it remembers what it loaded into it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tensor_files as tf
from .prompts import parse_extra_networks
from .rules import RuleError

if TYPE_CHECKING:
    from .pipeline import Pipeline

LORA_KINDS = ("lora", "lyco")  # lyco: LyCORIS, which A1111 reads as a LoRA
UNSUPPORTED_KINDS = ("hypernet",)
SUFFIX = ".safetensors"


def metadata(path: str | Path) -> dict[str, str]:
    """The header's ``__metadata__`` (training notes, ``ss_output_name``...), {} when none."""
    meta = tf.read_safetensors_header(path).get("__metadata__")
    return dict(meta) if isinstance(meta, dict) else {}


def index_folder(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Stem -> path of every ``*.safetensors`` under ``folder``; on a repeated stem the first path
    in sorted order wins, and the note says which files lost."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} does not exist")
    found: dict[str, Path] = {}
    notes = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() == SUFFIX and p.is_file()):
        if path.stem in found:
            notes.append(f"{path}: the name {path.stem!r} is taken by {found[path.stem]}; ignored")
            continue
        found[path.stem] = path
    return found, notes


def _is_path(key: str) -> bool:
    return key.lower().endswith(SUFFIX) or "/" in key or os.sep in key


class LoraLibrary:
    """The LoRA files of a folder (None: no folder, only paths and already loaded names)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.files: dict[str, Path] = {}
        self.aliases: dict[str, str] = {}  # ss_output_name -> name
        self.notes: list[str] = []  # repeated names, unreadable headers
        self.loaded: dict[str, Path] = {}  # what this library loaded: name -> file
        self.refresh()

    def refresh(self) -> None:
        """Read the folder again (files added, removed or renamed since)."""
        if self.folder is None:
            return
        self.files, self.notes = index_folder(self.folder)
        self.aliases = {}
        for name, path in self.files.items():
            alias = self._alias(name, path)
            if alias != name and alias not in self.files:
                self.aliases.setdefault(alias, name)

    def _alias(self, name: str, path: Path) -> str:
        try:
            alias = metadata(path).get("ss_output_name")
        except ValueError as err:
            self.notes.append(str(err))
            return name
        return alias if isinstance(alias, str) and alias else name

    def entries(self) -> list[dict[str, Any]]:
        """A1111's GET /sdapi/v1/loras: ``name``, ``alias``, ``path``, ``metadata`` per file."""
        out = []
        for name, path in self.files.items():
            try:
                meta = metadata(path)
            except ValueError:
                meta = {}
            alias = meta.get("ss_output_name") or name
            out.append({"name": name, "alias": alias, "path": str(path), "metadata": meta})
        return out

    def _where(self) -> str:
        if self.folder is None:
            return "no LoRA folder is set"
        names = sorted(self.files)
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        return f"the .safetensors files under {self.folder} ({len(names)}: {shown or 'none'})"

    def find(self, key: str, field: str, loaded: list[str]) -> tuple[str, Path | None]:
        """(name, file to load or None when ``loaded`` has it) for a name, an alias or a path."""
        if key in self.files:
            return key, self.files[key]
        if key in self.aliases:
            return self.aliases[key], self.files[self.aliases[key]]
        if key in loaded:
            return key, None
        if _is_path(key):
            path = Path(key)
            if not path.is_file():
                raise RuleError(field, "a LoRA name or an existing .safetensors file", key)
            return path.stem, path
        raise RuleError(field, f"the name of a loaded LoRA or of one of {self._where()}", key)

    def plan(
        self, prompt: str, field: str, explicit: dict[str, float] | None = None, loaded: Sequence[str] = ()
    ) -> tuple[str, dict[str, float], dict[str, Path]]:
        """Without loading anything: (prompt without tags, {name: summed weight}, {name: file to load}).

        ``loaded`` are the pipeline's LoRA names (names there need no file).  Raises RuleError for a
        name found nowhere, a hypernetwork tag, a bad weight, or one name for two files."""
        text, networks = parse_extra_networks(prompt, field=field)
        weights: dict[str, float] = {}
        files: dict[str, Path] = {}
        for key, weight, where in self._requests(networks, explicit, field):
            name, path = self.find(key, where, list(loaded))
            self._check_source(name, path, files, where)
            if path is not None:
                files[name] = path
            weights[name] = weights.get(name, 0.0) + weight
        return text, weights, files

    @staticmethod
    def _requests(
        networks: list, explicit: dict[str, float] | None, field: str
    ) -> list[tuple[str, float, str]]:
        if explicit is not None and not isinstance(explicit, dict):
            raise RuleError("loras", "a dict of LoRA name or path -> weight, or None", explicit)
        out = []
        for key, weight in (explicit or {}).items():
            where = f"loras[{key!r}]"
            if not isinstance(key, str) or not key:
                raise RuleError("loras", "a dict of LoRA name or path -> weight", explicit)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise RuleError(where, "a finite number", weight)
            out.append((key, float(weight), where))
        for net in networks:
            if net.kind in UNSUPPORTED_KINDS:
                raise RuleError(
                    field,
                    f"free of <{net.kind}:...> tags (hypernetworks are not supported; use a LoRA)",
                    f"<{net.kind}:{net.name}>",
                )
            if net.kind in LORA_KINDS:  # other kinds: removed and ignored, as A1111 does
                out.append((net.name, net.weight, field))
        return out

    def _check_source(self, name: str, path: Path | None, files: dict[str, Path], where: str) -> None:
        """One name, one file: a second file under a name already used is an error, not a swap."""
        before = files.get(name) or self.loaded.get(name)
        if path is not None and before is not None and before.resolve() != path.resolve():
            raise RuleError(where, f"a LoRA whose name {name!r} is not already that of {before}", str(path))

    def resolve(
        self, pipe: Pipeline, prompt: str, field: str, explicit: dict[str, float] | None = None
    ) -> tuple[str, dict[str, float]]:
        """(prompt without its tags, ``loras`` for ``pipe(...)``), loading the files it names."""
        text, weights, files = self.plan(prompt, field, explicit, pipe.lora_names)
        self.load(pipe, files)
        return text, weights

    def load(self, pipe: Pipeline, files: dict[str, Path]) -> None:
        """Load ``files`` (from ``plan``) into ``pipe`` under their names, those not there yet."""
        for name, path in files.items():
            if name in pipe.lora_names:  # loaded before: by this library (the same file, as
                continue  # _check_source makes sure) or by the caller, whose file is used
            pipe.load_lora_weights(path, adapter_name=name)
            self.loaded[name] = path


# --- textual inversions ------------------------------------------------------------------------


def embedding_shape(path: str | Path) -> tuple[int, int, list[int]]:
    """(A1111's ``shape``, ``vectors``, the widths it fits) from the header: for SDXL's clip_l + clip_g
    the shape is their sum, as A1111 reports it."""
    header = tf.read_safetensors_header(path)
    header = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    shapes = {k: list(v.get("shape") or [0]) for k, v in header.items()}
    if "clip_l" in shapes and "clip_g" in shapes:
        widths = [shapes["clip_l"][-1], shapes["clip_g"][-1]]
        return sum(widths), math.prod(shapes["clip_g"][:-1]), widths
    key = "emb_params" if "emb_params" in shapes else next(iter(sorted(shapes)), None)
    if key is None:
        raise ValueError(f"{str(path)!r} holds no tensors")
    shape = shapes[key]
    return shape[-1], math.prod(shape[:-1]), [shape[-1]]


class EmbeddingLibrary:
    """The textual-inversion files (``*.safetensors``) of a folder, each named by its stem."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.files: dict[str, Path] = {}
        self.notes: list[str] = []
        self.loaded: dict[str, dict[str, Any]] = {}  # name -> A1111's description
        self.skipped: dict[str, dict[str, Any]] = {}  # made for another model family
        self.errors: dict[str, str] = {}  # unreadable, or a name the pipeline cannot take
        self.refresh()

    def refresh(self) -> None:
        """Read the folder again; ``load_all`` then loads the new files."""
        self.files, self.notes = index_folder(self.folder)

    def load_all(self, pipe: Pipeline) -> list[str]:
        """Load every file not loaded yet into ``pipe`` under its stem; returns the names loaded now.

        A file that fits none of the model's text encoders is skipped (A1111's "skipped"), one that
        cannot be read or named is recorded in ``errors``; neither stops the others."""
        done = []
        for name, path in self.files.items():
            if name in self.loaded:
                continue
            self.skipped.pop(name, None)
            self.errors.pop(name, None)
            try:
                shape, vectors, widths = embedding_shape(path)
            except (ValueError, OSError) as err:
                self.errors[name] = str(err)
                continue
            info = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
            info.update(shape=shape, vectors=vectors)
            try:
                pipe.load_textual_inversion(path, token=name)
            except (ValueError, OSError) as err:
                if _fits(pipe, widths):
                    self.errors[name] = str(err)
                else:
                    self.skipped[name] = info
                continue
            self.loaded[name] = info
            done.append(name)
        return done

    def entries(self) -> dict[str, dict[str, dict[str, Any]]]:
        """A1111's GET /sdapi/v1/embeddings: ``{"loaded": {name: {...}}, "skipped": {name: {...}}}``."""
        return {"loaded": dict(self.loaded), "skipped": dict(self.skipped)}


def _fits(pipe: Pipeline, widths: list[int]) -> bool:
    """Whether an embedding of ``widths`` matches the text encoders' widths (known once one load ran)."""
    tables = [enc.table for enc in pipe.prompt_encoder.encoders]
    if any(t is None for t in tables):
        return True  # unknown: call it an error, not a family mismatch
    return sorted(widths) == sorted(t[1].shape[1] for t in tables)


def written_parameters(text: str, sent: tuple[str, str | None], written: tuple[str, str | None]) -> str:
    """A PNG's ``parameters`` with the prompts as written, tags and all (as A1111 keeps them), in place
    of the prompts the pipeline was given (``sent``, tags removed); unchanged if it does not start so."""
    prompt, negative = sent
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    if not text.startswith(prompt + negative_line):
        return text
    rest = text[len(prompt + negative_line) :]
    return written[0] + (f"\nNegative prompt: {written[1]}" if written[1] else "") + rest
