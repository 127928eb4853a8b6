"""Textual-inversion embeddings: the files, and the token table of an exported text encoder.

Files (``.safetensors`` only; pickle files can run code when loaded, so they are refused):

- AUTOMATIC1111: one tensor ``emb_params`` (or ``string_to_param.*``) [n, width]; the name is
  the file's stem.
- diffusers' ``learned_embeds.safetensors``: one tensor under the token, e.g. ``{"<cat-toy>":
  [width]}`` or [n, width].
- SDXL: ``clip_l`` [n, 768] for text encoder 1 and ``clip_g`` [n, 1280] for text encoder 2.

The exported text encoder takes token ids only, and its token-embedding table is an
initializer of the ONNX graph.  Loading an embedding appends its vectors to that table (read
here from the ONNX file with a small protobuf reader, as the ``onnx`` package is not a runtime
dependency) and gives the new rows ids after the vocabulary; the session is made again with the
extended table as an overriding initializer (``SessionOptions.add_initializer``), which Gather
accepts with more rows than the graph's own table.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import tensor_files as tf

PICKLE_SUFFIXES = tf.PICKLE_SUFFIXES
CONVERTER = "python -m sdlite.export convert-embedding IN OUT.safetensors"


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: list[np.ndarray]  # per text encoder of the model: [n, width]


# --- safetensors, read with numpy ---------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32."""
    tensors, _ = tf.read_safetensors(path, "embedding file")
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def load_embedding(path: str | Path, token: str | None, widths: list[int]) -> Embedding:
    """The embedding in ``path`` with one [n, width] array per text encoder (``widths``)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path.name}: pickle embedding files can run code when loaded, so sdlite does not read "
            f"them; convert it once with `{CONVERTER}` (the export extra: pip install 'sdlite[export]')"
        )
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {str(path)!r} does not exist")
    tensors = read_safetensors(path)
    if "clip_l" in tensors or "clip_g" in tensors:  # SDXL: one tensor per encoder
        by_width = {t.shape[-1]: t.reshape(-1, t.shape[-1]) for t in tensors.values()}
        keys = "clip_l and clip_g"
        name = token or path.stem
    else:
        key = _single_key(path, tensors)
        array = tensors[key]
        by_width = {array.shape[-1]: array.reshape(-1, array.shape[-1])}
        keys = key
        diffusers_key = key != "emb_params" and not key.startswith("string_to_param")
        name = token or (key if diffusers_key else path.stem)
    missing = [w for w in widths if w not in by_width]
    if missing:
        got = ", ".join(str(w) for w in by_width)
        raise ValueError(
            f"{path.name}: the embedding's width ({got}, from {keys}) fits no text encoder of this model "
            f"(text encoder widths: {', '.join(map(str, widths))}); it was made for another model family"
        )
    return Embedding(name, [by_width[w] for w in widths])


def _single_key(path: Path, tensors: dict[str, np.ndarray]) -> str:
    for key in ("emb_params", *(k for k in tensors if k.startswith("string_to_param"))):
        if key in tensors:
            return key
    if len(tensors) == 1:
        return next(iter(tensors))
    raise ValueError(
        f"{path.name}: not a textual-inversion embedding (expected emb_params, string_to_param, "
        f"clip_l/clip_g or a single tensor; found {', '.join(sorted(tensors)) or 'no tensors'})"
    )


# --- the token table of an ONNX text encoder ----------------------------------------------------


def token_table(model: Path, vocab_size: int) -> tuple[str, np.ndarray]:
    """(initializer name, [vocab, width] array) of the text encoder's token-embedding table."""
    with model.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for number, wire, a, b in tf.fields(buf, *tf.graph_span(buf)):
            if number != 5 or wire != 2:
                continue
            t = tf.tensor(buf, a, b)
            if len(t.dims) == 2 and t.dims[0] == vocab_size and t.dtype in tf.ONNX_DTYPES:
                return t.name, _tensor_data(model, buf, t)
    raise ValueError(
        f"{model}: no token-embedding table ([{vocab_size}, width] initializer) found; textual "
        "inversion needs a text encoder that looks its tokens up in one"
    )


def _tensor_data(model: Path, buf: mmap.mmap, t: tf.OnnxTensor) -> np.ndarray:
    dtype = tf.ONNX_DTYPES[t.dtype]
    if t.location is not None:
        with (model.parent / t.location).open("rb") as f:
            f.seek(t.offset)
            data = f.read(t.length if t.length is not None else -1)
    elif t.raw is not None:
        data = bytes(buf[t.raw[0] : t.raw[1]])
    else:
        raise ValueError(f"{model}: the token table {t.name!r} is not stored as raw data")
    return np.frombuffer(data, dtype).reshape(t.dims).copy()
