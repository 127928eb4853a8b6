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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import tensor_files as tf

# ONNX TensorProto data types that a LoRA can be merged into.
DTYPES = tf.ONNX_DTYPES
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


def module_of(node_name: str) -> str:
    """``/down_blocks.0/attentions.0/proj_in/Conv`` -> ``down_blocks.0.attentions.0.proj_in``."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def index_weights(path: Path) -> dict[str, Weight]:
    """Module path -> the weight a LoRA on that module changes, for every layer found in ``path``."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        start, end = tf.graph_span(buf)
        tensors, nodes = {}, []
        for field, _wire, a, b in tf.fields(buf, start, end):
            if field == 5:
                t = tf.tensor(buf, a, b)
                tensors[t.name] = t
            elif field == 1:
                nodes.append(tf.node(buf, a, b))
    out: dict[str, Weight] = {}
    for node_name, op, inputs, trans_b in nodes:
        if op not in _WEIGHT_OPS or len(inputs) < 2 or inputs[1] not in tensors:
            continue
        init, t = inputs[1], tensors[inputs[1]]
        if t.dtype not in DTYPES:
            continue
        file, offset = (t.location, t.offset) if t.location else (None, t.raw[0] if t.raw else None)
        if init.endswith(".weight"):  # torch's layout, whatever the node does with it
            module, transposed = init[: -len(".weight")], False
        else:
            module, transposed = module_of(node_name), op == "MatMul" or (op == "Gemm" and not trans_b)
        if module:
            out[module] = Weight(init, t.dims, DTYPES[t.dtype], file, offset, transposed)
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
