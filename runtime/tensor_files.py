"""Tensors in files, read without torch or onnx: safetensors with numpy, and the few fields of an
ONNX file's protobuf that LoRAs and textual inversion need (initializers, nodes).

The runtime depends on neither ``safetensors`` nor ``onnx``; both formats are simple enough to
read here. safetensors: an 8-byte little-endian header size, a JSON header (dtype, shape and
data offsets per tensor, and ``__metadata__``), then the data. ONNX: protobuf's wire format, of
which only varints and length-delimited fields occur in what is read.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Weights in these files may run code when unpickled: never opened at run time.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
# ONNX TensorProto data types of float weights.
ONNX_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
Buffer = bytes | bytearray | mmap.mmap | memoryview


# --- safetensors --------------------------------------------------------------------------------


def _header(raw: bytes, what: str, path: Path) -> tuple[int, dict]:
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{what} {str(path)!r} is not a safetensors file: {err}") from None
    return n, header


def read_safetensors_header(path: str | Path, what: str = "file") -> dict:
    """A .safetensors file's JSON header (tensor names, dtypes, shapes, ``__metadata__``), read
    without its tensors (for listing a folder of LoRAs or embeddings)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if size > MAX_HEADER_BYTES:
                too_big = f"a header of {size} bytes (at most {MAX_HEADER_BYTES})"
                raise ValueError(f"{what} {str(path)!r} is not a safetensors file: {too_big}")
            raw = head + f.read(size)
    except OSError as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from None
    return _header(raw, what, path)[1]


def read_safetensors(path: Path, what: str = "file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor (numpy; bf16 widened to float32) and the header's ``__metadata__``.

    ``what`` names the file in errors ("LoRA file", "embedding file"); pickles are refused by the
    callers, which know the converter to name."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from None
    n, header = _header(raw, what, path)
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for key, info in header.items():
        kind = info.get("dtype") if isinstance(info, dict) else info
        dtype = _ST_DTYPES.get(kind) if isinstance(kind, str) else None
        if dtype is None:
            raise ValueError(
                f"{what} {str(path)!r}: tensor {key!r} has dtype {kind}; allowed: {', '.join(_ST_DTYPES)}"
            )
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw, dtype, (b - a) // np.dtype(dtype).itemsize, 8 + n + a)
        if info["dtype"] == "BF16":  # the upper half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[key] = arr.reshape(info["shape"])
    return out, meta


# --- ONNX protobuf -------------------------------------------------------------------------------


def varint(buf: Buffer, i: int) -> tuple[int, int]:
    """(value, position after it)."""
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def fields(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, a, b) of one message: a varint's (value, end), or a length-delimited
    field's (start, end) of its bytes; fixed-width fields are skipped."""
    i = start
    while i < end:
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
            yield field, wire, value, i
        elif wire == 2:
            n, i = varint(buf, i)
            yield field, wire, i, i + n
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def text(buf: Buffer, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8")


def graph_span(buf: Buffer) -> tuple[int, int]:
    """Where ModelProto's ``graph`` (field 7) lies."""
    for field, wire, a, b in fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:
            return a, b
    raise ValueError("no graph in the file")


@dataclass(frozen=True)
class OnnxTensor:
    """An initializer: its name, dims and type, and where its bytes are."""

    name: str
    dims: tuple[int, ...]
    dtype: int  # ONNX TensorProto data type
    raw: tuple[int, int] | None  # (start, end) of raw_data in model.onnx
    location: str | None  # external data: the file (relative to model.onnx)
    offset: int  # external data: where in that file
    length: int | None  # external data: how many bytes (None: to the end)


def tensor(buf: Buffer, start: int, end: int) -> OnnxTensor:
    """A TensorProto (graph field 5)."""
    name, dims, dtype, raw, external = "", [], 0, None, {}
    for field, wire, a, b in fields(buf, start, end):
        if field == 1 and wire == 0:
            dims.append(a)
        elif field == 1:  # packed dims
            i = a
            while i < b:
                d, i = varint(buf, i)
                dims.append(d)
        elif field == 2:
            dtype = a
        elif field == 8:
            name = text(buf, a, b)
        elif field == 9:
            raw = (a, b)
        elif field == 13:
            entry = {f: text(buf, x, y) for f, _w, x, y in fields(buf, a, b)}
            external[entry.get(1, "")] = entry.get(2, "")
    length = external.get("length")
    return OnnxTensor(
        name,
        tuple(dims),
        dtype,
        None if external else raw,
        external.get("location"),
        int(external.get("offset", "0")),
        int(length) if length else None,
    )


def node(buf: Buffer, start: int, end: int) -> tuple[str, str, list[str], bool]:
    """A NodeProto (graph field 1): (name, op type, inputs, whether transB=1)."""
    name, op, inputs, trans_b = "", "", [], False
    for field, _wire, a, b in fields(buf, start, end):
        if field == 1:
            inputs.append(text(buf, a, b))
        elif field == 3:
            name = text(buf, a, b)
        elif field == 4:
            op = text(buf, a, b)
        elif field == 5:
            attr = {f: (x, y) for f, _w, x, y in fields(buf, a, b)}
            if 1 in attr and text(buf, *attr[1]) == "transB":
                trans_b = attr.get(3, (0, 0))[0] == 1
    return name, op, inputs, trans_b
