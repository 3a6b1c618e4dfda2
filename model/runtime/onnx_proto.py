"""Writing ONNX models without the `onnx` package: the few protobuf messages an exporter needs.

Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
TensorProto, ValueInfoProto). Used by the image featurizer's export (model/encoders/image.py) and the
query tower's (model/runtime/onnx_query.py); onnxruntime parses what this writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OPSET = 17  # the default domain's opset (LayerNormalization needs 17)
MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops (MatMulNBits, DynamicQuantizeMatMul)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _pb(num: int, value: int | str | bytes) -> bytes:
    """One protobuf field: int -> varint (wire type 0), str/bytes/sub-message -> length-delimited."""
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


# TensorProto.DataType
_DTYPES = {np.dtype("float32"): 1, np.dtype("uint8"): 2, np.dtype("int8"): 3, np.dtype("int64"): 7}


class GraphBuilder:
    """Collects NodeProtos and initialisers; `model()` serialises a ModelProto (IR 8)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self._n = 0

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, array: np.ndarray | float | Sequence[int], name: str = "") -> str:
        a = np.asarray(array)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        if a.dtype not in _DTYPES:
            raise TypeError(f"initialiser {name or '?'}: dtype {a.dtype} is not supported")
        name = name or self._fresh("c")
        # TensorProto: dims=1, data_type=2, name=8, raw_data=9 (little-endian)
        raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        self.inits.append(b"".join(_pb(1, int(d)) for d in a.shape) + _pb(2, _DTYPES[a.dtype]) + _pb(8, name)
                          + _pb(9, raw))
        return name

    def node(self, op: str, inputs: Sequence[str], out: str = "", domain: str = "", **attrs: Any) -> str:
        out = out or self._fresh(op.lower())
        body = b"".join(_pb(1, i) for i in inputs) + _pb(2, out) + _pb(4, op)
        for k, v in attrs.items():  # AttributeProto: name=1, f=2, i=3, ints=8, type=20 (FLOAT=1, INT=2, INTS=7)
            if isinstance(v, float):
                a = _pb(1, k) + _pb(20, 1) + _varint(2 << 3 | 5) + np.float32(v).tobytes()  # fixed32
            elif isinstance(v, int):
                a = _pb(1, k) + _pb(20, 2) + _pb(3, v)
            else:
                a = _pb(1, k) + _pb(20, 7) + b"".join(_pb(8, int(i)) for i in v)
            body += _pb(5, a)
        if domain:
            body += _pb(7, domain)
        self.nodes.append(body)
        return out

    @staticmethod
    def _value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
        shape = b"".join(_pb(1, _pb(1, d) if isinstance(d, int) else _pb(2, d)) for d in dims)
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, elem_type) + _pb(2, shape)))

    def model(self, inputs: Sequence[tuple[str, int, Sequence[int | str]]],
              outputs: Sequence[tuple[str, int, Sequence[int | str]]]) -> bytes:
        graph = (b"".join(_pb(1, n) for n in self.nodes) + _pb(2, self.name)
                 + b"".join(_pb(5, t) for t in self.inits)
                 + b"".join(_pb(11, self._value_info(*i)) for i in inputs)
                 + b"".join(_pb(12, self._value_info(*o)) for o in outputs))
        opsets = _pb(8, _pb(2, OPSET)) + _pb(8, _pb(1, MS_DOMAIN) + _pb(2, 1))
        return _pb(1, 8) + _pb(2, "mvretrieval") + _pb(7, graph) + opsets
