"""Where a LoRA's layers live in an exported graph, read from the ONNX protobuf without ``onnx``.

The runtime does not depend on the ``onnx`` package, so this reads the few protobuf fields it needs
(nodes' names, op types, inputs and ``transB``; initializers' names, dims, types and the offset of
their ``raw_data``) straight from ``model.onnx``.  A layer is found two ways:

* an initializer named ``<module>.weight`` (convolutions, ``Gemm``): torch's own layout;
* a ``MatMul`` / ``Gemm`` node named ``/<module path>/MatMul`` (torch's exporter scopes node names
  by module) whose weight is an anonymous initializer such as ``onnx::MatMul_123``: ``MatMul``
  holds the weight transposed ([in, out]).

A merged weight has the same dtype and shape as the original, so it is written over the original
bytes of a copy of the file that holds it (``model.onnx`` itself, or the external data file such
as ``model.onnx_data`` that large exports use), and the graph is otherwise untouched (ORT
optimises it as usual).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ONNX TensorProto data types that a LoRA can be merged into.
DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}
_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Weight:
    """One initializer that a LoRA may change."""

    name: str
    shape: tuple[int, ...]  # as stored
    dtype: type
    file: str | None  # the external data file (relative to model.onnx); None: model.onnx itself
    offset: int | None  # of its bytes in that file; None when stored in a way not read here
    transposed: bool  # stored [in, out]: a MatMul's right-hand side

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.shape[::-1] if self.transposed else self.shape


def _varint(buf: bytes | mmap.mmap, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, value or start, end) of one message; length-delimited values are skipped."""
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value, i
        elif wire == 2:
            n, i = _varint(buf, i)
            yield field, wire, i, i + n
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _text(buf: bytes | mmap.mmap, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8")


def _external(buf: bytes | mmap.mmap, entries: list[tuple[int, int]]) -> tuple[str | None, int | None]:
    """(location, offset) from a tensor's external_data key/value entries."""
    kv = {}
    for a, b in entries:
        f = {field: _text(buf, x, y) for field, _w, x, y in _fields(buf, a, b)}
        kv[f.get(1, "")] = f.get(2, "")
    return kv.get("location"), int(kv.get("offset", "0"))


def _tensor(buf: bytes | mmap.mmap, start: int, end: int) -> tuple[str, tuple[int, ...], int, tuple]:
    name, dims, dtype, raw, external = "", [], 0, None, []
    for field, wire, a, b in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dims.append(a)
        elif field == 1:  # packed dims
            i = a
            while i < b:
                d, i = _varint(buf, i)
                dims.append(d)
        elif field == 2:
            dtype = a
        elif field == 8:
            name = _text(buf, a, b)
        elif field == 9:
            raw = a
        elif field == 13:
            external.append((a, b))
    return name, tuple(dims), dtype, (None, raw) if not external else _external(buf, external)


def _node(buf: bytes | mmap.mmap, start: int, end: int) -> tuple[str, str, list[str], bool]:
    name, op, inputs, trans_b = "", "", [], False
    for field, _wire, a, b in _fields(buf, start, end):
        if field == 1:
            inputs.append(_text(buf, a, b))
        elif field == 3:
            name = _text(buf, a, b)
        elif field == 4:
            op = _text(buf, a, b)
        elif field == 5:
            attr = {f: (x, y) for f, _w, x, y in _fields(buf, a, b)}
            if 1 in attr and _text(buf, *attr[1]) == "transB":
                trans_b = attr.get(3, (0, 0))[0] == 1
    return name, op, inputs, trans_b


def _graph(buf: bytes | mmap.mmap) -> tuple[int, int]:
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:
            return a, b
    raise ValueError("no graph in the file")


def module_of(node_name: str) -> str:
    """``/down_blocks.0/attentions.0/proj_in/Conv`` -> ``down_blocks.0.attentions.0.proj_in``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def index_weights(path: Path) -> dict[str, Weight]:
    """Module path -> the weight a LoRA on that module changes, for every layer found in ``path``."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        start, end = _graph(buf)
        tensors, nodes = {}, []
        for field, _wire, a, b in _fields(buf, start, end):
            if field == 5:
                name, dims, dtype, raw = _tensor(buf, a, b)
                tensors[name] = (dims, dtype, raw)
            elif field == 1:
                nodes.append(_node(buf, a, b))
    out: dict[str, Weight] = {}
    for node_name, op, inputs, trans_b in nodes:
        if op not in _WEIGHT_OPS or len(inputs) < 2 or inputs[1] not in tensors:
            continue
        init = inputs[1]
        dims, dtype, (file, offset) = tensors[init]
        if dtype not in DTYPES:
            continue
        if init.endswith(".weight"):  # torch's layout, whatever the node does with it
            module, transposed = init[: -len(".weight")], False
        else:
            module, transposed = module_of(node_name), op == "MatMul" or (op == "Gemm" and not trans_b)
        if module:
            out[module] = Weight(init, dims, DTYPES[dtype], file, offset, transposed)
    return out


def read_weight(data: bytes | bytearray, weight: Weight) -> np.ndarray:
    """The weight in torch's layout ([out, in(, kh, kw)]) from the bytes of the file holding it."""
    assert weight.offset is not None
    count = int(np.prod(weight.shape))
    arr = np.frombuffer(data, weight.dtype, count, weight.offset).reshape(weight.shape)
    return arr.T if weight.transposed else arr


def write_weight(data: bytearray, weight: Weight, value: np.ndarray) -> None:
    """Write ``value`` (torch's layout) over the stored weight, in its dtype and layout."""
    stored = (value.T if weight.transposed else value).astype(weight.dtype)
    assert weight.offset is not None and stored.shape == weight.shape
    data[weight.offset : weight.offset + stored.nbytes] = np.ascontiguousarray(stored).tobytes()
