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

import json
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bfloat16"}
_ONNX_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: list[np.ndarray]  # per text encoder of the model: [n, width]


# --- safetensors, read with numpy ---------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as float32 (8-byte header size, JSON header, data)."""
    data = path.read_bytes()
    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a .safetensors file ({err})") from None
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = (8 + size + o for o in info["data_offsets"])
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {key!r} has dtype {info['dtype']}; embeddings are float")
        if dtype == "bfloat16":  # the upper half of a float32
            raw = np.frombuffer(data[begin:end], np.uint16).astype(np.uint32) << 16
            array = raw.view(np.float32)
        else:
            array = np.frombuffer(data[begin:end], dtype)
        out[key] = array.reshape(info["shape"]).astype(np.float32)
    return out


def load_embedding(path: str | Path, token: str | None, widths: list[int]) -> Embedding:
    """The embedding in ``path`` with one [n, width] array per text encoder (``widths``)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path.name}: pickle embedding files can run code when loaded, so sdlite does not read "
            "them; convert it to .safetensors with the export extra (pip install 'sdlite[export]')"
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


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """Protobuf wire format: (field number, wire type, varint value or (begin, end) of the bytes)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
            continue
        if wire == 2:
            size, pos = _varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, (pos, pos + size)
        pos += size


@dataclass
class _Tensor:
    name: str = ""
    dims: tuple[int, ...] = ()
    dtype: int = 0
    raw: tuple[int, int] | None = None
    external: dict[str, str] | None = None


def _tensor(buf: memoryview, begin: int, end: int) -> _Tensor:
    t, dims, external = _Tensor(), [], {}
    for number, wire, value in _fields(buf, begin, end):
        if number == 1:  # dims: int64, packed or not
            if wire == 0:
                dims.append(value)
            else:
                pos, stop = value
                while pos < stop:
                    dim, pos = _varint(buf, pos)
                    dims.append(dim)
        elif number == 2:
            t.dtype = value
        elif number == 8:
            t.name = bytes(buf[value[0] : value[1]]).decode()
        elif number == 9:
            t.raw = value
        elif number == 13:
            entry = {k: bytes(buf[v[0] : v[1]]).decode() for k, _, v in _fields(buf, *value)}
            external[entry.get(1, "")] = entry.get(2, "")
    t.dims, t.external = tuple(dims), external or None
    return t


def token_table(model: Path, vocab_size: int) -> tuple[str, np.ndarray]:
    """(initializer name, [vocab, width] array) of the text encoder's token-embedding table."""
    with model.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            graph = next(v for n, w, v in _fields(buf, 0, len(buf)) if n == 7 and w == 2)
            for number, wire, value in _fields(buf, *graph):
                if number != 5 or wire != 2:
                    continue
                t = _tensor(buf, *value)
                if len(t.dims) == 2 and t.dims[0] == vocab_size and t.dtype in _ONNX_DTYPES:
                    return t.name, _tensor_data(model, buf, t)
        finally:
            buf.release()
    raise ValueError(
        f"{model}: no token-embedding table ([{vocab_size}, width] initializer) found; textual "
        "inversion needs a text encoder that looks its tokens up in one"
    )


def _tensor_data(model: Path, buf: memoryview, t: _Tensor) -> np.ndarray:
    dtype = _ONNX_DTYPES[t.dtype]
    if t.external is not None:
        offset, length = int(t.external.get("offset", 0)), t.external.get("length")
        with (model.parent / t.external["location"]).open("rb") as f:
            f.seek(offset)
            data = f.read(int(length) if length else -1)
    elif t.raw is not None:
        data = bytes(buf[t.raw[0] : t.raw[1]])
    else:
        raise ValueError(f"{model}: the token table {t.name!r} is not stored as raw data")
    return np.frombuffer(data, dtype).reshape(t.dims).copy()
